"""Your own event log: parquet or CSV files whose columns are mapped in the config.

``path`` is one ``.parquet``, ``.csv``, ``.csv.gz``, ``.tsv`` or ``.tsv.gz`` file, or a folder
of them (one format per folder, read in name order; see :mod:`data_prep.sources.tables`).
CSV files are read with every column as text, with a header line unless
``has_header=False`` (columns ``column_1``, ``column_2``, ...), separated by ``,`` (``.tsv``:
a tab) unless ``separator`` says otherwise.

``columns`` maps canonical fields (:data:`COLUMN_KEYS`, the names of
:mod:`data_prep.contract`) to the file's columns: ``user_id``, ``item_id`` and ``ts`` are
required (default: columns of those names), the others optional (null: not mapped). Several
fields may read one column (``item_id`` and ``coupon_id`` from one ``object`` column, told
apart by ``group``).

* ``action``: the behaviour, renamed through ``actions`` (raw value -> action, e.g.
  ``{pv: click, buy: purchase}``) when given. Not mapped: every row is ``default_action``.
* ``group``: ``item`` or ``coupon`` (``contract.GROUPS``); not mapped: every row is ``item``.
  A row's fields outside its group (``contract.GROUP_FIELDS``) are null; a coupon row's
  identity is ``coupon_id`` (its ``item_id`` is not required).
* ``ts``: numbers count ``ts_unit`` (``s``, ``ms``, ``us``); dates, datetimes (naive: UTC;
  with a time zone: converted); text in ``ts_format`` (strptime) or, without it, an integer
  count of ``ts_unit`` or ISO 8601 (:func:`~data_prep.sources.tables.epoch_seconds`).

Labelled impressions: ``impressions`` (a file or folder in the same formats, read with the
same ``columns``; ``action`` is not read) and ``labels`` (task -> its column of 0/1,
true/false or empty labels) give samples with ``label_<task>``, for the ``global_time``
protocol. Without them the log is positive-only (``next_item``, tasks from ``dataset.tasks``).
Optional fields an impressions file lacks are null in its samples, with a note.

Policy (see :mod:`data_prep.sources.base`):

* structural, :class:`AdapterError`: a missing file, a folder without such files or with
  several formats, an empty or unreadable file, a mapped column the file lacks (naming file
  and column, listing the file's columns), an unknown key in ``columns`` (listing the valid
  ones), ``labels`` without ``impressions`` or the reverse;
* row-level, raised naming the file and the 1-based ``line`` (CSV: the header is line 1; a
  quoted value spanning lines counts once) or ``row`` (parquet), or with ``on_error="skip"``
  counted: ``bad_encoding`` (CSV text not UTF-8), ``missing_id`` (no user; an item row
  without ``item_id``, a coupon row without ``coupon_id``), ``bad_timestamp`` (unreadable,
  or outside 1990-2039: :data:`~data_prep.sources.base.TS_MIN`), ``unknown_group``,
  ``missing_action``, ``unknown_action`` (a value ``actions`` does not map), ``bad_label``
  (a label other than 0, 1, true, false or empty);
* CSV lines whose every value is empty (``blank_line``) and rows repeating an earlier row
  of the same file exactly (``duplicate_row``, over the columns read) are dropped and
  counted in both modes, with a note. Counts from impressions files are
  ``impressions_<reason>``.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from data_prep import contract as c
from data_prep.schema import SAMPLE_BASE_SCHEMA
from data_prep.sources.base import (
    BLANK_LINE,
    AdapterError,
    AdapterResult,
    Check,
    OnError,
    apply_checks,
    check_on_error,
    duplicate_check,
    duplicate_notes,
    encoding_check,
    missing_check,
    null_str,
    to_events,
)
from data_prep.sources.tables import (
    PER_SECOND,
    Table,
    TsUnit,
    epoch_seconds,
    id_text,
    label_values,
    scan_table,
    table_files,
)

#: The canonical fields ``columns`` maps to the file's columns; the first three are required.
COLUMN_KEYS: tuple[str, ...] = (
    c.USER,
    c.ITEM,
    c.TS,
    c.ACTION,
    c.GROUP,
    c.CATEGORY,
    c.BRAND,
    c.SHOP,
    c.COUPON,
    c.DISCOUNT,
)
REQUIRED: tuple[str, ...] = (c.USER, c.ITEM, c.TS)
_V = "__"  # prefix of the canonical values computed from a file's columns


@dataclass(frozen=True)
class LogFormat:
    """How a user's files are read: the reader's options, checked (:func:`log_format`).

    Attributes:
        columns: canonical field -> the file's column (:func:`column_map`).
        actions: raw action value -> action, or None (the values as they are).
        default_action: the action of every row without an action column.
        ts_unit: unit of numeric times.
        ts_format: strptime format of text times, or None.
        separator: CSV field separator, or None (by the file name).
        has_header: CSV files start with a header line.
    """

    columns: dict[str, str]
    actions: dict[str, str] | None = None
    default_action: str = "click"
    ts_unit: TsUnit = "s"
    ts_format: str | None = None
    separator: str | None = None
    has_header: bool = True

    def scan(self, file: Path) -> Table:
        """One file of the log, scanned lazily."""
        return scan_table(file, self.separator, self.has_header)


def column_map(columns: Mapping[str, str | None] | None) -> dict[str, str]:
    """Canonical field -> the file's column, the required fields defaulting to their names.

    Raises:
        AdapterError: an unknown key (naming it, listing the valid keys), a value that is
            not a column name, or a required field mapped to null.
    """
    given = {str(k): v for k, v in (columns or {}).items()}
    for key in given:
        if key not in COLUMN_KEYS:
            close = difflib.get_close_matches(key, COLUMN_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise AdapterError(
                f"columns.{key}: unknown key{hint}; valid keys: {', '.join(COLUMN_KEYS)}"
            )
    merged: dict[str, str | None] = {**{k: k for k in REQUIRED}, **given}
    for key, v in merged.items():
        if v is not None and (not isinstance(v, str) or not v):
            raise AdapterError(f"columns.{key}: expected a column name or null, got {v!r}")
        if v is None and key in REQUIRED:
            raise AdapterError(f"columns.{key}: required (the file's column of {key})")
    return {k: v for k, v in merged.items() if v is not None}


def _canonical(
    table: Table, cmap: dict[str, str], ts_unit: TsUnit, ts_format: str | None
) -> tuple[pl.LazyFrame, list[Check]]:
    """The file's rows with the canonical user, time, group and id values (``__<field>``;
    null for the fields not mapped), and the checks of those values in priority order."""
    ts, what = epoch_seconds(table, cmap[c.TS], ts_unit, ts_format)
    group = id_text(table, cmap[c.GROUP]) if c.GROUP in cmap else pl.lit("item")
    ids = {f: id_text(table, cmap[f]) if f in cmap else null_str() for f in c.ID_FIELDS}
    rows = table.rows.with_columns(
        id_text(table, cmap[c.USER]).alias(_V + c.USER),
        ts.alias(_V + c.TS),
        group.alias(_V + c.GROUP),
        *(v.alias(_V + f) for f, v in ids.items()),
    )
    g = pl.col(_V + c.GROUP)
    key_missing, key = pl.lit(False), pl.lit(None, pl.String)
    for name, fields in c.GROUP_FIELDS.items():  # (the first field is the object's identity)
        key_missing = (
            pl.when(g == name).then(pl.col(_V + fields[0]).is_null()).otherwise(key_missing)
        )
        key = pl.when(g == name).then(pl.lit(fields[0])).otherwise(key)
    raw_ts = pl.col(cmap[c.TS]).cast(pl.String).fill_null("<missing>")
    groups = ", ".join(c.GROUPS)
    checks = [
        encoding_check(quote=False),
        Check(BLANK_LINE, table.blank(), pl.lit("blank line")),
        missing_check({c.USER: pl.col(_V + c.USER)}),
        Check(
            "bad_timestamp",
            pl.col(_V + c.TS).is_null(),
            pl.format(f"ts '{{}}' (column {cmap[c.TS]!r}) is not {what} in 1990-2039", raw_ts),
        ),
        Check(
            "unknown_group",
            g.is_null() | ~g.is_in(list(c.GROUPS)),
            pl.format(f"group '{{}}' is not one of {groups}", g.fill_null("<missing>")),
        ),
        Check("missing_id", key_missing, pl.format("missing {} on a {} row", key, g)),
    ]
    return rows, checks


def _fields() -> dict[str, pl.Expr]:
    """Each canonical id field, null outside the groups that carry it."""
    g = pl.col(_V + c.GROUP)
    out: dict[str, pl.Expr] = {}
    for f in c.ID_FIELDS:
        groups = [name for name, fields in c.GROUP_FIELDS.items() if f in fields]
        out[f] = pl.when(g.is_in(groups)).then(pl.col(_V + f))
    return out


def _action(
    table: Table, cmap: dict[str, str], actions: dict[str, str] | None, default: str
) -> tuple[pl.Expr, list[Check]]:
    """The canonical action of each row, and its checks."""
    if c.ACTION not in cmap:
        return pl.lit(default), []
    col = cmap[c.ACTION]
    raw = id_text(table, col)
    checks = [Check("missing_action", raw.is_null(), pl.lit(f"missing action (column {col!r})"))]
    if actions is None:
        return raw, checks
    known = sorted(actions)
    shown = pl.format(f"action '{{}}' (column {col!r}) is not one of {known} (actions)", raw)
    checks.append(Check("unknown_action", ~raw.is_in(known), shown))
    return raw.replace_strict(actions, default=None, return_dtype=pl.String), checks


def _events_file(
    table: Table, fmt: LogFormat, on_error: OnError, skipped: Counter[str]
) -> pl.LazyFrame:
    """One file's canonical events."""
    cmap = fmt.columns
    table.require({f"columns.{k}": v for k, v in cmap.items()})
    rows, checks = _canonical(table, cmap, fmt.ts_unit, fmt.ts_format)
    action, action_checks = _action(table, cmap, fmt.actions, fmt.default_action)
    rows = rows.with_columns(action.alias(_V + c.ACTION))
    checks += [*action_checks, duplicate_check([pl.col(n) for n in sorted(set(cmap.values()))])]
    kept = apply_checks(rows, checks, table.file, on_error, skipped, where=table.where)
    return to_events(
        kept,
        user_id=pl.col(_V + c.USER),
        ts=pl.col(_V + c.TS),
        group=pl.col(_V + c.GROUP),
        action=pl.col(_V + c.ACTION),
        **_fields(),
    )


