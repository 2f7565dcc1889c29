"""The paper's next-item protocol: samples and a leave-last-out split from positive-only logs.

For each task (a name and the actions that are its positives, e.g. ``click: [click]``,
``purchase: [purchase]``) and each user, the task's positive events are ordered by time,
ties broken by input order (deterministic):

* every positive after the first is a target: a **positive** sample (the event's item with
  the event's fields, ``ts`` = the event's time, ``label_<task>`` = 1), paired with
  ``negatives`` **sampled negatives** (same user and ``ts``, label 0; see below);
* the user's **last** pair is test, the **second-to-last** val, the others train
  (``contract.SPLIT_COL``); users with fewer than 3 positives in a task have no eval pair:
  2 positives give one training pair, 1 positive none; both are counted in the report
  (``users_train_only``, ``users_without_pairs``).

**One time cut per user for all tasks.** A user's earliest val/test pair over all tasks is
the user's cut ``T_u``; a training pair of any task later than ``T_u`` is dropped (counted:
``train_rows_after_user_cut``), so no training row's history holds any of the user's
evaluation targets. (With one task nothing is dropped: the training pairs come first.)

**Negatives** (:class:`NegativeSampling`):

* ``pool`` decides which items can be drawn. ``matched`` (default): the items *known* from
  training (those in the vocabulary's training material: the users' events before their cut
  and the training positives) for a positive that is known, the other items for a positive
  that is not, so the positives and negatives of every split are out of vocabulary equally
  often and "unknown item" tells nothing about the label; ``train``: known items only;
  ``catalogue``: every item of the item events (the original protocol, whose training
  negatives give catalogue items a vocabulary row that val/test positives often lack).
* ``weights``: ``uniform`` over the pool, or ``popularity`` (an item's number of events).
* ``exclude``: ``user_items`` (the paper: never an item the user interacted with in any
  behaviour, at any time) or ``positive`` (only the pair's own item: a negative can be an
  item from the user's history, so "target in history" stops separating the classes).

Drawn with numpy (``default_rng([seed, task position])``) in the users' order, collisions
rejected and redrawn, vectorised; rows still colliding after a few rounds get an exact draw
among their allowed items. A positive whose pool has no allowed item draws from every item
instead (counted: ``negatives_from_every_item``); a pair with no allowed item at all is
dropped and counted (``pairs_without_negative``). A negative carries its item's first-seen
non-null category, brand and shop.

The statistics per task include, per split, the share of positives and of negatives whose
item is in the user's history (an earlier event of the user with that item, strictly before
the sample's time) and the AUC of the rule "target is in the history" that follows from them.

A sample's history stays the preparation's rule: the user's events (all behaviours) strictly
before the sample's ``ts``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError
from data_prep.schema import SAMPLE_BASE_SCHEMA

_ORD, _ICODE, _UCODE, _K, _N = "__ord", "__icode", "__ucode", "__k", "__n"
_PAIR, _NEG, _CUT, _FIRST = "__pair", "__neg", "__cut", "__first"
_ITEM_FIELDS = (c.CATEGORY, c.BRAND, c.SHOP)
_NEVER: Final = 2**62
#: Version of the samples this module makes (part of the preparation's fingerprint). 2: one
#: time cut per user, matched negative pools.
PROTOCOL_VERSION: Final = 2
#: Vectorised redraw rounds before the rows still colliding get an exact draw.
REDRAW_ROUNDS: Final = 50

POOLS: tuple[str, ...] = ("matched", "train", "catalogue")
WEIGHTS: tuple[str, ...] = ("uniform", "popularity")
EXCLUDES: tuple[str, ...] = ("user_items", "positive")


@dataclass(frozen=True)
class NegativeSampling:
    """How the negatives of the next-item protocol are drawn (see the module docstring).

    Attributes:
        pool: ``matched``, ``train`` or ``catalogue``.
        weights: ``uniform`` or ``popularity``.
        exclude: ``user_items`` or ``positive``.
    """

    pool: str = "matched"
    weights: str = "uniform"
    exclude: str = "user_items"

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("negative_pool", self.pool, POOLS),
            ("negative_weights", self.weights, WEIGHTS),
            ("negative_exclude", self.exclude, EXCLUDES),
        ):
            if value not in allowed:
                raise PrepError(f"dataset.{key}: must be one of {list(allowed)}, got {value!r}")


def _isin_sorted(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``keys`` are in the sorted unique array ``table``."""
    if table.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(table, keys).clip(max=table.size - 1)
    return table[pos] == keys


