"""Training run: compose -> data -> model -> system -> Lightning fit/test -> metrics.json.

Config is read here (the edge) and nowhere below: everything else takes typed arguments.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from atrank.build import build_system, make_datamodule, resolve_data_dir
from atrank.config import plain, train_config
from atrank.runtime import (
    collect_metrics,
    instantiate_all,
    oracle_aucs,
    procs_per_node,
    read_checkpoint,
    set_threads,
    write_metrics,
)
from atrank.system.callbacks import PerTaskBest


def train(cfg: DictConfig) -> dict[str, float]:
    """Runs one training (and test) from a composed config.

    Returns:
        The flat metrics written to ``metrics.json``.
    """
    run = train_config(cfg)  # every value checked before any data is read
    set_threads(run.threads, run.data.num_workers, procs_per_node(run.trainer))
    L.seed_everything(run.seed, workers=True)

    data_dir = resolve_data_dir(run)
    dm = make_datamodule(data_dir, run.data, run.task, seed=run.seed)
    system = build_system(
        run, dm.prepared_meta, data_dir, run_config=plain(cfg), compile_model=True
    )
    callbacks: list[Callback] = instantiate_all(run.callbacks)
    loggers: list[Logger] = instantiate_all(run.logger)
    trainer: L.Trainer = hydra.utils.instantiate(
        run.trainer, callbacks=callbacks, logger=loggers or False
    )

    metrics: dict[str, float] = {}
    tasks = list(run.task)
    if run.train:
        start = time.perf_counter()
        if run.ckpt_path is not None:
            read_checkpoint(Path(run.ckpt_path))  # a clear error, and never unpickled code
        trainer.fit(system, datamodule=dm, ckpt_path=run.ckpt_path, weights_only=True)
        metrics["fit/seconds"] = time.perf_counter() - start
        metrics["fit/epochs"] = float(trainer.current_epoch)
    if run.test:  # the best checkpoint on val/monitor
        ckpt = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        trainer.test(system, datamodule=dm, ckpt_path=best, weights_only=True)
        metrics.update(collect_metrics(trainer.callback_metrics, tasks))
        for task, auc in oracle_aucs(dm.splits["test"], tasks).items():
            metrics[f"oracle/{task}/auc"] = auc
    for cb in callbacks:
        if isinstance(cb, PerTaskBest):
            metrics.update(cb.summary())
    if trainer.is_global_zero:
        title = f"ATRank-MT test metrics ({run.model.encoder})"
        write_metrics(metrics, Path(run.paths.output_dir), title=title)
    return metrics
