"""Seeded, vectorised shop simulator: the project's default data, with the true probability
behind every label so the oracle AUC is known.

The truth is built so that reading the history (with attention to the target and to time)
pays off: click and purchase depend on decayed interest in the target's category and on
earlier clicks/carts/purchases of the target item itself, coupon use on decayed interactions
with the coupon's shop and on a per-user coupon affinity visible through past receive/use
events. Favourite categories drift, so recent behaviour counts more than old behaviour.

Users are simulated in chunks; within a chunk the loop runs over steps, never over users.
Users are ordered by step count, so the users still active at step ``k`` are a prefix.
The catalogue, the chunk state and the step functions live in :mod:`data_prep.sim_engine`.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from data_prep import contract as C
from data_prep.sim_engine import (
    _DAY,
    ACTIONS,
    _advance_time,
    _Chunk,
    _coupon_step,
    _item_step,
    _Log,
    _World,
)

TASKS: tuple[str, ...] = ("click", "purchase", "coupon")
_PARQUET: dict[str, Any] = {"compression": "lz4"}  # ~2x faster to write than zstd, ~1.3x larger


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings; everything after ``start_ts`` shapes behaviour strength."""

    n_users: int = 4000
    n_items: int = 2000
    n_categories: int = 40
    n_brands: int = 60
    n_shops: int = 100
    n_coupons: int = 300
    days: int = 28  # span of the log
    events_per_user: float = 150.0  # mean number of steps (impressions + coupon offers)
    impression_sample_rate: float = 0.1  # share of impressions kept as samples
    coupon_offer_rate: float = 0.05  # share of steps that are coupon offers
    seed: int = 0
    chunk_users: int = 100_000  # users simulated per chunk (bounds memory)
    start_ts: int = 1_700_000_000  # unix seconds of day 0
    history_len: int = 20  # ring buffer R of item behaviours the truth reads
    decay_days: float = 2.0  # tau of the exponential fading of past behaviours
    drift_per_day: float = 0.1  # rate at which one favourite category is replaced
    steps_per_session: float = 4.0
    steps_dispersion: float = 2.0  # gamma shape of the steps-per-user mixture
    think_seconds: float = 120.0  # mean pause between steps of a session
    category_zipf: float = 1.0
    item_zipf: float = 1.0
    quality_sd: float = 0.5
    p_favourite: float = 0.45  # impression sources; the rest are popular random categories
    p_recent_category: float = 0.2
    p_retarget: float = 0.1  # the exact item of a recent behaviour
    p_coupon_recent_shop: float = 0.5
    # Logits. R = decayed action-weighted behaviours in the target's category (shop for
    # coupons), E = same for clicks/carts of the target item, B = decayed purchases of it:
    # click = base + quality + favourite*[favourite category] + recent*ln(1+R)
    #         + item*ln(1+E) - bought*B;  cart | click = base + item*ln(1+E) + quality/2;
    # buy | click = base + quality + cart*[carted now] + item*ln(1+E) + recent*ln(1+R)
    #         - bought*B;  use = base + discount*(level-3) + shop*ln(1+R_shop) + affinity.
    click_base: float = -3.7
    click_favourite: float = 0.8
    click_recent: float = 1.4
    click_item: float = 0.6
    click_bought: float = 1.5
    cart_base: float = -1.0
    cart_item: float = 0.6
    buy_base: float = -3.6
    buy_cart: float = 1.5
    buy_item: float = 1.6
    buy_recent: float = 0.5
    buy_bought: float = 2.5
    use_base: float = -2.2
    use_discount: float = 0.25
    use_shop: float = 1.6
    coupon_affinity_sd: float = 0.6
    coupon_valid_days: float = 7.0
    use_delay_days: float = 1.0  # mean delay of a use (truncated at validity)

    def __post_init__(self) -> None:
        _validate(self)


#: Allowed range of each bounded field (the others need only be finite numbers).
_RANGE: dict[str, str] = {
    **dict.fromkeys((
        "n_users", "n_items", "n_categories", "n_brands", "n_shops", "n_coupons", "days",
        "chunk_users", "history_len", "events_per_user", "steps_per_session"), ">= 1"),
    **dict.fromkeys((
        "decay_days", "steps_dispersion", "think_seconds", "coupon_valid_days",
        "use_delay_days"), "> 0"),
    **dict.fromkeys((
        "impression_sample_rate", "coupon_offer_rate", "p_favourite", "p_recent_category",
        "p_retarget", "p_coupon_recent_shop"), "in [0, 1]"),
    **dict.fromkeys((
        "seed", "start_ts", "drift_per_day", "category_zipf", "item_zipf", "quality_sd",
        "coupon_affinity_sd"), ">= 0"),
}  # fmt: skip
_RULES = {
    ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
}  # fmt: skip


