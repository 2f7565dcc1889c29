"""The simulator's engine: the catalogue (:class:`_World`), the mutable state of one chunk of
users (:class:`_Chunk`), the per-step record log, and the vectorised step functions that
advance time, show items and offer coupons. :mod:`data_prep.simulator` drives it.

Users are ordered by step count, so the users still active at step ``k`` are a prefix; every
step function works on that prefix at once, never looping over users.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from data_prep import contract as C

if TYPE_CHECKING:
    from data_prep.simulator import SimConfig

ACTIONS: tuple[str, ...] = ("click", "cart", "purchase", "receive", "use")
_CLICK, _CART, _BUY, _RECEIVE, _USE, _NONE = range(6)
#: Interest weight of a buffered behaviour, by action code (the last entry is an empty slot).
_WEIGHT = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
_DAY = 86_400.0
_MIN_WINDOW = 0.25  # smallest share of the span a user is active in
_NEVER = -(1 << 40)  # "no previous event" time, far before any real one


def _zipf(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Zipf-like probabilities over ``n`` ids, with the ranks shuffled over the ids."""
    w = 1.0 / np.arange(1, n + 1) ** alpha
    return rng.permutation(w / w.sum())


def _draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
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


class _World:
    """The catalogue: categories, shops, items and coupons (shared by every chunk)."""

    def __init__(self, cfg: SimConfig) -> None:
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0x5107,)))
        n_cat, n_shops, n_items = cfg.n_categories, cfg.n_shops, cfg.n_items
        self.cat_pop = _zipf(rng, n_cat, cfg.category_zipf)
        self.fav_pop = np.sqrt(self.cat_pop) / np.sqrt(self.cat_pop).sum()  # tastes: flatter
        shop_pop = _zipf(rng, n_shops, 1.0)
        # Each shop sells 1-3 categories (a primary one, each extra with prob 1/2); the first
        # shops' primaries cover the categories, and any still uncovered gets a random shop.
        primary = _draw(rng, self.cat_pop, n_shops)
        primary[: min(n_shops, n_cat)] = rng.permutation(n_cat)[: min(n_shops, n_cat)]
        extra = _draw(rng, self.cat_pop, 2 * n_shops)
        extra_shop = np.tile(np.arange(n_shops), 2)
        keep = rng.random(2 * n_shops) < 0.5
        orphan = np.setdiff1d(np.arange(n_cat), primary)
        sells_cat = np.concatenate([primary, extra[keep], orphan])
        sells_shop = np.concatenate(
            [np.arange(n_shops), extra_shop[keep], rng.integers(0, n_shops, len(orphan))]
        )
        # Items: every category gets one, the rest follow category popularity; Zipf
        # popularity by a random rank inside the category; a shop that sells the category.
        cat = np.concatenate([np.arange(n_cat), _draw(rng, self.cat_pop, n_items - n_cat)])
        self.item_cat = rng.permutation(cat)
        by_cat = np.lexsort((rng.random(n_items), self.item_cat))
        counts = np.bincount(self.item_cat, minlength=n_cat)
        rank = np.empty(n_items)
        rank[by_cat] = np.arange(n_items) - np.repeat(np.cumsum(counts) - counts, counts)
        self.items = _Grouped(self.item_cat, 1.0 / (rank + 1.0) ** cfg.item_zipf, n_cat)
        self.item_shop = sells_shop[
            _Grouped(sells_cat, shop_pop[sells_shop], n_cat).draw(rng, self.item_cat)
        ]
        self.item_brand = _draw(rng, _zipf(rng, cfg.n_brands, 1.0), n_items)
        brand_q = rng.normal(0.0, 0.6 * cfg.quality_sd, cfg.n_brands)
        self.item_q = brand_q[self.item_brand] + rng.normal(0.0, 0.8 * cfg.quality_sd, n_items)
        # Coupons: one per shop first, then by shop popularity; discount level 1..5.
        cshop = _draw(rng, shop_pop, cfg.n_coupons)
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


