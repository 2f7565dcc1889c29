"""A user's mistake gives an error naming the key, file or line, or counted skips, never a
traceback: bad config values fail before any data is read, broken input files (non-UTF-8
bytes, absurd timestamps, byte-order marks, duplicates, nothing usable) are named, and every
adapter survives random and mutated bytes (property tests)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from atrank.config import ConfigError
from atrank.train import train
from data_prep import contract as C
from data_prep.errors import PrepError
from data_prep.pipeline import PrepConfig
from data_prep.run import prepare_from_config
from data_prep.sources import ADAPTERS, AdapterError, AdapterResult

Compose = Callable[..., DictConfig]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real data samples not found at {SHARED} (../shared/data)"
)

# --- valid small inputs of every adapter: {file name: bytes}; the first file is the main one
O2O_HEADER = b"User_id,Merchant_id,Coupon_id,Discount_rate,Distance,Date_received,Date\n"
SEEDS: dict[str, dict[str, bytes]] = {
    "taobao": {
        "ub.csv": b"1,10,100,pv,1511544070\n1,11,100,buy,1511544071\n2,12,101,cart,1511544072\n"
    },
    "o2o": {
        "o2o.csv": O2O_HEADER
        + b"1,7,100,30:5,1,20160101,20160110\n2,8,101,0.9,null,20160101,null\n"
        + b"3,8,null,null,1,null,20160105\n"
    },
    "movielens": {
        "u.data": b"1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t30\t4\t881250951\n",
        "u.item": b"10|A|01-Jan-1995||http://x|0|0|0|1" + b"|0" * 15 + b"\n"
        b"20|B|01-Jan-1995||http://x|1" + b"|0" * 18 + b"\n",
    },
    "amazon_seq": {
        "Toy.txt": b"u1 a b c\nu2 b c\nu3 a\n",
        "Toy_item2attributes.json": b'{"a": [9, 1, 2], "b": [1], "c": [8, 1]}',
    },
    "amazon_reviews": {
        "reviews_Toy_5.json": b'{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1300000000}\n'
        b'{"reviewerID": "U2", "asin": "A2", "unixReviewTime": "1300000100"}\n',
        "meta_Toy.json": b"{'asin': 'A1', 'categories': [['E', 'Camera']], 'brand': 'Canon'}\n"
        b'{"asin": "A2", "categories": [["E", "TV"]], "brand": ""}\n',
    },
}
FILE_ADAPTERS = ("taobao", "o2o")  # read from the file itself; the others from their folder


def _write(folder: Path, adapter: str, changed: dict[str, bytes] | None = None) -> Path:
    """Writes the adapter's seed files (with ``changed`` ones replaced) into ``folder``."""
    files = {**SEEDS[adapter], **(changed or {})}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder / next(iter(files)) if adapter in FILE_ADAPTERS else folder


def _read(adapter: str, path: Path, on_error: str) -> tuple[AdapterResult, pl.DataFrame]:
    result = ADAPTERS[adapter](path, on_error=on_error)
    events = result.events.collect()  # lazy: the frames must collect too
    if result.samples is not None:
        result.samples.collect()
    return result, events


def _skips(adapter: str, file: str, data: bytes, on_error: str, tmp_path: Path) -> dict[str, int]:
    """The skip counts of reading the seed with ``file`` replaced by ``data``."""
    result, _ = _read(adapter, _write(tmp_path, adapter, {file: data}), on_error)
    return result.skipped


def _raises(adapter: str, file: str, data: bytes, tmp_path: Path, *shown: str) -> str:
    """Reads with ``file`` replaced by ``data``: an AdapterError naming the file and ``shown``."""
    with pytest.raises(AdapterError) as info:
        _read(adapter, _write(tmp_path, adapter, {file: data}), "raise")
    msg = str(info.value)
    assert file in msg and all(s in msg for s in shown), msg
    return msg


def _main(adapter: str) -> tuple[str, bytes]:
    return next(iter(SEEDS[adapter].items()))


# --- non-UTF-8 bytes: a named line (raise) or a counted skip (skip), in every adapter ------
LATIN1 = "Mis\xe9rables".encode("latin-1")  # (b"\xe9": never valid UTF-8 before "r")