def _validate(cfg: SimConfig) -> None:
    """Raises ValueError naming the first field with a wrong type or an out-of-range value."""
    for f in fields(cfg):
        v, name, want_int = getattr(cfg, f.name), f.name, isinstance(f.default, int)
        ok = isinstance(v, int) if want_int else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not math.isfinite(v):
            kind = "an int" if want_int else "a finite number"
            raise ValueError(f"{name} must be {kind}, got {v!r}")
        rule = _RANGE.get(name)
        if rule and not _RULES[rule](v):
            raise ValueError(f"{name} must be {rule}, got {v!r}")
    if cfg.n_items < cfg.n_categories:
        raise ValueError(f"n_items ({cfg.n_items}) must be >= n_categories ({cfg.n_categories})")
    if cfg.p_favourite + cfg.p_recent_category + cfg.p_retarget > 1:
        raise ValueError("p_favourite + p_recent_category + p_retarget must be <= 1")


def sim_config_from_dict(d: dict[str, Any]) -> SimConfig:
    """Builds a :class:`SimConfig` from a plain mapping (e.g. a Hydra node).

    Args:
        d: field name -> value; missing fields keep their defaults.

    Returns:
        The validated config.

    Raises:
        ValueError: on an unknown key, or a value of the wrong type or out of range (the
            message names the key).
    """
    kinds = {f.name: f.default for f in fields(SimConfig)}
    unknown = sorted(set(d) - set(kinds))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(kinds)}")
    # Float fields accept ints (YAML writes 60 for 60.0); _validate checks every type.
    clean: dict[str, Any] = {
        k: float(v) if isinstance(kinds[k], float) and type(v) is int else v for k, v in d.items()
    }
    return SimConfig(**clean)


@dataclass
class SimSummary:
    """What :func:`simulate` wrote."""

    n_users: int
    n_parts: int
    events_by_action: dict[str, int]
    samples_by_task: dict[str, int]
    positive_rate: dict[str, float]
    seconds: float


def _column(parts: list[dict[str, np.ndarray]], name: str, fill: float) -> np.ndarray:
    """One column over all parts; parts without it contribute ``fill``."""
    cols = [p.get(name, np.full(len(p["pos"]), fill)) for p in parts]
    return np.concatenate(cols) if cols else np.full(0, fill)


