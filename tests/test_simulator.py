"""Tests of the shop simulator: contract, determinism, label truth, timing, signal strength."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_prep import contract as C
from data_prep.schema import EVENT_SCHEMA, SAMPLE_BASE_SCHEMA
from data_prep.sources.sim import TASKS, SimConfig, SimSummary, sim_config_from_dict, simulate

ITEM_FIELDS = C.GROUP_FIELDS["item"]
COUPON_FIELDS = C.GROUP_FIELDS["coupon"]
#: The id field a history-blind model may condition on, per task.
TARGET_KEY = {"click": C.ITEM, "purchase": C.ITEM, "coupon": C.COUPON}


@dataclass
class Sim:
    cfg: SimConfig
    summary: SimSummary
    out: Path
    events: pl.DataFrame
    samples: pl.DataFrame


def _run(cfg: SimConfig, out: Path) -> Sim:
    summary = simulate(cfg, out)
    events = pl.scan_parquet(out / "events" / "*.parquet").collect()
    samples = pl.scan_parquet(out / "samples" / "*.parquet").collect()
    return Sim(cfg, summary, out, events, samples)


@pytest.fixture(scope="module")
def default_sim(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    """The default configuration (the project's default data), simulated once."""
    return _run(SimConfig(), tmp_path_factory.mktemp("sim_default"))


@pytest.fixture(scope="module")
def chunked_sim(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    """A small run split into three chunks."""
    return _run(SimConfig(n_users=250, chunk_users=100, seed=7), tmp_path_factory.mktemp("sim3"))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U), ties counted as half."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # average 1-based rank of each value
    ranks = mid_rank[inv]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _task_rows(samples: pl.DataFrame, task: str) -> pl.DataFrame:
    return samples.filter(pl.col(C.label_col(task)).is_not_null())


def test_auc_helper() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_schema_matches_contract(default_sim: Sim) -> None:
    assert default_sim.events.schema == pl.Schema(EVENT_SCHEMA)
    want = {
        **SAMPLE_BASE_SCHEMA,
        **{C.label_col(t): pl.Int8() for t in TASKS},
        **{C.prob_col(t): pl.Float64() for t in TASKS},
    }
    assert default_sim.samples.schema == pl.Schema(want)
    assert C.tasks_in(default_sim.samples.columns) == ["click", "purchase", "coupon"]
    assert default_sim.events.height > 0 and default_sim.samples.height > 0


def test_group_and_field_consistency(default_sim: Sim) -> None:
    ev, sm = default_sim.events, default_sim.samples
    assert set(ev.get_column(C.GROUP).unique()) == {"item", "coupon"}
    assert set(sm.get_column(C.GROUP).unique()) == {"item", "coupon"}
    actions = {"item": {"click", "cart", "purchase"}, "coupon": {"receive", "use"}}
    for group, acts in actions.items():
        assert set(ev.filter(pl.col(C.GROUP) == group).get_column(C.ACTION).unique()) == acts
    for df in (ev, sm):
        for group, present in C.GROUP_FIELDS.items():
            rows = df.filter(pl.col(C.GROUP) == group)
            for f in C.ID_FIELDS:
                nulls = rows.get_column(f).null_count()
                assert nulls == (0 if f in present else rows.height), (group, f)
        # Raw ids are decimal strings of non-negative ints; discount levels are 1..5.
        for f in C.ID_FIELDS:
            assert (df.get_column(f).drop_nulls().str.contains(r"^\d+$")).all(), f
        disc = df.get_column(C.DISCOUNT).drop_nulls().cast(pl.Int64).to_numpy()
        assert disc.min() >= 1 and disc.max() <= 5
    items, coupons = sm.filter(pl.col(C.GROUP) == "item"), sm.filter(pl.col(C.GROUP) == "coupon")
    for task in TASKS:
        on_items = task != "coupon"
        for df, applies in ((items, on_items), (coupons, not on_items)):
            for col in (C.label_col(task), C.prob_col(task)):
                assert df.get_column(col).null_count() == (0 if applies else df.height), col
    # A purchase label needs a click at that impression.
    assert (items[C.label_col("purchase")] <= items[C.label_col("click")]).all()
    for task in TASKS:
        p = _task_rows(sm, task).get_column(C.prob_col(task)).to_numpy()
        assert p.min() > 0.0 and p.max() < 1.0
        assert set(_task_rows(sm, task).get_column(C.label_col(task)).unique()) == {0, 1}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    cfg = SimConfig(n_users=120, seed=11)
    a, b = _run(cfg, tmp_path / "a"), _run(cfg, tmp_path / "b")
    assert a.events.equals(b.events) and a.samples.equals(b.samples)
    for sub in ("events", "samples"):
        part = f"{sub}/part-00000.parquet"
        assert (a.out / part).read_bytes() == (b.out / part).read_bytes()
    c = _run(SimConfig(n_users=120, seed=12), tmp_path / "c")
    assert not c.events.equals(a.events)
    assert not c.samples.equals(a.samples)


def test_rerun_replaces_old_parts(tmp_path: Path) -> None:
    simulate(SimConfig(n_users=30, chunk_users=10), tmp_path)
    simulate(SimConfig(n_users=30, chunk_users=30), tmp_path)
    assert [p.name for p in sorted((tmp_path / "events").iterdir())] == ["part-00000.parquet"]


def test_chunks_parts_users_and_order(chunked_sim: Sim) -> None:
    out = chunked_sim.out
    assert chunked_sim.summary.n_parts == 3
    for sub in ("events", "samples"):
        parts = sorted((out / sub).glob("part-*.parquet"))
        assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(3)]
        users_per_part = []
        for p in parts:
            df = pl.read_parquet(p)
            key = df.select(pl.col(C.USER).cast(pl.Int64), C.TS)
            assert key.equals(key.sort(C.USER, C.TS, maintain_order=True)), p
            users_per_part.append(set(key.get_column(C.USER)))
        for i in range(3):  # each chunk holds its own contiguous user range
            assert users_per_part[i] <= set(range(100 * i, 100 * (i + 1)))
    users = chunked_sim.samples.get_column(C.USER).cast(pl.Int64).to_numpy()
    assert users.min() >= 0 and users.max() < 250