@pytest.mark.parametrize(
    ("adapter", "file", "line"),
    [
        ("taobao", "ub.csv", b"3,13," + LATIN1 + b",pv,1511544073"),
        ("o2o", "o2o.csv", b"5," + LATIN1 + b",103,30:5,1,20160101,null"),
        ("movielens", "u.data", b"3\t" + LATIN1 + b"\t4\t881250952"),
        ("amazon_seq", "Toy.txt", b"u4 " + LATIN1),
        ("amazon_reviews", "reviews_Toy_5.json", b'{"reviewerID": "' + LATIN1 + b'", "asin": "A"}'),
        ("amazon_reviews", "meta_Toy.json", b'{"asin": "' + LATIN1 + b'"}'),
    ],
    ids=["taobao", "o2o", "movielens", "amazon_seq", "amazon_reviews", "amazon_reviews-meta"],
)
def test_non_utf8_line_is_named_or_counted(
    tmp_path: Path, adapter: str, file: str, line: bytes
) -> None:
    seed = SEEDS[adapter][file]
    lines = seed.split(b"\n")
    data = b"\n".join([lines[0], line, *lines[1:]])  # the bad line is line 2
    reason = "meta_bad_encoding" if file.startswith("meta") else "bad_encoding"
    _raises(adapter, file, data, tmp_path, "line 2:", reason, "not valid UTF-8")
    clean = _skips(adapter, file, seed, "skip", tmp_path)
    assert _skips(adapter, file, data, "skip", tmp_path) == {**clean, reason: 1}


def test_non_utf8_header_and_attributes_name_the_file(tmp_path: Path) -> None:
    _raises("o2o", "o2o.csv", b"\xff" + SEEDS["o2o"]["o2o.csv"], tmp_path, "line 1", "UTF-8")
    attrs = b'{"a": [9],\n "b": ["\xe9"]}'
    _raises("amazon_seq", "Toy_item2attributes.json", attrs, tmp_path, "line 2", "UTF-8")


def test_latin1_movie_file_is_still_read(tmp_path: Path) -> None:
    """The original MovieLens movie files are Latin-1: decoded as such, not skipped."""
    movies = b"10|" + LATIN1 + b"|01-Jan-1995||http://x|0|0|0|1" + b"|0" * 15 + b"\n"
    result, events = _read("movielens", _write(tmp_path, "movielens", {"u.item": movies}), "raise")
    assert result.skipped == {}
    assert events.filter(pl.col(C.ITEM) == "10")[C.CATEGORY].to_list() == ["Animation"]


@needs_shared
def test_non_utf8_byte_in_a_real_log_is_named(tmp_path: Path) -> None:
    lines = (SHARED / "taobao_userbehavior" / "users_43.csv").read_bytes().split(b"\n")
    lines[999] = lines[999].replace(b",pv,", b",p\xf6v,").replace(b",buy,", b",b\xf6uy,")
    file = tmp_path / "users_43.csv"
    file.write_bytes(b"\n".join(lines))
    with pytest.raises(AdapterError, match=r"users_43.csv: line 1000: bad_encoding"):
        ADAPTERS["taobao"](file)
    result = ADAPTERS["taobao"](file, on_error="skip")
    assert result.skipped == {"bad_encoding": 1} and result.events.collect().height == 4_320


# --- a 20-digit timestamp: bad_timestamp, not a failed cast --------------------------------
TS20 = b"12345678901234567890"


@pytest.mark.parametrize(
    ("adapter", "line"),
    [
        ("taobao", b"3,13,102,pv," + TS20),
        ("movielens", b"3\t40\t4\t" + TS20),
        ("amazon_reviews", b'{"reviewerID": "U3", "asin": "A3", "unixReviewTime": ' + TS20 + b"}"),
        ("amazon_reviews", b'{"reviewerID": "U3", "asin": "A3", "unixReviewTime": "1e19"}'),
    ],
    ids=["taobao", "movielens", "amazon_reviews-number", "amazon_reviews-string"],
)
def test_huge_timestamp_is_a_bad_timestamp(tmp_path: Path, adapter: str, line: bytes) -> None:
    file, seed = _main(adapter)
    data = seed + line + b"\n"
    n = len(seed.splitlines()) + 1
    _raises(adapter, file, data, tmp_path, f"line {n}:", "bad_timestamp")
    assert _skips(adapter, file, data, "skip", tmp_path) == {"bad_timestamp": 1}


