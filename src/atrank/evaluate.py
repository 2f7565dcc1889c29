"""Evaluation of a saved checkpoint: the model is rebuilt from the config stored inside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from atrank.config import ConfigError, data_config, model_config, task_configs
from atrank.runtime import (
    instantiate_all,
    make_datamodule,
    model_from_meta,
    oracle_aucs,
    set_threads,
    write_metrics,
)
from atrank.system.module import ATRankSystem
from atrank.train import collect_test_metrics


def _load_hparams(ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {})
    if "run_config" not in hp:
        raise ConfigError(f"ckpt_path: {ckpt_path} was not written by atrank-train (no run_config)")
    return dict(hp)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Tests ``cfg.ckpt_path`` on ``cfg.split`` of the prepared data.

    Returns:
        The flat metrics written to ``metrics.json`` (``<split>/<task>/<metric>``, plus
        ``oracle/<task>/auc`` for simulated data).
    """
    ckpt_path = Path(str(cfg.ckpt_path))
    hp = _load_hparams(ckpt_path)
    run = OmegaConf.create(hp["run_config"])
    data_cfg, model_cfg, tasks = data_config(run), model_config(run), task_configs(run)
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split: must be val or test, got {cfg.split!r}")
    set_threads(cfg.get("threads"), data_cfg.num_workers)
    data_dir = Path(str(cfg.data_dir)) if cfg.data_dir is not None else Path(hp["data_dir"])
    dm = make_datamodule(data_dir, data_cfg, tasks, int(run.seed), eval_batch_size=cfg.batch_size)
    system = ATRankSystem(
        model_from_meta(dm.meta, model_cfg, tasks),
        task_weights={n: t.weight for n, t in tasks.items()},
        optimizer=torch.optim.Adam,
        monitor_weights={n: t.monitor_weight for n, t in tasks.items()},
        task_metrics={n: list(t.metrics) for n, t in tasks.items()},
    )
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_all(cfg.get("logger")) or False, callbacks=[]
    )
    if cfg.split == "test":
        trainer.test(system, datamodule=dm, ckpt_path=str(ckpt_path))
    else:
        trainer.validate(system, datamodule=dm, ckpt_path=str(ckpt_path))
    metrics = collect_test_metrics(trainer.callback_metrics, list(tasks), stage=cfg.split)
    for task, auc in oracle_aucs(dm.splits[cfg.split], list(tasks)).items():
        metrics[f"oracle/{task}/auc"] = auc
    if trainer.is_global_zero:
        write_metrics(
            metrics, Path(str(cfg.paths.output_dir)), title=f"ATRank-MT {cfg.split} metrics"
        )
    return metrics
