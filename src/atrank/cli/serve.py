"""``atrank-serve``: an HTTP scoring server (LitServe) on a bundle of ``atrank-export``.

``atrank-serve bundle=path/to/bundle port=8000``; the endpoints and the body of
``POST /score`` are described in :mod:`atrank.serve.server`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from atrank.cli.errors import friendly_errors
from atrank.config import ConfigError, register_configs, serve_config

register_configs()  # the schemas every composed config is checked against

#: The addresses LitServe binds (it refuses names such as ``localhost``).
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
#: LitServe refuses privileged ports.
MIN_PORT = 1024


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="serve")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    from atrank.runtime import set_threads
    from atrank.serve.bundle import BundleError
    from atrank.serve.server import build_server

    job = serve_config(cfg)
    if job.host not in HOSTS:
        raise ConfigError(f"host: must be one of {', '.join(HOSTS)}, got {job.host!r}")
    if job.port < MIN_PORT:
        raise ConfigError(f"port: must be >= {MIN_PORT} (LitServe), got {job.port}")
    set_threads(job.threads, num_workers=0, procs_per_node=job.workers)
    try:
        server = build_server(job)
    except BundleError as e:
        print(f"error: bundle: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"serving {job.bundle} on http://{job.host}:{job.port} (POST /score)", flush=True)
    server.run(host=job.host, port=job.port, generate_client_file=False, log_level="warning")


def main() -> None:
    """Console-script entry point."""
    _main()
