"""Streaming the inputs of batch scoring: request chunks that never split a request.

The requests are read in order, ``chunk_rows`` rows at a time (polars' streaming engine,
:meth:`polars.LazyFrame.collect_batches`: the file is never loaded whole). Slice ``i`` holds
rows ``[i * chunk_rows, (i + 1) * chunk_rows)``; its last request may continue in the next
slice, so it is carried over: chunk ``i`` is the carried rows plus slice ``i`` without its
trailing request (the last chunk keeps everything). So there are exactly
``ceil(rows / chunk_rows)`` chunks (a chunk is empty when one request fills its whole slice)
and a request lies in exactly one chunk. The rows of one request must be consecutive (a
request is a run of equal keys: ``request_id``, else ``(user_id, ts)``); a request whose rows
are apart within one chunk is an error.

Each chunk reads the events of just its users from a lazy scan (the ``user_id`` filter is
pushed into the parquet reader). CSV events are converted once to a temporary parquet file so
that this read stays a pushdown scan instead of a CSV parse per chunk.

With several processes every rank reads the request stream (reading is cheap next to scoring)
and featurizes only its chunks: ``i % world == rank``.
"""

from __future__ import annotations

import glob
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from torch.utils.data import IterableDataset

from atrank.serve.features import REQUEST_ID, REQUEST_IDX, Features, Featurizer
from data_prep import contract as C
from data_prep.errors import PrepError

FORMATS = {".parquet": "parquet", ".csv": "csv"}
NO_CHUNK = -1  # the index of the placeholder step of a rank without chunks
REQUIRED = {"events": (C.USER, C.TS, C.GROUP, C.ACTION), "requests": (C.USER, C.TS)}


@dataclass(frozen=True)
class Source:
    """One input table: its files (read in this order) and their format.

    Attributes:
        name: ``events`` or ``requests``, for messages.
        files: the files, in reading order.
        fmt: ``parquet`` or ``csv``.
    """

    name: str
    files: tuple[Path, ...]
    fmt: str

    def __str__(self) -> str:
        first = str(self.files[0])
        return first if len(self.files) == 1 else f"{first} (+{len(self.files) - 1} files)"

    def scan(self) -> pl.LazyFrame:
        """The lazy table; CSV columns are all read as strings, ``ts`` as Int64."""
        files = [str(f) for f in self.files]
        if self.fmt == "parquet":
            return pl.scan_parquet(files)
        lf = pl.scan_csv(files, infer_schema=False)
        return lf.with_columns(pl.col(C.TS).cast(pl.Int64, strict=False))

    def schema(self) -> dict[str, pl.DataType]:
        """Column -> dtype, read from the files' headers.

        Raises:
            PrepError: naming the file that cannot be read, or the first required column
                it lacks.
        """
        try:
            schema = dict(self.scan().collect_schema())
        except (pl.exceptions.PolarsError, OSError) as e:
            raise PrepError(f"{self.name} {self}: cannot read the table: {e}") from None
        for col in REQUIRED[self.name]:
            if col not in schema:
                raise PrepError(
                    f"{self.name} {self}: required column {col!r} is missing "
                    f"(columns: {sorted(schema)})"
                )
        return schema

    def n_rows(self) -> int:
        """The number of rows (parquet metadata; a fast line count for CSV)."""
        try:
            return int(self.scan().select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError) as e:
            raise PrepError(f"{self.name} {self}: cannot read the table: {e}") from None


