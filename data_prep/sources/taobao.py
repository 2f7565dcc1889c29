"""Taobao UserBehavior: ``user,item,category,behavior,timestamp`` CSV without header.

Format (Alibaba's original ``UserBehavior.csv``, and excerpts of it): one behaviour per line,
five comma-separated fields, no header, no quoting. ``path`` is one file or a folder whose
``*.csv`` / ``*.csv.gz`` files are all read (sorted by name).

Mapping: group ``item``; behaviours ``pv``, ``cart``, ``fav``, ``buy`` become actions
``click``, ``cart``, ``fav``, ``purchase``; ``item_id``, ``category_id`` as given; no brand,
shop or coupon. ``ts`` = the unix seconds of the line.

Policy (see :mod:`data_prep.sources.base`):

* structural: a missing file, or a folder without CSV files -> :class:`AdapterError`;
* row-level, each counted under its reason with ``on_error="skip"``, else raised with the
  file and line: ``malformed_line`` (not exactly five fields), ``missing_id`` (empty user
  or item), ``unknown_behavior`` (not one of the four codes), ``bad_timestamp`` (not an
  integer, or outside ``[ts_min, ts_max)``; default: 1990-01-01 to 2040-01-01, see
  :data:`~data_prep.sources.base.TS_MIN`). The full public log has a few events outside its
  nine days (Nov 25 to Dec 3, 2017) that still pass this range: narrow it with ``ts_min``/
  ``ts_max`` to drop them (counted as ``bad_timestamp`` with ``on_error="skip"``).
* ``bad_encoding`` (a line that is not valid UTF-8), raised or counted like the above;
* blank lines (``blank_line``) and exact duplicate lines (``duplicate_row``: the same five
  values as an earlier line of the same file; the full log repeats a few events) are dropped
  and counted in both modes, with a note for the duplicates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from data_prep.sources.base import (
    TEXT,
    TS_MAX,
    TS_MIN,
    AdapterError,
    AdapterResult,
    Check,
    OnError,
    apply_checks,
    blank_check,
    check_on_error,
    duplicate_check,
    duplicate_notes,
    encoding_check,
    field_count_check,
    missing_check,
    parse_ts,
    scan_text_lines,
    to_events,
)

BEHAVIOR_ACTIONS: dict[str, str] = {"pv": "click", "cart": "cart", "fav": "fav", "buy": "purchase"}
_FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts_raw")


DEFAULT_PATTERNS = ("*.csv", "*.csv.gz")


def taobao_files(path: Path, patterns: list[str] | None = None) -> list[Path]:
    """The CSV files at ``path``: the file itself, or a folder's files matching ``patterns``
    (default ``*.csv`` and ``*.csv.gz``), by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise AdapterError(f"{path}: Taobao UserBehavior file or folder not found")
    wanted = list(patterns or DEFAULT_PATTERNS)
    files = sorted({f for p in wanted for f in path.glob(p) if f.is_file()})
    if not files:
        raise AdapterError(f"{path}: folder holds no file matching {wanted}")
    return files


def _read_file(
    file: Path, on_error: OnError, ts_min: int, ts_max: int, skipped: Counter[str]
) -> pl.LazyFrame:
    parts = pl.col(TEXT).str.split_exact(",", len(_FIELDS))
    rows = scan_text_lines(file).with_columns(
        parts.struct.field(f"field_{i}").str.strip_chars().alias(name)
        for i, name in enumerate(_FIELDS)
    )
    ts = parse_ts(pl.col("ts_raw"))
    known = ", ".join(BEHAVIOR_ACTIONS)
    checks = [
        encoding_check(),
        blank_check(),
        field_count_check(parts, len(_FIELDS), ","),
        missing_check({"user_id": pl.col("user_id"), "item_id": pl.col("item_id")}),
        Check(
            "unknown_behavior",
            ~pl.col("behavior").is_in(list(BEHAVIOR_ACTIONS)),
            pl.format(f"behavior '{{}}' is not one of {known}", pl.col("behavior")),
        ),
        Check(
            "bad_timestamp",
            ts.is_null() | ~ts.is_between(ts_min, ts_max, closed="left"),
            pl.format(
                f"timestamp '{{}}' is not an integer unix time in [{ts_min}, {ts_max})",
                pl.col("ts_raw"),
            ),
        ),
        duplicate_check([pl.col(name) for name in _FIELDS]),
    ]
    kept = apply_checks(rows, checks, file, on_error, skipped)
    return to_events(
        kept,
        user_id=pl.col("user_id"),
        ts=ts,
        group=pl.lit("item"),
        action=pl.col("behavior").replace_strict(BEHAVIOR_ACTIONS, return_dtype=pl.String),
        item_id=pl.col("item_id"),
        category_id=pl.when(pl.col("category_id") != "").then(pl.col("category_id")),
    )


def read_taobao(
    path: Path,
    *,
    on_error: OnError = "raise",
    ts_min: int = TS_MIN,
    ts_max: int = TS_MAX,
    files: list[str] | None = None,
) -> AdapterResult:
    """Reads Taobao UserBehavior CSV(s) into canonical events.

    Args:
        path: one CSV (plain or ``.gz``) or a folder of them.
        files: in a folder, the file name patterns to read (e.g. ``["users_*.csv"]``);
            None = every ``*.csv`` and ``*.csv.gz``.
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` and count it.
        ts_min: smallest accepted unix time (inclusive).
        ts_max: largest accepted unix time (exclusive).

    Returns:
        Events (group ``item``); no samples.

    Raises:
        AdapterError: structural problems, or a bad row with ``on_error="raise"``.
    """
    check_on_error(on_error)
    paths = taobao_files(Path(path), files)
    skipped: Counter[str] = Counter()
    frames = [_read_file(f, on_error, ts_min, ts_max, skipped) for f in paths]
    notes = [
        "taobao: behaviours pv/cart/fav/buy -> actions click/cart/fav/purchase; "
        "no brand or shop in this format",
        *duplicate_notes("taobao", skipped),
    ]
    return AdapterResult(
        events=pl.concat(frames, how="vertical"),
        samples=None,
        skipped=dict(skipped),
        notes=notes,
        inputs=paths,
    )
