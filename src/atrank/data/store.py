"""Prepared data held in memory as flat tensors: one timeline, and sample tables pointing into it.

Shape glossary: N timeline rows (all behaviours of all users), S samples of one split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from data_prep import contract as C
from data_prep.pipeline import PrepError, load_meta


def _tensor(df: pl.DataFrame, col: str, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(df.get_column(col).to_numpy(writable=True))).to(
        dtype
    )


@dataclass
class Timeline:
    """Every user's behaviours, sorted by (user, time); samples address it by row offsets.

    Attributes:
        ts: ``(N,)`` int64 unix seconds.
        group: ``(N,)`` int8 group index.
        action: ``(N,)`` int32 action index.
        fields: ``field -> (N,)`` int32 coded ids.
    """

    ts: Tensor
    group: Tensor
    action: Tensor
    fields: dict[str, Tensor]

    @property
    def n_rows(self) -> int:
        """Number of behaviours N."""
        return int(self.ts.shape[0])

    @classmethod
    def read(cls, path: Path) -> Timeline:
        """Reads ``timeline.parquet``."""
        df = pl.read_parquet(path)
        return cls(
            ts=_tensor(df, C.TS, torch.int64),
            group=_tensor(df, C.GROUP_IDX, torch.int8),
            action=_tensor(df, C.ACTION_IDX, torch.int32),
            fields={f: _tensor(df, f, torch.int32) for f in C.ID_FIELDS},
        )


@dataclass
class SampleTable:
    """One split's samples.

    Attributes:
        user: ``(S,)`` int64 user index.
        ts: ``(S,)`` int64 sample time.
        group: ``(S,)`` int8 target group index.
        fields: ``field -> (S,)`` int32 coded target ids.
        hist_start: ``(S,)`` int64 first timeline row of the user.
        hist_end: ``(S,)`` int64 one past the last timeline row before the sample time.
        labels: ``task -> (S,)`` int8, -1 where the task does not apply.
        prob: ``task -> (S,)`` float32 true probability (NaN where unknown); simulator only.
    """

    user: Tensor
    ts: Tensor
    group: Tensor
    fields: dict[str, Tensor]
    hist_start: Tensor
    hist_end: Tensor
    labels: dict[str, Tensor]
    prob: dict[str, Tensor]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def read(cls, path: Path, tasks: list[str]) -> SampleTable:
        """Reads one ``samples_<split>.parquet`` keeping the given tasks' labels.

        Raises:
            PrepError: naming the file when it has no rows or lacks a task's label column.
        """
        df = pl.read_parquet(path)
        if df.height == 0:
            raise PrepError(
                f"{path}: the split is empty; re-run atrank-prep with other split fractions"
            )
        for task in tasks:
            if C.label_col(task) not in df.columns:
                raise PrepError(f"{path}: no column {C.label_col(task)!r} for task {task!r}")
        labels = {
            t: torch.from_numpy(
                df.get_column(C.label_col(t)).fill_null(-1).cast(pl.Int8).to_numpy()
            )
            for t in tasks
        }
        prob = {
            t: torch.from_numpy(
                df.get_column(C.prob_col(t)).cast(pl.Float32).fill_null(float("nan")).to_numpy()
            )
            for t in tasks
            if C.prob_col(t) in df.columns
        }
        return cls(
            user=_tensor(df, C.USER_IDX, torch.int64),
            ts=_tensor(df, C.TS, torch.int64),
            group=_tensor(df, C.GROUP_IDX, torch.int8),
            fields={f: _tensor(df, f, torch.int32) for f in C.ID_FIELDS},
            hist_start=_tensor(df, C.HIST_START, torch.int64),
            hist_end=_tensor(df, C.HIST_END, torch.int64),
            labels=labels,
            prob=prob,
        )


def read_prepared(root: Path, tasks: list[str]) -> tuple[dict, Timeline, dict[str, SampleTable]]:
    """Reads meta, timeline and every split of a prepared-data directory.

    Args:
        root: the directory ``atrank-prep`` wrote.
        tasks: task names whose labels to load; each must exist in ``meta.json``.

    Returns:
        ``(meta, timeline, {split: samples})``.

    Raises:
        PrepError: naming the file or task at fault.
    """
    meta = load_meta(root)
    known = sorted(meta.get("tasks", {}))
    for task in tasks:
        if task not in known:
            raise PrepError(
                f"{root / C.META_FILE}: the data has no task {task!r} (it has {known}); "
                "choose tasks with task=[...]"
            )
    timeline = Timeline.read(root / C.TIMELINE_FILE)
    splits = {s: SampleTable.read(root / C.samples_file(s), tasks) for s in C.SPLITS}
    return meta, timeline, splits
