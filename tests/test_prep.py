"""Tests of the preparation pipeline (data_prep.pipeline.prepare) on hand-built inputs."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep import contract as C
from data_prep.meta import GroupInfo, TaskInfo, TimeRule, read_meta
from data_prep.pipeline import PrepConfig, PrepError, PrepResult, fingerprint, prepare
from data_prep.schema import EVENT_SCHEMA, SAMPLE_BASE_SCHEMA

CFG = PrepConfig(val_frac=0.2, test_frac=0.2)


def _events(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    """Canonical events from partial rows (missing columns are null)."""
    return pl.LazyFrame(
        {col: [r.get(col) for r in rows] for col in EVENT_SCHEMA}, schema=EVENT_SCHEMA
    )


def _samples(rows: list[dict[str, Any]], tasks: tuple[str, ...] = ("click",)) -> pl.LazyFrame:
    """Canonical samples with one Int8 label column per task."""
    schema: dict[str, pl.DataType] = dict(SAMPLE_BASE_SCHEMA)
    schema |= {C.label_col(t): pl.Int8() for t in tasks}
    return pl.LazyFrame({col: [r.get(col) for r in rows] for col in schema}, schema=schema)


def _item(user: str | None, ts: int | None, item: str | None, **kw: Any) -> dict[str, Any]:
    row = {C.USER: user, C.TS: ts, C.GROUP: "item", C.ACTION: "click", C.ITEM: item}
    if item is not None:
        row |= {C.CATEGORY: f"c_{item}", C.BRAND: "b1", C.SHOP: "s1"}
    return row | kw


def _coupon(user: str, ts: int, coupon: str | None, **kw: Any) -> dict[str, Any]:
    row = {C.USER: user, C.TS: ts, C.GROUP: "coupon", C.ACTION: "receive", C.COUPON: coupon}
    return row | {C.SHOP: "s1", C.DISCOUNT: "d10"} | kw


def _base() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ten samples at ts 15..105 (train < 75 <= val < 95 <= test with CFG) and their events.

    ``i_new`` appears only at and after the validation cut (an event at 100 and a test
    sample); ``i1``/``i2`` appear in training. u1 has events tied with a sample time (30)
    and with each other (20).
    """
    events = [
        _item("u1", 10, "i1"),
        _item("u1", 20, "i2", **{C.ACTION: "cart"}),
        _item("u1", 20, "i1"),
        _item("u1", 30, "i2"),
        _coupon("u1", 40, "k1"),
        _item("u2", 12, "i2"),
        _coupon("u2", 50, "k1", **{C.ACTION: "use"}),
        _item("u2", 100, "i_new"),
        _item("u4", 5, "i1"),  # a user with events but no samples
    ]
    times = [15, 25, 30, 45, 55, 65, 75, 85, 95, 105]
    users = ["u1", "u1", "u1", "u2", "u3", "u1", "u2", "u1", "u2", "u2"]
    samples = []
    for k, (t, u) in enumerate(zip(times, users, strict=True)):
        item = "i_new" if t == 105 else ("i1" if k % 2 else "i2")
        samples.append(_item(u, t, item, **{C.label_col("click"): k % 2}))
    return events, samples


def _run(
    tmp: Path, events: list[dict[str, Any]], samples: list[dict[str, Any]], **kw: Any
) -> PrepResult:
    return prepare(_events(events), _samples(samples), tmp / "out", CFG, {"name": "t"}, "fp", **kw)


def _read(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, pl.DataFrame]]:
    """Timeline, users and the split files of a prepared directory."""
    timeline = pl.read_parquet(out / C.TIMELINE_FILE)
    users = pl.read_parquet(out / C.USERS_FILE)
    splits = {s: pl.read_parquet(out / C.samples_file(s)) for s in C.SPLITS}
    return timeline, users, splits


