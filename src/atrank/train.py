"""Training run: compose -> data -> model -> system -> Lightning fit/test -> metrics.json
(and the run report, :mod:`atrank.report`).

Config is read here (the edge) and nowhere below: everything else takes typed arguments.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from atrank.build import build_system, make_datamodule, resolve_data_dir
from atrank.config import ConfigError, TrainConfig, plain, train_config
from atrank.runtime import (
    checkpoint_run,
    collect_metrics,
    instantiate_all,
    oracle_aucs,
    procs_per_node,
    read_checkpoint,
    set_threads,
    write_metrics,
)
from atrank.system.callbacks import PerTaskBest

LAST_CHECKPOINT = "last.ckpt"
#: metrics.json key of the best validation monitor: the value ``atrank-train -m`` returns.
VAL_MONITOR = "best/val_monitor"


def resumed_run(folder: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration of the run in ``folder``, set to continue from its last checkpoint.

    The run goes on exactly as it was started: its stored configuration (not the command
    line's), its output folder, its callbacks' state.

    Raises:
        ConfigError: naming the folder when it holds no ``checkpoints/last.ckpt``, or the
            command line sets anything besides ``resume`` (and ``hydra.*``).
    """
    last = folder / "checkpoints" / LAST_CHECKPOINT
    if not last.is_file():
        raise ConfigError(
            f"resume: no {last}: resume takes the folder of an atrank-train run that saved a "
            "last checkpoint (callbacks.model_checkpoint.save_last, on by default; a run "
            "killed before its first epoch ended has none)"
        )
    if HydraConfig.initialized():
        extra = [
            o
            for o in HydraConfig.get().overrides.task
            if not o.split("=", 1)[0].lstrip("+~").startswith(("resume", "hydra."))
        ]
        if extra:
            raise ConfigError(
                f"resume: continues {folder} as it was configured; drop the other overrides "
                f"{extra} (or start a new run from its weights with ckpt_path={last})"
            )
    run, ckpt = checkpoint_run(last)
    run.ckpt_path = str(last)
    return run, dict(ckpt["hyper_parameters"]["run_config"])  # type: ignore[index]


def train(cfg: DictConfig) -> dict[str, float]:
    """Runs one training (and test) from a composed config.

    Returns:
        The flat metrics written to ``metrics.json``.
    """
    run = train_config(cfg)  # every value checked before any data is read
    stored = plain(cfg)
    if run.resume is not None:
        run, stored = resumed_run(Path(run.resume))
    elif run.ckpt_path is not None:
        read_checkpoint(Path(run.ckpt_path))  # a clear error, and never unpickled code
    set_threads(run.threads, run.data.num_workers, procs_per_node(run.trainer))
    L.seed_everything(run.seed, workers=True)

    data_dir = resolve_data_dir(run)
    dm = make_datamodule(data_dir, run.data, run.task, seed=run.seed)
    system = build_system(
        run, dm.prepared_meta, data_dir, run_config=plain(cfg), compile_model=True
    )
    callbacks: list[Callback] = instantiate_all(run.callbacks)
    if run.report.enabled:
        from atrank.report.callback import RunReport  # (matplotlib: only when reporting)

        callbacks.append(
            RunReport(
                run.report,
                run.paths.output_dir,
                list(run.task),
                dm.prepared_meta,
                data_dir=data_dir,
                run_config=stored,
            )
        )
    loggers: list[Logger] = instantiate_all(run.logger)
    trainer: L.Trainer = hydra.utils.instantiate(
        run.trainer, callbacks=callbacks, logger=loggers or False
    )

    metrics: dict[str, float] = {}
    tasks = list(run.task)
    ckpt = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if run.train:
        start = time.perf_counter()
        trainer.fit(system, datamodule=dm, ckpt_path=run.ckpt_path, weights_only=True)
        metrics["fit/seconds"] = time.perf_counter() - start
        metrics["fit/epochs"] = float(trainer.current_epoch)
        # What a sweeper optimises: the best validation monitor (the last one without a
        # checkpoint callback), never a test metric.
        score = ckpt.best_model_score if ckpt is not None else None
        if score is None:
            score = trainer.callback_metrics.get("val/monitor")
        if score is not None:
            metrics[VAL_MONITOR] = float(score)
    if run.test:  # the best checkpoint on val/monitor
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
