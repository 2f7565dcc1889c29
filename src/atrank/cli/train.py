"""``atrank-train``: train (and test) ATRank from a Hydra command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from atrank.cli.errors import friendly_errors
from atrank.config import register_configs

register_configs()  # the schemas every composed config is checked against


@hydra.main(version_base="1.3", config_path="pkg://atrank.conf", config_name="train")
@friendly_errors
def _main(cfg: DictConfig) -> float | None:
    from atrank.train import VAL_MONITOR, train  # heavy imports after Hydra parsed the line

    # The value a Hydra sweeper optimises: the best validation monitor (weighted mean of the
    # tasks' validation AUCs), never a test metric.
    return train(cfg).get(VAL_MONITOR)


def main() -> None:
    """Console-script entry point."""
    _main()
