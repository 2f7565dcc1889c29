"""Shared fixtures: the real Hydra config, shrunk, and a small generated dataset."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from atrank.config import register_configs

# Two cores: one torch thread per test process keeps parallel work from oversubscribing.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

register_configs()  # as the console scripts do: every composed config is checked

TINY_SIM = ["dataset.n_users=300", "dataset.events_per_user=40", "dataset.n_items=300"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache for generated and prepared data (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("atrank-cache")


@pytest.fixture()
def compose_cfg(cache_dir: Path, tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Composes the real config (``train``, ``prep`` or ``eval``) with overrides, shrunk."""
    GlobalHydra.instance().clear()

    def _compose(
        *overrides: str, config_name: str = "train", tiny: bool = True, return_hydra: bool = False
    ) -> DictConfig:
        base = [f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path / 'out'}"]
        sim = TINY_SIM if tiny else []
        if config_name == "train":
            base += [*sim, "logger=none", "callbacks.progress_bar=null"]
            base += ["threads=1"] if tiny else []
        elif config_name == "prep":
            base += sim
        return compose(
            config_name=config_name,
            overrides=[*base, *overrides],
            return_hydra_config=return_hydra,
        )

    with initialize_config_module(config_module="atrank.conf", version_base="1.3"):
        yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short training run on the tiny simulated data, shared by the scoring tests.

    Returns:
        ``root``; ``ckpt`` (the run's best checkpoint); ``bundle`` (its export); ``data_dir``
        (the prepared data); ``raw`` (the raw canonical tables, ``events/`` and ``samples/``).
        Nothing may write into them.
    """
    from atrank.runtime import read_checkpoint
    from atrank.serve.export import export_bundle
    from atrank.train import train
    from data_prep.meta import read_meta

    root = tmp_path_factory.mktemp("tiny-run")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="atrank.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"paths.cache_dir={root / 'cache'}",
                f"paths.output_dir={root / 'run'}",
                *TINY_SIM,
                "logger=none",
                "callbacks.progress_bar=null",
                "threads=1",
                "trainer.max_epochs=1",
                "data.batch_size=128",
            ],
        )
    GlobalHydra.instance().clear()
    train(cfg)
    (ckpt,) = (root / "run" / "checkpoints").glob("epoch*.ckpt")
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    assert isinstance(hp, dict)
    data_dir = Path(str(hp["data_dir"]))
    return {
        "root": root,
        "ckpt": ckpt,
        "bundle": export_bundle(ckpt, root / "bundle"),
        "data_dir": data_dir,
        "raw": Path(str(read_meta(data_dir).source["raw_dir"])),
    }