def _check_histories(timeline: pl.DataFrame, samples: pl.DataFrame) -> None:
    """Each history is exactly the user's events strictly before the sample."""
    for s in samples.iter_rows(named=True):
        hist = timeline.slice(s[C.HIST_START], s[C.HIST_END] - s[C.HIST_START])
        assert (hist[C.USER_IDX] == s[C.USER_IDX]).all()
        assert (hist[C.TS] < s[C.TS]).all()  # nothing at or after the sample time
        earlier = timeline.filter((pl.col(C.USER_IDX) == s[C.USER_IDX]) & (pl.col(C.TS) < s[C.TS]))
        assert hist.equals(earlier)  # and every earlier event, in timeline order


def test_history_is_exactly_the_users_past(tmp_path: Path) -> None:
    events, samples = _base()
    _run(tmp_path, events, samples)
    timeline, users, splits = _read(tmp_path / "out")
    assert timeline.height == len(events)
    assert timeline.select(C.USER_IDX, C.TS).equals(timeline.select(C.USER_IDX, C.TS).sort("*"))
    every = pl.concat(splits.values())
    _check_histories(timeline, every)
    # u1's sample at 30 sees its 3 events before 30 (two tied at 20), not the one at 30.
    u1 = users.filter(pl.col(C.USER) == "u1").row(0, named=True)
    s30 = every.filter(pl.col(C.TS) == 30).row(0, named=True)
    assert (s30[C.HIST_START], s30[C.HIST_END]) == (u1[C.USER_START], u1[C.USER_START] + 3)


def test_users_offsets_cover_the_timeline(tmp_path: Path) -> None:
    events, samples = _base()
    _run(tmp_path, events, samples)
    timeline, users, _ = _read(tmp_path / "out")
    assert users[C.USER].to_list() == ["u1", "u2", "u3", "u4"]  # sorted by user_id
    assert users[C.USER_IDX].to_list() == [0, 1, 2, 3]
    u3 = users.filter(pl.col(C.USER) == "u3").row(0, named=True)
    assert u3[C.USER_START] == u3[C.USER_END] == 8  # after u1 (5 events) and u2 (3)
    for u in users.iter_rows(named=True):
        part = timeline.slice(u[C.USER_START], u[C.USER_END] - u[C.USER_START])
        assert (part[C.USER_IDX] == u[C.USER_IDX]).all()
        assert part.height == (timeline[C.USER_IDX] == u[C.USER_IDX]).sum()


def test_vocabulary_is_fitted_on_training_data_only(tmp_path: Path) -> None:
    events, samples = _base()
    res = _run(tmp_path, events, samples)
    timeline, _, splits = _read(tmp_path / "out")
    vocab = pl.read_parquet(tmp_path / "out" / C.VOCAB_DIR / f"{C.ITEM}.parquet")
    assert "i_new" not in vocab["value"].to_list()
    assert set(vocab["value"]) == {"i1", "i2"}
    assert (vocab["index"] >= C.FIRST_INDEX).all()
    assert splits["test"].filter(pl.col(C.TS) == 105)[C.ITEM].item() == C.OOV_INDEX
    assert timeline.filter(pl.col(C.TS) == 100)[C.ITEM].item() == C.OOV_INDEX
    train_items = splits["train"][C.ITEM]
    assert (train_items >= C.FIRST_INDEX).all()
    # i1: events 10, 20, 5 + train samples at 25, 45, 65 (odd k) = 6; i2: 20, 30, 12 + 15,
    # 30, 55 = 6: tie broken by value, so i1 -> 2, i2 -> 3.
    assert dict(zip(vocab["value"], vocab["index"], strict=True)) == {"i1": 2, "i2": 3}
    assert vocab["count"].to_list() == [6, 6]
    # Coupon fields on item rows are padding, item fields on coupon rows too.
    coupon_rows = timeline.filter(pl.col(C.GROUP_IDX) == C.GROUPS.index("coupon"))
    assert (coupon_rows[C.ITEM] == C.PAD_INDEX).all()
    assert (coupon_rows[C.COUPON] >= C.FIRST_INDEX).all()
    assert res.meta.vocab_sizes[C.ITEM] == 4
    assert res.meta.actions[:2] == ("<pad>", "<oov>")
    assert res.report["oov_rate"]["samples"]["test"][C.ITEM] == 0.5


