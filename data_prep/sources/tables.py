"""Tables of your own (parquet and CSV files) and their values as canonical ones.

What :mod:`data_prep.sources.events` reads a user's log with: the files of a path (one file,
or a folder's files of one format), each scanned lazily with the 1-based line (CSV) or row
(parquet) of every row, and a column's values as canonical ids (stripped text), unix seconds
or 0/1 labels, whatever the column's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from data_prep.sources.base import LINE, NOT_UTF8, TS_MAX, TS_MIN, AdapterError

TsUnit = Literal["s", "ms", "us"]

#: File name endings read, and their format.
SUFFIXES: dict[str, str] = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
}
PER_SECOND: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000}
_DAY = 86_400
#: ISO 8601 forms tried in turn (once a space between date and time is a ``T`` and a
#: trailing ``Z`` is ``+00:00``); ``%.f`` also reads no fraction, ``%z`` both offset forms.
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)


@dataclass(frozen=True)
class Table:
    """One file, scanned lazily.

    Attributes:
        file: the file.
        rows: its columns, plus :data:`~data_prep.sources.base.LINE` (1-based line of a CSV
            file, the header being line 1; 1-based row of a parquet file) and
            :data:`~data_prep.sources.base.NOT_UTF8` (the CSV line was not UTF-8).
        columns: the file's own columns and dtypes.
        where: what ``LINE`` counts, for messages: ``"line"`` or ``"row"``.
    """

    file: Path
    rows: pl.LazyFrame
    columns: dict[str, pl.DataType]
    where: str

    def require(self, wanted: dict[str, str]) -> None:
        """Raises naming the file and the first ``what -> column`` it lacks, listing its
        columns."""
        for what, col in wanted.items():
            if col not in self.columns:
                raise AdapterError(
                    f"{self.file}: no column {col!r} ({what}); the file's columns: "
                    f"{list(self.columns)}"
                )

    def blank(self) -> pl.Expr:
        """True on CSV lines whose every value is empty (a blank line reads as nulls)."""
        if self.where != "line":
            return pl.lit(False)
        return pl.all_horizontal(pl.col(n).is_null() for n in self.columns)


def format_of(file: Path) -> str | None:
    """The format of a file by its name (:data:`SUFFIXES`), None when it is not read."""
    name = file.name.lower()
    return next((fmt for end, fmt in SUFFIXES.items() if name.endswith(end)), None)


def table_files(path: Path, what: str) -> list[Path]:
    """The files at ``path``: the file itself, or a folder's files of one format, by name
    (names starting with ``.`` or ``_`` are not read).

    Raises:
        AdapterError: naming ``path`` when it is missing, of another format, or a folder
            without such files or with several formats.
    """
    endings = ", ".join(SUFFIXES)
    if path.is_file():
        if format_of(path) is None:
            raise AdapterError(f"{path}: {what} is not one of {endings}")
        return [path]
    if not path.is_dir():
        raise AdapterError(f"{path}: {what} file or folder not found")
    files = sorted(
        p for p in path.iterdir() if p.is_file() and format_of(p) and p.name[0] not in "._"
    )
    if not files:
        raise AdapterError(f"{path}: folder holds no {what} file ({endings})")
    formats = sorted({str(format_of(p)) for p in files})
    if len(formats) > 1:
        raise AdapterError(f"{path}: folder mixes formats {formats}: keep one format per folder")
    return files


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _is_utf8(file: Path) -> bool:
    """Whether a text file (plain or gzipped) decodes as UTF-8 (one fast polars pass)."""
    try:
        pl.scan_lines(file, name="_l").select(pl.col("_l").str.len_bytes().sum()).collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        if "utf8" in str(e).replace("-", "").lower():
            return False
        raise AdapterError(f"{file}: cannot be read as text ({_first_line(e)})") from None
    return True


def scan_table(file: Path, separator: str | None = None, has_header: bool = True) -> Table:
    """Lazily reads one parquet or CSV file (every CSV column as text: ids keep their
    leading zeros).

    Args:
        file: the file (its format by name, :func:`format_of`).
        separator: CSV field separator; None = ``,`` (``.tsv``: a tab).
        has_header: the CSV file starts with a header line (else ``column_1``, ...).

    Raises:
        AdapterError: naming the file when it is empty or cannot be read.
    """
    fmt = format_of(file)
    try:
        if fmt == "parquet":
            rows = pl.scan_parquet(file)
            columns = dict(rows.collect_schema())
            rows = rows.with_row_index(LINE, offset=1).with_columns(pl.lit(False).alias(NOT_UTF8))
            return Table(file, rows, columns, "row")
        utf8 = _is_utf8(file)
        rows = pl.scan_csv(
            file,
            separator=separator or ("\t" if fmt == "tsv" else ","),
            has_header=has_header,
            infer_schema=False,
            encoding="utf8" if utf8 else "utf8-lossy",
        )
        columns = dict(rows.collect_schema())
    except pl.exceptions.NoDataError:
        raise AdapterError(f"{file}: empty file, expected a header line") from None
    except (pl.exceptions.PolarsError, OSError) as e:
        raise AdapterError(f"{file}: cannot be read as {fmt} ({_first_line(e)})") from None
    bad = pl.lit(False)
    if not utf8:  # (the lossy decoding put U+FFFD for the invalid bytes)
        bad = pl.any_horizontal(pl.col(n).str.contains("\ufffd", literal=True) for n in columns)
    rows = rows.with_row_index(LINE, offset=2 if has_header else 1)
    return Table(file, rows.with_columns(bad.fill_null(False).alias(NOT_UTF8)), columns, "line")


def _is_text(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)


def id_text(table: Table, name: str) -> pl.Expr:
    """A column's values as stripped strings, null when empty (integral floats as integers,
    so a pandas id column with gaps reads ``7``, not ``7.0``)."""
    dtype = table.columns[name]
    if dtype.is_nested():
        raise AdapterError(f"{table.file}: column {name!r} is {dtype}, expected text or numbers")
    col = pl.col(name)
    if dtype.is_float():
        whole = col.cast(pl.Int64, strict=False).cast(pl.String)
        col = pl.when(col == col.floor()).then(whole).otherwise(col.cast(pl.String))
    s = col.cast(pl.String).str.strip_chars()
    return pl.when(s != "").then(s)


def _number(value: pl.Expr, per_second: int) -> pl.Expr:
    """Unix seconds of an integer or integral float count of ``1 / per_second`` seconds."""
    as_int = value.cast(pl.Int64, strict=False)
    as_float = value.cast(pl.Float64, strict=False)
    integral = as_float.is_finite() & (as_float == as_float.floor()) & (as_float.abs() < 2**62)
    whole = pl.when(as_int.is_not_null()).then(as_int).when(integral).then(as_float.cast(pl.Int64))
    return whole // per_second


def _parsed(text: pl.Expr, formats: tuple[str, ...]) -> pl.Expr:
    """Unix seconds of the first of ``formats`` that parses ``text`` (UTC unless an offset)."""
    tried = [text.str.to_datetime(f, strict=False, time_unit="us").dt.epoch("s") for f in formats]
    return pl.coalesce(tried)


def epoch_seconds(
    table: Table, name: str, unit: TsUnit = "s", ts_format: str | None = None
) -> tuple[pl.Expr, str]:
    """A time column as unix seconds (fractions dropped).

    Integers and integral floats count ``unit``; dates are 00:00 UTC; a naive datetime is
    UTC, one with a time zone is converted; text is ``ts_format`` (strptime) when given,
    else an integer count of ``unit`` or ISO 8601 (date, ``T`` or space, minutes, seconds,
    fraction, offset ``+08:00``/``+0800``/``Z``).

    Returns:
        Int64 expression, null where the value is missing, unreadable or outside
        ``[TS_MIN, TS_MAX)``; and what a valid value is, for messages.

    Raises:
        AdapterError: the column's dtype holds no times (e.g. a list).
    """
    dtype, col, what = table.columns[name], pl.col(name), f"unix time in {unit}"
    if dtype == pl.Date:
        ts, what = col.cast(pl.Int64) * _DAY, "a date"
    elif isinstance(dtype, pl.Datetime):
        ts, what = col.dt.epoch("s"), "a datetime"
    elif dtype.is_integer() or dtype.is_float():
        ts, what = _number(col, PER_SECOND[unit]), f"an integer {what}"
    elif _is_text(dtype):
        text = col.cast(pl.String).str.strip_chars()
        if ts_format is not None:
            ts, what = _parsed(text, (ts_format,)), f"a time in ts_format {ts_format!r}"
        else:
            iso = text.str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T")
            iso = iso.str.replace(r"[Zz]$", "+00:00")
            ts = pl.coalesce(_number(text, PER_SECOND[unit]), _parsed(iso, _ISO_FORMATS))
            what = f"an ISO 8601 time or an integer {what}"
    else:
        raise AdapterError(
            f"{table.file}: time column {name!r} is {dtype}; expected integers, floats, text, "
            "dates or datetimes"
        )
    return pl.when(ts.is_between(TS_MIN, TS_MAX, closed="left")).then(ts), what


def label_values(table: Table, name: str) -> tuple[pl.Expr, pl.Expr]:
    """A label column as 0/1.

    Booleans, the numbers 0 and 1, and the text ``0``, ``1``, ``true``, ``false`` (any case)
    are labels; null, NaN and empty text are no label.

    Returns:
        The label (Int8, null where none) and whether the value is bad (anything else).

    Raises:
        AdapterError: the column's dtype holds no labels (e.g. a date).
    """
    dtype, col = table.columns[name], pl.col(name)
    if dtype == pl.Boolean:
        return col.cast(pl.Int8), pl.lit(False)
    if dtype.is_integer() or dtype.is_float():
        given = col.is_not_null() & (~col.is_nan() if dtype.is_float() else pl.lit(True))
        ok = (col == 0) | (col == 1)
        return pl.when(given & ok).then(col.cast(pl.Int8)), given & ~ok
    if _is_text(dtype):
        text = col.cast(pl.String).str.strip_chars().str.to_lowercase()
        known = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
        value = text.replace_strict(known, default=None, return_dtype=pl.Int8)
        return value, (text != "") & value.is_null()
    raise AdapterError(
        f"{table.file}: label column {name!r} is {dtype}, expected 0/1 or true/false"
    )
