"""``atrank-eval``: test a checkpoint of ``atrank-train`` and write ``metrics.json``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from atrank.cli.errors import friendly_errors
from atrank.config import register_configs

register_configs()  # the schemas every composed config is checked against


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="eval")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    from atrank.evaluate import evaluate

    evaluate(cfg)


def main() -> None:
    """Console-script entry point."""
    _main()
