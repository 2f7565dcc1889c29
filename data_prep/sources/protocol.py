"""The paper's next-item protocol: samples and a leave-last-out split from positive-only logs.

For each task (a name and the actions that are its positives, e.g. ``click: [click]``,
``purchase: [purchase]``) and each user, the task's positive events are ordered by time,
ties broken by input order (deterministic):

* every positive after the first is a target: a **positive** sample (the event's item with
  the event's fields, ``ts`` = the event's time, ``label_<task>`` = 1), paired with
  ``negatives`` **sampled negatives** (same user and ``ts``, label 0): items drawn uniformly
  from the catalogue (every item of the item events) that the user never interacted with
  (in any behaviour), with the item's first-seen non-null category, brand and shop;
* the user's **last** pair is test, the **second-to-last** val, the others train
  (``contract.SPLIT_COL``); users with fewer than 3 positives in a task have no eval pair:
  2 positives give one training pair, 1 positive none; both are counted in the report
  (``users_train_only``, ``users_without_pairs``).

A user with ``n`` positives thus gives ``n - 1`` pairs. Label columns of the other tasks are
null on a task's rows. A sample's history stays the preparation's rule: the user's events
(all behaviours) strictly before the sample's ``ts``; with equal times a positive's own
predecessors at the same second are not in its history.

Negatives are drawn with numpy (``default_rng([seed, task position])``) in the users' order,
collisions with the user's items rejected and redrawn, vectorised. A user who interacted with
every item can get no negative: those pairs are dropped and counted
(``pairs_without_negative``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError
from data_prep.schema import SAMPLE_BASE_SCHEMA

_ORD, _ICODE, _UCODE, _K, _N = "__ord", "__icode", "__ucode", "__k", "__n"
_PAIR, _NEG = "__pair", "__neg"
_ITEM_FIELDS = (c.CATEGORY, c.BRAND, c.SHOP)
MAX_REDRAW_ROUNDS = 10_000


def _isin_sorted(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` are in the sorted unique array ``table``."""
    if table.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(table, keys).clip(max=table.size - 1)
    return table[pos] == keys


