"""What every source shares: the result type; what the real-data adapters share: the error
type and the row checks.

An adapter reads one original file format and maps it into the canonical tables of
:mod:`data_prep.contract`. The error policy is the same everywhere:

* **Structural problems** (a missing file or column, an unreadable file) always raise
  :class:`AdapterError` naming the file and what is missing.
* **Row-level problems** (a malformed line, an unknown behaviour code, a bad timestamp, ...)
  raise :class:`AdapterError` naming the file, the 1-based line and the problem
  (``on_error="raise"``, the default), or, with ``on_error="skip"``, drop the row and count
  it in :attr:`AdapterResult.skipped` under the problem's reason.
* Some rows are dropped by documented policy in both modes (blank lines, exact duplicate
  rows, coupon-less O2O rows): they are counted too. Nothing is dropped silently. (O2O keeps
  its exact duplicates, repeated receipts of a coupon, and counts them in a note.)
* A file none of whose lines is kept (empty, or every line skipped) is an
  :class:`AdapterError` naming the file and how many lines were skipped for which reason.

Text is UTF-8 (a leading byte-order mark is ignored). A line that is not valid UTF-8 is the
row-level problem ``bad_encoding`` (its invalid bytes shown as U+FFFD); a file that cannot be
read as text at all (a damaged compressed file) is an :class:`AdapterError` naming it.

Readers keep a line-number column (:data:`LINE`) from ``pl.scan_lines(...).with_row_index``,
so the first offending line can be named; checks are polars expressions (:class:`Check`),
evaluated in one aggregation pass per file (:func:`apply_checks`).
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from data_prep.errors import PrepError
from data_prep.schema import EVENT_SCHEMA

OnError = Literal["raise", "skip"]
ON_ERROR_VALUES: tuple[str, ...] = ("raise", "skip")

LINE = "_line"  # 1-based physical line number in the source file (UInt32)
TEXT = "_text"  # the raw line
NOT_UTF8 = "_not_utf8"  # Boolean: the line's bytes are not valid UTF-8 (shown with U+FFFD)
_PROBLEM = "_problem"
_DETAIL = "_detail"

#: Sane range for unix-second timestamps: 1990-01-01 (inclusive) to 2040-01-01 (exclusive).
#: Covers every public behaviour log (MovieLens 1997-, Amazon 1996-, Taobao 2017, O2O 2016).
TS_MIN = 631_152_000
TS_MAX = 2_208_988_800

#: Reasons that are dropped and counted even with ``on_error="raise"`` (not errors).
BLANK_LINE = "blank_line"
DUPLICATE_ROW = "duplicate_row"
POLICY_SKIPS: tuple[str, ...] = (BLANK_LINE, DUPLICATE_ROW)

_BOM = "\ufeff"
_GZIP_MAGIC = b"\x1f\x8b"


class AdapterError(PrepError):
    """A source file cannot be read as its format says; the message names file, line, problem."""


@dataclass
class AdapterResult:
    """Canonical tables read from one source (an adapter or the simulator), with what was
    skipped and why.

    Attributes:
        events: canonical events, exactly ``schema.EVENT_SCHEMA`` columns and dtypes.
        samples: canonical samples when the format has labels of its own, else None.
        skipped: rows dropped by documented policy, by reason.
        notes: facts for the preparation report.
        inputs: the files read (for the preparation fingerprint).
        details: more facts for ``meta.json``'s ``source`` (the simulator: its whole config
            and raw folder).
    """

    events: pl.LazyFrame
    samples: pl.LazyFrame | None
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One row-level rule: rows where ``bad`` is true have problem ``reason``.

    Attributes:
        reason: the key counted in ``skipped`` (e.g. ``"bad_timestamp"``).
        bad: boolean expression, true on offending rows (null counts as false).
        detail: string expression describing the offending value, for the error message.
    """

    reason: str
    bad: pl.Expr
    detail: pl.Expr


def check_on_error(on_error: str) -> None:
    """Rejects an unknown ``on_error`` value."""
    if on_error not in ON_ERROR_VALUES:
        raise AdapterError(f"on_error must be one of {list(ON_ERROR_VALUES)}, got {on_error!r}")