def test_split_is_a_global_time_cut(tmp_path: Path) -> None:
    events, samples = _base()
    res = _run(tmp_path, events, samples)
    _, _, splits = _read(tmp_path / "out")
    t_val, t_test = res.meta.split["t_val"], res.meta.split["t_test"]
    assert (t_val, t_test) == (75, 95)
    assert splits["train"][C.TS].max() < t_val <= splits["val"][C.TS].min()  # type: ignore[operator]
    assert splits["val"][C.TS].max() < t_test <= splits["test"][C.TS].min()  # type: ignore[operator]
    assert [splits[s].height for s in C.SPLITS] == [6, 2, 2]
    assert res.meta.counts.splits["train"]["rows"] == 6
    assert res.meta.counts.splits["train"]["tasks"]["click"] == {
        "labelled": 6,
        "positives": 3,
    }
    for s in C.SPLITS:  # sorted by time in every file
        assert splits[s][C.TS].is_sorted()


def test_empty_split_names_the_split(tmp_path: Path) -> None:
    events, _ = _base()
    # Times 1 x6, 2 x4: t_val = t_test = 2 (observed quantiles), so nothing is in between.
    samples = [_item("u1", 1 if k < 6 else 2, "i1", label_click=1) for k in range(10)]
    with pytest.raises(PrepError, match=r"split 'val' is empty.*val_frac/test_frac"):
        _run(tmp_path, events, samples)
    assert not (tmp_path / "out" / C.META_FILE).exists()
    same_time = [_item("u1", 7, "i1", label_click=1) for _ in range(10)]
    with pytest.raises(PrepError, match=r"split 'train' is empty"):
        _run(tmp_path, events, same_time)


def test_label_outside_0_1_names_column_and_row(tmp_path: Path) -> None:
    events, samples = _base()
    samples[3][C.label_col("click")] = 2
    with pytest.raises(PrepError) as err:
        _run(tmp_path, events, samples)
    msg = str(err.value)
    assert "samples" in msg and "'label_click'" in msg
    assert "row 3" in msg and "user_id='u2'" in msg and "ts=45" in msg and "value 2" in msg


def test_missing_column_names_table_and_column(tmp_path: Path) -> None:
    events, samples = _base()
    with pytest.raises(PrepError, match=r"events: required column 'shop_id' is missing"):
        prepare(_events(events).drop(C.SHOP), _samples(samples), tmp_path, CFG, {}, "fp")
    with pytest.raises(PrepError, match=r"samples: no label column"):
        prepare(_events(events), _samples(samples).drop("label_click"), tmp_path, CFG, {}, "fp")


def test_uncastable_dtypes_name_the_column(tmp_path: Path) -> None:
    events, samples = _base()
    bad_ts = _events(events).with_columns(pl.col(C.TS).cast(pl.String))
    bad_ts = bad_ts.with_columns(
        pl.when(pl.col(C.USER) == "u4").then(pl.lit("yesterday")).otherwise(C.TS).alias(C.TS)
    )
    with pytest.raises(PrepError, match=r"events: column 'ts'.*row 8 .*'yesterday'"):
        prepare(bad_ts, _samples(samples), tmp_path, CFG, {}, "fp")
    half = _events(events).with_columns(pl.col(C.TS) + (pl.col(C.USER) == "u2") * 0.5)
    with pytest.raises(PrepError, match=r"events: column 'ts'.*row 5 .*value 12.5"):
        prepare(half, _samples(samples), tmp_path, CFG, {}, "fp")
    nested = _events(events).with_columns(pl.concat_list(C.ITEM).alias(C.ITEM))
    with pytest.raises(PrepError, match=r"events: column 'item_id' has dtype"):
        prepare(nested, _samples(samples), tmp_path, CFG, {}, "fp")


