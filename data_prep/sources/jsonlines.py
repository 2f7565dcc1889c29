"""Robust JSON-lines reading with line numbers, for the Amazon dumps.

Fast path: every line is decoded by polars (``str.json_decode`` into a struct of the wanted
fields) in one lazy query that keeps only those fields. Only when that fails (a line that is
not JSON, or a field of an unexpected type) are the lines decoded one by one in Python, to
name the bad line. Lines that start with ``{'`` are Python literals (the old Amazon metadata
dumps are written with ``str(dict)``): with ``python_literals=True`` they are read with
``ast.literal_eval`` (never ``eval``), line by line, as they can never be JSON.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import polars as pl

from data_prep.sources.base import LINE, NOT_UTF8, TEXT, scan_text_lines

BAD = "_bad"  # why a line could not be read (String), null when it could
BLANK = "_blank"  # Boolean: the line is empty

#: The dtype of a list of category paths (Amazon ``categories``).
NESTED_STRINGS = pl.List(pl.List(pl.String))


def _conform(value: Any, dtype: pl.DataType) -> tuple[Any, bool]:
    """``value`` as ``dtype`` (String or List(List(String))); False when it does not fit."""
    if value is None:
        return None, True
    if dtype == pl.String():
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        return (str(value) if ok else None), ok
    nested = isinstance(value, list) and all(isinstance(p, list) for p in value)
    if nested and all(isinstance(x, str) for p in value for x in p):
        return value, True
    return None, False


def _parse_one(text: str, literal: bool) -> tuple[dict[str, Any] | None, str | None]:
    try:
        obj = ast.literal_eval(text) if literal else json.loads(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        if literal and not isinstance(e, SyntaxError):
            return None, "not a plain Python literal (names, calls or operators are not read)"
        kind = "Python literal" if literal else "JSON"
        return None, f"not valid {kind}: {str(e).splitlines()[0][:80]}"
    if not isinstance(obj, dict):
        return None, f"expected an object, got {type(obj).__name__}"
    return obj, None


def _slow(lines: pl.DataFrame, fields: dict[str, pl.DataType], literal: bool) -> pl.DataFrame:
    """Decodes lines one by one (error path and Python-literal lines only)."""
    cols: dict[str, list[Any]] = {name: [] for name in fields}
    bad: list[str | None] = []
    for text in lines[TEXT]:
        obj, why = _parse_one(text, literal)
        values = {}
        for name, dtype in fields.items():
            value, ok = _conform(obj.get(name) if obj else None, dtype)
            if not ok and why is None:
                why = f"field {name!r} is not of type {dtype}"
            values[name] = value
        for name in fields:
            cols[name].append(values[name] if why is None else None)
        bad.append(why)
    return pl.DataFrame(
        {LINE: lines[LINE], NOT_UTF8: lines[NOT_UTF8], **cols, BAD: bad},
        schema={LINE: lines.schema[LINE], NOT_UTF8: pl.Boolean(), **fields, BAD: pl.String()},
    )


def read_json_lines(
    path: Path, fields: dict[str, pl.DataType], python_literals: bool = False
) -> pl.DataFrame:
    """Reads the wanted fields of a JSON-lines file (plain or gzipped), line by line.

    Args:
        path: the file.
        fields: field name -> dtype (``pl.String`` or ``pl.List(pl.List(pl.String))``);
            numbers in String fields are kept as their text; absent fields are null.
        python_literals: also read lines written as Python literals (``{'asin': ...}``).

    Returns:
        One row per line, in file order: :data:`LINE`, :data:`NOT_UTF8` (see
        :func:`~data_prep.sources.base.scan_text_lines`), the fields, :data:`BLANK` and
        :data:`BAD` (why the line is unreadable, else null).
    """
    stripped = pl.col(TEXT).str.strip_chars()
    lines = scan_text_lines(path).with_columns(
        (stripped == "").alias(BLANK),
        (stripped.str.starts_with("{'") & pl.lit(python_literals)).alias("_literal"),
    )
    body = lines.filter(~pl.col(BLANK) & ~pl.col("_literal"))
    try:
        parsed = (
            body.select(LINE, NOT_UTF8, pl.col(TEXT).str.json_decode(pl.Struct(fields)).alias("_s"))
            .unnest("_s")
            .with_columns(pl.lit(None, pl.String).alias(BAD))
            .collect()
        )
    except pl.exceptions.PolarsError:  # (a ShapeError on some unfinished objects)
        parsed = _slow(body.select(LINE, NOT_UTF8, TEXT).collect(), fields, literal=False)
    parts = [parsed]
    literal_lines = lines.filter(pl.col("_literal")).select(LINE, NOT_UTF8, TEXT).collect()
    if literal_lines.height:
        parts.append(_slow(literal_lines, fields, literal=True))
    blank = lines.filter(pl.col(BLANK)).select(LINE, NOT_UTF8).collect()
    out = pl.concat(parts, how="vertical").with_columns(pl.lit(False).alias(BLANK))
    blank_rows = blank.with_columns(
        *(pl.lit(None, dtype).alias(name) for name, dtype in fields.items()),
        pl.lit(None, pl.String).alias(BAD),
        pl.lit(True).alias(BLANK),
    ).select(out.columns)
    return pl.concat([out, blank_rows], how="vertical").sort(LINE)