def require_file(path: Path, what: str) -> Path:
    """Returns ``path`` if it is a file, else raises naming ``what`` was expected there."""
    if not path.is_file():
        raise AdapterError(f"{path}: {what} not found")
    return path


def scan_text_lines(path: Path | str, fallback_encoding: str | None = None) -> pl.LazyFrame:
    """Lazily reads a text file (plain or gzipped) as lines with their 1-based numbers.

    The file is first checked to decode as UTF-8 (one fast polars pass). When it does not,
    its lines are decoded in Python: with ``fallback_encoding`` (e.g. ``"latin-1"``) the
    whole file is decoded in that encoding; otherwise the lines holding invalid bytes are
    flagged in :data:`NOT_UTF8` (see :func:`encoding_check`), their bytes replaced.

    Args:
        path: the file.
        fallback_encoding: the encoding of files that are not valid UTF-8; None = flag them.

    Returns:
        Columns :data:`LINE` (UInt32), :data:`TEXT` (String, a trailing ``\\r`` and a
        leading byte-order mark removed) and :data:`NOT_UTF8` (Boolean).

    Raises:
        AdapterError: naming the file when it cannot be read as text at all.
    """
    path = Path(path)
    source: Path | bytes = path
    bad: list[int] = []
    try:  # (validates the UTF-8 of every line: about 1 s per GB)
        pl.scan_lines(path, name=TEXT).select(pl.col(TEXT).str.len_bytes().sum()).collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        if "utf8" not in str(e).replace("-", "").lower():
            raise AdapterError(f"{path}: cannot be read as text ({_first_line(e)})") from None
        source, bad = _decode(path, _raw_bytes(path), fallback_encoding)
    lines = pl.scan_lines(source, name=TEXT).with_row_index(LINE, offset=1)
    flag = pl.col(LINE).is_in(pl.Series(bad, dtype=pl.UInt32).implode()) if bad else pl.lit(False)
    return lines.with_columns(
        pl.col(TEXT).str.strip_suffix("\r").str.strip_prefix(_BOM), flag.alias(NOT_UTF8)
    )


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _raw_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when gzipped (the error path of a non-UTF-8 file)."""
    data = path.read_bytes()
    zlibbed = len(data) > 1 and data[0] == 0x78 and data[1] in (0x01, 0x5E, 0x9C, 0xDA)
    try:  # (polars detects these the same way, from the first bytes)
        if data.startswith(_GZIP_MAGIC):
            return gzip.decompress(data)
        return zlib.decompress(data) if zlibbed else data
    except (OSError, EOFError, zlib.error) as e:
        raise AdapterError(f"{path}: cannot be decompressed ({_first_line(e)})") from None


def _decode(path: Path, data: bytes, fallback: str | None) -> tuple[bytes, list[int]]:
    """UTF-8 bytes of ``data``, and the 1-based numbers of the lines that were not UTF-8."""
    if fallback is not None:
        try:
            return data.decode(fallback).encode(), []
        except UnicodeDecodeError as e:
            raise AdapterError(f"{path}: neither UTF-8 nor {fallback} text ({e})") from None
    bad: list[int] = []
    view, pos, line, counted = memoryview(data), 0, 1, 0
    while True:  # one decode per invalid sequence: linear in the file size
        try:
            codecs.utf_8_decode(view[pos:], "strict", True)
            break
        except UnicodeDecodeError as e:
            at = pos + e.start
            line += data.count(b"\n", counted, at)
            counted, pos = at, pos + e.end
            if not bad or bad[-1] != line:
                bad.append(line)
    return data.decode("utf-8", "replace").encode(), bad


def encoding_check(reason: str = "bad_encoding", quote: bool = True) -> Check:
    """Flags lines that are not valid UTF-8 (:data:`NOT_UTF8` of :func:`scan_text_lines`).

    Args:
        reason: the reason counted.
        quote: show the line (with U+FFFD for the invalid bytes) from its :data:`TEXT`.
    """
    what = "line is not valid UTF-8"
    detail = pl.format(what + " (invalid bytes as U+FFFD): '{}'", pl.col(TEXT))
    return Check(reason, pl.col(NOT_UTF8), detail if quote else pl.lit(what))


def duplicate_check(values: list[pl.Expr]) -> Check:
    """Flags rows whose ``values`` repeat an earlier row's exactly (the first is kept).

    Args:
        values: every field the format's rows hold, as read.
    """
    return Check(
        DUPLICATE_ROW,
        ~pl.struct(values).is_first_distinct(),
        pl.lit("the same values as an earlier line"),
    )


def count_duplicates(frame: pl.LazyFrame, values: list[pl.Expr]) -> int:
    """How many rows of ``frame`` repeat an earlier row's ``values`` exactly (one pass)."""
    n = frame.select((~pl.struct(values).is_first_distinct()).sum()).collect().item()
    return int(n)