def test_numeric_string_ts_and_boolean_labels_are_cast(tmp_path: Path) -> None:
    events, samples = _base()
    ev = _events(events).with_columns(pl.col(C.TS).cast(pl.String), pl.col(C.USER))
    sm = _samples(samples).with_columns(pl.col("label_click").cast(pl.Boolean))
    res = prepare(ev, sm, tmp_path / "a", CFG, {}, "fp")
    ref = _run(tmp_path, events, samples)
    for name in (C.TIMELINE_FILE, *(C.samples_file(s) for s in C.SPLITS)):
        assert pl.read_parquet(res.out_dir / name).equals(pl.read_parquet(ref.out_dir / name))


def test_dropped_rows_are_counted_by_reason(tmp_path: Path) -> None:
    events, samples = _base()
    bad_events = [
        _item(None, 11, "i1"),
        _item("u1", None, "i1"),
        _item("u1", 11, "i1", **{C.GROUP: "video"}),
        _item("u1", 11, "i1", **{C.GROUP: None}),
        _item("u1", 11, "i1", **{C.ACTION: None}),
        _item("u1", 11, None),
        _coupon("u1", 11, None),
        _item(None, None, None),  # counted once, under its first reason
    ]
    masked = _item("u1", 11, "i1", **{C.COUPON: "k9"})  # kept, coupon_id nulled
    bad_samples = [
        _item("u1", 60, "i1"),  # no label at all
        _item(None, 60, "i1", label_click=1),
        _coupon("u1", 60, None, label_click=0),
    ]
    res = _run(tmp_path, events + bad_events + [masked], samples + bad_samples)
    ev = res.report["events"]
    assert ev["dropped_by_reason"] == {
        "null_user_id": 2,
        "null_ts": 1,
        "unknown_group": 2,
        "null_action": 1,
        "item_without_item_id": 1,
        "coupon_without_coupon_id": 1,
    }
    assert ev["rows_read"] == len(events) + 9
    assert ev["rows_kept"] == len(events) + 1 == res.meta.counts.events
    assert ev["values_nulled_outside_group"][C.COUPON] == 1
    sm = res.report["samples"]
    assert sm["rows_dropped"] == 3
    assert sm["dropped_by_reason"]["no_label"] == 1
    assert sm["dropped_by_reason"]["null_user_id"] == 1
    assert sm["dropped_by_reason"]["coupon_without_coupon_id"] == 1
    timeline, _, _ = _read(tmp_path / "out")
    assert timeline.height == len(events) + 1
    assert (timeline[C.COUPON].filter(timeline[C.GROUP_IDX] == 0) == 0).all()


def test_same_fingerprint_is_skipped_other_reruns(tmp_path: Path) -> None:
    events, samples = _base()
    first = _run(tmp_path, events, samples)
    meta_path = tmp_path / "out" / C.META_FILE
    stamp = meta_path.stat().st_mtime_ns
    again = _run(tmp_path, events, samples)
    assert isinstance(again, PrepResult) and again.skipped and not first.skipped
    assert again.meta == first.meta and again.report == first.report
    assert meta_path.stat().st_mtime_ns == stamp
    # The skip check reads no input: empty frames are fine.
    empty = prepare(pl.LazyFrame(), pl.LazyFrame(), tmp_path / "out", CFG, {}, "fp")
    assert empty.skipped
    other = prepare(_events(events), _samples(samples), tmp_path / "out", CFG, {}, "fp2")
    assert not other.skipped and read_meta(tmp_path / "out").fingerprint == "fp2"
    forced = prepare(_events(events), _samples(samples), tmp_path / "out", CFG, {}, "fp2", True)
    assert not forced.skipped
    cfg2 = PrepConfig(val_frac=0.2, test_frac=0.2, min_count=2)  # config change re-runs
    rerun = prepare(_events(events), _samples(samples), tmp_path / "out", cfg2, {}, "fp2")
    assert not rerun.skipped