def _impressions_file(
    table: Table,
    fmt: LogFormat,
    labels: dict[str, str],
    on_error: OnError,
    skipped: Counter[str],
    notes: list[str],
) -> pl.LazyFrame:
    """One impressions file's canonical samples, with ``label_<task>``."""
    required = {f"columns.{k}": v for k, v in fmt.columns.items() if k in (*REQUIRED, c.GROUP)}
    table.require({**required, **{f"labels.{t}": col for t, col in labels.items()}})
    read = {k: v for k, v in fmt.columns.items() if k != c.ACTION and v in table.columns}
    lacking = sorted(set(fmt.columns) - set(read) - {c.ACTION})
    if lacking:
        notes.append(f"events: {table.file.name} has no column for {lacking}: null in its samples")
    rows, checks = _canonical(table, read, fmt.ts_unit, fmt.ts_format)
    values: dict[str, pl.Expr] = {}
    for task, col in labels.items():
        values[task], bad = label_values(table, col)
        what = f"label '{{}}' of task {task} (column {col!r}) is not 0, 1, true, false or empty"
        checks.append(Check("bad_label", bad, pl.format(what, pl.col(col).cast(pl.String))))
    checks.append(duplicate_check([pl.col(n) for n in sorted({*read.values(), *labels.values()})]))
    kept = apply_checks(rows, checks, table.file, on_error, skipped, where=table.where)
    base = {c.USER: pl.col(_V + c.USER), c.TS: pl.col(_V + c.TS), c.GROUP: pl.col(_V + c.GROUP)}
    base.update(_fields())
    return kept.select(
        *(base[name].cast(dtype).alias(name) for name, dtype in SAMPLE_BASE_SCHEMA.items()),
        *(v.alias(c.label_col(task)) for task, v in values.items()),
    )


