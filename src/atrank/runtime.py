"""Shared pieces of the entry points: threads, data location, model building, results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torchmetrics.functional.classification import binary_auroc

from atrank.config import ConfigError, DataConfig, ModelConfig, TaskConfig
from atrank.data.datamodule import ATRankDataModule
from atrank.data.store import LabelSpec, SampleTable
from atrank.model import ATRankModel, build_model
from data_prep.sources import prepare_from_config

METRICS_FILE = "metrics.json"


def set_threads(threads: int | None, num_workers: int, procs_per_node: int = 1) -> int:
    """Sets torch's intra-op threads to the cores really free.

    Oversubscription (threads x processes > cores) makes small-model training many times
    slower, so by default each training process gets an equal share of the cores left after
    the DataLoader workers.

    Returns:
        The number of threads set.
    """
    if threads is None:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        threads = max(1, (cores - num_workers) // max(1, procs_per_node))
    if threads < 1:
        raise ConfigError(f"config key 'threads' must be >= 1 or null, got {threads}")
    torch.set_num_threads(threads)
    return threads


def procs_per_node(trainer_cfg: DictConfig) -> int:
    """Training processes this node runs (for thread sharing), from the trainer config."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices = trainer_cfg.get("devices", 1)
    if "ddp" in strategy and isinstance(devices, int) and devices > 0:
        return devices
    return 1


def derive_spec(tasks: dict[str, TaskConfig]) -> dict[str, dict[str, Any]]:
    """The preparation's ``derive`` config for the tasks declared by behaviour (``positive``)."""
    return {
        name: {
            "actions": list(t.positive),
            "target": t.target,
            "negatives": t.negatives,
            "horizon": t.horizon,
        }
        for name, t in tasks.items()
        if t.positive is not None
    }


def resolve_data_dir(cfg: DictConfig, tasks: dict[str, TaskConfig] | None = None) -> Path:
    """The prepared-data directory of a run: ``data.dir``, or the configured dataset prepared.

    Without ``data.dir`` the configured ``dataset`` is generated (or read) and prepared into
    the cache on first use, with the labels of the tasks declared by behaviour derived from
    the log; later runs with the same dataset, prep settings and derived tasks reuse it.
    """
    derive = derive_spec(tasks or {})
    if cfg.data.dir is not None:
        if derive:
            raise ConfigError(
                f"task.{next(iter(derive))}.positive: derived tasks are prepared from the "
                f"log, but data.dir={cfg.data.dir} is already prepared; drop data.dir, or "
                "prepare with atrank-prep derive.<task>.actions=[...]"
            )
        return Path(str(cfg.data.dir))
    result = prepare_from_config(
        OmegaConf.to_container(cfg.dataset, resolve=True),  # type: ignore[arg-type]
        OmegaConf.to_container(cfg.prep, resolve=True),  # type: ignore[arg-type]
        cache_dir=Path(str(cfg.paths.cache_dir)),
        out_dir=None,
        derive=derive,
    )
    return result.out_dir


def instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiates every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not node:
        return []
    return [hydra.utils.instantiate(c) for c in node.values() if c is not None and "_target_" in c]


def instantiate_optional(node: DictConfig | None) -> Any:
    """Instantiates a ``_target_`` node (e.g. a partial scheduler); None for an empty group."""
    return hydra.utils.instantiate(node) if node and "_target_" in node else None


def make_datamodule(
    data_dir: Path,
    data: DataConfig,
    tasks: dict[str, TaskConfig],
    seed: int,
    eval_batch_size: int | None = None,
) -> ATRankDataModule:
    """Loads the prepared data and checks the configured tasks against it."""
    specs = {n: LabelSpec(t.label or n, dict(t.space)) for n, t in tasks.items()}
    dm = ATRankDataModule(
        dir=str(data_dir),
        tasks=specs,
        batch_size=data.batch_size,
        eval_batch_size=eval_batch_size or data.eval_batch_size,
        max_len=data.max_len,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        seed=seed,
    )
    dm.setup()
    check_tasks(tasks, dm.meta, data_dir)
    return dm


def check_tasks(tasks: dict[str, TaskConfig], meta: dict[str, Any], data_dir: Path) -> None:
    """Each configured task must exist in the data with the declared target type."""
    for name, t in tasks.items():
        info = meta["tasks"].get(t.label or name)
        if info is None:
            raise ConfigError(
                f"task.{name}: {data_dir / 'meta.json'} has no label {t.label or name!r} "
                f"(it has {sorted(meta['tasks'])})"
            )
        if t.target not in meta["groups"]:
            raise ConfigError(
                f"task.{name}.target: unknown target type {t.target!r} "
                f"(known: {sorted(meta['groups'])})"
            )
        if t.target not in info["target_groups"]:
            raise ConfigError(
                f"task.{name}.target: the data's {name!r} labels are on {info['target_groups']} "
                f"targets, not {t.target!r}"
            )


def model_from_meta(
    meta: dict[str, Any], m: ModelConfig, tasks: dict[str, TaskConfig]
) -> ATRankModel:
    """Builds the model with vocabulary sizes read from the prepared data's ``meta.json``."""
    group_fields = {
        g: tuple(meta["groups"][g]["fields"])
        for g in sorted(meta["groups"], key=lambda g: meta["groups"][g]["index"])
    }
    try:
        return build_model(
            vocab_sizes={k: int(v) for k, v in meta["vocab_sizes"].items()},
            group_fields=group_fields,
            n_actions=int(meta["n_actions"]),
            n_time_buckets=int(meta["time"]["n_buckets"]),
            n_users=int(meta["counts"]["users"]),
            task_groups={name: t.target for name, t in tasks.items()},
            encoder=m.encoder.name,
            field_dim=m.field_dim,
            d_model=m.d_model,
            n_heads=m.n_heads,
            ffn_dim=m.ffn_dim,
            n_blocks=m.n_blocks,
            dropout=m.dropout,
            score=m.score,  # type: ignore[arg-type]
            scorer=m.scorer,  # type: ignore[arg-type]
            mlp_hidden=tuple(m.mlp_hidden),
        )
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def oracle_aucs(samples: SampleTable, tasks: list[str]) -> dict[str, float]:
    """AUC of the true label probabilities (known for simulated data) on a split."""
    out: dict[str, float] = {}
    for task in tasks:
        prob = samples.prob.get(task)
        if prob is None:
            continue
        mask = (samples.labels[task] >= 0) & ~torch.isnan(prob)
        if int(mask.sum()) == 0:
            continue
        out[task] = float(binary_auroc(prob[mask], samples.labels[task][mask].long()))
    return out


def write_metrics(metrics: dict[str, float], out_dir: Path, title: str) -> Path:
    """Writes ``metrics.json`` and prints the metrics as a table.

    Returns:
        The path of the file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / METRICS_FILE
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    table = Table(title=title)
    for col in ("task", "metric", "value"):
        table.add_column(col)
    # One block per task: its test metrics, then the oracle beside them.
    stage_order = {"test": 0, "val": 0, "oracle": 1, "best": 2}
    keys = sorted(
        (k.split("/") for k in metrics if k.count("/") == 2),
        key=lambda p: (p[1], stage_order.get(p[0], 3), p[0], p[2]),
    )
    for stage, task, name in keys:
        table.add_row(task, f"{stage}/{name}", f"{metrics[f'{stage}/{task}/{name}']:.4f}")
    console = Console()
    console.print(table)
    console.print(f"metrics written to {path}")
    return path
