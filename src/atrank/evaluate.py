"""Evaluation of a saved checkpoint: the run is rebuilt from the config stored inside it."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from atrank.build import build_system, make_datamodule
from atrank.config import eval_config
from atrank.runtime import (
    checkpoint_run,
    collect_metrics,
    instantiate_all,
    oracle_aucs,
    set_threads,
    write_metrics,
)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Tests ``cfg.ckpt_path`` on ``cfg.split`` of the prepared data.

    Returns:
        The flat metrics written to ``metrics.json`` (``<split>/<task>/<metric>``, plus
        ``oracle/<task>/auc`` for simulated data).
    """
    job = eval_config(cfg)
    ckpt_path = Path(job.ckpt_path)
    run, ckpt = checkpoint_run(ckpt_path)  # (refuses to unpickle code)
    hp = ckpt["hyper_parameters"]
    set_threads(job.threads, run.data.num_workers)
    data_dir = Path(job.data_dir) if job.data_dir is not None else Path(hp["data_dir"])
    dm = make_datamodule(data_dir, run.data, run.task, run.seed, eval_batch_size=job.batch_size)
    system = build_system(run, dm.prepared_meta, data_dir)
    trainer: L.Trainer = hydra.utils.instantiate(
        job.trainer, logger=instantiate_all(job.logger) or False, callbacks=[]
    )
    split = job.split.value
    if split == "test":
        trainer.test(system, datamodule=dm, ckpt_path=str(ckpt_path), weights_only=True)
    else:
        trainer.validate(system, datamodule=dm, ckpt_path=str(ckpt_path), weights_only=True)
    metrics = collect_metrics(trainer.callback_metrics, list(run.task), stage=split)
    for task, auc in oracle_aucs(dm.splits[split], list(run.task)).items():
        metrics[f"oracle/{task}/auc"] = auc
    if trainer.is_global_zero:
        write_metrics(metrics, Path(job.paths.output_dir), title=f"ATRank-MT {split} metrics")
    return metrics