def log_format(
    columns: Mapping[str, str | None] | None,
    actions: Mapping[str, str] | None = None,
    default_action: str = "click",
    ts_unit: TsUnit = "s",
    ts_format: str | None = None,
    separator: str | None = None,
    has_header: bool = True,
) -> LogFormat:
    """Checks the reader's options (see :func:`read_events`).

    Raises:
        AdapterError: naming the option (``columns.<key>``, ``actions.<value>``, ...).
    """
    cmap = column_map(columns)
    if not isinstance(default_action, str) or not default_action:
        raise AdapterError(f"default_action: expected an action name, got {default_action!r}")
    if ts_unit not in PER_SECOND:
        raise AdapterError(f"ts_unit: must be one of {list(PER_SECOND)}, got {ts_unit!r}")
    if separator is not None and len(separator) != 1:
        raise AdapterError(f"separator: expected one character, got {separator!r}")
    action_map = None
    if actions is not None:
        if c.ACTION not in cmap:
            raise AdapterError(
                "actions: renames the values of the action column, but columns.action is not "
                f"mapped (every row is default_action {default_action!r})"
            )
        action_map = {str(k): v for k, v in actions.items()}
        for raw, name in action_map.items():
            if not isinstance(name, str) or not name:
                raise AdapterError(f"actions.{raw}: expected an action name, got {name!r}")
    return LogFormat(cmap, action_map, default_action, ts_unit, ts_format, separator, has_header)


