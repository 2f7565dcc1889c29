"""k-core filtering of a source's tables (``dataset.kcore``, for every source).

Users and items with fewer than ``k`` item interactions (events of group ``item``) are
removed, then counted again, until every user and item left has at least ``k``: removing a
rare item can leave a user below ``k``, and that user's removal an item (the rounds repeat
until nothing changes; each removes at least one event, so they end). What goes with them:

* events: the item events of removed users or items, and every other event (coupon
  receipts and uses) of removed users;
* samples (sources with their own): those of removed users, and item samples of removed
  items (coupon samples of kept users stay).

A user with no item event at all (say, only coupons) has fewer than ``k`` and is removed.
The loop runs on integer codes of the ids (one hash per string), one vectorised filter per
round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError

_ITEM_GROUP = "item"


@dataclass
class KCore:
    """The k-core of a source's tables.

    Attributes:
        events: the events kept (collected, as a lazy frame).
        samples: the samples kept, or None when the source has none.
        stats: ``k``, ``rounds`` (rounds that removed something), ``removed`` and
            ``remaining`` (``users``, ``items``, ``events`` and, with samples, ``samples``),
            for ``report.json`` ``source.kcore``.
    """

    events: pl.LazyFrame
    samples: pl.LazyFrame | None
    stats: dict[str, Any]


def _core_pairs(pairs: pl.DataFrame, k: int) -> tuple[pl.DataFrame, int]:
    """The (user, item) interactions of the k-core, and the rounds that removed some."""
    codes = pairs.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
        pl.col(c.USER).cast(pl.Categorical).to_physical().alias("u"),
        pl.col(c.ITEM).cast(pl.Categorical).to_physical().alias("i"),
    )
    rounds = 0
    while codes.height:
        kept = codes.filter((pl.len().over("u") >= k) & (pl.len().over("i") >= k))
        if kept.height == codes.height:
            break
        codes, rounds = kept, rounds + 1
    return pairs[codes["row"]], rounds


def _counts(events: pl.DataFrame, samples: pl.DataFrame | None) -> dict[str, int]:
    """Users (of either table), items (of item rows) and rows."""
    tables = [events] if samples is None else [events, samples]
    ids = pl.concat([t.select(c.USER, c.GROUP, c.ITEM) for t in tables])
    items = ids.filter(pl.col(c.GROUP) == _ITEM_GROUP)[c.ITEM]
    out = {
        "users": ids[c.USER].drop_nulls().n_unique(),
        "items": items.drop_nulls().n_unique(),
        "events": events.height,
    }
    if samples is not None:
        out["samples"] = samples.height
    return out


def kcore_filter(events: pl.LazyFrame, samples: pl.LazyFrame | None, k: int) -> KCore:
    """Keeps the users and items with at least ``k`` item interactions each, iteratively.

    Args:
        events: canonical events.
        samples: canonical samples, or None.
        k: the least number of item interactions of every user and item kept (>= 1).

    Returns:
        The filtered tables and the statistics of the filtering.

    Raises:
        PrepError: ``kcore=<k> left nothing`` when no event (or no sample) is left.
    """
    sm: pl.DataFrame | None = None
    if samples is None:
        ev = events.collect()
    else:
        ev, sm = pl.collect_all([events, samples])
    is_item = pl.col(c.GROUP) == _ITEM_GROUP
    pairs = ev.filter(is_item).select(c.USER, c.ITEM).drop_nulls()
    core, rounds = _core_pairs(pairs, k)
    users, items = core[c.USER].unique().implode(), core[c.ITEM].unique().implode()
    keep = pl.col(c.USER).is_in(users) & (~is_item | pl.col(c.ITEM).is_in(items)).fill_null(True)
    before = _counts(ev, sm)
    ev = ev.filter(keep)
    sm = sm.filter(keep) if sm is not None else None
    after = _counts(ev, sm)
    if not ev.height or (sm is not None and not sm.height):
        raise PrepError(
            f"kcore={k} left nothing: no users and items with at least {k} item interactions "
            f"each (before: {before['users']} users, {before['items']} items, "
            f"{pairs.height} item events; after {rounds} round(s): {after})"
        )
    stats = {
        "k": k,
        "rounds": rounds,
        "removed": {key: before[key] - after[key] for key in before},
        "remaining": after,
    }
    return KCore(ev.lazy(), None if sm is None else sm.lazy(), stats)