@dataclass(frozen=True)
class Pool:
    """Items a negative can be drawn from.

    Attributes:
        items: Int64 item codes, sorted.
        cum: cumulative weights (popularity) aligned with ``items``, or None (uniform).
    """

    items: np.ndarray
    cum: np.ndarray | None = None

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` item codes drawn with replacement."""
        if self.cum is None:
            return self.items[rng.integers(0, self.items.size, size=n)]
        at = np.searchsorted(self.cum, rng.random(n) * self.cum[-1], side="right")
        return self.items[at.clip(max=self.items.size - 1)]


def draw_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    positives: np.ndarray,
    pools: list[Pool],
    which: np.ndarray,
    taken: np.ndarray | None,
    n_items: int,
) -> np.ndarray:
    """One negative item code per row, from the row's pool, never an excluded item.

    Args:
        rng: the random generator.
        users: Int64 user code per row.
        positives: Int64 item code of each row's positive (never drawn).
        pools: the pools; row ``i`` draws from ``pools[which[i]]``.
        which: pool index per row.
        taken: sorted unique ``user * n_items + item`` keys that are excluded (every item of
            each user), or None to exclude only the row's positive.
        n_items: catalogue size (item codes ``0..n_items-1``).

    Returns:
        Int64 item code per row; ``-1`` where the pool holds no allowed item.
    """
    users, positives = users.astype(np.int64), positives.astype(np.int64)
    neg = np.full(users.size, -1, dtype=np.int64)

    def colliding(rows: np.ndarray) -> np.ndarray:
        bad = neg[rows] == positives[rows]
        if taken is not None:
            bad |= _isin_sorted(users[rows] * n_items + neg[rows], taken)
        return rows[bad]

    for p, pool in enumerate(pools):
        rows = np.flatnonzero(which == p)
        if pool.items.size == 0:
            continue  # (stays -1)
        for _ in range(REDRAW_ROUNDS):
            if rows.size == 0:
                break
            neg[rows] = pool.draw(rng, rows.size)
            rows = colliding(rows)
        for r in rows:  # exact draw among the allowed items (rare: crowded users, tiny pools)
            banned = np.array([positives[r]])
            if taken is not None:
                lo, hi = np.searchsorted(taken, [users[r] * n_items, (users[r] + 1) * n_items])
                banned = np.union1d(banned, taken[lo:hi] - users[r] * n_items)
            allowed = ~_isin_sorted(pool.items, banned)
            if not allowed.any():
                neg[r] = -1
                continue
            sub = Pool(
                pool.items[allowed],
                None if pool.cum is None else np.cumsum(np.diff(pool.cum, prepend=0.0)[allowed]),
            )
            neg[r] = sub.draw(rng, 1)[0]
    return neg


def _catalogue(ev: pl.DataFrame) -> pl.DataFrame:
    """Every item with its first-seen non-null fields, event count and a dense code."""
    return (
        ev.group_by(c.ITEM)
        .agg(
            *(pl.col(f).sort_by(_ORD).drop_nulls().first() for f in _ITEM_FIELDS),
            pl.len().alias(_N),
        )
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


def _positives(ev: pl.DataFrame, task: str, actions: list[str]) -> pl.DataFrame:
    """The task's positive events with their rank ``__k``, count ``__n`` and split."""
    pos = (
        ev.filter(pl.col(c.ACTION).is_in(list(actions)))
        .sort(_UCODE, c.TS, _ORD)
        .with_columns(
            pl.int_range(pl.len()).over(_UCODE).alias(_K), pl.len().over(_UCODE).alias(_N)
        )
    )
    if pos.is_empty():
        raise PrepError(
            f"dataset.tasks.{task}: no event has action(s) {list(actions)} "
            f"(actions in the data: {sorted(ev[c.ACTION].unique().to_list())})"
        )
    n, k = pl.col(_N), pl.col(_K)
    split = pl.when((n >= 3) & (k == n - 1)).then(2).when((n >= 3) & (k == n - 2)).then(1)
    return pos.with_columns(split.otherwise(0).cast(pl.Int8).alias(c.SPLIT_COL))


def _pools(
    cat: pl.DataFrame, known: np.ndarray, sampling: NegativeSampling
) -> tuple[list[Pool], np.ndarray]:
    """The pools (0: known items, 1: the others, 2: every item) and the known mask by code."""
    is_known = np.zeros(cat.height, dtype=bool)
    is_known[known] = True
    counts = cat[_N].to_numpy().astype(np.float64)
    codes = np.arange(cat.height, dtype=np.int64)

    def pool(mask: np.ndarray) -> Pool:
        cum = np.cumsum(counts[mask]) if sampling.weights == "popularity" else None
        return Pool(codes[mask], cum)

    return [pool(is_known), pool(~is_known), pool(np.ones_like(is_known))], is_known


def _which_pool(sampling: NegativeSampling, pos_known: np.ndarray) -> np.ndarray:
    """Pool index per row for positives that are known (True) or not."""
    if sampling.pool == "catalogue":
        return np.full(pos_known.size, 2)
    if sampling.pool == "train":
        return np.zeros(pos_known.size, dtype=np.int64)
    return np.where(pos_known, 0, 1)


def _history_stats(rows: pl.DataFrame) -> dict[str, Any]:
    """Per split: rows, in-history shares of positives and negatives, and the rule's AUC."""
    out: dict[str, Any] = {}
    agg = rows.group_by(c.SPLIT_COL, _NEG).agg(pl.len().alias("n"), pl.col(_FIRST).mean())
    got = {(r[c.SPLIT_COL], r[_NEG]): r for r in agg.iter_rows(named=True)}
    for i, split in enumerate(c.SPLITS):
        pos, neg = got.get((i, False)), got.get((i, True))
        a = None if pos is None else float(pos[_FIRST])
        b = None if neg is None else float(neg[_FIRST])
        out[split] = {
            "positives": a,
            "negatives": b,
            # A 0/1 score with ties counted half: P(s+ > s-) + P(s+ = s-) / 2.
            "rule_auc": None if a is None or b is None else 0.5 + (a - b) / 2,
        }
    return out


def next_item_samples(
    events: pl.DataFrame,
    tasks: dict[str, list[str]],
    negatives: int = 1,
    seed: int = 0,
    sampling: NegativeSampling | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Builds the protocol's samples (with their split) from canonical events.

    Args:
        events: canonical events (``schema.EVENT_SCHEMA``), in input order.
        tasks: task name -> the actions that are its positives.
        negatives: sampled negatives per positive (>= 1).
        seed: seed of the negative sampling.
        sampling: how negatives are drawn; None = :class:`NegativeSampling` defaults.

    Returns:
        ``(samples, stats)``: canonical samples (``SAMPLE_BASE_SCHEMA``, ``label_<task>``
        per task, ``contract.SPLIT_COL``), sorted by task, user, time, input order and
        positive before negatives; ``stats`` per task for the report.
    """
    sampling = sampling or NegativeSampling()
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
    positives = {task: _positives(ev, task, actions) for task, actions in tasks.items()}
    # One cut per user over every task: the user's earliest val/test positive.
    evals = [p.filter(pl.col(c.SPLIT_COL) >= 1).select(_UCODE, c.TS) for p in positives.values()]
    cuts = pl.concat(evals).group_by(_UCODE).agg(pl.col(c.TS).min().alias(_CUT))
    late = (pl.col(c.SPLIT_COL) == 0) & (pl.col(c.TS) > pl.col(_CUT).fill_null(_NEVER))
    pairs_of: dict[str, pl.DataFrame] = {}
    dropped: dict[str, int] = {}
    for task, pos in positives.items():
        pairs = pos.filter(pl.col(_K) >= 1).join(cuts, on=_UCODE, how="left", maintain_order="left")
        dropped[task] = int(pairs.select(late.sum()).item())
        pairs_of[task] = pairs.filter(~late).drop(_CUT)
    # Known items: the vocabulary's training material (every user's events before the user's
    # cut, and the training positives).
    before_cut = ev.join(cuts, on=_UCODE, how="left").filter(
        pl.col(c.TS) < pl.col(_CUT).fill_null(_NEVER)
    )
    train_pos = [p.filter(pl.col(c.SPLIT_COL) == 0)[_ICODE] for p in pairs_of.values()]
    known = np.unique(pl.concat([before_cut[_ICODE], *train_pos]).to_numpy())
    pools, is_known = _pools(cat, known, sampling)
    taken = (
        np.unique((ev[_UCODE] * n_items + ev[_ICODE]).to_numpy())
        if sampling.exclude == "user_items"
        else None
    )
    first = ev.group_by(_UCODE, _ICODE).agg(pl.col(c.TS).min().alias(_FIRST))
    names = list(tasks)
    parts: list[pl.DataFrame] = []
    stats: dict[str, Any] = {}
    for ti, (task, actions) in enumerate(tasks.items()):
        pairs = pairs_of[task].with_columns(pl.int_range(pl.len()).alias(_PAIR))
        rng = np.random.default_rng([seed, ti])
        u = np.repeat(pairs[_UCODE].to_numpy(), negatives)
        p_item = np.repeat(pairs[_ICODE].to_numpy(), negatives)
        which = _which_pool(sampling, is_known[p_item])
        neg_code = draw_negatives(rng, u, p_item, pools, which, taken, n_items)
        # A positive whose pool holds no allowed item (a small pool, a crowded user) draws
        # from every item instead: its pair is kept, and counted.
        lacking = np.flatnonzero((neg_code < 0) & (which != 2))
        if lacking.size:
            neg_code[lacking] = draw_negatives(
                rng, u[lacking], p_item[lacking], pools, np.full(lacking.size, 2), taken, n_items
            )
        fallback = int((neg_code[lacking] >= 0).sum())
        ok = (neg_code >= 0).reshape(-1, negatives).all(axis=1)
        kept_pairs = pairs.filter(pl.Series(ok))
        negs = (
            pairs.select(c.USER, _UCODE, c.TS, c.GROUP, c.SPLIT_COL, _PAIR)
            .gather(np.repeat(np.arange(pairs.height), negatives))
            .with_columns(pl.Series(_ICODE, neg_code))
            .filter(pl.Series(np.repeat(ok, negatives)))
            .join(cat.drop(_N), on=_ICODE, how="left", maintain_order="left")
        )
        split = pl.col(c.SPLIT_COL)
        labelled = [(kept_pairs, 1), (negs, 0)]
        rows = [
            _rows(f, names, task, label, split).with_columns(
                f[_PAIR], pl.lit(label == 0).alias(_NEG)
            )
            for f, label in labelled
        ]
        parts.append(pl.concat(rows).sort(_PAIR, _NEG, maintain_order=True).drop(_PAIR, _NEG))
        targets = pl.concat(
            [
                f.select(_UCODE, _ICODE, c.TS, c.SPLIT_COL, pl.lit(label == 0).alias(_NEG))
                for f, label in labelled
            ]
        )
        in_history = targets.join(first, on=[_UCODE, _ICODE], how="left").with_columns(
            (pl.col(_FIRST).fill_null(_NEVER) < pl.col(c.TS)).alias(_FIRST)
        )
        pos = positives[task]
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
            "train_rows_after_user_cut": dropped[task],
            "pairs_without_negative": int((~ok).sum()),
            "negatives_from_every_item": fallback,
            "rows": {s: int(by.get(i, 0)) for i, s in enumerate(c.SPLITS)},
            "in_history": _history_stats(in_history),
        }
    summary = {
        "catalogue_items": n_items,
        "known_items": int(known.size),
        "negatives": negatives,
        "seed": seed,
        "sampling": asdict(sampling),
        "tasks": stats,
    }
    return pl.concat(parts), summary
