"""The simulator's settings (:class:`SimConfig`) and their validation.

Everything after ``start_ts`` shapes the strength of the behaviours the truth rewards; the
logits are written out in the comments of the fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


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
