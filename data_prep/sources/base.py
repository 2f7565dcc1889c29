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
* Some rows are dropped by documented policy in both modes (blank lines, coupon-less O2O
  rows): they are counted too. Nothing is dropped silently.

Readers keep a line-number column (:data:`LINE`) from ``pl.scan_lines(...).with_row_index``,
so the first offending line can be named; checks are polars expressions (:class:`Check`),
evaluated in one aggregation pass per file (:func:`apply_checks`).
"""

from __future__ import annotations

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
_PROBLEM = "_problem"
_DETAIL = "_detail"

#: Sane range for unix-second timestamps: 1990-01-01 (inclusive) to 2040-01-01 (exclusive).
#: Covers every public behaviour log (MovieLens 1997-, Amazon 1996-, Taobao 2017, O2O 2016).
TS_MIN = 631_152_000
TS_MAX = 2_208_988_800

#: Reasons that are dropped and counted even with ``on_error="raise"`` (not errors).
BLANK_LINE = "blank_line"


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


def scan_text_lines(path: Path) -> pl.LazyFrame:
    """Lazily reads a text file (plain or gzipped) as lines with their 1-based numbers.

    Returns:
        Columns :data:`LINE` (UInt32) and :data:`TEXT` (String, a trailing ``\\r`` removed).
    """
    return (
        pl.scan_lines(path, name=TEXT)
        .with_row_index(LINE, offset=1)
        .with_columns(pl.col(TEXT).str.strip_suffix("\r"))
    )


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
    ts = pl.when(as_int.is_not_null()).then(as_int).when(integral).then(as_float.cast(pl.Int64))
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
    always_skip: tuple[str, ...] = (BLANK_LINE,),
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

    Returns:
        ``frame`` without the offending rows.

    Raises:
        AdapterError: with ``on_error="raise"``, naming the file, the line and the problem.
    """
    problem: pl.Expr = pl.lit(None, pl.String)
    detail: pl.Expr = pl.lit(None, pl.String)
    for c in reversed(checks):
        problem = pl.when(c.bad.fill_null(False)).then(pl.lit(c.reason)).otherwise(problem)
        detail = pl.when(c.bad.fill_null(False)).then(c.detail).otherwise(detail)
    flagged = frame.with_columns(problem.alias(_PROBLEM), detail.alias(_DETAIL))
    summary = (
        flagged.filter(pl.col(_PROBLEM).is_not_null())
        .group_by(_PROBLEM)
        .agg(
            pl.len().alias("n"),
            pl.col(LINE).min().alias("line"),
            pl.col(_DETAIL).sort_by(LINE).first().alias("detail"),
        )
        .sort("line")
        .collect()
    )
    for reason, n, line, what in summary.iter_rows():
        if on_error == "raise" and reason not in always_skip:
            raise AdapterError(f"{file}: line {line}: {reason}: {what}")
        skipped[reason] += n
    return flagged.filter(pl.col(_PROBLEM).is_null()).drop(_PROBLEM, _DETAIL)


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
