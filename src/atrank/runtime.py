"""Shared pieces of the entry points: threads, instantiation, metrics out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torchmetrics.functional.classification import binary_auroc

from atrank.config import METRIC_NAMES, ConfigError, TrainConfig, train_config
from atrank.data.store import SampleTable

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
    torch.set_num_threads(threads)
    return threads


def procs_per_node(trainer: dict[str, Any]) -> int:
    """Training processes this node runs (for thread sharing), from the trainer config."""
    strategy = str(trainer.get("strategy", "auto"))
    devices = trainer.get("devices", 1)
    if "ddp" in strategy and isinstance(devices, int) and devices > 0:
        return devices
    return 1


def instantiate_all(node: dict[str, Any] | None) -> list[Any]:
    """Instantiates every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not node:
        return []
    return [hydra.utils.instantiate(c) for c in node.values() if c is not None and "_target_" in c]


def collect_metrics(
    callback_metrics: dict[str, Any], tasks: list[str], stage: str = "test"
) -> dict[str, float]:
    """Picks ``<stage>/<task>/<metric>`` out of the trainer's logged metrics."""
    out: dict[str, float] = {}
    for task in tasks:
        for name in METRIC_NAMES:
            key = f"{stage}/{task}/{name}"
            if key in callback_metrics:
                out[key] = float(callback_metrics[key])
    return out


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


def read_checkpoint(ckpt_path: Path) -> dict[str, object]:
    """A checkpoint of ``atrank-train``, read without unpickling code (``weights_only``).

    Raises:
        ConfigError: naming the file when it is missing, refused or not from atrank-train.
    """
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path: no checkpoint file at {ckpt_path}")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a damaged file: both are the file's fault
        raise ConfigError(
            f"ckpt_path: {ckpt_path} is not a readable atrank-train checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    if not isinstance(ckpt, dict) or "run_config" not in ckpt.get("hyper_parameters", {}):
        raise ConfigError(f"ckpt_path: {ckpt_path} was not written by atrank-train (no run_config)")
    return ckpt


def checkpoint_run(ckpt_path: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The run configuration an ``atrank-train`` checkpoint stores, and the checkpoint.

    Returns:
        ``(run, checkpoint)``: the typed configuration the run was started with (not checked
        again against the files it named then), and the checkpoint read by
        :func:`read_checkpoint`.
    """
    ckpt = read_checkpoint(ckpt_path)
    hp = ckpt["hyper_parameters"]
    assert isinstance(hp, dict)
    return train_config(OmegaConf.create(dict(hp["run_config"])), stored=True), ckpt
