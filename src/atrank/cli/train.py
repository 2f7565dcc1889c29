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
    from atrank.train import train  # heavy imports after Hydra has parsed the command line

    metrics = train(cfg)
    # The value a Hydra sweeper optimises: the mean test AUC over the trained tasks.
    aucs = [v for k, v in metrics.items() if k.startswith("test/") and k.endswith("/auc")]
    return sum(aucs) / len(aucs) if aucs else None


def main() -> None:
    """Console-script entry point."""
    _main()
