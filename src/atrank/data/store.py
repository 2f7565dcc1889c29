"""Prepared data held in memory as flat tensors: one timeline, and sample tables pointing into it.

Shape glossary: N timeline rows (all behaviours of all users), S samples of one split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from data_prep import contract as C
from data_prep.errors import PrepError
from data_prep.meta import PreparedMeta, damaged, read_meta


def _read_parquet(path: Path, meta: PreparedMeta | None = None) -> pl.DataFrame:
    """Reads one prepared file; an unreadable one is a :class:`PrepError` naming it."""
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise damaged(path.parent, path.name, meta, "missing") from None
        why = f"unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        raise damaged(path.parent, path.name, meta, why) from e


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
    def read(cls, path: Path, meta: PreparedMeta | None = None) -> Timeline:
        """Reads ``timeline.parquet``.

        Args:
            path: the file.
            meta: its directory's metadata: the row count is checked against it.

        Raises:
            PrepError: naming the file when it is unreadable or not this preparation's.
        """
        df = _read_parquet(path, meta)
        if meta is not None and df.height != meta.counts.events:
            why = f"{df.height} rows where {C.META_FILE} counts {meta.counts.events} events"
            raise damaged(path.parent, path.name, meta, why)
        return cls.from_frame(df)

    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> Timeline:
        """The timeline of a coded, sorted frame (``timeline.parquet``'s columns)."""
        return cls(
            ts=_tensor(df, C.TS, torch.int64),
            group=_tensor(df, C.GROUP_IDX, torch.int8),
            action=_tensor(df, C.ACTION_IDX, torch.int32),
            fields={f: _tensor(df, f, torch.int32) for f in C.ID_FIELDS},
        )


@dataclass(frozen=True)
class LabelSpec:
    """Where a task's labels come from, and on which rows it is trained and scored.

    Attributes:
        label: the prepared label column's task name (``label_<label>``).
        space: the task's sample space: only rows whose other labels equal these values,
            e.g. ``{"click": 1}`` scores purchase on clicked impressions only (conversion).
            Outside it the label is masked, for the loss and the metrics alike.
    """

    label: str
    space: dict[str, int] = field(default_factory=dict)

    def sources(self) -> set[str]:
        """Every label column this task reads."""
        return {self.label, *self.space}


def _specs(tasks: list[str] | dict[str, LabelSpec]) -> dict[str, LabelSpec]:
    return dict(tasks) if isinstance(tasks, dict) else {t: LabelSpec(t) for t in tasks}


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
    def read(
        cls,
        path: Path,
        tasks: list[str] | dict[str, LabelSpec],
        meta: PreparedMeta | None = None,
        n_timeline: int | None = None,
    ) -> SampleTable:
        """Reads one ``samples_<split>.parquet`` keeping the given tasks' labels.

        Args:
            path: the split's file.
            tasks: task names, or task name -> :class:`LabelSpec` (label source and space).
            meta: its directory's metadata, for messages naming the dataset.
            n_timeline: rows of the timeline it points into: every history must end there.

        Raises:
            PrepError: naming the file when it is unreadable, has no rows, lacks a task's
                label column, points past the timeline, or a task's sample space leaves it
                no row.
        """
        specs = _specs(tasks)
        df = _read_parquet(path, meta)
        last = df.get_column(C.HIST_END).max() if C.HIST_END in df.columns else None
        if n_timeline is not None and isinstance(last, int) and last > n_timeline:
            why = f"histories end at row {last} of a {n_timeline}-row timeline"
            raise damaged(path.parent, path.name, meta, why)
        if df.height == 0:
            raise PrepError(
                f"{path}: the split is empty; re-run atrank-prep with other split fractions"
            )
        sources = sorted(set().union(*(s.sources() for s in specs.values())))
        for src in sources:
            if C.label_col(src) not in df.columns:
                raise PrepError(f"{path}: no column {C.label_col(src)!r} for task {src!r}")
        raw = {
            s: torch.from_numpy(
                df.get_column(C.label_col(s)).fill_null(-1).cast(pl.Int8).to_numpy()
            )
            for s in sources
        }
        labels: dict[str, Tensor] = {}
        for task, spec in specs.items():
            keep = torch.ones_like(raw[spec.label], dtype=torch.bool)
            for dep, value in spec.space.items():
                keep &= raw[dep] == value
            labels[task] = torch.where(keep, raw[spec.label], torch.full_like(raw[spec.label], -1))
            if not bool((labels[task] >= 0).any()):
                raise PrepError(
                    f"{path}: task {task!r} has no labelled row in this split"
                    + (f" within its sample space {spec.space}" if spec.space else "")
                )
        prob = {
            task: torch.from_numpy(
                df.get_column(C.prob_col(spec.label))
                .cast(pl.Float32)
                .fill_null(float("nan"))
                .to_numpy()
            )
            for task, spec in specs.items()
            # P(label) is not the probability within a narrower sample space: no oracle there
            if C.prob_col(spec.label) in df.columns and not spec.space
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


def read_prepared(
    root: Path, tasks: list[str] | dict[str, LabelSpec]
) -> tuple[PreparedMeta, Timeline, dict[str, SampleTable]]:
    """Reads meta, timeline and every split of a prepared-data directory.

    Args:
        root: the directory ``atrank-prep`` wrote.
        tasks: task names (or name -> :class:`LabelSpec`); every label read must exist in
            ``meta.json``.

    Returns:
        ``(meta, timeline, {split: samples})``.

    Raises:
        PrepError: naming the file or task at fault; a damaged file (resized, unreadable, or
            from another preparation) also with the command that repairs it.
    """
    meta = read_meta(root)
    meta.check_files(root)  # sizes only (a stat per file); a reused cache was hashed too
    known = sorted(meta.tasks)
    for task, spec in _specs(tasks).items():
        for src in sorted(spec.sources()):
            if src not in known:
                raise PrepError(
                    f"{root / C.META_FILE}: the data has no labels {src!r} for task {task!r} "
                    f"(it has {known}); choose tasks with task=[...]"
                )
    timeline = Timeline.read(root / C.TIMELINE_FILE, meta)
    splits = {
        s: SampleTable.read(root / C.samples_file(s), tasks, meta, timeline.n_rows)
        for s in C.SPLITS
    }
    return meta, timeline, splits


def read_inverse_counts(root: Path, vocab_sizes: dict[str, int]) -> dict[str, Tensor]:
    """``1 / n_j`` for every row of each id field's table, ``n_j`` its training count.

    The counts are the vocabulary files' (``vocab/<field>.parquet``, fitted on training rows
    only). Padding (row 0) gets 0; out-of-vocabulary and any row without a count get 1, as a
    row seen once.

    Args:
        root: the prepared-data directory.
        vocab_sizes: rows of each field's table (``meta.json``); the fields read.

    Returns:
        ``field -> (V_f,)`` float32.

    Raises:
        PrepError: naming the vocabulary file when it is missing, unreadable or holds an
            index outside the table or a count below 1.
    """
    out: dict[str, Tensor] = {}
    for f, size in vocab_sizes.items():
        path = root / C.VOCAB_DIR / f"{f}.parquet"
        df = _read_parquet(path)
        for col in ("index", "count"):
            if col not in df.columns:
                raise PrepError(f"{path}: no column {col!r} (has {df.columns})")
        index = df.get_column("index").to_numpy()
        count = df.get_column("count").to_numpy()
        bad = (index <= C.OOV_INDEX) | (index >= size) | (count < 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PrepError(
                f"{path}: row {row}: index {int(index[row])}, count {int(count[row])} "
                f"(indices must be in [{C.OOV_INDEX + 1}, {size}), counts >= 1)"
            )
        inv = np.ones(size, dtype=np.float32)
        inv[C.PAD_INDEX] = 0.0
        inv[index] = 1.0 / count
        out[f] = torch.from_numpy(inv)
    return out