def _label_map(labels: Mapping[str, str] | None, impressions: Path | None) -> dict[str, str]:
    """Task -> label column, checked against ``impressions`` (both or neither)."""
    if (labels is None) != (impressions is None):
        given, other = (
            ("labels", "impressions") if impressions is None else ("impressions", "labels")
        )
        raise AdapterError(
            f"{given}: given without {other}; labelled impressions need both (impressions: "
            "their file or folder, labels: {task: column of 0/1 labels})"
        )
    out = {str(k): v for k, v in (labels or {}).items()}
    if labels is not None and not out:
        raise AdapterError("labels: expected {task: column}, got no task")
    for task, col in out.items():
        if not task or not isinstance(col, str) or not col:
            raise AdapterError(f"labels.{task}: expected a column name, got {col!r}")
    return out


def read_events(
    path: Path,
    *,
    columns: Mapping[str, str | None] | None = None,
    actions: Mapping[str, str] | None = None,
    default_action: str = "click",
    ts_unit: TsUnit = "s",
    ts_format: str | None = None,
    impressions: Path | None = None,
    labels: Mapping[str, str] | None = None,
    separator: str | None = None,
    has_header: bool = True,
    on_error: OnError = "raise",
) -> AdapterResult:
    """Reads an event log of your own (parquet or CSV) into canonical events (and samples).

    Args:
        path: one file or a folder of files (see the module docstring for the formats).
        columns: canonical field (:data:`COLUMN_KEYS`) -> the file's column; ``user_id``,
            ``item_id`` and ``ts`` default to columns of those names; null = not mapped.
        actions: raw action value -> action name (values it does not map are
            ``unknown_action``); None = the values as they are.
        default_action: the action of every row when ``columns.action`` is not mapped.
        ts_unit: unit of numeric times: ``s``, ``ms`` or ``us``.
        ts_format: strptime format of text times; None = numbers or ISO 8601.
        impressions: file or folder of labelled impressions (the samples), or None.
        labels: task -> the impressions' column of its 0/1 labels (with ``impressions``).
        separator: CSV field separator; None = ``,`` (``.tsv``: a tab).
        has_header: CSV files start with a header line (else columns ``column_1``, ...).
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` and count it.

    Returns:
        Events; samples with ``label_<task>`` when ``impressions`` are given, else None.

    Raises:
        AdapterError: structural problems, or a bad row with ``on_error="raise"``.
    """
    check_on_error(on_error)
    fmt = log_format(columns, actions, default_action, ts_unit, ts_format, separator, has_header)
    label_map = _label_map(labels, impressions)
    files = table_files(Path(path), "event log")
    skipped: Counter[str] = Counter()
    events = pl.concat([_events_file(fmt.scan(f), fmt, on_error, skipped) for f in files])
    mapped = ", ".join(f"{k} <- {v!r}" for k, v in fmt.columns.items())
    notes = [f"events: columns {mapped}", *duplicate_notes("events", skipped)]
    if c.ACTION not in fmt.columns:
        notes.append(f"events: no action column: every event is {fmt.default_action!r}")
    if impressions is None:
        notes.append("events: no impressions: a positive-only log")
        return AdapterResult(events, None, dict(skipped), notes, files)
    shown = [f"{t} <- {col!r}" for t, col in label_map.items()]
    notes.append(f"events: labelled impressions, labels {', '.join(shown)}")
    imp_files = table_files(Path(impressions), "impressions")
    imp: Counter[str] = Counter()
    samples = [
        _impressions_file(fmt.scan(f), fmt, label_map, on_error, imp, notes) for f in imp_files
    ]
    notes += [
        n.replace("events:", "events: impressions:", 1) for n in duplicate_notes("events", imp)
    ]
    skipped.update({f"impressions_{k}": n for k, n in imp.items()})
    return AdapterResult(events, pl.concat(samples), dict(skipped), notes, [*files, *imp_files])
