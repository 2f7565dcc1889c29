"""atrank-predict: streamed batch scoring equals in-process scoring, chunks never split a
request, top K by a task or a blend, unscorable rows kept and counted, DDP parts, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from polars.testing import assert_frame_equal

from atrank.cli.predict import predict
from atrank.serve.chunks import NO_CHUNK, RequestChunks, events_table, find_source
from atrank.serve.features import POSITION, REQUEST_ID, REQUEST_IDX
from atrank.serve.predictor import Predictor
from data_prep import contract as C
from data_prep.errors import PrepError

BIN = Path(sys.executable).parent
Run = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def setup(tiny_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bundle of a short run on the tiny simulated data, its raw events, and requests of
    1-9 candidates each (catalogue items and coupons, unknown items, an unknown user)."""
    root = tmp_path_factory.mktemp("predict")
    bundle = tiny_run["bundle"]
    events_dir = tiny_run["raw"] / "events"
    samples = pl.read_parquet(events_dir.parent / "samples" / "*.parquet")
    predictor = Predictor(bundle)
    items = predictor.bundle.catalogue["item"][C.ITEM].to_list()
    coupons = predictor.bundle.catalogue["coupon"][C.COUPON].to_list()
    rng = np.random.default_rng(0)
    rows: list[tuple[Any, ...]] = []
    for user, ts in samples.select(C.USER, C.TS).head(50).rows():
        for _ in range(int(rng.integers(1, 10))):
            r = rng.random()
            if r < 0.2:
                rows.append((user, ts, "coupon", None, str(rng.choice(coupons))))
            elif r < 0.25:
                rows.append((user, ts, "coupon", None, None))  # no coupon id: unscorable
            elif r < 0.3:
                rows.append((user, ts, "item", "brand-new", None))
            else:
                rows.append((user, ts, "item", str(rng.choice(items)), None))
    rows += [("nobody", 1, "item", "brand-new", None), ("nobody", 1, "item", items[0], None)]
    requests = pl.DataFrame(
        rows, schema=[C.USER, C.TS, C.GROUP, C.ITEM, C.COUPON], orient="row"
    ).with_columns(pl.col(C.TS).cast(pl.Int64))
    events = pl.read_parquet(events_dir / "*.parquet")
    inputs = root / "inputs"
    inputs.mkdir()
    requests.write_parquet(inputs / "requests.parquet")
    requests.write_csv(inputs / "requests.csv")
    events.write_csv(inputs / "events.csv")
    want, stats = predictor.score(events, requests)
    return {
        "root": root,
        "bundle": bundle,
        "events_dir": events_dir,
        "inputs": inputs,
        "requests": requests,
        "events": events,
        "want": want,
        "stats": stats,
        "predictor": predictor,
    }


@pytest.fixture()
def run(setup: dict[str, Any], tmp_path: Path) -> Run:
    """Runs ``predict`` in-process on the packaged config with overrides."""

    def _run(*overrides: str, requests: str | None = None) -> dict[str, Any]:
        base = [
            f"bundle={setup['bundle']}",
            f"events={setup['events_dir']}",
            f"requests={requests or setup['inputs'] / 'requests.parquet'}",
            f"paths.output_dir={tmp_path / 'hydra'}",
            "threads=1",
        ]
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="atrank.conf", version_base="1.3"):
            cfg = compose(config_name="predict", overrides=[*base, *overrides])
        GlobalHydra.instance().clear()
        summary = predict(cfg)
        assert summary is not None
        return summary

    return _run


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    exe = shutil.which("atrank-predict", path=str(BIN)) or "atrank-predict"
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _parts(folder: Path) -> list[Path]:
    """A folder output's parts in input order (by chunk number)."""
    return sorted(folder.glob("part-*"), key=lambda p: int(p.stem.split("-")[2]))


def test_parquet_and_csv_inputs_give_the_in_process_scores(
    setup: dict[str, Any], run: Run, tmp_path: Path
) -> None:
    want: pl.DataFrame = setup["want"]
    inputs: Path = setup["inputs"]
    run(f"out={tmp_path / 'a.parquet'}")
    run(
        f"out={tmp_path / 'b.parquet'}",
        f"events={inputs / 'events.csv'}",
        requests=str(inputs / "requests.csv"),
    )
    for name in ("a.parquet", "b.parquet"):
        got = pl.read_parquet(tmp_path / name)
        assert_frame_equal(got, want, abs_tol=1e-6)
    assert want.height == setup["requests"].height  # one row per (request, candidate)
    first = want.group_by(REQUEST_IDX, maintain_order=True).agg(pl.col(POSITION))
    assert all(p == list(range(len(p))) for p in first[POSITION].to_list())
    assert not (tmp_path / "a.parquet.parts").exists()  # the parts are gone once joined


