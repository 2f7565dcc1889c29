"""The simulator's state: the behaviour codes, the catalogue (:class:`World`: categories,
shops, items, coupons), the mutable state of one chunk of users (:class:`Chunk`) and the
per-step record log (:class:`Log`). :mod:`data_prep.sources.sim.steps` advances them.

Users are ordered by step count, so the users still active at step ``k`` are a prefix.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from data_prep import contract as C
from data_prep.sources.sim.config import SimConfig

ACTIONS: tuple[str, ...] = ("click", "cart", "purchase", "receive", "use")
CLICK, CART, BUY, RECEIVE, USE, NONE = range(6)
#: Interest weight of a buffered behaviour, by action code (the last entry is an empty slot).
WEIGHT = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
DAY = 86_400.0
_MIN_WINDOW = 0.25  # smallest share of the span a user is active in
_NEVER = -(1 << 40)  # "no previous event" time, far before any real one


def _zipf(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Zipf-like probabilities over ``n`` ids, with the ranks shuffled over the ids."""
    w = 1.0 / np.arange(1, n + 1) ** alpha
    return rng.permutation(w / w.sum())


def draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """Ids drawn from probabilities ``p`` (inverse CDF, clipped against rounding)."""
    return np.minimum(np.searchsorted(np.cumsum(p), rng.random(size), side="right"), len(p) - 1)


class _Grouped:
    """Weighted members of groups (items of a category, shops of a category), sorted by group
    with ``cdf`` = group + within-group cdf, so one searchsorted draws a member of any group."""

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=n_groups)
        cs = np.concatenate([[0.0], np.cumsum(weight[self.order])])
        self.end = np.cumsum(counts)
        self.start = self.end - counts
        before = np.repeat(cs[self.start], counts)
        within = (cs[1:] - before) / np.repeat(cs[self.end] - cs[self.start], counts)
        within[self.end[counts > 0] - 1] = 1.0  # exact group boundaries despite rounding
        self.cdf = group[self.order] + within

    def draw(self, rng: np.random.Generator, g: np.ndarray) -> np.ndarray:
        """One weighted member of each group in ``g`` (every group must have a member)."""
        j = np.searchsorted(self.cdf, g + rng.random(len(g)), side="right")
        return self.order[np.clip(j, self.start[g], self.end[g] - 1)]


class World:
    """The catalogue: categories, shops, items and coupons (shared by every chunk)."""

    def __init__(self, cfg: SimConfig) -> None:
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0x5107,)))
        n_cat, n_shops, n_items = cfg.n_categories, cfg.n_shops, cfg.n_items
        self.cat_pop = _zipf(rng, n_cat, cfg.category_zipf)
        self.fav_pop = np.sqrt(self.cat_pop) / np.sqrt(self.cat_pop).sum()  # tastes: flatter
        shop_pop = _zipf(rng, n_shops, 1.0)
        # Each shop sells 1-3 categories (a primary one, each extra with prob 1/2); the first
        # shops' primaries cover the categories, and any still uncovered gets a random shop.
        primary = draw(rng, self.cat_pop, n_shops)
        primary[: min(n_shops, n_cat)] = rng.permutation(n_cat)[: min(n_shops, n_cat)]
        extra = draw(rng, self.cat_pop, 2 * n_shops)
        extra_shop = np.tile(np.arange(n_shops), 2)
        keep = rng.random(2 * n_shops) < 0.5
        orphan = np.setdiff1d(np.arange(n_cat), primary)
        sells_cat = np.concatenate([primary, extra[keep], orphan])
        sells_shop = np.concatenate(
            [np.arange(n_shops), extra_shop[keep], rng.integers(0, n_shops, len(orphan))]
        )
        # Items: every category gets one, the rest follow category popularity; Zipf
        # popularity by a random rank inside the category; a shop that sells the category.
        cat = np.concatenate([np.arange(n_cat), draw(rng, self.cat_pop, n_items - n_cat)])
        self.item_cat = rng.permutation(cat)
        by_cat = np.lexsort((rng.random(n_items), self.item_cat))
        counts = np.bincount(self.item_cat, minlength=n_cat)
        rank = np.empty(n_items)
        rank[by_cat] = np.arange(n_items) - np.repeat(np.cumsum(counts) - counts, counts)
        self.items = _Grouped(self.item_cat, 1.0 / (rank + 1.0) ** cfg.item_zipf, n_cat)
        self.item_shop = sells_shop[
            _Grouped(sells_cat, shop_pop[sells_shop], n_cat).draw(rng, self.item_cat)
        ]
        self.item_brand = draw(rng, _zipf(rng, cfg.n_brands, 1.0), n_items)
        brand_q = rng.normal(0.0, 0.6 * cfg.quality_sd, cfg.n_brands)
        self.item_q = brand_q[self.item_brand] + rng.normal(0.0, 0.8 * cfg.quality_sd, n_items)
        # Coupons: one per shop first, then by shop popularity; discount level 1..5.
        cshop = draw(rng, shop_pop, cfg.n_coupons)
        first = min(cfg.n_coupons, n_shops)
        cshop[:first] = rng.permutation(n_shops)[:first]
        self.coupon_shop = cshop
        self.coupon_disc = rng.integers(1, 6, cfg.n_coupons)
        self.by_shop = np.argsort(cshop, kind="stable")
        self.shop_count = np.bincount(cshop, minlength=n_shops)
        self.shop_start = np.cumsum(self.shop_count) - self.shop_count
        self.offer_pop = shop_pop * (self.shop_count > 0) / (shop_pop * (self.shop_count > 0)).sum()
        # Decimal strings of every id, with null first: ids (-1 = absent) index it at id + 1.
        n_ids = max(n_items, n_cat, cfg.n_brands, n_shops, cfg.n_coupons, 6)
        self.id_strings = pl.Series([None, *map(str, range(n_ids))], dtype=pl.String)