# --- O2O: the year 9999, and a byte-order mark ---------------------------------------------
@pytest.mark.parametrize(
    "row",
    [b"5,9,103,30:5,1,99991231,null", b"5,9,103,30:5,1,20160101,99991231"],
    ids=["Date_received", "Date"],
)
def test_o2o_refuses_the_year_9999(tmp_path: Path, row: bytes) -> None:
    data = SEEDS["o2o"]["o2o.csv"] + row + b"\n"
    _raises("o2o", "o2o.csv", data, tmp_path, "line 5:", "bad_timestamp", "9999")
    assert _skips("o2o", "o2o.csv", data, "skip", tmp_path) == {"no_coupon": 1, "bad_timestamp": 1}


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    o2o = _write(tmp_path, "o2o", {"o2o.csv": bom + SEEDS["o2o"]["o2o.csv"]})
    result, events = _read("o2o", o2o, "raise")
    assert result.skipped == {"no_coupon": 1} and events[C.USER].unique().sort().to_list() == [
        "1",
        "2",
    ]
    taobao = _write(tmp_path, "taobao", {"ub.csv": bom + SEEDS["taobao"]["ub.csv"]})
    _, events = _read("taobao", taobao, "raise")
    assert events[C.USER].to_list() == ["1", "1", "2"]  # not "\ufeff1"


# --- exact duplicate rows: counted and noted ------------------------------------------------
@pytest.mark.parametrize("adapter", ["taobao", "movielens", "amazon_seq", "amazon_reviews"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_exact_duplicates_are_dropped_counted_and_noted(
    tmp_path: Path, adapter: str, on_error: str
) -> None:
    file, seed = _main(adapter)
    first = seed.split(b"\n")[0]
    path = _write(tmp_path, adapter, {file: seed + first + b"\n" + first + b"\n"})
    result, events = _read(adapter, path, on_error)
    clean, _ = _read(adapter, _write(tmp_path, adapter), on_error)
    assert result.skipped == {"duplicate_row": 2}
    assert any("2 exact duplicate row(s) dropped" in n for n in result.notes)
    assert events.height == clean.events.collect().height


def test_o2o_keeps_exact_duplicates_and_notes_them(tmp_path: Path) -> None:
    seed = SEEDS["o2o"]["o2o.csv"]
    row = seed.split(b"\n")[1]
    result, events = _read("o2o", _write(tmp_path, "o2o", {"o2o.csv": seed + row + b"\n"}), "raise")
    assert result.skipped == {"no_coupon": 1}  # (a repeated receipt is a receipt)
    assert any("1 row(s) repeat an earlier row exactly" in n for n in result.notes)
    assert result.samples is not None and result.samples.collect().height == 3


# --- nothing usable: how many lines were skipped, and why -----------------------------------
def test_file_whose_every_line_is_skipped_says_why(tmp_path: Path) -> None:
    data = b"1,10,100,click,1511544070\n\n2,11,100,pv,yesterday\n3,12,100,pv,soon\n"
    msg = _skips_message(tmp_path, data)
    assert "all 4 data lines were skipped" in msg
    assert "unknown_behavior: 1 (first at line 1" in msg and "bad_timestamp: 2" in msg
    assert "blank_line: 1" in msg
    # the same through a preparation: the file and the counts, not "no usable rows"
    file = tmp_path / "ub.csv"
    file.write_bytes(data)
    dataset = {"name": "taobao", "path": str(file), "on_error": "skip"}
    with pytest.raises(PrepError, match=r"ub.csv: no usable line: all 4 data lines") as info:
        prepare_from_config(dataset, PrepConfig(), cache_dir=tmp_path / "cache")
    assert "no usable rows" not in str(info.value)


def _skips_message(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(AdapterError) as info:
        _read("taobao", _write(tmp_path, "taobao", {"ub.csv": data}), "skip")
    return str(info.value)


@pytest.mark.parametrize("adapter", sorted(SEEDS))
def test_empty_main_file_is_named(tmp_path: Path, adapter: str) -> None:
    file, _ = _main(adapter)
    data = O2O_HEADER if adapter == "o2o" else b""
    _raises(adapter, file, data, tmp_path, "no data lines")


# --- property: random and mutated bytes give a named error or counted skips ----------------
TOKENS = [
    b"\xff",
    b"\xe9",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\r",
    b"\n",
    b",",
    b"\t",
    b"|",
    b"::",
    b":",
    b" ",
    b"null",
    b"{",
    b"}",
    b"'",
    b'"',
    b"[",
    TS20,
    b"99991231",
    b"-1",
    b"1e400",
    b"x^",
    b"\x1f\x8b",
]


@st.composite
def _mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes replaced, inserted, deleted or lines repeated; or random."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete", "repeat_line"]))
        piece = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=3))
        if op == "insert":
            data[at:at] = piece
        elif op == "replace":
            data[at : at + len(piece)] = piece
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            line = bytes(data[start : end + 1 if end >= 0 else len(data)])
            data[start:start] = line if line.endswith(b"\n") else line + b"\n"
    return bytes(data)