def test_failed_run_leaves_no_finished_looking_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, samples = _base()
    _run(tmp_path, events, samples)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("data_prep.pipeline._write_files", boom)
    with pytest.raises(OSError, match="disk full"):
        _run(tmp_path, events, samples, force=True)
    out = tmp_path / "out"
    assert not (out / C.META_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".prep-tmp")]


def test_read_meta_rejects_missing_corrupt_and_other_versions(tmp_path: Path) -> None:
    with pytest.raises(PrepError, match=r"meta\.json: not found"):
        read_meta(tmp_path)
    events, samples = _base()
    _run(tmp_path, events, samples)
    path = tmp_path / "out" / C.META_FILE
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(meta | {"schema_version": C.SCHEMA_VERSION + 1}))
    with pytest.raises(PrepError) as err:
        read_meta(tmp_path / "out")
    assert str(path) in str(err.value)
    assert f"schema version {C.SCHEMA_VERSION + 1}, this code reads {C.SCHEMA_VERSION}" in str(
        err.value
    )
    assert "re-run atrank-prep" in str(err.value)
    assert not _run(tmp_path, events, samples).skipped  # an old version is never reused
    path.write_text("{not json")
    with pytest.raises(PrepError, match=r"meta\.json: unreadable or corrupt"):
        read_meta(tmp_path / "out")


def test_output_is_deterministic_and_independent_of_input_order(tmp_path: Path) -> None:
    events, samples = _base()
    a = _run(tmp_path / "a", events, samples)
    b = _run(tmp_path / "b", events[::-1], samples[::-1])
    names = [C.TIMELINE_FILE, C.USERS_FILE, *(C.samples_file(s) for s in C.SPLITS)]
    names += [f"{C.VOCAB_DIR}/{f}.parquet" for f in (*C.ID_FIELDS, "action")]
    for name in names:
        assert pl.read_parquet(a.out_dir / name).equals(pl.read_parquet(b.out_dir / name)), name
    assert a.report == b.report
    assert replace(a.meta, created="") == replace(b.meta, created="")


def test_meta_describes_groups_tasks_and_time(tmp_path: Path) -> None:
    events, samples = _base()
    samples.append(_coupon("u1", 70, "k1", label_redeem=1))
    sm = _samples(samples, ("click", "redeem")).with_columns(
        pl.col("label_redeem").cast(pl.Float64).alias("prob_redeem")
    )
    sm = sm.with_columns(pl.lit("x").alias("note"), pl.lit(0.5).alias("prob_orphan"))
    res = prepare(_events(events), sm, tmp_path, CFG, {"name": "sim"}, "fp")
    assert res.report["samples"]["ignored_columns"] == ["note", "prob_orphan"]
    meta = read_meta(tmp_path)
    assert meta == res.meta
    assert meta.groups["coupon"] == GroupInfo(index=1, fields=C.GROUP_FIELDS["coupon"])
    assert meta.tasks["click"].target_groups == ("item",)
    assert meta.tasks["redeem"] == TaskInfo(
        target_groups=("coupon",),
        has_prob=True,
        label_col="label_redeem",
        prob_col="prob_redeem",
    )
    assert meta.time == TimeRule(unit_seconds=86_400, n_buckets=13)
    assert meta.source == {"name": "sim"} and meta.fingerprint == "fp"
    assert meta.actions == ("<pad>", "<oov>", "click", "cart", "receive", "use")
    assert meta.n_actions == 6
    train = pl.read_parquet(tmp_path / C.samples_file("train"))
    assert train.schema["prob_redeem"] == pl.Float32
    assert train.schema["label_click"] == pl.Int8
    assert train.schema[C.HIST_END] == pl.Int64 and train.schema[C.ITEM] == pl.Int32


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"val_frac": 0.0}, "val_frac"),
        ({"test_frac": 1.5}, "test_frac"),
        ({"val_frac": 0.5, "test_frac": 0.5}, "val_frac \\+ test_frac"),
        ({"n_time_buckets": 1}, "n_time_buckets"),
        ({"time_unit_seconds": 0}, "time_unit_seconds"),
        ({"min_count": 0}, "min_count"),
    ],
)
def test_config_errors_name_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(PrepError, match=key):
        PrepConfig(**kw)