def duplicate_notes(adapter: str, skipped: Counter[str]) -> list[str]:
    """The note on exact duplicate rows dropped (none when there were none)."""
    n = skipped.get(DUPLICATE_ROW, 0)
    if not n:
        return []
    return [f"{adapter}: {n} exact duplicate row(s) dropped ({DUPLICATE_ROW}); the first is kept"]


def blank_check() -> Check:
    """Flags empty or whitespace-only lines (always dropped and counted, never an error)."""
    return Check(BLANK_LINE, pl.col(TEXT).str.strip_chars() == "", pl.lit("blank line"))


def field_count_check(fields: pl.Expr, n: int, sep: str) -> Check:
    """Flags lines that do not split into exactly ``n`` fields.

    Args:
        fields: the ``str.split_exact(sep, n)`` struct of the line (``n + 1`` fields).
        n: the expected number of fields.
        sep: the separator, for the message.
    """
    too_few = fields.struct.field(f"field_{n - 1}").is_null()
    too_many = fields.struct.field(f"field_{n}").is_not_null()
    return Check(
        "malformed_line",
        too_few | too_many,
        pl.format(f"expected {n} fields separated by {sep!r}, got line '{{}}'", pl.col(TEXT)),
    )


def parse_ts(raw: pl.Expr) -> pl.Expr:
    """Parses unix seconds from a string: integers, or integral floats such as ``"881250949.0"``.

    Returns:
        Int64 expression, null where the value is missing, not integral, or outside
        ``[TS_MIN, TS_MAX)``.
    """
    as_int = raw.cast(pl.Int64, strict=False)
    as_float = raw.cast(pl.Float64, strict=False)
    integral = as_float.is_finite() & (as_float == as_float.floor()) & (as_float.abs() < 2**53)
    whole = as_float.cast(pl.Int64, strict=False)  # (evaluated on every row, even 1e19)
    ts = pl.when(as_int.is_not_null()).then(as_int).when(integral).then(whole)
    return pl.when(ts.is_between(TS_MIN, TS_MAX, closed="left")).then(ts)


def ts_check(raw: pl.Expr, what: str = "timestamp") -> Check:
    """Flags rows whose ``raw`` value does not parse with :func:`parse_ts`."""
    return Check(
        "bad_timestamp",
        parse_ts(raw).is_null(),
        pl.format(
            f"{what} '{{}}' is not an integer unix time in [{TS_MIN}, {TS_MAX})",
            raw.fill_null("<missing>"),
        ),
    )


def missing_check(cols: dict[str, pl.Expr]) -> Check:
    """Flags rows where any of the required id values is null or empty.

    Args:
        cols: display name -> expression of each required value.
    """
    missing = {name: e.is_null() | (e.str.strip_chars() == "") for name, e in cols.items()}
    detail = pl.lit(None, pl.String)
    for name, is_missing in reversed(missing.items()):
        detail = pl.when(is_missing).then(pl.lit(f"missing {name}")).otherwise(detail)
    return Check("missing_id", pl.any_horizontal(list(missing.values())), detail)