def test_summary_matches_tables(default_sim: Sim) -> None:
    s, ev, sm = default_sim.summary, default_sim.events, default_sim.samples
    counts = dict(ev.get_column(C.ACTION).value_counts().iter_rows())
    assert s.events_by_action == {a: counts.get(a, 0) for a in s.events_by_action}
    for task in TASKS:
        labels = _task_rows(sm, task).get_column(C.label_col(task))
        assert s.samples_by_task[task] == labels.len()
        assert s.positive_rate[task] == pytest.approx(labels.to_numpy().mean())
    assert s.n_users == default_sim.cfg.n_users and s.seconds > 0


def test_timestamps_inside_span(default_sim: Sim) -> None:
    cfg = default_sim.cfg
    ts = default_sim.samples.get_column(C.TS).to_numpy()
    assert ts.min() >= cfg.start_ts and ts.max() < cfg.start_ts + cfg.days * 86_400
    # Every step of a user has its own second: samples never tie within a user.
    assert default_sim.samples.select(C.USER, C.TS).is_unique().all()


def test_positive_rates_plausible(default_sim: Sim) -> None:
    rate = default_sim.summary.positive_rate
    assert 0.15 <= rate["click"] <= 0.30
    assert 0.02 <= rate["purchase"] <= 0.08
    assert 0.15 <= rate["coupon"] <= 0.35
    n_imp = default_sim.summary.samples_by_task["click"]
    n_off = default_sim.summary.samples_by_task["coupon"]
    # coupon_offer_rate of the steps are coupon offers; impressions are subsampled.
    share = n_off / (n_off + n_imp / default_sim.cfg.impression_sample_rate)
    assert abs(share - default_sim.cfg.coupon_offer_rate) <= 0.02


@pytest.mark.parametrize("task", TASKS)
def test_labels_are_draws_of_the_recorded_probs(default_sim: Sim, task: str) -> None:
    """Overall and per probability quintile, the label mean matches the prob mean within
    4.5 standard errors of a sum of independent Bernoulli(prob) draws."""
    df = _task_rows(default_sim.samples, task)
    y = df.get_column(C.label_col(task)).to_numpy().astype(np.float64)
    p = df.get_column(C.prob_col(task)).to_numpy()
    bins = np.searchsorted(np.quantile(p, [0.2, 0.4, 0.6, 0.8]), p)
    for mask in [np.ones(len(p), dtype=bool)] + [bins == b for b in range(5)]:
        se = math.sqrt(float((p[mask] * (1 - p[mask])).sum())) / mask.sum()
        assert abs(y[mask].mean() - p[mask].mean()) <= 4.5 * se, (task, mask.sum())


def _first_after(samples: pl.DataFrame, events: pl.DataFrame, action: str, key: str) -> np.ndarray:
    """Seconds from each sample to the first ``action`` event on the same (user, key) at or
    after the sample time (NaN when there is none)."""
    ev = events.filter(pl.col(C.ACTION) == action).select(C.USER, key, pl.col(C.TS).alias("ev_ts"))
    joined = samples.sort(C.TS).join_asof(
        ev.sort("ev_ts"), left_on=C.TS, right_on="ev_ts", by=[C.USER, key], strategy="forward",
        check_sortedness=False,  # both sides are sorted by time just above
    )  # fmt: skip
    return (joined.get_column("ev_ts") - joined.get_column(C.TS)).cast(pl.Float64).to_numpy()