def _check_any_input(adapter: str, file: str, data: bytes) -> None:
    """Both modes: a result whose frames collect, with skips only where allowed, or an
    AdapterError naming ``file``. Any other exception fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), adapter, {file: data})
        for on_error in ("raise", "skip"):
            try:
                result, _ = _read(adapter, path, on_error)
            except AdapterError as e:
                assert file in str(e), str(e)
                continue
            assert all(isinstance(n, int) and n > 0 for n in result.skipped.values())
            if on_error == "raise":  # only the reasons dropped by policy in both modes
                policy = {"blank_line", "meta_blank_line", "duplicate_row", "no_coupon"}
                assert set(result.skipped) <= policy, result.skipped


FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize(("adapter", "file"), [(a, f) for a in sorted(SEEDS) for f in SEEDS[a]])
@FUZZ
@given(data=st.data())
def test_any_bytes_give_a_named_error_or_counted_skips(
    adapter: str, file: str, data: st.DataObject
) -> None:
    _check_any_input(adapter, file, data.draw(_mutated(SEEDS[adapter][file])))


# --- bad config values: an error naming the key before anything is read --------------------
def _assert_nothing_done(cfg: DictConfig, cache: Path) -> None:
    out = Path(cfg.paths.output_dir)
    assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()
    assert not (cache / "prepared").exists() and not (cache / "raw").exists()  # nothing read


BAD_VALUES = [
    (["optimizer.lr=-1"], "optimizer.lr", "must be > 0"),
    (["optimizer=sgd", "+optimizer.momentum=-0.5"], "optimizer.momentum", ">= 0"),
    (["+optimizer.lrr=1"], "optimizer.lrr", "not an argument of torch.optim.Adam"),
    (["optimizer._target_=torch.optim.Adamm"], "optimizer._target_", "cannot import"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs", "must be an integer"),
    (["trainer.precision=33"], "trainer.precision", "one of"),
    (["trainer.devices=[a]"], "trainer.devices", "must be"),
    (["callbacks.early_stopping.patience=abc"], "callbacks.early_stopping.patience", "integer"),
    (["callbacks.early_stopping.patience=-2"], "callbacks.early_stopping.patience", ">= 0"),
    (["scheduler=step", "scheduler.step_size=-1"], "scheduler.step_size", ">= 1"),
    (["scheduler=step", "scheduler.gamma=abc"], "scheduler.gamma", "a number"),
    (["ckpt_path=/nonexistent/run.ckpt"], "ckpt_path", "no checkpoint file"),
]


@pytest.mark.parametrize(
    ("overrides", "key", "why"), BAD_VALUES, ids=[" ".join(o) for o, _, _ in BAD_VALUES]
)
def test_bad_value_fails_before_anything_is_read(
    compose_cfg: Compose, tmp_path: Path, overrides: list[str], key: str, why: str
) -> None:
    cache = tmp_path / "fresh-cache"
    cfg = compose_cfg(*overrides, f"paths.cache_dir={cache}")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}'?: .*{why}"):
        train(cfg)
    _assert_nothing_done(cfg, cache)


def test_mistyped_dataset_option_names_the_key(compose_cfg: Compose, tmp_path: Path) -> None:
    log = tmp_path / "ub.csv"
    log.write_bytes(SEEDS["taobao"]["ub.csv"])
    cache = tmp_path / "fresh-cache"
    for key, value in (("ts_min", "abc"), ("on_error", "ignore"), ("ts_max", "1.5e9")):
        cfg = compose_cfg(
            "dataset=taobao",
            f"dataset.path={log}",
            f"dataset.{key}={value}",
            f"paths.cache_dir={cache}",
            "logger=none",
            tiny=False,
        )
        with pytest.raises(PrepError, match=rf"dataset.{key}: expected .*got"):
            train(cfg)
        _assert_nothing_done(cfg, cache)


def test_mistyped_seed_fails_at_compose(compose_cfg: Compose) -> None:
    with pytest.raises(ConfigCompositionException, match="seed"):
        compose_cfg("seed=abc")


def test_the_packaged_configs_pass_the_new_checks(compose_cfg: Compose) -> None:
    from atrank.config import train_config

    for overrides in (
        [],
        ["optimizer=sgd", "scheduler=step"],
        ["trainer=ddp"],
        ["trainer=gpu"],
        ["logger=wandb"],
        ["debug=overfit"],
        ["debug=limit"],
        *(
            [f"experiment={f.stem}"]
            for f in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
        ),
    ):
        train_config(compose_cfg(*overrides, tiny=False))