def find_source(path: str | Path, name: str) -> Source:
    """The files of an input: a file, a folder of ``*.parquet`` or ``*.csv`` files, or a glob.

    Args:
        path: where the table is.
        name: ``events`` or ``requests``.

    Raises:
        PrepError: naming the path when no file is found, or the format is not known.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in FORMATS and f.is_file())
    elif glob.has_magic(str(path)):
        files = sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise PrepError(f"{name}: no such file, or no .parquet/.csv file in it: {path}")
    fmts = {f.suffix for f in files}
    if len(fmts) > 1 or not fmts <= set(FORMATS):
        raise PrepError(f"{name} {path}: expected .parquet or .csv files, got {sorted(fmts)}")
    return Source(name, tuple(files), FORMATS[fmts.pop()])


def events_table(source: Source, tmp_dir: Path) -> pl.LazyFrame:
    """The events as a lazy parquet scan of the contract columns they have.

    CSV events are written once to ``tmp_dir`` (streamed) so that each chunk's read of its
    users' events is a pushdown scan rather than a parse of the whole CSV.
    """
    schema = source.schema()
    cols = [c for c in C.EVENT_DTYPES if c in schema]
    lf = source.scan().select(cols)
    if source.fmt == "csv":
        path = Path(tempfile.mkdtemp(dir=tmp_dir)) / "events.parquet"
        try:
            lf.sink_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise PrepError(f"events {source}: cannot read the table: {e}") from None
        lf = pl.scan_parquet(path)
    if schema[C.USER] != pl.String:
        lf = lf.with_columns(pl.col(C.USER).cast(pl.String))
    return lf


@dataclass
class Chunk:
    """One chunk of requests, featurized (``features`` is None for an empty chunk).

    Attributes:
        index: the chunk's number in the whole input (``NO_CHUNK``: a placeholder).
        first_row: the input row of its first candidate.
        features: the model inputs and the candidates' table.
    """

    index: int
    first_row: int
    features: Features | None


def _key(schema: dict[str, pl.DataType]) -> list[str]:
    return [REQUEST_ID] if REQUEST_ID in schema else [C.USER, C.TS]


def _run_starts(frame: pl.DataFrame, key: list[str]) -> np.ndarray:
    """Row numbers where a new request (run of equal keys) starts."""
    new = pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in key)
    first = pl.int_range(pl.len()) == 0
    return np.flatnonzero(frame.select(new | first).to_series().to_numpy())


class RequestChunks(IterableDataset[Chunk]):
    """This rank's chunks of the requests, featurized (see the module docstring).

    Args:
        requests: the requests' files.
        events: the events, a lazy table (:func:`events_table`).
        featurizer: codes a chunk with the bundle's vocabularies.
        chunk_rows: request rows per slice.
        rank: this process's rank.
        world: the number of processes.
    """

    def __init__(
        self,
        requests: Source,
        events: pl.LazyFrame,
        featurizer: Featurizer,
        chunk_rows: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.requests = requests
        self.events = events
        self.featurizer = featurizer
        self.chunk_rows = chunk_rows
        self.rank, self.world = rank, world
        self.key = _key(requests.schema())
        self.n_chunks = -(-requests.n_rows() // chunk_rows)

    def __len__(self) -> int:
        # at least one step: Lightning refuses a rank without batches when others have some
        return max(1, len(range(self.rank, self.n_chunks, self.world)))

    def slices(self) -> Iterator[pl.DataFrame]:
        """The request rows, exactly ``chunk_rows`` at a time (the last slice may be short)."""
        pending: list[pl.DataFrame] = []
        held = 0
        try:
            for batch in self.requests.scan().collect_batches(chunk_size=self.chunk_rows):
                pending.append(batch)
                held += batch.height
                while held >= self.chunk_rows:
                    whole = pl.concat(pending, rechunk=False)
                    yield whole.head(self.chunk_rows)
                    pending, held = [whole.slice(self.chunk_rows)], held - self.chunk_rows
        except (pl.exceptions.PolarsError, OSError) as e:
            raise PrepError(f"requests {self.requests}: cannot read the table: {e}") from None
        if held:
            yield pl.concat(pending)

    def chunks(self) -> Iterator[tuple[int, int, int, pl.DataFrame]]:
        """Every chunk's ``(index, first input row, first request number, rows)``."""
        carry = pl.DataFrame()
        first_row = first_request = 0
        for i, part in enumerate(self.slices()):
            rows = pl.concat([carry, part]) if carry.height else part
            starts = _run_starts(rows, self.key)
            last = i == self.n_chunks - 1
            cut = rows.height if last else int(starts[-1])
            chunk, carry = rows.head(cut), rows.slice(cut)
            yield i, first_row, first_request, chunk
            first_row += cut
            first_request += int((starts < cut).sum())

    def __iter__(self) -> Iterator[Chunk]:
        for i, first_row, first_request, rows in self.chunks():
            if i % self.world != self.rank:
                continue
            if rows.height == 0:
                yield Chunk(i, first_row, None)
                continue
            self._check_rows(rows, first_row)
            yield Chunk(i, first_row, self._features(rows, first_row, first_request))
        if self.rank >= self.n_chunks:
            yield Chunk(NO_CHUNK, 0, None)  # (see __len__)

    def _features(self, rows: pl.DataFrame, first_row: int, first_request: int) -> Features:
        users = rows.get_column(C.USER).cast(pl.String).unique().drop_nulls()
        try:
            events = self.events.filter(pl.col(C.USER).is_in(users.implode())).collect()
        except (pl.exceptions.PolarsError, OSError) as e:
            raise PrepError(f"events: cannot read the table: {e}") from None
        try:
            features = self.featurizer(events, rows)
        except ValueError as e:  # the featurizer's messages name the column
            where = f"rows {first_row}..{first_row + rows.height - 1}"
            raise PrepError(f"requests {self.requests} ({where}): {e}") from None
        if REQUEST_IDX in features.candidates.columns:  # number the requests over the input
            numbered = pl.col(REQUEST_IDX) + first_request
            features.candidates = features.candidates.with_columns(numbered)
        return features

    def _check_rows(self, rows: pl.DataFrame, first_row: int) -> None:
        """Refuses a request whose rows are apart (it would be scored as two). (A row without
        a user or a time is written unscored, flagged by the featurizer.)"""
        starts = _run_starts(rows, self.key)
        keys = rows.select(self.key)
        if len(starts) == keys.n_unique():
            return
        run = np.zeros(rows.height, dtype=np.int64)
        run[starts] = 1
        again = keys.with_columns(
            pl.Series("__run", np.cumsum(run)), pl.int_range(pl.len()).alias("__row")
        ).filter(pl.col("__run") != pl.col("__run").first().over(self.key))
        first = again.row(0, named=True)
        key = {k: first[k] for k in self.key}
        raise PrepError(
            f"requests {self.requests}: row {first_row + first['__row']}: the rows of request "
            f"{key} are not consecutive; sort the requests so that each request's rows are "
            "together"
        )
