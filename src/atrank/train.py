"""Training run: compose -> data -> model -> system -> Lightning fit/test -> metrics.json.

Config is read here (the edge) and nowhere below: everything else takes typed arguments.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from atrank.config import (
    compile_backend,
    data_config,
    loss_weighting,
    model_config,
    task_configs,
)
from atrank.runtime import (
    instantiate_all,
    instantiate_optional,
    make_datamodule,
    model_from_meta,
    oracle_aucs,
    procs_per_node,
    resolve_data_dir,
    set_threads,
    write_metrics,
)
from atrank.system.callbacks import PerTaskBest
from atrank.system.metrics import TaskMetrics
from atrank.system.module import ATRankSystem


def collect_test_metrics(
    callback_metrics: dict[str, Any], tasks: list[str], stage: str = "test"
) -> dict[str, float]:
    """Picks ``<stage>/<task>/{auc,gauc,logloss}`` out of the trainer's logged metrics."""
    out: dict[str, float] = {}
    for task in tasks:
        for name in TaskMetrics.NAMES:
            key = f"{stage}/{task}/{name}"
            if key in callback_metrics:
                out[key] = float(callback_metrics[key])
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Runs one training (and test) from a composed config.

    Returns:
        The flat metrics written to ``metrics.json``.
    """
    data_cfg, model_cfg, tasks = data_config(cfg), model_config(cfg), task_configs(cfg)
    backend = compile_backend(cfg.get("compile"))
    set_threads(cfg.get("threads"), data_cfg.num_workers, procs_per_node(cfg.trainer))
    L.seed_everything(int(cfg.seed), workers=True)

    data_dir = resolve_data_dir(cfg, tasks)
    dm = make_datamodule(data_dir, data_cfg, tasks, seed=int(cfg.seed))

    model = model_from_meta(dm.meta, model_cfg, tasks)
    if backend is not None:
        # In place: the module's state_dict keys (and so checkpoints) stay the same.
        model.compile(backend=backend, dynamic=True)
    system = ATRankSystem(
        model,
        task_weights={n: t.weight for n, t in tasks.items()},
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=instantiate_optional(cfg.get("scheduler")),
        l2_weight=model_cfg.l2_weight,
        monitor_weights={n: t.monitor_weight for n, t in tasks.items()},
        task_metrics={n: list(t.metrics) for n, t in tasks.items()},
        run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        data_dir=str(data_dir),
        loss_weighting=loss_weighting(cfg),
    )
    callbacks: list[Callback] = instantiate_all(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        start = time.perf_counter()
        trainer.fit(system, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        metrics["fit/seconds"] = time.perf_counter() - start
        metrics["fit/epochs"] = float(trainer.current_epoch)
    if cfg.get("test", True):  # the best checkpoint on val/monitor
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)  # type: ignore[attr-defined]
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        trainer.test(system, datamodule=dm, ckpt_path=best)
        metrics.update(collect_test_metrics(trainer.callback_metrics, list(tasks)))
        for task, auc in oracle_aucs(dm.splits["test"], list(tasks)).items():
            metrics[f"oracle/{task}/auc"] = auc
    for cb in callbacks:
        if isinstance(cb, PerTaskBest):
            metrics.update(cb.summary())
    if trainer.is_global_zero:
        out_dir = Path(str(cfg.paths.output_dir))
        write_metrics(metrics, out_dir, title=f"ATRank-MT test metrics ({model_cfg.encoder.name})")
    return metrics
