"""``atrank-export``: write the scoring bundle of an ``atrank-train`` checkpoint."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from atrank.cli.errors import friendly_errors
from atrank.config import export_config, register_configs

register_configs()  # the schemas every composed config is checked against


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="export")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    from atrank.report.wandb_bundle import log_bundle
    from atrank.serve.export import export_bundle

    job = export_config(cfg)
    data_dir = Path(job.data_dir) if job.data_dir is not None else None
    out = export_bundle(Path(job.ckpt_path), Path(job.out), data_dir=data_dir, onnx=job.onnx)
    print(f"bundle written to {out}")
    # the run folder: <run>/checkpoints/<name>.ckpt, with metrics.json and (logger=wandb) wandb/
    logged = log_bundle(out, Path(job.ckpt_path).resolve().parent.parent, job.wandb)
    if logged is not None:
        print(f"bundle logged to W&B as artifact {logged}")


def main() -> None:
    """Console-script entry point."""
    _main()