def test_tiny_chunks_equal_one_chunk_and_never_split_a_request(
    setup: dict[str, Any], run: Run, tmp_path: Path
) -> None:
    requests: pl.DataFrame = setup["requests"]
    # without request_id (requests are runs of (user_id, ts)), CSV output
    summary = run(f"out={tmp_path / 'small.csv'}", "chunk_rows=7")
    assert summary["chunks"] == -(-requests.height // 7)
    got = pl.read_csv(tmp_path / "small.csv", schema=setup["want"].schema)
    assert_frame_equal(got, setup["want"], abs_tol=1e-6)
    # with request_id, a folder of parts: each request in exactly one part
    with_id = requests.with_columns(
        (pl.lit("r") + pl.col(C.USER) + "-" + pl.col(C.TS).cast(pl.String)).alias(REQUEST_ID)
    )
    with_id.write_parquet(tmp_path / "with_id.parquet")
    run(f"out={tmp_path / 'parts'}", "chunk_rows=7", requests=str(tmp_path / "with_id.parquet"))
    run(f"out={tmp_path / 'one.parquet'}", requests=str(tmp_path / "with_id.parquet"))
    parts = _parts(tmp_path / "parts")
    seen = [set(pl.read_parquet(p)[REQUEST_ID]) for p in parts]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == with_id[REQUEST_ID].n_unique()
    assert (tmp_path / "parts" / "_SUCCESS").is_file()
    assert_frame_equal(
        pl.concat(pl.read_parquet(p) for p in parts), pl.read_parquet(tmp_path / "one.parquet")
    )


def _top(table: pl.DataFrame, score: str, k: int) -> pl.DataFrame:
    """The reference top K: per request the k best scored rows, then the unscorable rows."""
    out = []
    for _, rows in table.group_by(REQUEST_IDX, maintain_order=True):
        ranked = rows.filter(pl.col(score).is_not_null()).sort(
            [score, POSITION], descending=[True, False]
        )
        out.append(ranked.head(k).with_columns(pl.int_range(1, pl.len() + 1).alias("rank")))
        out.append(rows.filter(~pl.col("scorable")).with_columns(pl.lit(None).alias("rank")))
    return pl.concat(out, how="diagonal_relaxed")


def test_top_k_by_a_task_and_by_a_blend(setup: dict[str, Any], run: Run, tmp_path: Path) -> None:
    want: pl.DataFrame = setup["want"]
    run(f"out={tmp_path / 'top.parquet'}", "top_k=2", "rank_by=click", "chunk_rows=30")
    got = pl.read_parquet(tmp_path / "top.parquet")
    ref = _top(want, "p_click", 2)
    assert got["rank"].dtype == pl.Int32 and got.height == ref.height
    assert_frame_equal(got, ref.select(got.columns), check_dtypes=False, abs_tol=1e-6)

    run(
        f"out={tmp_path / 'blend.parquet'}",
        "top_k=3",
        "rank_by=blend",
        "+blend.click=1",
        "+blend.coupon=3",
    )
    got = pl.read_parquet(tmp_path / "blend.parquet")
    # click scores items and coupon scores coupons: the blend ranks both groups together
    blend = want.with_columns(pl.coalesce(pl.col("p_click"), pl.col("p_coupon")).alias("p_blend"))
    ref = _top(blend, "p_blend", 3)
    assert_frame_equal(got, ref.select(got.columns), check_dtypes=False, abs_tol=1e-6)
    assert set(got.filter(pl.col("rank").is_not_null())[C.GROUP]) == {"item", "coupon"}


def test_unscorable_rows_are_written_flagged_and_counted(
    setup: dict[str, Any], run: Run, tmp_path: Path
) -> None:
    summary = run(f"out={tmp_path / 'out'}", "chunk_rows=40")
    stats = setup["stats"]
    got = pl.concat(pl.read_parquet(p) for p in _parts(tmp_path / "out"))
    bad = got.filter(~pl.col("scorable"))
    assert bad.height == summary["unscorable"] == stats["unscorable"] > 0
    assert set(summary["unscorable_by_reason"]) == {
        "no_candidate_id",
        "unknown_candidate_and_no_history",
    }
    assert summary["unscorable_by_reason"] == stats["unscorable_by_reason"]
    assert bad.select(pl.col("^p_.*$").null_count()).row(0) == (bad.height,) * 3
    assert summary["rows_written"] == summary["candidates"] == setup["requests"].height
    assert summary["requests"] == stats["requests"]
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["unscorable"] == summary["unscorable"] and written["ranks"] == 1


def test_scattered_requests_are_refused_and_rows_without_user_or_time_flagged(
    setup: dict[str, Any], run: Run, tmp_path: Path
) -> None:
    requests: pl.DataFrame = setup["requests"]
    scattered = pl.concat([requests, requests.head(1)])
    scattered.write_parquet(tmp_path / "scattered.parquet")
    with pytest.raises(PrepError, match=f"row {requests.height}: the rows of request"):
        run(f"out={tmp_path / 'x.parquet'}", requests=str(tmp_path / "scattered.parquet"))
    no_user = requests.with_columns(
        pl.when(pl.int_range(pl.len()) == 12).then(None).otherwise(pl.col(C.USER)).alias(C.USER)
    )
    no_user = no_user.with_columns(
        pl.when(pl.int_range(pl.len()) == 20)
        .then(pl.lit("soon"))
        .otherwise(pl.col(C.TS).cast(pl.String))
        .alias(C.TS)
    )
    no_user.write_csv(tmp_path / "no_user.csv")
    out = tmp_path / "y.parquet"
    summary = run(f"out={out}", "chunk_rows=5", requests=str(tmp_path / "no_user.csv"))
    scores = pl.read_parquet(out)
    assert scores.height == requests.height  # every row written
    flagged = scores.filter(pl.col("reason").is_in(["null_user_id", "null_ts"]))
    assert flagged["reason"].to_list() == ["null_user_id", "null_ts"]
    assert not flagged["scorable"].any() and flagged["p_click"].null_count() == 2
    assert summary["unscorable_by_reason"]["null_user_id"] == 1
    assert summary["unscorable_by_reason"]["null_ts"] == 1


def test_every_rank_gets_a_step_and_chunks_are_dealt_in_turn(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """A rank without chunks still takes one (empty) step: Lightning refuses a rank without
    batches, and its peers would wait for it at the end-of-run barrier."""
    source = find_source(setup["inputs"] / "requests.parquet", "requests")
    events = events_table(find_source(setup["events_dir"], "events"), tmp_path)
    featurizer = setup["predictor"].featurizer
    n = setup["requests"].height
    whole = RequestChunks(source, events, featurizer, n, rank=1, world=2)
    assert len(whole) == 1 and [c.index for c in whole] == [NO_CHUNK]
    dealt = RequestChunks(source, events, featurizer, -(-n // 5), rank=1, world=2)
    assert len(dealt) == 2 and [c.index for c in dealt] == [1, 3]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="DDP on CPU needs process spawning via fork")
def test_ddp_writes_one_part_per_chunk_on_each_rank(setup: dict[str, Any], tmp_path: Path) -> None:
    r = _cli(
        [
            f"bundle={setup['bundle']}",
            f"events={setup['events_dir']}",
            f"requests={setup['inputs'] / 'requests.csv'}",
            "out=scores.parquet",
            "chunk_rows=50",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "threads=1",
            "hydra.run.dir=run",
        ],
        tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "scores.parquet"  # several processes: a folder of parts
    parts = _parts(folder)
    assert {p.name.split("-")[1] for p in parts} == {"00000", "00001"}
    got = pl.concat(pl.read_parquet(p) for p in parts)
    assert_frame_equal(got, setup["want"], abs_tol=1e-6)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["candidates"] == got.height
    assert "rows written to" in r.stdout


def test_missing_column_or_file_exits_with_a_message(setup: dict[str, Any], tmp_path: Path) -> None:
    no_ts = tmp_path / "no_ts.parquet"
    setup["requests"].drop(C.TS).write_parquet(no_ts)
    common = [f"bundle={setup['bundle']}", "out=o.parquet", "hydra.run.dir=run"]
    r = _cli([*common, f"events={setup['events_dir']}", f"requests={no_ts}"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "'ts'" in r.stderr and str(no_ts) in r.stderr and "Traceback" not in r.stderr
    nowhere = tmp_path / "nowhere.parquet"
    req = setup["inputs"] / "requests.parquet"
    r = _cli([*common, f"events={nowhere}", f"requests={req}"], tmp_path)
    assert r.returncode == 2 and str(nowhere) in r.stderr and "Traceback" not in r.stderr
