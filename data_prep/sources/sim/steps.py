"""The simulator's vectorised step functions: advance time, show items, offer coupons.

Each works on the prefix of the chunk's users still active at the step, never looping over
users; the random draws happen in a fixed order, so the output is a pure function of the
config.
"""

from __future__ import annotations

import math

import numpy as np

from data_prep import contract as C
from data_prep.sources.sim.config import SimConfig
from data_prep.sources.sim.world import (
    BUY,
    CART,
    CLICK,
    DAY,
    RECEIVE,
    USE,
    WEIGHT,
    Chunk,
    Log,
    World,
    draw,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def advance_time(cfg: SimConfig, st: Chunk, k: int, a: int, rng: np.random.Generator) -> np.ndarray:
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
        p = 1.0 - np.exp(-cfg.drift_per_day * (t - st.prev_t[:a]) / DAY)
        d = np.flatnonzero(rng.random(a) < p)
        st.fav[d, rng.integers(0, 2, len(d))] = draw(rng, st.fav_pop, len(d))
    return t


def _pick_items(
    cfg: SimConfig, w: World, st: Chunk, a: int, rng: np.random.Generator
) -> np.ndarray:
    """The impressed item of each active user: favourite, recent or popular category, or
    retargeting of a recently touched item."""
    rows = np.arange(a)
    slot, has = st.pick(rows, rng)
    u = rng.random(a)
    c_fav = cfg.p_favourite
    c_rec = c_fav + cfg.p_recent_category
    c_ret = c_rec + cfg.p_retarget
    cat = np.where(u < c_fav, st.fav[rows, rng.integers(0, 2, a)], draw(rng, w.cat_pop, a))
    cat = np.where((u >= c_fav) & (u < c_rec) & has, st.b_cat[rows, slot], cat)
    item = w.items.draw(rng, cat)
    return np.where((u >= c_rec) & (u < c_ret) & has, st.b_item[rows, slot], item)


def item_step(
    cfg: SimConfig, w: World, st: Chunk, t: np.ndarray, dec: np.ndarray, imp: np.ndarray,
    log: Log, rng: np.random.Generator, alive: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Impressions for the active users where ``imp``; returns when each one's last behaviour
    ended. Computed for all active users (contiguous views beat gathering rows)."""
    a = len(t)
    item = _pick_items(cfg, w, st, a, rng)
    cat = w.item_cat[item]
    acts = st.b_act[:a]
    same = np.where(st.b_item[:a] == item[:, None], dec, 0.0)
    interest = np.log1p(np.where(st.b_cat[:a] == cat[:, None], dec, 0.0).sum(1))
    bought = np.where(acts == BUY, same, 0.0).sum(1)
    engaged = np.log1p(np.maximum(same.sum(1) - bought, 0.0))  # clicks and carts
    bought /= WEIGHT[BUY]
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
    for act, mask, ts in ((CLICK, click, t_click), (CART, cart, t_cart), (BUY, buy, t_buy)):
        rows = np.flatnonzero(mask)
        st.push(rows, item[rows], w, ts[rows], act)
        rec = rows[alive[rows]]
        log.event(rec, ts[rec], act, C.ITEM, item[rec])
    return np.where(buy, t_buy, np.where(cart, t_cart, np.where(click, t_click, t)))


def coupon_step(
    cfg: SimConfig, w: World, st: Chunk, cc: np.ndarray, t: np.ndarray, dec: np.ndarray,
    log: Log, rng: np.random.Generator, alive: np.ndarray,
) -> None:  # fmt: skip
    """Coupon offers for users ``cc`` at times ``t``: receive now, maybe use later."""
    n = len(cc)
    slot, has = st.pick(cc, rng)
    shop = draw(rng, w.offer_pop, n)
    recent = has & (rng.random(n) < cfg.p_coupon_recent_shop)
    shop[recent] = st.b_shop[cc[recent], slot[recent]]
    cnt = w.shop_count[shop]
    pick = w.shop_start[shop] + (rng.random(n) * cnt).astype(np.int64)
    # A recent shop without coupons falls back to a popular shop's coupon.
    fallback = w.by_shop[w.shop_start[draw(rng, w.offer_pop, n)]]
    coupon = np.where(cnt > 0, w.by_shop[np.minimum(pick, cfg.n_coupons - 1)], fallback)
    shop = w.coupon_shop[coupon]

    near = np.log1p(np.where(st.b_shop[cc] == shop[:, None], dec, 0.0).sum(1))
    z = cfg.use_base + cfg.use_discount * (w.coupon_disc[coupon] - 3) + cfg.use_shop * near
    p_use = _sigmoid(z + st.aff[cc])
    used = rng.random(n) < p_use
    # Truncated exponential delay: the use always falls inside the validity window.
    valid, mean = cfg.coupon_valid_days * DAY, cfg.use_delay_days * DAY
    delay = -mean * np.log1p(-rng.random(n) * -math.expm1(-valid / mean))
    t_use = t + np.clip(delay.astype(np.int64), 60, max(60, int(valid) - 1))

    a, u = np.flatnonzero(alive), np.flatnonzero(alive & used)
    log.samples.append({
        "pos": cc[a], C.TS: t[a], C.COUPON: coupon[a], C.label_col("coupon"): used[a],
        C.prob_col("coupon"): p_use[a],
    })  # fmt: skip
    log.event(cc[a], t[a], RECEIVE, C.COUPON, coupon[a])
    log.event(cc[u], t_use[u], USE, C.COUPON, coupon[u])
