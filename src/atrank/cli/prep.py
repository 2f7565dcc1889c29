"""``atrank-prep``: prepare a dataset (generated or real) into training files.

Imports no torch: preparation is polars only.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from atrank.cli.errors import friendly_errors


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="prep")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    from data_prep.sources import prepare_from_config

    result = prepare_from_config(
        OmegaConf.to_container(cfg.dataset, resolve=True),  # type: ignore[arg-type]
        OmegaConf.to_container(cfg.prep, resolve=True),  # type: ignore[arg-type]
        cache_dir=Path(str(cfg.paths.cache_dir)),
        out_dir=Path(str(cfg.out_dir)) if cfg.out_dir is not None else None,
        force=bool(cfg.force),
        derive=OmegaConf.to_container(cfg.derive, resolve=True) if cfg.get("derive") else None,  # type: ignore[arg-type]
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