class _Chunk:
    """Mutable state of one chunk's users, ordered by step count (descending)."""

    def __init__(self, cfg: SimConfig, w: _World, n: int, rng: np.random.Generator) -> None:
        m = cfg.events_per_user - 1.0
        lam = rng.gamma(cfg.steps_dispersion, m / cfg.steps_dispersion, n) if m > 0 else np.zeros(n)
        steps = 1 + rng.poisson(lam)
        self.order = np.argsort(-steps, kind="stable")  # chunk position -> local user
        self.steps = steps[self.order]
        # Sessions: m_u starts spread like sorted uniforms over the user's active window.
        self.rem_sess = 1 + rng.binomial(self.steps - 1, 1.0 / cfg.steps_per_session)
        span = cfg.days * _DAY
        self.room = span * rng.uniform(_MIN_WINDOW, 1.0, n)
        self.anchor = rng.random(n) * (span - self.room)
        self.prev_t = np.full(n, _NEVER, dtype=np.int64)
        self.prev_end = np.full(n, _NEVER, dtype=np.int64)
        self.fav = _draw(rng, w.fav_pop, 2 * n).reshape(n, 2)
        self.aff = rng.normal(0.0, cfg.coupon_affinity_sd, n)
        self.fav_pop = w.fav_pop
        # Ring buffer of the last R item behaviours (int32/int8 to halve memory traffic).
        shape = (n, cfg.history_len)
        self.b_item = np.full(shape, -1, dtype=np.int32)
        self.b_cat = np.full(shape, -1, dtype=np.int32)
        self.b_shop = np.full(shape, -1, dtype=np.int32)
        self.b_t = np.zeros(shape, dtype=np.int64)
        self.b_act = np.full(shape, _NONE, dtype=np.int8)
        self.count = np.zeros(n, dtype=np.int64)

    def push(self, rows: np.ndarray, item: np.ndarray, w: _World, ts: np.ndarray, act: int) -> None:
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
        return _WEIGHT[self.b_act[:a]] * np.exp((self.b_t[:a] - t[:, None]) / (tau_days * _DAY))

    def pick(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A uniform buffered slot per row, and whether the row's user has any behaviour yet."""
        fill = np.minimum(self.count[rows], self.b_item.shape[1])
        return (rng.random(len(rows)) * fill).astype(np.int64), fill > 0


class _Log:
    """Per-step records as column dicts (chunk positions, relative times); a column a part
    lacks reads as its fill value (-1 ids, NaN labels/probs)."""

    def __init__(self) -> None:
        self.events: list[dict[str, np.ndarray]] = []
        self.samples: list[dict[str, np.ndarray]] = []

    def event(self, pos: np.ndarray, ts: np.ndarray, act: int, obj: str, ids: np.ndarray) -> None:
        """Records behaviours of one action on objects ``ids`` (``obj`` names their field)."""
        self.events.append({"pos": pos, C.TS: ts, C.ACTION: np.full(len(pos), act), obj: ids})


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _advance_time(
    cfg: SimConfig, st: _Chunk, k: int, a: int, rng: np.random.Generator
) -> np.ndarray:
    """Times of step ``k`` for the ``a`` active users; starts sessions where due."""
    u_brk, u_gap = rng.random(a), rng.random(a)
    think = 10 + rng.exponential(cfg.think_seconds, a).astype(np.int64)
    # Spread the remaining session starts uniformly over the remaining steps.
    brk = u_brk * (st.steps[:a] - k) < st.rem_sess[:a] if k else np.ones(a, dtype=bool)
    b = np.flatnonzero(brk)
    # Sequential Dirichlet: the next spacing takes a Beta(1, sessions left) share of the room.
    gap = st.room[b] * (1.0 - u_gap[b] ** (1.0 / st.rem_sess[b]))
    st.anchor[b] += gap
    st.room[b] -= gap
    st.rem_sess[b] -= 1
    t = st.prev_end[:a] + think
    t[b] = np.maximum(t[b], np.ceil(st.anchor[b]).astype(np.int64))
    # Interest drift: the longer the pause, the likelier a favourite has been replaced.
    if k:
        p = 1.0 - np.exp(-cfg.drift_per_day * (t - st.prev_t[:a]) / _DAY)
        d = np.flatnonzero(rng.random(a) < p)
        st.fav[d, rng.integers(0, 2, len(d))] = _draw(rng, st.fav_pop, len(d))
    return t


def _pick_items(
    cfg: SimConfig, w: _World, st: _Chunk, a: int, rng: np.random.Generator
) -> np.ndarray:
    """The impressed item of each active user: favourite, recent or popular category, or
    retargeting of a recently touched item."""
    rows = np.arange(a)
    slot, has = st.pick(rows, rng)
    u = rng.random(a)
    c_fav = cfg.p_favourite
    c_rec = c_fav + cfg.p_recent_category
    c_ret = c_rec + cfg.p_retarget
    cat = np.where(u < c_fav, st.fav[rows, rng.integers(0, 2, a)], _draw(rng, w.cat_pop, a))
    cat = np.where((u >= c_fav) & (u < c_rec) & has, st.b_cat[rows, slot], cat)
    item = w.items.draw(rng, cat)
    return np.where((u >= c_rec) & (u < c_ret) & has, st.b_item[rows, slot], item)


def _item_step(
    cfg: SimConfig, w: _World, st: _Chunk, t: np.ndarray, dec: np.ndarray, imp: np.ndarray,
    log: _Log, rng: np.random.Generator, alive: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Impressions for the active users where ``imp``; returns when each one's last behaviour
    ended. Computed for all active users (contiguous views beat gathering rows)."""
    a = len(t)
    item = _pick_items(cfg, w, st, a, rng)
    cat = w.item_cat[item]
    acts = st.b_act[:a]
    same = np.where(st.b_item[:a] == item[:, None], dec, 0.0)
    interest = np.log1p(np.where(st.b_cat[:a] == cat[:, None], dec, 0.0).sum(1))
    bought = np.where(acts == _BUY, same, 0.0).sum(1)
    engaged = np.log1p(np.maximum(same.sum(1) - bought, 0.0))  # clicks and carts
    bought /= _WEIGHT[_BUY]
    fav = (st.fav[:a] == cat[:, None]).any(1)
    q = w.item_q[item]
    z_click = cfg.click_base + q + cfg.click_favourite * fav + cfg.click_recent * interest
    p_click = _sigmoid(z_click + cfg.click_item * engaged - cfg.click_bought * bought)
    p_cart = _sigmoid(cfg.cart_base + cfg.cart_item * engaged + 0.5 * q)
    z_buy = cfg.buy_base + q + cfg.buy_item * engaged + cfg.buy_recent * interest
    z_buy -= cfg.buy_bought * bought
    p_buy_cart, p_buy_plain = _sigmoid(z_buy + cfg.buy_cart), _sigmoid(z_buy)
    # The purchase prob is marginal over what happens after the impression (click, cart).
    p_buy = p_click * (p_cart * p_buy_cart + (1.0 - p_cart) * p_buy_plain)

    uc, ua, ub, keep = rng.random(a), rng.random(a), rng.random(a), rng.random(a)
    click = imp & (uc < p_click)
    cart = click & (ua < p_cart)
    buy = click & (ub < np.where(cart, p_buy_cart, p_buy_plain))
    t_click = t + rng.integers(2, 61, a)
    t_cart = t_click + rng.integers(10, 241, a)
    t_buy = np.where(cart, t_cart, t_click) + rng.integers(30, 601, a)

    k = np.flatnonzero(alive & imp & (keep < cfg.impression_sample_rate))
    log.samples.append({
        "pos": k, C.TS: t[k], C.ITEM: item[k], C.label_col("click"): click[k],
        C.label_col("purchase"): buy[k], C.prob_col("click"): p_click[k],
        C.prob_col("purchase"): p_buy[k],
    })  # fmt: skip
    for act, mask, ts in ((_CLICK, click, t_click), (_CART, cart, t_cart), (_BUY, buy, t_buy)):
        rows = np.flatnonzero(mask)
        st.push(rows, item[rows], w, ts[rows], act)
        rec = rows[alive[rows]]
        log.event(rec, ts[rec], act, C.ITEM, item[rec])
    return np.where(buy, t_buy, np.where(cart, t_cart, np.where(click, t_click, t)))


def _coupon_step(
    cfg: SimConfig, w: _World, st: _Chunk, cc: np.ndarray, t: np.ndarray, dec: np.ndarray,
    log: _Log, rng: np.random.Generator, alive: np.ndarray,
) -> None:  # fmt: skip
    """Coupon offers for users ``cc`` at times ``t``: receive now, maybe use later."""
    n = len(cc)
    slot, has = st.pick(cc, rng)
    shop = _draw(rng, w.offer_pop, n)
    recent = has & (rng.random(n) < cfg.p_coupon_recent_shop)
    shop[recent] = st.b_shop[cc[recent], slot[recent]]
    cnt = w.shop_count[shop]
    pick = w.shop_start[shop] + (rng.random(n) * cnt).astype(np.int64)
    # A recent shop without coupons falls back to a popular shop's coupon.
    fallback = w.by_shop[w.shop_start[_draw(rng, w.offer_pop, n)]]
    coupon = np.where(cnt > 0, w.by_shop[np.minimum(pick, cfg.n_coupons - 1)], fallback)
    shop = w.coupon_shop[coupon]

    near = np.log1p(np.where(st.b_shop[cc] == shop[:, None], dec, 0.0).sum(1))
    z = cfg.use_base + cfg.use_discount * (w.coupon_disc[coupon] - 3) + cfg.use_shop * near
    p_use = _sigmoid(z + st.aff[cc])
    used = rng.random(n) < p_use
    # Truncated exponential delay: the use always falls inside the validity window.
    valid, mean = cfg.coupon_valid_days * _DAY, cfg.use_delay_days * _DAY
    delay = -mean * np.log1p(-rng.random(n) * -math.expm1(-valid / mean))
    t_use = t + np.clip(delay.astype(np.int64), 60, max(60, int(valid) - 1))

    a, u = np.flatnonzero(alive), np.flatnonzero(alive & used)
    log.samples.append({
        "pos": cc[a], C.TS: t[a], C.COUPON: coupon[a], C.label_col("coupon"): used[a],
        C.prob_col("coupon"): p_use[a],
    })  # fmt: skip
    log.event(cc[a], t[a], _RECEIVE, C.COUPON, coupon[a])
    log.event(cc[u], t_use[u], _USE, C.COUPON, coupon[u])
