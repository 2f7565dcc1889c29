"""Batch scoring through Lightning's predict loop: chunks in, one output part per chunk.

:class:`~atrank.serve.chunks.RequestChunks` streams and featurizes the requests,
:class:`ScoringModule` scores each chunk (encode once per request, every candidate against
it) and ranks it (:class:`Ranking`), and :class:`PartWriter` writes each scored chunk at once
as ``part-<rank>-<chunk>.parquet`` (or ``.csv``), so nothing accumulates in memory. Each rank
writes ``summary-<rank>.json`` with its counts; :func:`finish` (rank 0, after every rank is
done) merges them into ``summary.json`` and ``_SUCCESS`` and, for a single-file output of one
process, concatenates the parts (streamed) into that file.

Output layout: ``out`` ending in ``.parquet``/``.csv`` with one process is that file, with
``<stem>.summary.json`` next to it; otherwise ``out`` is a folder of parts (``.csv`` parts if
``out`` ends in ``.csv``, else parquet) holding ``summary.json`` and ``_SUCCESS``. Ordered by
chunk number (the second number of the name) the parts are the rows in input order; an
empty chunk (one request longer than ``chunk_rows`` fills it) writes no part.

The summary counts requests, candidates, unscorable candidates by reason, OOV candidates and
the events read/kept/dropped by reason; the event counts are summed over chunks (a user
whose requests fall in two chunks has their events read, and counted, twice).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import polars as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from atrank.serve.chunks import NO_CHUNK, Chunk, RequestChunks, Source
from atrank.serve.features import POSITION, REQUEST_ID, REQUEST_IDX, Featurizer
from atrank.serve.predictor import SCORE_PREFIX, Predictor

BLEND = "blend"
RANK = "rank"
SUMMARY_FILE = "summary.json"
SUCCESS_FILE = "_SUCCESS"


@dataclass(frozen=True)
class Ranking:
    """Blending and top-K selection within each request.

    ``p_blend`` is ``sum_t w_t p_t / sum_t w_t`` over the blend's tasks that score the
    candidate (null when none does). With ``rank_by``, the candidates with a score for it get
    ``rank`` 1, 2, ... (best first, ties in input order) and each request's rows are ordered
    by rank; with ``top_k`` only ranks up to ``k`` are kept. Unscorable candidates are always
    kept, after the ranked ones, with a null rank (and so are candidates that ``rank_by``
    does not score, e.g. coupons under ``click``, unless ``top_k`` is set).

    Attributes:
        top_k: rows kept per request (None: all).
        rank_by: a task name or ``blend`` (None: input order, no rank).
        blend: ``task -> weight`` (empty: no ``p_blend``).
    """

    top_k: int | None = None
    rank_by: str | None = None
    blend: dict[str, float] = field(default_factory=dict)

    def check(self, tasks: list[str]) -> list[tuple[str, str]]:
        """The problems of this ranking with a bundle of ``tasks``: ``(config key, why)``."""
        errors = [
            (f"blend.{t}", f"the bundle has no task {t!r} (tasks: {tasks})")
            for t in self.blend
            if t not in tasks
        ]
        known = [*tasks, BLEND] if self.blend else tasks
        if self.rank_by is not None and self.rank_by not in known:
            errors.append(("rank_by", f"{self.rank_by!r} is none of {known}"))
        return errors

    def __call__(self, table: pl.DataFrame, key: str) -> pl.DataFrame:
        """Adds ``p_blend`` and ``rank`` to a chunk's table and keeps the top K of each request."""
        if self.blend:
            table = table.with_columns(_blend(self.blend))
        if self.rank_by is None:
            return table
        score = pl.col(f"{SCORE_PREFIX}{self.rank_by}")
        rank = score.rank("ordinal", descending=True).over(key).cast(pl.Int32)
        table = table.with_row_index("__row").with_columns(
            pl.when(score.is_not_null()).then(rank).alias(RANK),
            pl.col("__row").min().over(key).alias("__first"),  # requests keep their order
        )
        if self.top_k is not None:
            table = table.filter((pl.col(RANK) <= self.top_k) | ~pl.col("scorable"))
        return table.sort(["__first", RANK, POSITION], nulls_last=True).drop("__row", "__first")


