"""The next-item protocol, the leave-last-out split and the adapter sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from data_prep import contract as C
from data_prep.pipeline import PrepConfig, PrepError, prepare
from data_prep.run import prepare_from_config
from data_prep.schema import EVENT_SCHEMA
from data_prep.sources.protocol import Pool, draw_negatives, next_item_samples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real data samples not found at {SHARED} (../shared/data)"
)
PREP = PrepConfig()


def _events(rows: list[tuple[str, int, str, str]]) -> pl.DataFrame:
    """Canonical item events from ``(user, ts, action, item)``; category = ``c_<item>``."""
    data: dict[str, list[Any]] = {
        C.USER: [r[0] for r in rows],
        C.TS: [r[1] for r in rows],
        C.GROUP: ["item"] * len(rows),
        C.ACTION: [r[2] for r in rows],
        C.ITEM: [r[3] for r in rows],
        C.CATEGORY: [f"c_{r[3]}" for r in rows],
    }
    return pl.DataFrame(
        {k: data.get(k, [None] * len(rows)) for k in EVENT_SCHEMA}, schema=EVENT_SCHEMA
    )


def _log() -> pl.DataFrame:
    """u1: 5 reviews (two at the same second), u2: 3, u3: 2, u4: 1; catalogue of 12 items."""
    rows = [("u1", 10 * k, "review", f"i{k}") for k in range(4)] + [("u1", 30, "review", "i9")]
    rows += [("u2", 5 + k, "review", f"i{k + 4}") for k in range(3)]
    rows += [("u3", 7, "review", "i10"), ("u3", 8, "review", "i11")]
    rows += [("u4", 1, "review", "i0"), ("u4", 2, "cart", "i7")]
    return _events(rows)


TASKS = {"click": ["review"]}


def test_pairs_splits_and_negatives() -> None:
    ev = _log()
    sm, stats = next_item_samples(ev, TASKS, negatives=1, seed=3)
    pos = sm.filter(pl.col("label_click") == 1)
    neg = sm.filter(pl.col("label_click") == 0)
    assert pos.height == neg.height == 4 + 2 + 1  # positives - 1 per user, u4 none
    per_user = dict(pos.group_by(C.USER).len().iter_rows())
    assert per_user == {"u1": 4, "u2": 2, "u3": 1}
    # Ties broken by input order: u1's items at ts 30 are i3 then i9 (the last = test).
    u1 = pos.filter(pl.col(C.USER) == "u1")
    assert u1[C.ITEM].to_list() == ["i1", "i2", "i3", "i9"]
    assert u1[C.SPLIT_COL].to_list() == [0, 0, 1, 2]
    assert pos.filter(pl.col(C.USER) == "u2")[C.SPLIT_COL].to_list() == [1, 2]
    assert pos.filter(pl.col(C.USER) == "u3")[C.SPLIT_COL].to_list() == [0]  # < 3: train only
    # Each negative sits right after its positive: same user, ts and split.
    pairs = sm.select(C.USER, C.TS, C.SPLIT_COL).to_numpy().reshape(-1, 2, 3)
    assert (pairs[:, 0] == pairs[:, 1]).all()
    assert sm["label_click"].to_list()[::2] == [1] * 7
    # Negatives: never an item of the user (any behaviour), with the catalogue's fields.
    seen = ev.group_by(C.USER).agg(pl.col(C.ITEM))
    joined = neg.join(seen, on=C.USER, suffix="_seen")
    assert not joined.select(pl.col(C.ITEM).is_in(pl.col(C.ITEM + "_seen"))).to_series().any()
    assert (neg[C.CATEGORY] == "c_" + neg[C.ITEM]).all()
    t = stats["tasks"]["click"]
    assert (t["users_with_eval"], t["users_train_only"], t["users_without_pairs"]) == (2, 1, 1)
    assert t["rows"] == {"train": 6, "val": 4, "test": 4}


def test_negatives_seeded() -> None:
    ev = _log()
    a, _ = next_item_samples(ev, TASKS, seed=0)
    b, _ = next_item_samples(ev, TASKS, seed=0)
    assert a.equals(b)
    others = [next_item_samples(ev, TASKS, seed=s)[0] for s in range(1, 6)]
    assert any(not a.equals(o) for o in others)
    two, _ = next_item_samples(ev, TASKS, negatives=2, seed=0)
    assert two.filter(pl.col("label_click") == 0).height == 14


def test_draw_negatives_rejects_taken_and_full_users() -> None:
    n_items = 4
    taken = np.array([0 * n_items + i for i in range(4)] + [1 * n_items + 0, 1 * n_items + 1])
    users = np.array([0, 1] * 500)
    pos = np.where(users == 0, 0, 1)
    pools = [Pool(np.arange(n_items, dtype=np.int64))]
    which = np.zeros(users.size, dtype=np.int64)
    neg = draw_negatives(np.random.default_rng(0), users, pos, pools, which, np.sort(taken), 4)
    assert (neg[users == 0] == -1).all()  # user 0 has every item: no negative possible
    assert set(neg[users == 1].tolist()) == {2, 3}
    # Excluding only the positive: any other item of the pool, the user's own included.
    neg = draw_negatives(np.random.default_rng(0), users, pos, pools, which, None, 4)
    assert set(neg[users == 0].tolist()) == {1, 2, 3} and set(neg[users == 1].tolist()) == {0, 2, 3}
    # Popularity weights: an item with 9x the events is drawn about 9x as often.
    pop = [Pool(np.array([2, 3]), np.cumsum([9.0, 1.0]))]
    neg = draw_negatives(np.random.default_rng(0), users, pos, pop, which, None, 4)
    share = float((neg == 2).mean())
    assert 0.85 < share < 0.95


def test_multi_behaviour_tasks(tmp_path: Path) -> None:
    rows = [("u1", t, "click", f"i{t}") for t in range(1, 7)]
    rows += [("u1", 3, "purchase", "i3"), ("u1", 5, "purchase", "i5"), ("u1", 7, "purchase", "i6")]
    rows += [("u2", 1, "click", "i1"), ("u2", 2, "click", "i2")]
    ev = _events(rows + [("u3", 1, "click", f"i{k}") for k in range(10, 20)])
    sm, stats = next_item_samples(ev, {"click": ["click"], "purchase": ["purchase"]})
    buy = sm.filter(pl.col("label_purchase").is_not_null())
    assert buy["label_click"].is_null().all()
    assert buy.filter(pl.col("label_purchase") == 1)[C.TS].to_list() == [5, 7]
    assert buy[C.SPLIT_COL].to_list() == [1, 1, 2, 2]
    click = sm.filter(pl.col("label_click").is_not_null())
    assert click["label_purchase"].is_null().all()
    assert stats["tasks"]["click"]["positives"] == 18
    # Histories: the purchase at ts 5 sees every behaviour before ts 5 (clicks and buy).
    res = prepare(
        ev.lazy(), sm.lazy(), tmp_path, PrepConfig(), {"name": "t"}, "fp", split="leave_last_out"
    )
    assert set(res.meta.tasks) == {"click", "purchase"}


def _prepared(ev: pl.DataFrame, sm: pl.DataFrame, out: Path) -> dict[str, pl.DataFrame]:
    prepare(ev.lazy(), sm.lazy(), out, PrepConfig(), {"name": "t"}, "fp", split="leave_last_out")
    files = {s: pl.read_parquet(out / C.samples_file(s)) for s in C.SPLITS}
    files["timeline"] = pl.read_parquet(out / C.TIMELINE_FILE)
    files["users"] = pl.read_parquet(out / C.USERS_FILE)
    files["item_vocab"] = pl.read_parquet(out / C.VOCAB_DIR / f"{C.ITEM}.parquet")
    return files


def test_history_is_exactly_the_earlier_events(tmp_path: Path) -> None:
    ev = _log()
    sm, _ = next_item_samples(ev, TASKS, seed=1)
    f = _prepared(ev, sm, tmp_path)
    users = dict(f["users"].select(C.USER_IDX, C.USER).iter_rows())
    for split in C.SPLITS:
        for row in f[split].iter_rows(named=True):
            user, ts = users[row[C.USER_IDX]], row[C.TS]
            want = ev.filter((pl.col(C.USER) == user) & (pl.col(C.TS) < ts)).height
            hist = f["timeline"].slice(row[C.HIST_START], row[C.HIST_END] - row[C.HIST_START])
            assert hist.height == want
            assert (hist[C.USER_IDX] == row[C.USER_IDX]).all() and (hist[C.TS] < ts).all()
    assert [f[s].height for s in C.SPLITS] == [6, 4, 4]
    for s in C.SPLITS:
        labels = f[s]["label_click"]
        assert (labels == 1).sum() == (labels == 0).sum()


def test_vocab_sees_only_training_data(tmp_path: Path) -> None:
    ev = _log()
    sm, _ = next_item_samples(ev, TASKS, seed=2)
    f = _prepared(ev, sm, tmp_path)
    # Expected: training samples' items + each user's events before their first eval sample.
    first_eval = sm.filter(pl.col(C.SPLIT_COL) >= 1).group_by(C.USER).agg(pl.col(C.TS).min())
    ev_train = (
        ev.join(first_eval, on=C.USER, how="left", suffix="_eval")
        .filter(pl.col(C.TS) < pl.col(C.TS + "_eval").fill_null(2**62))
        .select(C.ITEM)
    )
    train_items = pl.concat([ev_train, sm.filter(pl.col(C.SPLIT_COL) == 0).select(C.ITEM)])
    want = dict(train_items.group_by(C.ITEM).len().iter_rows())
    got = dict(f["item_vocab"].select("value", "count").iter_rows())
    assert got == want


def test_leave_last_out_needs_the_split_column(tmp_path: Path) -> None:
    ev = _log()
    sm, _ = next_item_samples(ev, TASKS)
    with pytest.raises(PrepError, match="needs column 'split'"):
        prepare(
            ev.lazy(),
            sm.drop(C.SPLIT_COL).lazy(),
            tmp_path,
            PrepConfig(),
            {},
            "fp",
            split="leave_last_out",
        )
    bad = sm.with_columns(pl.lit(5, pl.Int8).alias(C.SPLIT_COL))
    with pytest.raises(PrepError, match="split must be 0"):
        prepare(ev.lazy(), bad.lazy(), tmp_path, PrepConfig(), {}, "fp", split="leave_last_out")
    no_val = sm.with_columns(pl.lit(0, pl.Int8).alias(C.SPLIT_COL))
    with pytest.raises(PrepError, match="split 'val' is empty"):
        prepare(ev.lazy(), no_val.lazy(), tmp_path, PrepConfig(), {}, "fp", split="leave_last_out")


def test_adapter_config_errors(tmp_path: Path) -> None:
    with pytest.raises(PrepError, match=r"dataset\.path"):
        prepare_from_config({"name": "taobao", "path": "???"}, PREP, tmp_path)
    f = tmp_path / "t.csv"
    f.write_text("1,10,5,pv,1511544070\n")
    with pytest.raises(PrepError, match=r"dataset\.bogus"):
        prepare_from_config({"name": "taobao", "path": str(f), "bogus": 1}, PREP, tmp_path)
    with pytest.raises(PrepError, match=r"dataset\.protocol"):
        prepare_from_config({"name": "taobao", "path": str(f), "protocol": "x"}, PREP, tmp_path)
    with pytest.raises(PrepError, match=r"dataset\.tasks\.purchase"):
        prepare_from_config(
            {"name": "taobao", "path": str(f), "tasks": {"purchase": ["purchase"]}},
            PREP,
            tmp_path,
        )


@needs_shared
def test_amazon_seq_beauty_end_to_end(tmp_path: Path) -> None:
    ds = {"name": "amazon_seq", "path": str(SHARED / "amazon_beauty")}
    res = prepare_from_config(ds, PREP, tmp_path)
    splits = res.meta.counts.splits
    assert splits["test"]["tasks"]["click"] == {"labelled": 2 * 22_363, "positives": 22_363}
    assert splits["val"]["tasks"]["click"]["positives"] == 22_363
    assert splits["train"]["tasks"]["click"]["positives"] == 198_502 - 3 * 22_363
    assert list(res.meta.tasks) == ["click"] and res.meta.split["method"] == "leave_last_out"
    assert res.report["source"]["adapter"] == "amazon_seq" and res.report["source"]["notes"]
    assert any(p.endswith("Beauty_item2attributes.json") for p in res.meta.source["inputs"])
    assert prepare_from_config(ds, PREP, tmp_path).skipped


@needs_shared
def test_taobao_end_to_end(tmp_path: Path) -> None:
    folder = SHARED / "taobao_userbehavior"
    ds = {"name": "taobao", "path": str(folder), "tasks": {"click": ["click"], "buy": ["purchase"]}}
    res = prepare_from_config(ds, PREP, tmp_path)
    assert set(res.meta.tasks) == {"click", "buy"}
    for split in C.SPLITS:
        tasks = res.meta.counts.splits[split]["tasks"]
        for t in ("click", "buy"):
            assert tasks[t]["positives"] > 0 and tasks[t]["labelled"] == 2 * tasks[t]["positives"]
    stats = res.report["source"]["next_item"]["tasks"]
    assert (
        res.meta.counts.splits["test"]["tasks"]["buy"]["positives"]
        == (stats["buy"]["users_with_eval"])
    )
    assert len(res.meta.source["inputs"]) == 4  # the folder and its three CSV files


@needs_shared
def test_o2o_without_labels_fails_clearly(tmp_path: Path) -> None:
    path = SHARED / "tianchi_o2o" / "ccf_offline_stage1_test_revised.csv"
    ds = {"name": "o2o", "path": str(path), "protocol": "global_time"}
    with pytest.raises(PrepError, match="no labels"):
        prepare_from_config(ds, PREP, tmp_path)


def test_changed_input_prepares_again(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    lines = [f"u{u},{10 * u + k},5,pv,{1511544070 + 60 * k}" for u in range(3) for k in range(4)]
    f.write_text("\n".join(lines) + "\n")
    ds = {"name": "taobao", "path": str(f), "tasks": {"click": ["click"]}}
    first = prepare_from_config(ds, PREP, tmp_path / "cache")
    assert prepare_from_config(ds, PREP, tmp_path / "cache").skipped
    f.write_text("\n".join([*lines, "u9,99,5,pv,1511544070"]) + "\n")
    again = prepare_from_config(ds, PREP, tmp_path / "cache")
    assert not again.skipped and again.meta.fingerprint != first.meta.fingerprint


def test_hydra_composes_real_datasets() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="atrank.conf", version_base=None):
        cfg = compose(config_name="prep", overrides=["dataset=taobao", "dataset.path=/x"])
        assert cfg.dataset.name == "taobao" and cfg.dataset.path == "/x"
        assert dict(cfg.dataset.tasks) == {"click": ["click"], "purchase": ["purchase"]}
        for name in ("amazon_seq", "amazon_reviews", "movielens", "o2o"):
            cfg = compose(config_name="prep", overrides=[f"dataset={name}"])
            assert cfg.dataset.name == name
            assert cfg.dataset.protocol == ("global_time" if name == "o2o" else "next_item")


def test_o2o_training_file_uses_its_own_samples(tmp_path: Path) -> None:
    f = tmp_path / "o2o_train.csv"
    rows = ["User_id,Merchant_id,Coupon_id,Discount_rate,Distance,Date_received,Date"]
    for u in range(20):
        for d in range(1, 11):
            used = f"201605{d + 2:02d}" if (u + d) % 3 == 0 else "null"
            rows.append(f"{u},m{u % 3},c{d % 4},30:5,1,201605{d:02d},{used}")
    f.write_text("\n".join(rows) + "\n")
    ds = {"name": "o2o", "path": str(f), "protocol": "global_time"}
    res = prepare_from_config(ds, PREP, tmp_path / "cache")
    assert res.meta.split["method"] == "global_time_cut"
    assert [res.meta.counts.splits[s]["rows"] for s in C.SPLITS] == [160, 20, 20]
    assert list(res.meta.tasks) == ["coupon"] and res.report["source"]["adapter"] == "o2o"