def draw_negatives(
    rng: np.random.Generator, users: np.ndarray, n_items: int, taken: np.ndarray
) -> np.ndarray:
    """One uniformly drawn item code per row that the row's user never interacted with.

    Args:
        rng: the random generator.
        users: Int64 user code per row.
        n_items: catalogue size (item codes ``0..n_items-1``).
        taken: sorted unique ``user * n_items + item`` keys of every user's items.

    Returns:
        Int64 item code per row; ``-1`` for users who interacted with every item.
    """
    users = users.astype(np.int64)
    per_user = np.bincount(taken // n_items, minlength=int(users.max(initial=0)) + 1)
    full = per_user[users] >= n_items
    neg = rng.integers(0, n_items, size=users.size, dtype=np.int64)
    bad = np.flatnonzero(_isin_sorted(users * n_items + neg, taken) & ~full)
    for _ in range(MAX_REDRAW_ROUNDS):
        if bad.size == 0:
            break
        neg[bad] = rng.integers(0, n_items, size=bad.size, dtype=np.int64)
        bad = bad[_isin_sorted(users[bad] * n_items + neg[bad], taken)]
    else:
        raise PrepError(
            f"next_item: no negative found for {bad.size} rows after {MAX_REDRAW_ROUNDS} "
            "rounds (users who interacted with almost every item)"
        )
    neg[full] = -1
    return neg


def _catalogue(ev: pl.DataFrame) -> pl.DataFrame:
    """Every item with its first-seen non-null fields and a dense code (by item id)."""
    return (
        ev.group_by(c.ITEM)
        .agg(pl.col(f).sort_by(_ORD).drop_nulls().first() for f in _ITEM_FIELDS)
        .sort(c.ITEM)
        .with_row_index(_ICODE)
        .with_columns(pl.col(_ICODE).cast(pl.Int64))
    )


def _rows(
    frame: pl.DataFrame, tasks: list[str], task: str, label: int, split: pl.Expr
) -> pl.DataFrame:
    """Canonical sample rows (SAMPLE_BASE_SCHEMA, labels, split) from a target frame."""
    labels = [
        (pl.lit(label) if t == task else pl.lit(None)).cast(pl.Int8).alias(c.label_col(t))
        for t in tasks
    ]
    base = [
        pl.col(col).cast(dtype) if col in frame.columns else pl.lit(None, dtype).alias(col)
        for col, dtype in SAMPLE_BASE_SCHEMA.items()
    ]
    return frame.select(*base, *labels, split.cast(pl.Int8).alias(c.SPLIT_COL))


def next_item_samples(
    events: pl.DataFrame, tasks: dict[str, list[str]], negatives: int = 1, seed: int = 0
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Builds the protocol's samples (with their split) from canonical events.

    Args:
        events: canonical events (``schema.EVENT_SCHEMA``), in input order.
        tasks: task name -> the actions that are its positives.
        negatives: sampled negatives per positive (>= 1).
        seed: seed of the negative sampling.

    Returns:
        ``(samples, stats)``: canonical samples (``SAMPLE_BASE_SCHEMA``, ``label_<task>``
        per task, ``contract.SPLIT_COL``), sorted by task, user, time, input order and
        positive before negatives; ``stats`` per task for the report.
    """
    if not tasks:
        raise PrepError("dataset.tasks: at least one task is required")
    if negatives < 1:
        raise PrepError(f"dataset.negatives must be >= 1, got {negatives}")
    ev = events.with_row_index(_ORD).filter(
        (pl.col(c.GROUP) == "item")
        & pl.col(c.USER).is_not_null()
        & pl.col(c.TS).is_not_null()
        & pl.col(c.ITEM).is_not_null()
    )
    if ev.is_empty():
        raise PrepError("next_item: the events have no usable item rows")
    cat = _catalogue(ev)
    n_items = cat.height
    users = ev.select(pl.col(c.USER).unique().sort()).with_row_index(_UCODE)
    ev = ev.join(cat.select(c.ITEM, _ICODE), on=c.ITEM).join(
        users.with_columns(pl.col(_UCODE).cast(pl.Int64)), on=c.USER
    )
    taken = np.unique((ev[_UCODE] * n_items + ev[_ICODE]).to_numpy())
    names = list(tasks)
    parts: list[pl.DataFrame] = []
    stats: dict[str, Any] = {}
    for ti, (task, actions) in enumerate(tasks.items()):
        pos = (
            ev.filter(pl.col(c.ACTION).is_in(list(actions)))
            .sort(_UCODE, c.TS, _ORD)
            .with_columns(
                pl.int_range(pl.len()).over(_UCODE).alias(_K),
                pl.len().over(_UCODE).alias(_N),
            )
        )
        if pos.is_empty():
            raise PrepError(
                f"dataset.tasks.{task}: no event has action(s) {list(actions)} "
                f"(actions in the data: {sorted(ev[c.ACTION].unique().to_list())})"
            )
        pairs = pos.filter(pl.col(_K) >= 1)
        rng = np.random.default_rng([seed, ti])
        u = np.repeat(pairs[_UCODE].to_numpy(), negatives)
        neg_code = draw_negatives(rng, u, n_items, taken)
        ok = (neg_code >= 0).reshape(-1, negatives).all(axis=1)
        n, k = pl.col(_N), pl.col(_K)
        test, val = (n >= 3) & (k == n - 1), (n >= 3) & (k == n - 2)
        split = pl.when(test).then(2).when(val).then(1).otherwise(0)
        pairs = pairs.with_columns(pl.int_range(pl.len()).alias(_PAIR))
        kept_pairs = pairs.filter(pl.Series(ok))
        negs = (
            pairs.select(c.USER, c.TS, c.GROUP, _N, _K, _PAIR)
            .gather(np.repeat(np.arange(pairs.height), negatives))
            .with_columns(pl.Series(_ICODE, neg_code))
            .filter(pl.col(_ICODE) >= 0)
            .join(cat, on=_ICODE, how="left", maintain_order="left")
        )
        rows = [
            _rows(frame, names, task, label, split).with_columns(
                frame[_PAIR], pl.lit(label == 0).alias(_NEG)
            )
            for frame, label in ((kept_pairs, 1), (negs, 0))
        ]
        parts.append(pl.concat(rows).sort(_PAIR, _NEG, maintain_order=True).drop(_PAIR, _NEG))
        per_user = pos.group_by(_UCODE).agg(pl.len().alias(_N))
        n_split = parts[-1].group_by(c.SPLIT_COL).len()
        by = dict(zip(n_split[c.SPLIT_COL].to_list(), n_split["len"].to_list(), strict=True))
        stats[task] = {
            "actions": list(actions),
            "positives": pos.height,
            "users": per_user.height,
            "users_with_eval": per_user.filter(pl.col(_N) >= 3).height,
            "users_train_only": per_user.filter(pl.col(_N) == 2).height,
            "users_without_pairs": per_user.filter(pl.col(_N) == 1).height,
            "pairs_without_negative": int((~ok).sum()),
            "rows": {s: int(by.get(i, 0)) for i, s in enumerate(c.SPLITS)},
        }
    summary = {"catalogue_items": n_items, "negatives": negatives, "seed": seed, "tasks": stats}
    return pl.concat(parts), summary