def _blend(weights: dict[str, float]) -> pl.Expr:
    p = {t: pl.col(f"{SCORE_PREFIX}{t}") for t in weights}
    num = pl.sum_horizontal(w * p[t].fill_null(0.0) for t, w in weights.items())
    den = pl.sum_horizontal(w * p[t].is_not_null().cast(pl.Float64) for t, w in weights.items())
    return pl.when(den > 0).then(num / den).alias(f"{SCORE_PREFIX}{BLEND}")


@dataclass
class Scored:
    """A chunk's scored table (None for an empty chunk) and its counts."""

    index: int
    table: pl.DataFrame | None
    stats: dict[str, Any]


class ScoringModule(L.LightningModule):
    """The predict loop's module: a chunk's features in, its scored (ranked) table out.

    Args:
        predictor: holds the model and the task -> group map.
        ranking: applied to each chunk's table.
    """

    def __init__(self, predictor: Predictor, ranking: Ranking) -> None:
        super().__init__()
        self.predictor = predictor
        self.model = predictor.model  # registered, so Lightning moves it to the device
        self.ranking = ranking

    def on_predict_start(self) -> None:
        self.predictor.device = self.device

    def predict_step(self, chunk: Chunk) -> Scored:
        f = chunk.features
        if f is None:
            counts = {} if chunk.index == NO_CHUNK else {"chunks": 1, "chunks_empty": 1}
            return Scored(chunk.index, None, counts)
        table = self.predictor.table(f, self.predictor.logits(f))
        key = REQUEST_ID if REQUEST_ID in table.columns else REQUEST_IDX
        return Scored(chunk.index, self.ranking(table, key), {**f.stats, "chunks": 1})


class PartWriter(BasePredictionWriter):
    """Writes each scored chunk as one part at once and this rank's counts at the end.

    Args:
        out: the output path (its layout is known once the trainer tells the world size:
            :func:`output_layout`).
    """

    def __init__(self, out: Path) -> None:
        super().__init__(write_interval="batch")
        self.out = out
        self.folder, self.fmt, self.single = output_layout(out, 1)
        self.totals: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder, self.fmt, self.single = output_layout(self.out, trainer.world_size)
        if trainer.is_global_zero:  # stale parts of an earlier run would join this one's
            self.folder.mkdir(parents=True, exist_ok=True)
            for p in [*self.folder.glob("part-*"), *self.folder.glob("summary-*.json")]:
                p.unlink()
            for name in (SUMMARY_FILE, SUCCESS_FILE):
                (self.folder / name).unlink(missing_ok=True)
        trainer.strategy.barrier("atrank-predict-setup")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert isinstance(prediction, Scored)
        rows = 0
        if prediction.table is not None and prediction.table.height:
            path = self.folder / f"part-{trainer.global_rank:05d}-{prediction.index:06d}.{self.fmt}"
            if self.fmt == "csv":
                prediction.table.write_csv(path)
            else:
                prediction.table.write_parquet(path)
            rows = prediction.table.height
        stats = {**prediction.stats, "rows_written": rows, "parts": int(rows > 0)}
        self.totals = add_counts(self.totals, stats)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # (not on_predict_end: the loop skips it on a rank without chunks, whose peers would
        # then wait at the barrier forever)
        path = self.folder / f"summary-{trainer.global_rank:05d}.json"
        path.write_text(json.dumps(self.totals, indent=1, sort_keys=True))
        trainer.strategy.barrier("atrank-predict-end")  # every rank's parts and counts are written


def add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sums two nested ``name -> count`` dicts (counts by reason are dicts)."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = add_counts(out.get(k, {}), v)
        else:
            out[k] = out.get(k, 0) + v
    return out


class ChunkData(L.LightningDataModule):
    """The predict loader of this rank's chunks (the trainer tells the rank and world size).

    Args:
        requests: the requests' files.
        events: the events, a lazy table.
        featurizer: the bundle's featurizer.
        chunk_rows: request rows per chunk.
    """

    def __init__(
        self, requests: Source, events: pl.LazyFrame, featurizer: Featurizer, chunk_rows: int
    ) -> None:
        super().__init__()
        self.requests, self.events = requests, events
        self.featurizer, self.chunk_rows = featurizer, chunk_rows

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # the features move in predict_step; the candidates' table stays here

    def predict_dataloader(self) -> DataLoader[Chunk]:
        rank, world = self.trainer.global_rank, self.trainer.world_size  # type: ignore[union-attr]
        chunks = RequestChunks(
            self.requests, self.events, self.featurizer, self.chunk_rows, rank, world
        )
        return DataLoader(chunks, batch_size=None, collate_fn=_as_is)