def apply_checks(
    frame: pl.LazyFrame,
    checks: list[Check],
    file: Path,
    on_error: OnError,
    skipped: Counter[str],
    always_skip: tuple[str, ...] = POLICY_SKIPS,
    where: str = "line",
) -> pl.LazyFrame:
    """Runs the row checks over one file's rows, then raises or counts, and filters.

    Each offending row counts under the first check it fails (list order). The counting pass
    is one aggregation over the file; the returned frame repeats the (lazy) checks as a filter.

    Args:
        frame: rows of one file, with a :data:`LINE` column and whatever ``checks`` read.
        checks: the rules, in priority order.
        file: the file, named in error messages.
        on_error: ``"raise"``: the first offending line (outside ``always_skip``) raises;
            ``"skip"``: offending rows are dropped and counted.
        skipped: counter updated in place with the dropped rows by reason.
        always_skip: reasons that are dropped by policy in both modes (never raised).
        where: what :data:`LINE` numbers in messages: ``"line"`` (text files) or ``"row"``
            (the 1-based row of a parquet file, which has no lines).

    Returns:
        ``frame`` without the offending rows.

    Raises:
        AdapterError: with ``on_error="raise"``, naming the file, the line and the problem;
            in both modes when no row is left, with the counts and first line of each reason.
    """
    problem: pl.Expr = pl.lit(None, pl.String)
    detail: pl.Expr = pl.lit(None, pl.String)
    for c in reversed(checks):
        problem = pl.when(c.bad.fill_null(False)).then(pl.lit(c.reason)).otherwise(problem)
        detail = pl.when(c.bad.fill_null(False)).then(c.detail).otherwise(detail)
    flagged = frame.with_columns(problem.alias(_PROBLEM), detail.alias(_DETAIL))
    summary, total = pl.collect_all(
        [
            flagged.filter(pl.col(_PROBLEM).is_not_null())
            .group_by(_PROBLEM)
            .agg(
                pl.len().alias("n"),
                pl.col(LINE).min().alias("line"),
                pl.col(_DETAIL).sort_by(LINE).first().alias("detail"),
            )
            .sort("line"),
            frame.select(pl.len()),  # (a line count: the checks are not evaluated for it)
        ]
    )
    for reason, n, line, what in summary.iter_rows():
        if on_error == "raise" and reason not in always_skip:
            raise AdapterError(f"{file}: {where} {line}: {reason}: {what}")
        skipped[reason] += n
    if total.item() == summary["n"].sum():
        raise AdapterError(_nothing_kept(file, summary, where))
    return flagged.filter(pl.col(_PROBLEM).is_null()).drop(_PROBLEM, _DETAIL)


def _nothing_kept(file: Path, problems: pl.DataFrame, where: str = "line") -> str:
    """The message for a file none of whose lines (rows) was kept."""
    if not problems.height:
        return f"{file}: no data {where}s to read"
    total = problems["n"].sum()
    why = "; ".join(
        f"{reason}: {n} (first at {where} {line}: {what})"
        for reason, n, line, what in problems.iter_rows()
    )
    return f"{file}: no usable {where}: all {total} data {where}s were skipped ({why})"


def null_str() -> pl.Expr:
    """A null String literal (for id fields a format does not have)."""
    return pl.lit(None, pl.String)


def to_events(frame: pl.LazyFrame, **cols: pl.Expr) -> pl.LazyFrame:
    """Selects the canonical event columns, in contract order and dtypes.

    Args:
        frame: the parsed rows.
        **cols: expression per canonical column; the id fields not given are null.

    Returns:
        A frame with exactly ``schema.EVENT_SCHEMA``.
    """
    unknown = set(cols) - set(EVENT_SCHEMA)
    if unknown:
        raise ValueError(f"not event columns: {sorted(unknown)}")
    return frame.select(
        cols.get(name, null_str()).cast(dtype).alias(name) for name, dtype in EVENT_SCHEMA.items()
    )


def empty_events() -> pl.LazyFrame:
    """An empty frame with the canonical event schema."""
    return pl.LazyFrame(schema=EVENT_SCHEMA)
