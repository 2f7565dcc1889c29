"""Validation of the two canonical tables (see ``contract.py``) and their compact form.

Three layers of checks, cheapest first:

1. schema (no data read): required columns present, dtypes castable;
2. hard row checks (:func:`row_check_exprs`): values that cannot be trusted at all, such as
   a label ``2`` or a ``ts`` that does not parse, fail the run with the first offending row;
3. skip-and-count rules (:func:`drop_rules`): rows that are well-formed but unusable (null
   user, unknown group, ...) are dropped and counted by reason in the report.

The single scan of each table (:func:`compact_query`) casts every id column to a polars
Categorical: each string is hashed once, and all later work (counts, vocabularies, coding)
runs on its integer codes. Those codes are arbitrary and never persisted: every written
index is derived from the strings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError

EVENTS = "events"
SAMPLES = "samples"
ROW = "__row"  # row position in the input table, used only in error messages

#: Columns that must cast to String; all but ``group`` become Categorical in the scan.
_ID_COLUMNS_EVENTS = (c.USER, c.GROUP, c.ACTION, *c.ID_FIELDS)
_ID_COLUMNS_SAMPLES = (c.USER, c.GROUP, *c.ID_FIELDS)
UNKNOWN_GROUP = -1  # group_idx of a null or unknown group in the compact tables


def categorical_columns(name: str) -> tuple[str, ...]:
    """Id columns of a table that the scan turns into Categorical."""
    ids = _ID_COLUMNS_EVENTS if name == EVENTS else _ID_COLUMNS_SAMPLES
    return tuple(col for col in ids if col != c.GROUP)


@dataclass(frozen=True)
class TableInfo:
    """What the schema of one input table told us.

    Attributes:
        name: ``"events"`` or ``"samples"``.
        schema: input column -> dtype.
        tasks: task names (samples only), in column order.
        prob_tasks: tasks that also have a ``prob_<task>`` column.
        ignored: input columns that are not part of the contract (dropped).
        has_split: the samples carry ``contract.SPLIT_COL`` (``leave_last_out`` split).
    """

    name: str
    schema: dict[str, pl.DataType]
    tasks: tuple[str, ...] = ()
    prob_tasks: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    has_split: bool = False


@dataclass(frozen=True)
class RowCheck:
    """A hard per-row check: any row where ``bad`` is true fails the run.

    Attributes:
        column: the input column checked.
        rule: what the value must satisfy, for the message.
        bad: boolean expression over the *input* columns.
    """

    column: str
    rule: str
    bad: pl.Expr


def read_schema(lf: pl.LazyFrame, name: str) -> dict[str, pl.DataType]:
    """Resolves a table's schema, turning read failures into a :class:`PrepError`.

    Args:
        lf: the input table.
        name: table name for messages.

    Returns:
        Column name -> dtype.
    """
    try:
        return dict(lf.collect_schema())
    except (pl.exceptions.PolarsError, OSError) as e:
        raise PrepError(f"{name}: cannot read the table: {e}") from e


def inspect_table(lf: pl.LazyFrame, name: str, given_split: bool = False) -> TableInfo:
    """Checks a table's columns and dtypes against the contract (reads no data).

    Args:
        lf: the ``events`` or ``samples`` table.
        name: ``"events"`` or ``"samples"``.
        given_split: (samples) require and read ``contract.SPLIT_COL`` (``leave_last_out``).

    Returns:
        The table's :class:`TableInfo`.
    """
    schema = read_schema(lf, name)
    required = c.EVENT_DTYPES if name == EVENTS else c.SAMPLE_BASE_DTYPES
    for col in required:
        if col not in schema:
            raise PrepError(
                f"{name}: required column {col!r} is missing (columns: {sorted(schema)})"
            )
    tasks: list[str] = []
    probs: list[str] = []
    if name == SAMPLES:
        tasks = c.tasks_in(list(schema))
        if not tasks:
            raise PrepError(
                f"samples: no label column: at least one '{c.LABEL_PREFIX}<task>' column "
                "is required"
            )
        if "" in tasks:
            raise PrepError(f"samples: column {c.LABEL_PREFIX!r} has an empty task name")
        probs = [t for t in tasks if c.prob_col(t) in schema]
    known = set(required) | {c.label_col(t) for t in tasks} | {c.prob_col(t) for t in probs}
    has_split = name == SAMPLES and given_split
    if has_split:
        if c.SPLIT_COL not in schema:
            raise PrepError(
                f"samples: the leave_last_out split needs column {c.SPLIT_COL!r} "
                f"(0 train, 1 val, 2 test); columns: {sorted(schema)}"
            )
        if not (schema[c.SPLIT_COL].is_integer() or schema[c.SPLIT_COL] == pl.String):
            raise _dtype_error(name, c.SPLIT_COL, schema[c.SPLIT_COL], "an integer 0/1/2")
        known.add(c.SPLIT_COL)
    ignored = tuple(col for col in schema if col not in known)
    info = TableInfo(name, schema, tuple(tasks), tuple(probs), ignored, has_split)
    _check_dtypes(info)
    return info


def _dtype_error(table: str, col: str, dtype: pl.DataType, expected: str) -> PrepError:
    return PrepError(f"{table}: column {col!r} has dtype {dtype}, expected {expected}")


def _check_dtypes(info: TableInfo) -> None:
    """Rejects dtypes that no cast can turn into the contract's dtype."""
    ids = _ID_COLUMNS_EVENTS if info.name == EVENTS else _ID_COLUMNS_SAMPLES
    for col in ids:
        dt = info.schema[col]
        if dt.is_nested() or dt in (pl.Binary, pl.Object):
            raise _dtype_error(info.name, col, dt, "String (or a type castable to it)")
    dt = info.schema[c.TS]
    if not (dt.is_integer() or dt.is_float() or dt == pl.String or dt == pl.Null):
        raise _dtype_error(info.name, c.TS, dt, "Int64 unix seconds (integer or numeric string)")
    for t in info.tasks:
        dt = info.schema[c.label_col(t)]
        if not (dt.is_numeric() or dt in (pl.Boolean, pl.String, pl.Null)):
            raise _dtype_error(info.name, c.label_col(t), dt, "Int8 0/1/null")
    for t in info.prob_tasks:
        dt = info.schema[c.prob_col(t)]
        if not (dt.is_numeric() or dt == pl.Null):
            raise _dtype_error(info.name, c.prob_col(t), dt, "Float64 in [0, 1] or null")