def _user_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by (user, ts), ties kept in recording order (deterministic)."""
    span = int(ts.max()) + 1 if len(ts) else 1
    if len(user) and int(user.max()) < (1 << 62) // span:
        return np.argsort(user * span + ts, kind="stable")  # one int key: ~3x faster
    return np.lexsort((ts, user))


def _table(
    cfg: SimConfig, w: _World, st: _Chunk, parts: list[dict[str, np.ndarray]], first: int,
    extra: tuple[str, ...],
) -> pl.DataFrame:  # fmt: skip
    """A contract table of one chunk's records: user, ts, group, then ``extra`` columns
    placed by the contract, rows sorted by (user, ts). Ids become strings by lookup."""
    user = st.order[_column(parts, "pos", 0).astype(np.int64)]
    ts = _column(parts, C.TS, 0).astype(np.int64)
    o = _user_order(user, ts)
    item = _column(parts, C.ITEM, -1).astype(np.int64)[o]
    coupon = _column(parts, C.COUPON, -1).astype(np.int64)[o]
    is_item = item >= 0
    io, co = np.where(is_item, item, 0), np.where(is_item, 0, coupon)
    ids = {
        C.ITEM: item,
        C.CATEGORY: np.where(is_item, w.item_cat[io], -1),
        C.BRAND: np.where(is_item, w.item_brand[io], -1),
        C.SHOP: np.where(is_item, w.item_shop[io], w.coupon_shop[co]),
        C.COUPON: coupon,
        C.DISCOUNT: np.where(is_item, -1, w.coupon_disc[co]),
    }
    users = pl.Series(np.arange(first, first + len(st.order))).cast(pl.String)
    cols = {
        C.USER: users.gather(user[o]),
        C.TS: pl.Series(ts[o] + cfg.start_ts, dtype=pl.Int64),
        C.GROUP: pl.Series(["coupon", "item"]).gather(is_item.astype(np.int64)),
        **{f: w.id_strings.gather(v + 1) for f, v in ids.items()},
    }
    for name in extra:
        if name == C.ACTION:
            cols[name] = pl.Series(ACTIONS).gather(_column(parts, name, 0).astype(np.int64)[o])
        else:  # labels and probs: NaN where the task does not apply
            v = pl.Series(_column(parts, name, np.nan).astype(np.float64)[o], nan_to_null=True)
            cols[name] = v.cast(pl.Int8) if name.startswith(C.LABEL_PREFIX) else v
    schema = C.EVENT_SCHEMA if C.ACTION in extra else C.SAMPLE_BASE_SCHEMA
    return pl.DataFrame([cols[c].alias(c) for c in dict.fromkeys([*schema, *extra])])


def _simulate_chunk(
    cfg: SimConfig, w: _World, first: int, n: int, rng: np.random.Generator
) -> tuple[pl.DataFrame, ...]:
    """Simulates users ``first .. first + n - 1``; returns (events, samples)."""
    st = _Chunk(cfg, w, n, rng)
    log = _Log()
    neg_steps = -st.steps  # ascending, so the active users' count is one searchsorted
    span = cfg.days * _DAY
    for k in range(int(st.steps[0])):
        a = int(np.searchsorted(neg_steps, -k, side="left"))
        t = _advance_time(cfg, st, k, a, rng)
        alive = t < span  # users past the end of the log are cut (time only grows)
        is_coupon = rng.random(a) < cfg.coupon_offer_rate
        dec = st.decayed(t, cfg.decay_days)
        end = _item_step(cfg, w, st, t, dec, ~is_coupon, log, rng, alive)
        cc = np.flatnonzero(is_coupon)
        _coupon_step(cfg, w, st, cc, t[cc], dec[cc], log, rng, alive[cc])
        st.prev_t[:a], st.prev_end[:a] = t, np.where(is_coupon, t, end)
    labels = tuple(f(t) for f in (C.label_col, C.prob_col) for t in TASKS)
    return (
        _table(cfg, w, st, log.events, first, (C.ACTION,)),
        _table(cfg, w, st, log.samples, first, labels),
    )


def simulate(cfg: SimConfig, out_dir: Path) -> SimSummary:
    """Simulates the shop log and writes it as parquet parts, one per user chunk.

    Args:
        cfg: simulator settings; the output is a pure function of them.
        out_dir: receives ``events/part-XXXXX.parquet`` and ``samples/part-XXXXX.parquet``
            (those two folders are replaced, so no stale part survives).

    Returns:
        Counts of events by action, samples and positive rate per task, and seconds taken.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    for sub in ("events", "samples"):
        if (out_dir / sub).exists():
            shutil.rmtree(out_dir / sub)
        (out_dir / sub).mkdir(parents=True)
    world = _World(cfg)
    by_action = dict.fromkeys(ACTIONS, 0)
    n_task, pos_task = dict.fromkeys(TASKS, 0), dict.fromkeys(TASKS, 0)
    parts = 0
    for parts, first in enumerate(range(0, cfg.n_users, cfg.chunk_users), start=1):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, parts - 1]))
        n = min(cfg.chunk_users, cfg.n_users - first)
        events, samples = _simulate_chunk(cfg, world, first, n, rng)
        events.write_parquet(out_dir / "events" / f"part-{parts - 1:05d}.parquet", **_PARQUET)
        samples.write_parquet(out_dir / "samples" / f"part-{parts - 1:05d}.parquet", **_PARQUET)
        for action, cnt in events.get_column(C.ACTION).value_counts().iter_rows():
            by_action[action] += cnt
        for task in TASKS:
            lab = samples.get_column(C.label_col(task))
            n_task[task] += lab.len() - lab.null_count()
            pos_task[task] += int(lab.sum())
    rate = {t: pos_task[t] / n_task[t] if n_task[t] else 0.0 for t in TASKS}
    return SimSummary(cfg.n_users, parts, by_action, n_task, rate, time.perf_counter() - t0)
