# ATRank-MT on a CUDA machine. Build: docker build -t atrank-mt .
# Run:   docker run --gpus all -v $PWD/outputs:/app/outputs atrank-mt trainer=gpu
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WANDB_MODE=offline \
    ATRANK_CACHE=/app/cache

WORKDIR /app

# Dependencies in their own layer: only a change of pyproject.toml rebuilds it. torch comes
# from the base image (its version satisfies the project's range, so pip keeps it).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\\n'.join(d for d in deps if not d.startswith('torch>')))"
RUN pip install -r /tmp/requirements.txt

COPY src ./src
COPY data_prep ./data_prep
COPY conf ./conf
RUN pip install --no-deps -e .

# No secrets are baked in: pass WANDB_API_KEY at run time (and logger.wandb.offline=false).
ENTRYPOINT ["atrank-train"]
CMD []
