"""A log of your own (``dataset=events``): parquet and CSV files written here, their columns
mapped; labelled impressions; every broken input; and k-core filtering for every source."""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from omegaconf import DictConfig

from data_prep import contract as C
from data_prep.errors import PrepError
from data_prep.passes.derive import DerivedTask
from data_prep.passes.kcore import kcore_filter
from data_prep.pipeline import PrepConfig
from data_prep.run import prepare_from_config
from data_prep.schema import EVENT_SCHEMA, SAMPLE_BASE_SCHEMA
from data_prep.sources import SOURCES, AdapterError
from data_prep.sources.events import read_events

Compose = Callable[..., DictConfig]
PREP = PrepConfig()
T0 = 1_511_544_070  # 2017-11-24 17:21:10 UTC
TEN = 1_511_604_000  # 2017-11-25 10:00:00 UTC
COLS = {"user_id": "uid", "item_id": "iid", "ts": "when", "action": "what", "category_id": "cat"}
ACTIONS = {"pv": "click", "buy": "purchase"}
TINY_SIM = {"name": "sim", "n_users": 300, "events_per_user": 40, "n_items": 300}


def _log(n_users: int = 12, n_items: int = 8, per_user: int = 8) -> pl.DataFrame:
    """A dense log: every user clicks (pv) and buys in turn; ids with leading zeros."""
    rows = [
        {
            "uid": f"u{u:02d}",
            "iid": f"{(u + m) % n_items:03d}",
            "cat": f"c{(u + m) % 3}",
            "when": T0 + 3600 * u + 60 * m,
            "what": "pv" if m % 2 == 0 else "buy",
        }
        for u in range(n_users)
        for m in range(per_user)
    ]
    return pl.DataFrame(rows)


def _events(result: Any) -> pl.DataFrame:
    df = result.events.collect()
    assert dict(df.schema) == EVENT_SCHEMA
    return df


def _raises(match: str, path: Path, **kw: Any) -> str:
    with pytest.raises(AdapterError, match=match) as info:
        read_events(path, **kw).events.collect()
    return str(info.value)


# --- formats, mapping, times ---------------------------------------------------------------
def test_parquet_csv_tsv_and_folders_read_the_same_events(tmp_path: Path) -> None:
    log = _log()
    log.write_parquet(tmp_path / "log.parquet")
    log.write_csv(tmp_path / "log.csv")
    log.write_csv(tmp_path / "log.tsv", separator="\t")
    (tmp_path / "log.csv.gz").write_bytes(gzip.compress(log.write_csv().encode()))
    for fmt in ("csv", "parquet"):
        part = tmp_path / f"{fmt}_parts"
        part.mkdir()
        for i, chunk in enumerate((log.head(40), log.tail(log.height - 40))):
            getattr(chunk, f"write_{fmt}")(part / f"part{i}.{fmt}")
        (part / "_SUCCESS").write_text("")  # (not read: no known ending, and a leading _)
    first = read_events(tmp_path / "log.parquet", columns=COLS, actions=ACTIONS)
    expected = _events(first)
    assert expected.height == log.height and first.skipped == {} and first.samples is None
    assert expected.row(0) == ("u00", T0, "item", "click", "000", "c0", None, None, None, None)
    assert set(expected[C.ACTION]) == {"click", "purchase"}
    for name in ("log.csv", "log.tsv", "log.csv.gz", "csv_parts", "parquet_parts"):
        result = read_events(tmp_path / name, columns=COLS, actions=ACTIONS)
        assert _events(result).equals(expected), name
    parts = read_events(tmp_path / "csv_parts", columns=COLS, actions=ACTIONS).inputs
    assert [p.name for p in parts] == ["part0.csv", "part1.csv"]