def _ts_expr() -> pl.Expr:
    # Through Float64 would lose precision; non-strict Int64 cast parses strings and
    # truncates floats, which the matching row check rejects.
    return pl.col(c.TS).cast(pl.Int64, strict=False)


def _label_expr(col: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_integer() or dtype == pl.Boolean:
        return pl.col(col).cast(pl.Int8, strict=False)
    return pl.col(col).cast(pl.Float64, strict=False).cast(pl.Int8, strict=False)


def row_check_exprs(info: TableInfo) -> list[RowCheck]:
    """Hard per-row checks on a table's input columns.

    Args:
        info: the table's schema info.

    Returns:
        One :class:`RowCheck` per checked column.
    """
    checks: list[RowCheck] = []
    ts = pl.col(c.TS)
    if info.schema[c.TS] != pl.Int64:
        # A value that the cast turns into null, or changes, is not a unix second.
        as_int = _ts_expr()
        lost = as_int.is_null()
        if info.schema[c.TS].is_float():
            lost = lost | (as_int.cast(pl.Float64) != ts)  # fractional or NaN seconds
        checks.append(RowCheck(c.TS, "must be an integer (unix seconds)", ts.is_not_null() & lost))
    for t in info.tasks:
        col = c.label_col(t)
        if info.schema[col] == pl.Boolean:
            continue  # always 0/1
        # Via Float64 so that 0.5, NaN, 2 and unparsable strings are all caught.
        v = pl.col(col).cast(pl.Float64, strict=False)
        bad = pl.col(col).is_not_null() & ~v.is_in([0.0, 1.0]).fill_null(False)
        checks.append(RowCheck(col, "labels must be 0, 1 or null", bad))
    for t in info.prob_tasks:
        col = c.prob_col(t)
        p = pl.col(col).cast(pl.Float64)
        bad = p.is_not_null() & ~((p >= 0.0) & (p <= 1.0)).fill_null(False)
        checks.append(RowCheck(col, "probabilities must be in [0, 1] or null", bad))
    if info.has_split:
        split = pl.col(c.SPLIT_COL).cast(pl.Int64, strict=False)
        bad = ~split.is_in([0, 1, 2]).fill_null(False)
        checks.append(RowCheck(c.SPLIT_COL, "split must be 0 (train), 1 (val) or 2 (test)", bad))
    return checks


def compact_query(
    lf: pl.LazyFrame, info: TableInfo, cats: dict[str, pl.Categories]
) -> pl.LazyFrame:
    """The one scan of a table: contract dtypes, Categorical ids, check flags.

    Args:
        lf: the input table.
        info: the table's schema info.
        cats: id column -> the run's Categories (shared by events and samples, so equal
            strings get equal codes in both).

    Returns:
        ``[ROW,] ts`` (Int64), ``group_idx`` (Int8, :data:`UNKNOWN_GROUP` for a null or
        unknown group), the id columns (Categorical, not yet masked by group), labels
        (Int8), probabilities (Float64) and one ``__bad<i>`` flag per hard row check. The
        row index is added only when there are checks (it is only used in messages).
    """
    checks = row_check_exprs(info)
    exprs: list[pl.Expr] = [_ts_expr(), group_code()]
    exprs += [
        pl.col(col).cast(pl.String).cast(pl.Categorical(cats[col]))
        for col in categorical_columns(info.name)
    ]
    for t in info.tasks:
        col = c.label_col(t)
        exprs.append(_label_expr(col, info.schema[col]).alias(col))
    exprs += [pl.col(c.prob_col(t)).cast(pl.Float64) for t in info.prob_tasks]
    if info.has_split:
        exprs.append(pl.col(c.SPLIT_COL).cast(pl.Int8, strict=False))
    exprs += flag_exprs(checks)
    if checks:
        return lf.with_row_index(ROW).select(pl.col(ROW), *exprs)
    return lf.select(exprs)


def group_code() -> pl.Expr:
    """``group`` -> ``group_idx`` (Int8 position in ``contract.GROUPS``; -1 if unknown/null)."""
    g = pl.col(c.GROUP).cast(pl.String)
    expr: pl.Expr = pl.lit(UNKNOWN_GROUP, pl.Int8)
    for i, name in reversed(list(enumerate(c.GROUPS))):
        expr = pl.when(g == name).then(pl.lit(i, pl.Int8)).otherwise(expr)
    return expr.alias(c.GROUP_IDX)


def drop_rules(info: TableInfo) -> list[tuple[str, pl.Expr]]:
    """Skip-and-count rules on a compact table, in priority order.

    A dropped row is counted under the first rule it breaks, so the counts add up to the
    number of dropped rows.

    Args:
        info: the table's schema info.

    Returns:
        ``(reason, bad)`` pairs; ``bad`` is true on rows to drop.
    """
    group = pl.col(c.GROUP_IDX)
    rules = [
        ("null_user_id", pl.col(c.USER).is_null()),
        ("null_ts", pl.col(c.TS).is_null()),
        ("unknown_group", group == UNKNOWN_GROUP),
    ]
    if info.name == EVENTS:
        rules.append(("null_action", pl.col(c.ACTION).is_null()))
    for i, (g, fields) in enumerate(c.GROUP_FIELDS.items()):
        rules.append((f"{g}_without_{fields[0]}", (group == i) & pl.col(fields[0]).is_null()))
    if info.name == SAMPLES:
        no_label = pl.all_horizontal([pl.col(c.label_col(t)).is_null() for t in info.tasks])
        rules.append(("no_label", no_label))
    return rules


def keep_expr(rules: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """True on rows that break none of ``rules``."""
    return ~pl.any_horizontal([bad for _, bad in rules])


def drop_count_exprs(rules: list[tuple[str, pl.Expr]], prefix: str) -> list[pl.Expr]:
    """Aggregations counting dropped rows by their first broken rule.

    Args:
        rules: from :func:`drop_rules`.
        prefix: output column prefix.

    Returns:
        One ``<prefix><reason>`` count (Int64) per rule.
    """
    exprs = []
    earlier: pl.Expr = pl.lit(False)
    for reason, bad in rules:
        exprs.append((bad & ~earlier).sum().cast(pl.Int64).alias(prefix + reason))
        earlier = earlier | bad
    return exprs


def group_has(field: str) -> pl.Expr:
    """True on rows whose group carries ``field`` (contract.GROUP_FIELDS)."""
    groups = [i for i, g in enumerate(c.GROUPS) if field in c.GROUP_FIELDS[g]]
    return pl.col(c.GROUP_IDX).is_in(groups)


def masked_count_exprs(keep: pl.Expr, prefix: str) -> list[pl.Expr]:
    """Counts, per field, kept rows whose value is nulled because their group lacks it.

    Args:
        keep: the kept-row predicate.
        prefix: output column prefix.

    Returns:
        One ``<prefix><field>`` count (Int64) per id field.
    """
    return [
        (keep & pl.col(f).is_not_null() & ~group_has(f)).sum().cast(pl.Int64).alias(prefix + f)
        for f in c.ID_FIELDS
    ]


def flag_exprs(checks: list[RowCheck]) -> list[pl.Expr]:
    """One boolean ``__bad<i>`` column per check, computed on the *input* columns.

    Args:
        checks: from :func:`row_check_exprs`.

    Returns:
        Expressions for the scan's ``select`` (they read the input columns).
    """
    return [chk.bad.alias(f"__bad{i}") for i, chk in enumerate(checks)]


def first_bad_row_exprs(checks: list[RowCheck], prefix: str) -> list[pl.Expr]:
    """Aggregations giving, per check, the first row (by :data:`ROW`) that fails it.

    Args:
        checks: from :func:`row_check_exprs`; their :func:`flag_exprs` columns must exist.
        prefix: output column prefix.

    Returns:
        One ``<prefix><i>`` expression per check (null when no row fails).
    """
    return [
        pl.col(ROW).filter(pl.col(f"__bad{i}")).min().cast(pl.Int64).alias(f"{prefix}{i}")
        for i in range(len(checks))
    ]


def raise_bad_row(lf: pl.LazyFrame, info: TableInfo, check: RowCheck, row: int) -> None:
    """Raises the :class:`PrepError` for a failed hard check, quoting the offending row.

    Args:
        lf: the raw input table (re-read only for this one row).
        info: the table's schema info.
        check: the failed check.
        row: the first offending row position.
    """
    cols = list(dict.fromkeys([check.column, c.USER, c.TS]))
    hit = lf.with_row_index(ROW).filter(pl.col(ROW) == row).select(cols).collect()
    vals = hit.row(0, named=True) if hit.height else dict.fromkeys(cols)
    raise PrepError(
        f"{info.name}: column {check.column!r}: {check.rule}; first offending row {row} "
        f"({c.USER}={vals[c.USER]!r}, {c.TS}={vals[c.TS]!r}) has value {vals[check.column]!r}"
    )