def test_consequences_follow_the_sample(default_sim: Sim) -> None:
    ev, sm = default_sim.events, default_sim.samples
    clicked = sm.filter(pl.col(C.label_col("click")) == 1)
    gap = _first_after(clicked, ev, "click", C.ITEM)
    assert not np.isnan(gap).any() and gap.min() >= 2 and gap.max() <= 60
    bought = sm.filter(pl.col(C.label_col("purchase")) == 1)
    gap = _first_after(bought, ev, "purchase", C.ITEM)
    assert not np.isnan(gap).any() and gap.min() > 30 and gap.max() <= 60 + 240 + 600
    offers = sm.filter(pl.col(C.GROUP) == "coupon")
    gap = _first_after(offers, ev, "receive", C.COUPON)
    assert (gap == 0).all()  # the receive is at the sample ts (NaN would fail too)
    receives = ev.filter(pl.col(C.ACTION) == "receive").select(C.USER, C.TS, C.COUPON)
    assert receives.sort(pl.all()).equals(offers.select(C.USER, C.TS, C.COUPON).sort(pl.all()))
    used = offers.filter(pl.col(C.label_col("coupon")) == 1)
    gap = _first_after(used.with_columns(pl.col(C.TS) + 1), ev, "use", C.COUPON)
    valid = default_sim.cfg.coupon_valid_days * 86_400
    assert not np.isnan(gap).any() and gap.max() < valid
    # Every use belongs to an offer that is labelled used.
    assert ev.filter(pl.col(C.ACTION) == "use").height == used.height


@pytest.mark.parametrize("task", TASKS)
def test_history_beats_the_blind_ceiling(default_sim: Sim, task: str) -> None:
    """The oracle AUC clearly exceeds the best history-blind AUC: the per-target mean prob
    (an optimistic ceiling, since it is measured on the very samples it scores)."""
    df = _task_rows(default_sim.samples, task).with_columns(
        pl.col(C.prob_col(task)).mean().over(TARGET_KEY[task]).alias("blind")
    )
    y = df.get_column(C.label_col(task)).to_numpy()
    oracle = auc(y, df.get_column(C.prob_col(task)).to_numpy())
    blind = auc(y, df.get_column("blind").to_numpy())
    assert oracle - blind >= 0.08, (oracle, blind)
    assert 0.75 <= oracle <= 0.95, oracle  # learnable, yet labels stay random


def test_blind_ceiling_is_exact_without_history(tmp_path: Path) -> None:
    """With every history and user effect switched off the truth depends on the target only,
    so the blind ceiling equals the oracle: the margin above measures history."""
    off = {
        k: 0.0
        for k in (
            "click_favourite", "click_recent", "click_item", "click_bought", "cart_item",
            "buy_item", "buy_recent", "buy_bought", "use_shop", "coupon_affinity_sd",
        )
    }  # fmt: skip
    sm = _run(sim_config_from_dict({"n_users": 300, "seed": 5, **off}), tmp_path).samples
    for task in TASKS:
        df = _task_rows(sm, task)
        spread = df.group_by(TARGET_KEY[task]).agg(pl.col(C.prob_col(task)).n_unique().alias("n"))
        assert spread.get_column("n").max() == 1, task


def test_config_from_dict_accepts_valid_values() -> None:
    cfg = sim_config_from_dict({"n_users": 10, "events_per_user": 5, "coupon_offer_rate": 1})
    assert cfg.n_users == 10 and cfg.events_per_user == 5.0
    assert isinstance(cfg.events_per_user, float) and isinstance(cfg.coupon_offer_rate, float)
    assert sim_config_from_dict({}) == SimConfig()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"n_user": 5}, "n_user"),
        ({"n_users": 0}, "n_users"),
        ({"n_items": -3}, "n_items"),
        ({"days": 2.5}, "days"),
        ({"n_users": True}, "n_users"),
        ({"seed": "1"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"impression_sample_rate": 1.5}, "impression_sample_rate"),
        ({"coupon_offer_rate": -0.1}, "coupon_offer_rate"),
        ({"events_per_user": 0.5}, "events_per_user"),
        ({"decay_days": 0.0}, "decay_days"),
        ({"click_base": float("nan")}, "click_base"),
        ({"click_base": "high"}, "click_base"),
        ({"n_items": 10, "n_categories": 20}, "n_items"),
        ({"p_favourite": 0.6, "p_recent_category": 0.5}, "p_favourite"),
    ],
)
def test_config_from_dict_rejects(params: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        sim_config_from_dict(params)