def test_groups_shared_columns_defaults_and_fields_outside_the_group(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_text(
        "user,object,kind,shop,level,t\n"
        f"1,a,item,s1,,{T0}\n"
        f"1,k9,coupon,s1,off_10,{T0 + 1}\n"
        f"2,b,item,,high,{T0 + 2}\n"
    )
    cols = {
        "user_id": "user",
        "item_id": "object",
        "coupon_id": "object",
        "group": "kind",
        "shop_id": "shop",
        "discount_level": "level",
        "ts": "t",
    }
    result = read_events(f, columns=cols, default_action="view")
    df = _events(result)
    rows = df.select(C.GROUP, C.ACTION, C.ITEM, C.COUPON, C.SHOP, C.DISCOUNT).rows()
    assert rows == [
        ("item", "view", "a", None, "s1", None),
        ("coupon", "view", None, "k9", "s1", "off_10"),
        ("item", "view", "b", None, None, None),  # (a level is no item field)
    ]
    assert any("every event is 'view'" in n for n in result.notes)
    f.write_text(f"user,object,kind,t\n1,a,shop,{T0}\n1,,coupon,{T0}\n")
    no_shop = {**cols, "shop_id": None, "discount_level": None}
    msg = _raises("line 2: unknown_group", f, columns=no_shop)
    assert "'shop' is not one of item, coupon" in msg
    with pytest.raises(AdapterError, match="no usable line.*unknown_group: 1.*missing_id: 1"):
        read_events(f, columns=no_shop, on_error="skip")


@pytest.mark.parametrize(
    ("values", "kw", "expected"),
    [
        (pl.Series([T0], dtype=pl.Int64), {}, T0),
        (pl.Series([T0], dtype=pl.UInt32), {}, T0),
        (pl.Series([T0 * 1000 + 999]), {"ts_unit": "ms"}, T0),
        (pl.Series([T0 * 1_000_000]), {"ts_unit": "us"}, T0),
        (pl.Series([float(T0)]), {}, T0),
        (pl.Series([str(T0)]), {}, T0),
        (pl.Series(["2017-11-25T10:00:00Z"]), {}, TEN),
        (pl.Series(["2017-11-25 18:00:00+08:00"]), {}, TEN),
        (pl.Series(["2017-11-25T05:00:00.750-0500"]), {}, TEN),
        (pl.Series(["2017-11-25 10:00"]), {}, TEN),
        (pl.Series(["2017-11-25T10:00:00.5"]), {}, TEN),
        (pl.Series(["2017-11-25"]), {}, TEN - 36_000),
        (pl.Series(["25/11/2017 10h00"]), {"ts_format": "%d/%m/%Y %Hh%M"}, TEN),
        (pl.Series([dt.datetime(2017, 11, 25, 10)]), {}, TEN),
        (pl.Series([dt.datetime(2017, 11, 25, 18)]).dt.replace_time_zone("Asia/Shanghai"), {}, TEN),
        (pl.Series([dt.date(2017, 11, 25)]), {}, TEN - 36_000),
    ],
)
def test_timestamps_of_each_kind(
    tmp_path: Path, values: pl.Series, kw: dict[str, Any], expected: int
) -> None:
    frame = pl.DataFrame({"u": ["1"], "i": ["a"], "t": values})
    frame.write_parquet(tmp_path / "one.parquet")
    cols = {"user_id": "u", "item_id": "i", "ts": "t"}
    assert _events(read_events(tmp_path / "one.parquet", columns=cols, **kw))[C.TS].to_list() == [
        expected
    ]
    if values.dtype == pl.String:  # the same text in a CSV file
        frame.write_csv(tmp_path / "one.csv")
        got = _events(read_events(tmp_path / "one.csv", columns=cols, **kw))
        assert got[C.TS].to_list() == [expected]


def test_bad_timestamp_names_the_row_or_line_and_skip_counts_it(tmp_path: Path) -> None:
    log = _log(n_users=2, per_user=3).with_columns(pl.col("when").cast(pl.String))
    log = log.with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(pl.lit("yesterday"))
        .otherwise("when")
        .alias("when")
    )
    log.write_parquet(tmp_path / "log.parquet")
    log.write_csv(tmp_path / "log.csv")
    msg = _raises("row 3: bad_timestamp", tmp_path / "log.parquet", columns=COLS)
    assert "log.parquet" in msg and "'yesterday'" in msg and "ISO 8601" in msg
    _raises(r"log\.csv: line 4: bad_timestamp", tmp_path / "log.csv", columns=COLS)
    skip = read_events(tmp_path / "log.csv", columns=COLS, on_error="skip")
    assert _events(skip).height == 5 and skip.skipped == {"bad_timestamp": 1}
    far = pl.DataFrame(
        {"uid": ["1"], "iid": ["a"], "cat": ["c"], "when": [T0 * 1000], "what": ["pv"]}
    )
    far.write_parquet(tmp_path / "ms.parquet")  # (milliseconds read as seconds: year 49,000)
    _raises(
        "row 1: bad_timestamp.*unix time in s in 1990-2039", tmp_path / "ms.parquet", columns=COLS
    )


