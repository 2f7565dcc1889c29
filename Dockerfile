# ATRank-MT on a CUDA machine. Build: docker build -t atrank-mt .
# Run:   docker run --gpus all -v $PWD/outputs:/app/outputs atrank-mt trainer=gpu
#        docker run -p 8000:8000 --entrypoint atrank-serve atrank-mt bundle=/app/outputs/bundle host=0.0.0.0
# A pinned base image, the exact versions CI tests (constraints.txt), and a non-root user.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WANDB_MODE=offline \
    ATRANK_CACHE=/app/cache

RUN useradd --create-home --uid 1000 atrank
WORKDIR /app

# torch in its own layer: PyPI's Linux wheel of the pinned version is the CUDA build (torch.load
# is called with weights_only=True everywhere, whatever the version's default).
COPY constraints.txt ./
RUN pip install -c constraints.txt torch==2.13.0

COPY pyproject.toml README.md ./
COPY src ./src
COPY data_prep ./data_prep
COPY conf ./conf
RUN pip install -c constraints.txt ".[serve]" \
    && mkdir -p /app/cache /app/outputs \
    && chown -R atrank:atrank /app

USER atrank

# No secrets are baked in: pass WANDB_API_KEY at run time (and logger.wandb.offline=false).
ENTRYPOINT ["atrank-train"]
CMD []
