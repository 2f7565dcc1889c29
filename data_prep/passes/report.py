"""Statistics for ``report.json`` (data quality) and the ``counts``/``tasks`` of ``meta.json``.

Every function here aggregates with polars expressions over coded data; none loops over rows.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from data_prep import contract as c
from data_prep.meta import TaskInfo
from data_prep.passes.split import SPLIT, Cut, TimeCut, period_expr, user_bounds, with_bounds
from data_prep.passes.validate import TableInfo

_PERIOD = "__period"
_OOV = "__oov"
#: ``target_oov`` warns when positives and negatives of a split differ by more than this.
OOV_GAP_WARN = 0.05
#: ... and both have at least this many rows (smaller splits are too noisy to warn about).
OOV_GAP_MIN_ROWS = 20


def table_report(
    stats: dict[str, Any], prefix: str, reasons: list[str], info: TableInfo
) -> dict[str, Any]:
    """Rows read/kept/dropped (by reason) for one input table.

    Args:
        stats: the stage-one aggregation row.
        prefix: the table's prefix in ``stats``.
        reasons: drop reasons in priority order.
        info: the table's schema info.

    Returns:
        The table's section of ``report.json``.
    """
    dropped = {r: int(stats[f"{prefix}drop_{r}"]) for r in reasons}
    return {
        "rows_read": int(stats[f"{prefix}rows"]),
        "rows_kept": int(stats[f"{prefix}rows"]) - sum(dropped.values()),
        "rows_dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        # Kept rows whose value for a field their group does not carry was set to null.
        "values_nulled_outside_group": {f: int(stats[f"{prefix}masked_{f}"]) for f in c.ID_FIELDS},
        "ignored_columns": list(info.ignored),
    }


def split_counts(samples: pl.DataFrame, tasks: tuple[str, ...]) -> dict[str, Any]:
    """Rows, labelled rows and positives per split and task.

    Args:
        samples: coded samples with the split column.
        tasks: task names.

    Returns:
        ``{split: {"rows": n, "tasks": {task: {"labelled": n, "positives": n}}}}``.
    """
    aggs = [pl.len().alias("rows")]
    for t in tasks:
        lab = pl.col(c.label_col(t))
        aggs += [lab.is_not_null().sum().alias(f"l_{t}"), (lab == 1).sum().alias(f"p_{t}")]
    by_split = {r[SPLIT]: r for r in samples.group_by(SPLIT).agg(aggs).iter_rows(named=True)}
    out: dict[str, Any] = {}
    for i, split in enumerate(c.SPLITS):
        r = by_split.get(i, {})
        out[split] = {
            "rows": int(r.get("rows", 0)),
            "tasks": {
                t: {"labelled": int(r.get(f"l_{t}", 0)), "positives": int(r.get(f"p_{t}", 0))}
                for t in tasks
            },
        }
    return out


def task_meta(samples: pl.DataFrame, info: TableInfo) -> dict[str, TaskInfo]:
    """The ``tasks`` section of ``meta.json``.

    Args:
        samples: coded samples (all splits).
        info: the samples table's schema info.

    Returns:
        Task -> :class:`~data_prep.meta.TaskInfo`; target groups are those whose samples
        carry at least one label of the task, in contract order.
    """
    aggs = [pl.col(c.label_col(t)).is_not_null().any().alias(t) for t in info.tasks]
    per_group = samples.group_by(c.GROUP_IDX).agg(aggs).sort(c.GROUP_IDX)
    out: dict[str, TaskInfo] = {}
    for t in info.tasks:
        idx = per_group.filter(pl.col(t))[c.GROUP_IDX].to_list()
        has_prob = t in info.prob_tasks
        out[t] = TaskInfo(
            target_groups=tuple(c.GROUPS[i] for i in sorted(idx)),
            has_prob=has_prob,
            label_col=c.label_col(t),
            prob_col=c.prob_col(t) if has_prob else None,
        )
    return out


def _oov_aggs(columns: list[str]) -> list[pl.Expr]:
    out = []
    for f in columns:
        present = (pl.col(f) != c.PAD_INDEX).sum()
        out += [(pl.col(f) == c.OOV_INDEX).sum().alias(f"o_{f}"), present.alias(f"n_{f}")]
    return out


def _rates(rows: dict[int, dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, split in enumerate(c.SPLITS):
        if split == "train":
            continue  # 0 by construction when min_count == 1
        r = rows.get(i, {})
        # None where the split has no value of the field at all (rate undefined).
        out[split] = {f: (r[f"o_{f}"] / r[f"n_{f}"]) if r.get(f"n_{f}") else None for f in columns}
    return out


def sample_oov_rates(samples: pl.DataFrame) -> dict[str, Any]:
    """Share of non-null target values coded OOV, per field, in val and test.

    Args:
        samples: coded samples with the split column.

    Returns:
        ``{split: {field: rate or None}}`` for val and test.
    """
    rows = samples.group_by(SPLIT).agg(_oov_aggs(list(c.ID_FIELDS)))
    return _rates({r[SPLIT]: r for r in rows.iter_rows(named=True)}, list(c.ID_FIELDS))


def event_oov_rates(
    timeline: pl.LazyFrame, cut: Cut, samples: pl.DataFrame | None = None
) -> dict[str, Any]:
    """Share of non-null event values coded OOV, per field and action, by split period.

    Args:
        timeline: the coded timeline.
        cut: the split. Global cut: events are assigned to the period their ``ts`` falls
            in. Given split: per user, val = from the user's first val/test sample, test =
            from the user's first test sample.
        samples: coded samples with the split column (needed for a given split).

    Returns:
        ``{split: {field: rate or None}}`` for the val and test periods.
    """
    cols = [c.ACTION_IDX, *c.ID_FIELDS]
    ts = pl.col(c.TS)
    if isinstance(cut, TimeCut):
        period = pl.when(ts < cut.t_val).then(0).when(ts < cut.t_test).then(1).otherwise(2)
        timeline = timeline.filter(ts >= cut.t_val)
    else:
        if samples is None:
            raise ValueError("event_oov_rates: a given split needs the coded samples")
        user = pl.col(c.USER_IDX)
        timeline = with_bounds(timeline, user_bounds(samples.lazy(), user), user)
        period = period_expr(cut)
        timeline = timeline.filter(period > 0)
    rows = timeline.group_by(period.alias(_PERIOD)).agg(_oov_aggs(cols)).collect()
    return _rates({r[_PERIOD]: r for r in rows.iter_rows(named=True)}, cols)


def target_oov(samples: pl.DataFrame, tasks: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Share of positives and of negatives whose target is out of vocabulary, per task and split.

    The target is the id of the sample's group (``item_id`` for items, ``coupon_id`` for
    coupons). When the shares differ, "unknown target" alone predicts the label: a
    protocol artefact (e.g. negatives drawn from a catalogue the vocabulary saw in training).

    Args:
        samples: coded samples with the split column.
        tasks: task names.

    Returns:
        ``({task: {split: {"positives": share, "negatives": share, "rows": n}}}, warnings)``
        (a share is None without such rows); a warning per split whose shares differ by more
        than :data:`OOV_GAP_WARN`.
    """
    target = pl.lit(None, pl.Int32)
    for g, group in reversed(list(enumerate(c.GROUPS))):
        field = c.GROUP_FIELDS[group][0]
        target = pl.when(pl.col(c.GROUP_IDX) == g).then(pl.col(field)).otherwise(target)
    frame = samples.with_columns((target == c.OOV_INDEX).alias(_OOV))
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for t in tasks:
        lab = pl.col(c.label_col(t))
        rows = (
            frame.filter(lab.is_not_null())
            .group_by(SPLIT, lab.alias("label"))
            .agg(pl.len().alias("n"), pl.col(_OOV).mean().alias("share"))
        )
        got = {(r[SPLIT], r["label"]): r for r in rows.iter_rows(named=True)}
        out[t] = {}
        for i, split in enumerate(c.SPLITS):
            pos, neg = got.get((i, 1)), got.get((i, 0))
            a = None if pos is None else float(pos["share"])
            b = None if neg is None else float(neg["share"])
            counts = {"positives": pos["n"] if pos else 0, "negatives": neg["n"] if neg else 0}
            out[t][split] = {"positives": a, "negatives": b, "rows": counts}
            big = min(counts.values()) >= OOV_GAP_MIN_ROWS
            if a is not None and b is not None and big and abs(a - b) > OOV_GAP_WARN:
                warnings.append(
                    f"task {t!r}, {split}: {a:.1%} of positives but {b:.1%} of negatives have an "
                    "out-of-vocabulary target: being unknown predicts the label (with "
                    "protocol=next_item, dataset.negative_pool=matched avoids it)"
                )
    return out, warnings
