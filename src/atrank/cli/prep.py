"""``atrank-prep``: prepare a dataset (generated or real) into training files.

The preparation itself is polars only; the config schemas come from ``atrank.config``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from atrank.cli.errors import friendly_errors
from atrank.config import prep_job_config, register_configs
from data_prep.run import prepare_from_config

register_configs()  # the schemas every composed config is checked against


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="prep")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    job = prep_job_config(cfg)
    result = prepare_from_config(
        job.dataset,
        job.prep,
        cache_dir=Path(job.paths.cache_dir),
        out_dir=Path(job.out_dir) if job.out_dir is not None else None,
        force=job.force,
        derive=job.derived(),
    )
    if result.skipped:
        print(
            f"already prepared for these inputs and settings: {result.out_dir} "
            "(force=true redoes it)"
        )
    else:
        print(json.dumps(result.report, indent=2))
    print(f"prepared data: {result.out_dir}")


def main() -> None:
    """Console-script entry point."""
    _main()