def _as_is(chunk: Any) -> Any:
    return chunk  # (batch_size=None: one chunk per step, no collation)


def output_layout(out: Path, world: int) -> tuple[Path, str, Path | None]:
    """``(parts folder, part format, single output file or None)`` of an ``out`` path."""
    fmt = "csv" if out.suffix == ".csv" else "parquet"
    if out.suffix in (".parquet", ".csv") and world == 1:
        return out.with_name(out.name + ".parts"), fmt, out
    return out, fmt, None


_COUNTS = ("requests", "candidates", "unscorable", "chunks", "parts", "rows_written")


def finish(folder: Path, fmt: str, single: Path | None, seconds: float) -> dict[str, Any]:
    """Merges the ranks' counts and, for a single-file output, concatenates the parts.

    Call on rank 0 once every rank is done (the writer's end-of-predict barrier).

    Returns:
        The summary (also written as JSON, see the module docstring).
    """
    summary: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
    ranks = sorted(folder.glob("summary-*.json"))
    for p in ranks:
        summary = add_counts(summary, json.loads(p.read_text()))
    summary["ranks"], summary["seconds"] = len(ranks), round(seconds, 3)
    summary["candidates_per_second"] = round(summary.get("candidates", 0) / max(seconds, 1e-9))
    parts = sorted(folder.glob(f"part-*.{fmt}"))
    if single is not None:
        _concat(parts, single, fmt)
        shutil.rmtree(folder)
        summary["out"] = str(single)
        (single.with_suffix(".summary.json")).write_text(json.dumps(summary, indent=1))
        return summary
    for p in ranks:
        p.unlink()
    summary["out"] = str(folder)
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    (folder / SUCCESS_FILE).write_text("")
    return summary


def _concat(parts: list[Path], out: Path, fmt: str) -> None:
    """The parts, in name order (= input order with one process), as one file, streamed."""
    out.unlink(missing_ok=True)
    if not parts:
        (pl.DataFrame().write_csv if fmt == "csv" else pl.DataFrame().write_parquet)(out)
    elif fmt == "parquet":
        pl.scan_parquet(parts).sink_parquet(out)
    else:  # byte copy: re-parsing the CSV could change the columns' types
        with out.open("wb") as dst:
            for i, part in enumerate(parts):
                with part.open("rb") as src:
                    header = src.readline()
                    if i == 0:
                        dst.write(header)
                    shutil.copyfileobj(src, dst)


#: Lightning's warnings that do not apply here: the chunks are counted exactly, and a
#: chunk's rows are numbered by the chunk itself.
_EXPECTED_WARNINGS = (
    "Your `IterableDataset` has `__len__` defined",
    "Couldn't infer the batch indices",
)


def run_predict(
    trainer: L.Trainer,
    writer: PartWriter,
    predictor: Predictor,
    requests: Source,
    events: pl.LazyFrame,
    chunk_rows: int,
    ranking: Ranking,
) -> dict[str, Any] | None:
    """Scores every request chunk on this process's share and writes the output.

    Args:
        trainer: the predict loop's trainer, with ``writer`` among its callbacks.
        writer: writes the parts of ``out``.
        predictor: the bundle's predictor.
        requests: the requests' files.
        events: the events, a lazy table (:func:`atrank.serve.chunks.events_table`).
        chunk_rows: request rows per chunk.
        ranking: blend and top-K selection.

    Returns:
        The merged summary on rank 0, None on the other ranks.
    """
    start = time.perf_counter()
    data = ChunkData(requests, events, predictor.featurizer, chunk_rows)
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.predict(
            ScoringModule(predictor, ranking), datamodule=data, return_predictions=False
        )
    if not trainer.is_global_zero:
        return None
    return finish(writer.folder, writer.fmt, writer.single, time.perf_counter() - start)