def test_fingerprint_tracks_config_and_input_files(tmp_path: Path) -> None:
    d = tmp_path / "raw"
    (d / "sub").mkdir(parents=True)
    f = d / "sub" / "a.parquet"
    f.write_bytes(b"x")
    fp = fingerprint({"a": 1, "b": [1, 2]}, [d])
    assert fp == fingerprint({"b": [1, 2], "a": 1}, [d])  # key order is irrelevant
    assert fp != fingerprint({"a": 2, "b": [1, 2]}, [d])
    os.utime(f, ns=(1, 1))
    assert fp != (fp := fingerprint({"a": 1, "b": [1, 2]}, [d]))
    (d / "b.parquet").write_bytes(b"y")
    assert fp != fingerprint({"a": 1, "b": [1, 2]}, [d])
    with pytest.raises(PrepError, match="does not exist"):
        fingerprint({}, [tmp_path / "nope"])
    assert fingerprint({"s": {"b", "a"}}, []) == fingerprint({"s": {"a", "b"}}, [])
    assert fingerprint({"p": Path("x")}, []) == fingerprint({"p": "x"}, [])
    with pytest.raises(PrepError, match="not JSON-serialisable"):
        fingerprint({"f": object()}, [])


_event_rows = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 6), st.sampled_from(["x", "y"])),
    max_size=25,
)
_sample_rows = st.lists(
    st.tuples(st.sampled_from(["a", "b", "d"]), st.integers(0, 7), st.integers(0, 1)),
    min_size=1,
    max_size=15,
)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ev=_event_rows, sm=_sample_rows)
def test_hist_end_property(tmp_path: Path, ev: list[Any], sm: list[Any]) -> None:
    """hist_end - hist_start == number of the user's events strictly before the sample."""
    events = [_item(u, t, i) for u, t, i in ev]
    samples = [_item(u, t, "x", label_click=y) for u, t, y in sm]
    out = tmp_path / "prop"
    try:
        prepare(_events(events), _samples(samples), out, CFG, {}, "fp", force=True)
    except PrepError as e:
        assert "is empty" in str(e)  # too few distinct sample times for three splits
        return
    timeline, users, splits = _read(out)
    every = pl.concat(splits.values())
    assert every.height == len(samples)
    uid = dict(zip(users[C.USER], users[C.USER_IDX], strict=True))
    for s in every.iter_rows(named=True):
        user = next(u for u, i in uid.items() if i == s[C.USER_IDX])
        expected = sum(1 for u, t, _ in ev if u == user and t < s[C.TS])
        assert s[C.HIST_END] - s[C.HIST_START] == expected
    _check_histories(timeline, every)


def test_time_span_beyond_32_bits_still_sorts_the_timeline(tmp_path: Path) -> None:
    events, samples = _base()
    events.append(_item("u1", -(2**33), "i2"))  # ancient: the packed sort key would overflow
    _run(tmp_path, events, samples)
    timeline, _, splits = _read(tmp_path / "out")
    assert timeline.equals(timeline.sort(timeline.columns))
    assert timeline.row(0, named=True)[C.TS] == -(2**33)
    _check_histories(timeline, pl.concat(splits.values()))