class Chunk:
    """Mutable state of one chunk's users, ordered by step count (descending)."""

    def __init__(self, cfg: SimConfig, w: World, n: int, rng: np.random.Generator) -> None:
        m = cfg.events_per_user - 1.0
        lam = rng.gamma(cfg.steps_dispersion, m / cfg.steps_dispersion, n) if m > 0 else np.zeros(n)
        steps = 1 + rng.poisson(lam)
        self.order = np.argsort(-steps, kind="stable")  # chunk position -> local user
        self.steps = steps[self.order]
        # Sessions: m_u starts spread like sorted uniforms over the user's active window.
        self.rem_sess = 1 + rng.binomial(self.steps - 1, 1.0 / cfg.steps_per_session)
        span = cfg.days * DAY
        self.room = span * rng.uniform(_MIN_WINDOW, 1.0, n)
        self.anchor = rng.random(n) * (span - self.room)
        self.prev_t = np.full(n, _NEVER, dtype=np.int64)
        self.prev_end = np.full(n, _NEVER, dtype=np.int64)
        self.fav = draw(rng, w.fav_pop, 2 * n).reshape(n, 2)
        self.aff = rng.normal(0.0, cfg.coupon_affinity_sd, n)
        self.fav_pop = w.fav_pop
        # Ring buffer of the last R item behaviours (int32/int8 to halve memory traffic).
        shape = (n, cfg.history_len)
        self.b_item = np.full(shape, -1, dtype=np.int32)
        self.b_cat = np.full(shape, -1, dtype=np.int32)
        self.b_shop = np.full(shape, -1, dtype=np.int32)
        self.b_t = np.zeros(shape, dtype=np.int64)
        self.b_act = np.full(shape, NONE, dtype=np.int8)
        self.count = np.zeros(n, dtype=np.int64)

    def push(self, rows: np.ndarray, item: np.ndarray, w: World, ts: np.ndarray, act: int) -> None:
        """Appends one item behaviour per row to the ring buffer (rows are unique)."""
        pos = self.count[rows] % self.b_item.shape[1]
        self.b_item[rows, pos] = item
        self.b_cat[rows, pos] = w.item_cat[item]
        self.b_shop[rows, pos] = w.item_shop[item]
        self.b_t[rows, pos] = ts
        self.b_act[rows, pos] = act
        self.count[rows] += 1

    def decayed(self, t: np.ndarray, tau_days: float) -> np.ndarray:
        """``(a, R)`` action weight times fading of each buffered behaviour of the first
        ``a = len(t)`` users at times ``t`` (0 for empty slots)."""
        a = len(t)
        return WEIGHT[self.b_act[:a]] * np.exp((self.b_t[:a] - t[:, None]) / (tau_days * DAY))

    def pick(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A uniform buffered slot per row, and whether the row's user has any behaviour yet."""
        fill = np.minimum(self.count[rows], self.b_item.shape[1])
        return (rng.random(len(rows)) * fill).astype(np.int64), fill > 0


class Log:
    """Per-step records as column dicts (chunk positions, relative times); a column a part
    lacks reads as its fill value (-1 ids, NaN labels/probs)."""

    def __init__(self) -> None:
        self.events: list[dict[str, np.ndarray]] = []
        self.samples: list[dict[str, np.ndarray]] = []

    def event(self, pos: np.ndarray, ts: np.ndarray, act: int, obj: str, ids: np.ndarray) -> None:
        """Records behaviours of one action on objects ``ids`` (``obj`` names their field)."""
        self.events.append({"pos": pos, C.TS: ts, C.ACTION: np.full(len(pos), act), obj: ids})
