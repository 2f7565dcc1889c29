"""Tasks derived from behaviours at preparation time (``derive`` in the prep/train config).

A derived task says which behaviour makes a positive and where its negatives come from:

* ``negatives: impressions`` (logs with labelled impressions, e.g. the simulator or O2O): the
  task's label on every sample of its target group is 1 when the user performs one of the
  ``actions`` on that same object within ``horizon`` seconds from the sample's time (``ts <=
  t <= ts + horizon``) and before the user's next sample of that object (the behaviour is
  attributed to the latest impression before it), else 0. ``label_<task>`` is added to the
  samples; rows of other groups get null (the task does not apply to them).
* ``negatives: sampled`` (positive-only logs under ``protocol=next_item``): the task is one
  more next-item task whose positives are those actions, each against sampled negatives
  (:func:`data_prep.sources.protocol.next_item_samples`).
* ``negatives: null``: whatever the data's protocol gives.

The label is computed from events strictly after nothing the model sees: histories hold
events before ``ts`` only, and the positive is searched from ``ts`` on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError

NEGATIVES: tuple[str, ...] = ("impressions", "sampled")
#: Key field of each target group: the object a behaviour must be on to count.
GROUP_KEY: dict[str, str] = {g: fields[0] for g, fields in c.GROUP_FIELDS.items()}


@dataclass
class DerivedTask:
    """One derived task; checks its own fields (a :class:`PrepError` naming the field).

    Attributes:
        actions: behaviours that make a positive (e.g. ``["cart"]``; one string is one
            behaviour).
        target: the target group scored (``item`` or ``coupon``, see ``contract.GROUPS``).
        negatives: ``impressions``, ``sampled`` or None (the data's protocol decides).
        horizon: seconds after an impression in which a behaviour counts (impressions only).
    """

    actions: list[str]
    target: str = "item"
    negatives: str | None = None
    horizon: int = 3600

    def __post_init__(self) -> None:
        """Raises a :class:`PrepError` whose message starts with the first invalid field."""
        actions: object = [self.actions] if isinstance(self.actions, str) else self.actions
        if not (
            isinstance(actions, (list, tuple))
            and actions
            and all(isinstance(a, str) and a for a in actions)
        ):
            raise PrepError(f"actions: expected a non-empty list of behaviours, got {actions!r}")
        self.actions = list(actions)  # (a tuple, e.g. from code, becomes a list too)
        if self.target not in c.GROUPS:
            raise PrepError(f"target: unknown target {self.target!r}; known: {list(c.GROUPS)}")
        if self.negatives is not None and self.negatives not in NEGATIVES:
            raise PrepError(
                f"negatives: must be one of {list(NEGATIVES)} or null, got {self.negatives!r}"
            )
        h = self.horizon
        if not isinstance(h, int) or isinstance(h, bool) or h <= 0:
            raise PrepError(f"horizon: expected a positive number of seconds, got {h!r}")


def derived_tasks(spec: Mapping[str, Any] | None) -> dict[str, DerivedTask]:
    """Builds the derived tasks of a ``derive`` config (``{task: {actions, target, ...}}``).

    Args:
        spec: task name -> the :class:`DerivedTask` fields as a mapping (e.g. YAML).

    Returns:
        Task name -> :class:`DerivedTask`.

    Raises:
        PrepError: naming ``derive.<task>`` and the key (unknown, or the task's own check).
    """
    keys = {f.name for f in fields(DerivedTask)}
    out: dict[str, DerivedTask] = {}
    for name, d in (spec or {}).items():
        key = f"derive.{name}"
        if not isinstance(d, Mapping):
            raise PrepError(f"{key}: expected {{actions: [...], target: ...}}, got {d!r}")
        unknown = sorted(set(d) - keys)
        if unknown:
            raise PrepError(f"{key}: unknown key(s) {unknown}")
        try:
            # (missing actions: None, so that the task's own check names the key)
            out[str(name)] = DerivedTask(**{"actions": None, **d})
        except PrepError as e:
            raise PrepError(f"{key}.{e}") from None
    return out


def check_negatives(tasks: Mapping[str, DerivedTask], protocol_gives: str, dataset: str) -> None:
    """Each task's ``negatives`` must be what the dataset's protocol gives."""
    for name, t in tasks.items():
        if t.negatives is not None and t.negatives != protocol_gives:
            how = (
                "labelled impressions" if protocol_gives == "impressions"
                else "a positive-only log (protocol=next_item, sampled negatives)"
            )  # fmt: skip
            raise PrepError(
                f"derive.{name}.negatives: {t.negatives!r}, but the {dataset!r} dataset gives "
                f"{how}; set negatives: {protocol_gives} or null"
            )


def add_derived_labels(
    events: pl.LazyFrame, samples: pl.LazyFrame, tasks: Mapping[str, DerivedTask], dataset: str
) -> pl.LazyFrame:
    """Adds ``label_<task>`` for each impression-derived task to the canonical samples.

    Raises:
        PrepError: the samples already have that label, or no event has the task's actions
            on its target group.
    """
    if not tasks:
        return samples
    existing = samples.collect_schema().names()
    present = (
        events.group_by(c.GROUP, c.ACTION).len().collect().rows()
    )  # small: one row per (group, action)
    have = {(g, a) for g, a, _ in present}
    row = "__row"
    out = samples.with_row_index(row)
    for name, t in tasks.items():
        col = c.label_col(name)
        if col in existing:
            raise PrepError(
                f"derive.{name}: the {dataset!r} samples already have {col!r}; give the derived "
                "task another name, or use the data's own label (no actions)"
            )
        if not any((t.target, a) in have for a in t.actions):
            seen = sorted(a for g, a in have if g == t.target)
            raise PrepError(
                f"derive.{name}.actions: no {t.target!r} event of the {dataset!r} data has "
                f"action(s) {list(t.actions)} (it has {seen})"
            )
        key = GROUP_KEY[t.target]
        pos = (
            events.filter((pl.col(c.GROUP) == t.target) & pl.col(c.ACTION).is_in(list(t.actions)))
            .select(c.USER, key, pl.col(c.TS).alias("__pos_ts"))
            .drop_nulls()
            .sort("__pos_ts")
        )
        rows = (
            out.filter(pl.col(c.GROUP) == t.target)
            .select(row, c.USER, key, c.TS)
            .drop_nulls(key)
            .sort(c.TS)
            # the user's next sample of the same object: a behaviour after it is its positive
            .with_columns(pl.col(c.TS).shift(-1).over(c.USER, key).alias("__next_ts"))
        )
        hit = rows.join_asof(
            pos,
            left_on=c.TS,
            right_on="__pos_ts",
            by=[c.USER, key],
            strategy="forward",
            check_sortedness=False,  # both sides sorted on time just above
        )
        within = ((pl.col("__pos_ts") - pl.col(c.TS)) <= t.horizon) & (
            pl.col("__next_ts").is_null() | (pl.col("__pos_ts") < pl.col("__next_ts"))
        )
        hit = hit.select(row, within.fill_null(False).cast(pl.Int8).alias(col))
        out = out.join(hit, on=row, how="left")
    return out.sort(row).drop(row)