def test_action_mapping_unknown_and_missing_actions(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_text(f"uid,iid,when,what,cat\n1,a,{T0},pv,\n1,b,{T0},fav,\n1,c,{T0},,\n")
    msg = _raises("line 3: unknown_action", f, columns=COLS, actions=ACTIONS)
    assert "'fav'" in msg and "['buy', 'pv']" in msg
    result = read_events(f, columns=COLS, actions=ACTIONS, on_error="skip")
    assert _events(result)[C.ACTION].to_list() == ["click"]
    assert result.skipped == {"unknown_action": 1, "missing_action": 1}
    assert _events(read_events(f, columns=COLS, on_error="skip"))[C.ACTION].to_list() == [
        "pv",
        "fav",
    ]
    with pytest.raises(AdapterError, match="actions: .*columns.action is not mapped"):
        read_events(f, columns={**COLS, "action": None}, actions=ACTIONS)


def test_duplicates_blank_lines_and_bad_encoding(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_bytes(
        f"uid,iid,when\n1,a,{T0}\n\n1,a,{T0}\n2,\xff\xfe,{T0}\n2,b,{T0}\n".encode("latin-1")
    )
    cols = {"user_id": "uid", "item_id": "iid", "ts": "when"}
    _raises("line 5: bad_encoding", f, columns=cols)
    result = read_events(f, columns=cols, on_error="skip")
    assert _events(result)[C.ITEM].to_list() == ["a", "b"]
    assert result.skipped == {"blank_line": 1, "duplicate_row": 1, "bad_encoding": 1}
    assert any("1 exact duplicate row(s) dropped" in n for n in result.notes)


# --- labelled impressions -------------------------------------------------------------------
def test_impressions_become_samples_with_labels(tmp_path: Path) -> None:
    _log(n_users=3, per_user=2).write_parquet(tmp_path / "log.parquet")
    imp = tmp_path / "shown.csv"
    imp.write_text(
        "uid,iid,when,clicked,bought\n"
        f"u00,007,{T0},1,0\n"
        f"u01,008,{T0 + 5},true,\n"
        f"u02,009,{T0 + 9},FALSE,1.0\n"
    )
    labels = {"click": "clicked", "purchase": "bought"}
    result = read_events(
        tmp_path / "log.parquet", columns=COLS, actions=ACTIONS, impressions=imp, labels=labels
    )
    samples = result.samples.collect()  # type: ignore[union-attr]
    assert dict(samples.schema) == {
        **SAMPLE_BASE_SCHEMA,
        "label_click": pl.Int8(),
        "label_purchase": pl.Int8(),
    }
    assert samples.select(C.USER, C.ITEM, C.TS, "label_click", "label_purchase").rows() == [
        ("u00", "007", T0, 1, 0),
        ("u01", "008", T0 + 5, 1, None),
        ("u02", "009", T0 + 9, 0, 1),
    ]
    assert samples[C.CATEGORY].null_count() == 3  # (the impressions have no cat column)
    assert any("no column for ['category_id']" in n for n in result.notes)
    assert [p.name for p in result.inputs] == ["log.parquet", "shown.csv"]
    imp.write_text(f"uid,iid,when,clicked,bought\nu00,007,{T0},1,0\nu01,008,{T0},2,\n")
    kw: dict[str, Any] = {"columns": COLS, "impressions": imp, "labels": labels}
    msg = _raises("shown.csv: line 3: bad_label", tmp_path / "log.parquet", **kw)
    assert "label '2' of task click (column 'clicked')" in msg
    skip = read_events(tmp_path / "log.parquet", on_error="skip", **kw)
    assert skip.samples is not None and skip.samples.collect().height == 1
    assert skip.skipped == {"impressions_bad_label": 1}
    with pytest.raises(AdapterError, match="shown.csv: no column 'seen' \\(labels.click\\)"):
        read_events(tmp_path / "log.parquet", **{**kw, "labels": {"click": "seen"}})
    with pytest.raises(AdapterError, match="labels: given without impressions"):
        read_events(tmp_path / "log.parquet", columns=COLS, labels=labels)
    with pytest.raises(AdapterError, match="impressions: given without labels"):
        read_events(tmp_path / "log.parquet", columns=COLS, impressions=imp)


# --- broken inputs ---------------------------------------------------------------------------
def test_broken_inputs_name_file_row_and_column(tmp_path: Path) -> None:
    cols = {"user_id": "uid", "item_id": "iid", "ts": "when"}
    _raises("nope.csv: event log file or folder not found", tmp_path / "nope.csv", columns=cols)
    (tmp_path / "empty_dir").mkdir()
    _raises("empty_dir: folder holds no event log file", tmp_path / "empty_dir", columns=cols)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _log().write_csv(mixed / "a.csv")
    _log().write_parquet(mixed / "b.parquet")
    _raises(r"mixed: folder mixes formats \['csv', 'parquet'\]", mixed, columns=cols)
    (tmp_path / "zero.csv").write_bytes(b"")
    _raises("zero.csv: empty file", tmp_path / "zero.csv", columns=cols)
    (tmp_path / "header.csv").write_text("uid,iid,when\n")
    _raises("header.csv: no data lines to read", tmp_path / "header.csv", columns=cols)
    _log().head(0).write_parquet(tmp_path / "none.parquet")
    _raises("none.parquet: no data rows to read", tmp_path / "none.parquet", columns=COLS)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    _raises("broken.parquet: cannot be read as parquet", tmp_path / "broken.parquet", columns=cols)
    _log().write_csv(tmp_path / "log.csv")
    msg = _raises(
        r"log.csv: no column 'user' \(columns.user_id\)",
        tmp_path / "log.csv",
        columns={**cols, "user_id": "user"},
    )
    assert "the file's columns: ['uid', 'iid', 'cat', 'when', 'what']" in msg
    msg = _raises("columns.usr_id: unknown key", tmp_path / "log.csv", columns={"usr_id": "uid"})
    assert "did you mean user_id?" in msg and "valid keys: user_id, item_id, ts, action" in msg
    _raises("columns.ts: required", tmp_path / "log.csv", columns={**cols, "ts": None})
    _raises("ts_unit: must be one of", tmp_path / "log.csv", columns=cols, ts_unit="h")


def test_dataset_config_errors_name_the_key(tmp_path: Path) -> None:
    _log().write_csv(tmp_path / "log.csv")
    base = {"name": "events", "path": str(tmp_path / "log.csv")}
    for bad, key in [
        ({"path": str(tmp_path / "nope.csv")}, r"dataset\.path: .*nope.csv.* does not exist"),
        (
            {"impressions": str(tmp_path / "no.csv"), "labels": {"click": "c"}},
            r"dataset\.impressions: .*no.csv.* does not exist",
        ),
        ({"columns": "uid"}, r"dataset\.columns: expected a Mapping or null, got 'uid'"),
        ({"columns": {"user_id": 5}}, r"dataset\.columns: expected"),
        ({"columns": {"usr_id": "uid"}}, r"columns\.usr_id: unknown key .*; valid keys: user_id"),
        ({"ts_unit": "h"}, r"dataset\.ts_unit: expected one of 's', 'ms', 'us'"),
        ({"colums": {}}, r"dataset\.colums: unknown option of the 'events' source.*kcore"),
        ({"kcore": 0}, r"dataset\.kcore: expected an integer >= 1 or null, got 0"),
        ({"kcore": "5"}, r"dataset\.kcore: expected an integer"),
        ({"protocol": "global_time"}, r"dataset\.protocol: global_time needs labelled samples"),
    ]:
        with pytest.raises(PrepError, match=key):
            prepare_from_config({**base, **bad}, PREP, tmp_path / "cache")
    shown = tmp_path / "shown.csv"
    shown.write_text(f"uid,iid,when,clicked\nu00,000,{T0},1\n")
    with pytest.raises(PrepError, match=r"dataset\.protocol: next_item makes its samples"):
        prepare_from_config(
            {
                **base,
                "impressions": str(shown),
                "labels": {"click": "clicked"},
                "protocol": "next_item",
            },
            PREP,
            tmp_path / "cache",
        )


# --- through prepare_from_config -------------------------------------------------------------
def test_next_item_from_your_own_log(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    _log(n_items=30).write_csv(f)
    ds = {
        "name": "events",
        "path": str(f),
        "columns": COLS,
        "actions": ACTIONS,
        "tasks": {"click": ["click"], "purchase": ["purchase"]},
    }
    res = prepare_from_config(ds, PREP, tmp_path / "cache")
    assert res.meta.split["method"] == "leave_last_out" and set(res.meta.tasks) == {
        "click",
        "purchase",
    }
    assert res.report["source"]["adapter"] == "events"
    assert res.report["source"]["protocol"] == "next_item"
    for split in C.SPLITS:
        for task in ("click", "purchase"):
            assert res.meta.counts.splits[split]["tasks"][task]["positives"] > 0
    assert res.meta.counts.users == 12 and res.meta.counts.events == 96
    assert "kcore" not in res.report["source"] and "kcore" not in res.meta.source
    assert prepare_from_config(ds, PREP, tmp_path / "cache").skipped
    # kcore null is the same preparation as no kcore; an edited file prepares again
    assert prepare_from_config({**ds, "kcore": None}, PREP, tmp_path / "cache").skipped
    _log(n_users=13, n_items=30).write_csv(f)
    assert not prepare_from_config(ds, PREP, tmp_path / "cache").skipped


def _impressions(n_users: int = 20, per_user: int = 10) -> pl.DataFrame:
    """Impressions at distinct times; clicked every third one; a cart 100 s after every
    fourth (the events of the same log)."""
    rows = [
        {
            "uid": f"u{u:02d}",
            "iid": f"{(u * 3 + m) % 15:03d}",
            "when": T0 + 1000 * (u * per_user + m),
            "clicked": int((u + m) % 3 == 0),
        }
        for u in range(n_users)
        for m in range(per_user)
    ]
    return pl.DataFrame(rows)


def test_global_time_from_labelled_impressions_and_a_derived_task(tmp_path: Path) -> None:
    shown = _impressions()
    clicks = shown.filter(pl.col("clicked") == 1).with_columns(pl.lit("click").alias("what"))
    carts = shown.filter(pl.int_range(pl.len()) % 4 == 0).with_columns(
        pl.col("when") + 100, pl.lit("cart").alias("what")
    )
    log = pl.concat([clicks, carts]).drop("clicked").sort("when")
    log.write_parquet(tmp_path / "log.parquet")
    shown.write_csv(tmp_path / "shown.csv")
    ds = {
        "name": "events",
        "path": str(tmp_path / "log.parquet"),
        "columns": {"user_id": "uid", "item_id": "iid", "ts": "when", "action": "what"},
        "impressions": str(tmp_path / "shown.csv"),
        "labels": {"click": "clicked"},
    }
    derive = {"cart": DerivedTask(actions=["cart"], horizon=600)}
    res = prepare_from_config(ds, PREP, tmp_path / "cache", derive=derive)
    assert res.meta.split["method"] == "global_time_cut"
    assert res.report["source"]["protocol"] == "global_time"  # (chosen: impressions given)
    assert set(res.meta.tasks) == {"click", "cart"}
    splits = res.meta.counts.splits
    assert sum(splits[s]["rows"] for s in C.SPLITS) == shown.height
    assert sum(splits[s]["tasks"]["click"]["positives"] for s in C.SPLITS) == shown["clicked"].sum()
    assert sum(splits[s]["tasks"]["cart"]["positives"] for s in C.SPLITS) == carts.height
    assert any(p.endswith("shown.csv") for p in res.meta.source["inputs"])
    assert prepare_from_config(ds, PREP, tmp_path / "cache", derive=derive).skipped
    shown.with_columns(1 - pl.col("clicked")).write_csv(tmp_path / "shown.csv")
    again = prepare_from_config(ds, PREP, tmp_path / "cache", derive=derive)
    assert not again.skipped and again.meta.fingerprint != res.meta.fingerprint


# --- k-core ----------------------------------------------------------------------------------
def _table(rows: list[tuple[str, str, str]], ts: int = T0) -> pl.LazyFrame:
    """Canonical rows (user, group, object id)."""
    frame = pl.DataFrame(
        {
            C.USER: [u for u, _, _ in rows],
            C.TS: [ts + i for i in range(len(rows))],
            C.GROUP: [g for _, g, _ in rows],
            C.ACTION: ["click" if g == "item" else "receive" for _, g, _ in rows],
            C.ITEM: [o if g == "item" else None for _, g, o in rows],
            C.COUPON: [o if g == "coupon" else None for _, g, o in rows],
        }
    )
    return (
        frame.with_columns(
            pl.lit(None, pl.String).alias(c) for c in EVENT_SCHEMA if c not in frame.columns
        )
        .select(list(EVENT_SCHEMA))
        .lazy()
    )


#: k=2 needs three rounds: u4 (one interaction) goes, so i3 has one and goes, so u3 has one.
CHAIN = [
    ("u1", "item", "i1"),
    ("u1", "item", "i2"),
    ("u2", "item", "i1"),
    ("u2", "item", "i2"),
    ("u3", "item", "i2"),
    ("u3", "item", "i3"),
    ("u4", "item", "i3"),
    ("u3", "coupon", "k1"),
    ("u1", "coupon", "k1"),
]


def test_kcore_iterates_until_stable_exact_survivors() -> None:
    samples = (
        _table(
            [
                ("u1", "item", "i1"),
                ("u1", "item", "i3"),
                ("u3", "item", "i1"),
                ("u2", "coupon", "k1"),
            ]
        )
        .drop(C.ACTION)
        .with_columns(pl.lit(1, pl.Int8).alias("label_click"))
    )
    core = kcore_filter(_table(CHAIN), samples, 2)
    ev = core.events.collect()
    assert ev.select(C.USER, C.ITEM, C.COUPON).rows() == [
        ("u1", "i1", None),
        ("u1", "i2", None),
        ("u2", "i1", None),
        ("u2", "i2", None),
        ("u1", None, "k1"),
    ]
    assert core.samples is not None
    assert core.samples.collect().select(C.USER, C.ITEM, C.COUPON).rows() == [
        ("u1", "i1", None),
        ("u2", None, "k1"),
    ]
    assert core.stats == {
        "k": 2,
        "rounds": 3,
        "removed": {"users": 2, "items": 1, "events": 4, "samples": 2},
        "remaining": {"users": 2, "items": 2, "events": 5, "samples": 2},
    }
    one = kcore_filter(_table(CHAIN), None, 1)  # (k=1 keeps every user with an item event)
    assert one.stats["rounds"] == 0 and one.stats["removed"]["events"] == 0
    with pytest.raises(PrepError, match="kcore=3 left nothing"):
        kcore_filter(_table(CHAIN), None, 3)


def test_kcore_on_your_own_log_is_reported_and_fingerprinted(tmp_path: Path) -> None:
    dense = _log(n_users=10, n_items=6, per_user=4)
    chain = pl.DataFrame(
        {
            "uid": ["x3", "x3", "x4"],
            "iid": ["000", "rare", "rare"],
            "cat": ["c0"] * 3,
            "when": [T0 + 1, T0 + 2, T0 + 3],
            "what": ["pv"] * 3,
        }
    )
    pl.concat([dense, chain]).write_parquet(tmp_path / "log.parquet")
    ds = {"name": "events", "path": str(tmp_path / "log.parquet"), "columns": COLS, "kcore": 2}
    res = prepare_from_config({**ds, "actions": ACTIONS}, PREP, tmp_path / "cache")
    expected = {
        "k": 2,
        "rounds": 3,
        "removed": {"users": 2, "items": 1, "events": 3},
        "remaining": {"users": 10, "items": 6, "events": 40},
    }
    assert res.report["source"]["kcore"] == expected and res.meta.source["kcore"] == expected
    assert res.meta.counts.users == 10 and res.meta.counts.events == 40
    plain = prepare_from_config({**ds, "actions": ACTIONS, "kcore": None}, PREP, tmp_path / "cache")
    assert plain.out_dir != res.out_dir and plain.meta.counts.users == 12
    with pytest.raises(PrepError, match="dataset.kcore=5 left nothing"):
        prepare_from_config({**ds, "kcore": 5}, PREP, tmp_path / "cache")


def test_kcore_on_a_real_adapter(tmp_path: Path) -> None:
    f = tmp_path / "UserBehavior.csv"
    lines = [f"{u},{(u + m) % 5},7,pv,{T0 + 60 * m}" for u in range(8) for m in range(4)]
    f.write_text("\n".join([*lines, f"99,42,7,pv,{T0}"]) + "\n")
    res = prepare_from_config(
        {"name": "taobao", "path": str(f), "tasks": {"click": ["click"]}, "kcore": 3},
        PREP,
        tmp_path / "cache",
    )
    assert res.report["source"]["kcore"]["removed"] == {"users": 1, "items": 1, "events": 1}
    assert res.meta.counts.users == 8


def test_kcore_on_the_simulator_removes_samples_too(cache_dir: Path) -> None:
    res = prepare_from_config({**TINY_SIM, "kcore": 30}, PREP, cache_dir)
    stats = res.report["source"]["kcore"]
    assert stats["removed"]["users"] > 0 and stats["removed"]["samples"] > 0
    assert res.report["samples"]["rows_read"] == stats["remaining"]["samples"]
    assert res.report["events"]["rows_read"] == stats["remaining"]["events"]
    assert res.meta.counts.users == stats["remaining"]["users"]
    with pytest.raises(PrepError, match="dataset.kcore=1000 left nothing"):
        prepare_from_config({**TINY_SIM, "kcore": 1000}, PREP, cache_dir)


# --- Hydra and the console script ------------------------------------------------------------
def test_hydra_composes_the_events_dataset(compose_cfg: Compose) -> None:
    cfg = compose_cfg(
        "dataset=events",
        "dataset.path=/data/log.parquet",
        "dataset.columns.user_id=uid",
        "dataset.actions={pv: click}",
        "dataset.kcore=5",
        config_name="prep",
        tiny=False,
    )
    assert cfg.dataset.columns.user_id == "uid" and cfg.dataset.columns.item_id == "item_id"
    assert cfg.dataset.kcore == 5 and dict(cfg.dataset.actions) == {"pv": "click"}
    from atrank.config import prep_job_config

    opts = set(prep_job_config(cfg).dataset) - {"name", "protocol", "tasks", "negatives", "seed"}
    assert opts - {"kcore"} <= set(SOURCES["events"].options)
    for name in ("sim", "taobao", "o2o"):  # every source takes kcore from the command line
        assert (
            compose_cfg(
                f"dataset={name}", "dataset.kcore=2", config_name="prep", tiny=False
            ).dataset.kcore
            == 2
        )
    with pytest.raises(Exception, match="usr_id"):
        compose_cfg("dataset=events", "dataset.columns.usr_id=uid", config_name="prep", tiny=False)


def test_the_readme_experiment_composes_and_passes_the_option_checks(
    compose_cfg: Compose, tmp_path: Path
) -> None:
    from atrank.config import train_config

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Your own log", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    yaml = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "conf" / "experiment" / "my_shop.yaml").write_text(yaml)
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    run = train_config(compose_cfg(search, "experiment=my_shop", tiny=False))
    assert run.dataset["kcore"] == 5 and set(run.task) == {"click", "purchase", "cart"}
    # every key is known and well typed: the first thing left to fail is the missing folder
    with pytest.raises(PrepError, match=r"dataset\.path: '/data/shop/events' does not exist"):
        prepare_from_config(run.dataset, PREP, tmp_path / "cache")


def test_train_on_your_own_log(compose_cfg: Compose, tmp_path: Path) -> None:
    from atrank.train import train

    _log(n_users=40, n_items=30).write_csv(tmp_path / "log.csv")
    cfg = compose_cfg(
        "dataset=events",
        f"dataset.path={tmp_path / 'log.csv'}",
        "dataset.columns.user_id=uid",
        "dataset.columns.item_id=iid",
        "dataset.columns.ts=when",
        "dataset.columns.action=what",
        "dataset.columns.category_id=cat",
        "dataset.actions={pv: click, buy: purchase}",
        "dataset.tasks={click: [click], purchase: [purchase]}",
        "task=[click,purchase]",
        "debug=fdr",
        "threads=1",
        tiny=False,
    )
    metrics = train(cfg)
    assert {"test/click/auc", "test/purchase/auc"} <= set(metrics)
