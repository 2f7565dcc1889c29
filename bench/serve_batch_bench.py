"""Batch scoring throughput: ``python -m bench.serve_batch_bench [--requests N] [--profile]``.

Candidate scores per second of ``atrank-predict``'s path (:func:`atrank.serve.batch.run_predict`
under a one-process CPU Lightning ``Trainer``: streamed request chunks, the events of each
chunk's users read with pushdown, featurizer, encode once + score, the table, parquet parts
and their concatenation) on the default data and model size: ``N`` requests (default 2,000)
of 100 candidates each (80 items, 20 coupons, named by id alone), one per user at one second
after the user's last behaviour (a full history window). Then the time of one chunk's stages
(read events, featurize, model, table, write), and with ``--profile`` the top functions of a
cProfile of the featurizer. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bench.common import DEFAULT_CACHE, loadavg, machine, replace_marked
from bench.serve_bench import trained_bundle
from data_prep import contract as C
from data_prep.meta import read_meta

CANDIDATES = 100
COUPON_EVERY = 5  # 1 candidate in 5 is a coupon


def raw_events_dir(bundle: Path) -> Path:
    """The raw canonical events the bundle's training data was prepared from."""
    doc = json.loads((bundle / "bundle.json").read_text())
    roots = [Path.home() / ".cache" / "atrank", DEFAULT_CACHE]
    for root in roots:
        for meta in sorted(root.glob("prepared/*/meta.json")):
            m = read_meta(meta.parent)
            if m.fingerprint == doc["fingerprint"]:
                return Path(str(m.source["raw_dir"])) / "events"
    raise FileNotFoundError(f"no prepared data of bundle {bundle} under {roots}")


def make_requests(events_dir: Path, bundle: Path, n_requests: int, seed: int = 0) -> pl.DataFrame:
    """``n_requests`` x 100 candidates of distinct users (see the module docstring)."""
    rng = np.random.default_rng(seed)
    last = pl.scan_parquet(events_dir / "*.parquet").group_by(C.USER).agg(pl.col(C.TS).max())
    users = last.sort(C.USER).collect()
    users = users[rng.choice(users.height, min(n_requests, users.height), replace=False)]
    items = pl.read_parquet(bundle / "catalogue" / "item.parquet")[C.ITEM].to_numpy()
    coupons = pl.read_parquet(bundle / "catalogue" / "coupon.parquet")[C.COUPON].to_numpy()
    n = users.height * CANDIDATES
    coupon = pl.col("__coupon")
    return pl.DataFrame(
        {
            C.USER: np.repeat(users[C.USER].to_numpy(), CANDIDATES),
            C.TS: np.repeat(users[C.TS].to_numpy() + 1, CANDIDATES),
            "__coupon": np.arange(n) % COUPON_EVERY == COUPON_EVERY - 1,
            "__item": rng.choice(items, n),
            "__coupon_id": rng.choice(coupons, n),
        }
    ).select(
        C.USER,
        C.TS,
        pl.when(coupon).then(pl.lit("coupon")).otherwise(pl.lit("item")).alias(C.GROUP),
        pl.when(~coupon).then(pl.col("__item")).alias(C.ITEM),
        pl.when(coupon).then(pl.col("__coupon_id")).alias(C.COUPON),
    )


def end_to_end(bundle: Path, events_dir: Path, requests: Path, out: Path) -> dict[str, Any]:
    """One ``run_predict`` over the requests file, as ``atrank-predict`` runs it."""
    import lightning as L

    from atrank.serve.batch import PartWriter, Ranking, run_predict
    from atrank.serve.chunks import events_table, find_source
    from atrank.serve.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor(bundle)
    writer = PartWriter(out)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[writer],
        enable_progress_bar=False,
        default_root_dir=str(out.parent),
    )
    events = events_table(find_source(events_dir, "events"), out.parent)
    source = find_source(requests, "requests")
    summary = run_predict(trainer, writer, predictor, source, events, 100_000, Ranking())
    assert summary is not None
    summary["seconds_with_setup"] = round(time.perf_counter() - t0, 3)
    return summary


def stages(bundle: Path, events_dir: Path, requests: pl.DataFrame, out: Path) -> dict[str, float]:
    """Seconds of each stage of one chunk of ``requests`` (second call: warm)."""
    from atrank.serve.predictor import Predictor

    predictor = Predictor(bundle)
    times: dict[str, float] = {}
    for _ in range(2):
        t = time.perf_counter()
        users = requests[C.USER].unique()
        scan = pl.scan_parquet(events_dir / "*.parquet")
        ev = scan.filter(pl.col(C.USER).is_in(users.implode())).collect()
        times["read_events"] = time.perf_counter() - t
        t = time.perf_counter()
        features = predictor.featurizer(ev, requests)
        times["featurize"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = predictor.logits(features)
        times["model"] = time.perf_counter() - t
        t = time.perf_counter()
        table = predictor.table(features, logits)
        times["table"] = time.perf_counter() - t
        t = time.perf_counter()
        table.write_parquet(out)
        times["write_parquet"] = time.perf_counter() - t
    return {k: round(v, 4) for k, v in times.items()}


def profile_featurizer(bundle: Path, events_dir: Path, requests: pl.DataFrame) -> list[str]:
    """The top 15 functions by cumulative time of one featurizer call (warm)."""
    from atrank.serve.predictor import Predictor

    predictor = Predictor(bundle)
    ev = pl.read_parquet(events_dir / "*.parquet")
    ev = ev.filter(pl.col(C.USER).is_in(requests[C.USER].unique().implode()))
    predictor.featurizer(ev, requests)
    prof = cProfile.Profile()
    prof.enable()
    predictor.featurizer(ev, requests)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(15)
    return [line for line in buf.getvalue().splitlines() if line.strip()][-16:]


def run(n_requests: int, cache: Path, profile: bool) -> dict[str, Any]:
    """The measurement (see the module docstring)."""
    import torch

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    bundle = trained_bundle(cache)  # (shared with bench.serve_bench)
    events_dir = raw_events_dir(bundle)
    requests = make_requests(events_dir, bundle, n_requests)
    with tempfile.TemporaryDirectory(prefix="atrank-batch-bench-") as tmp:
        path = Path(tmp) / "requests.parquet"
        requests.write_parquet(path)
        load_before = loadavg()
        summary = end_to_end(bundle, events_dir, path, Path(tmp) / "scores.parquet")
        chunk = requests.head(100_000)
        res: dict[str, Any] = {
            "bench": "serve_batch",
            "requests": summary["requests"],
            "candidates": summary["candidates"],
            "candidates_per_request": CANDIDATES,
            "seconds": summary["seconds"],
            "seconds_with_setup": summary["seconds_with_setup"],
            "candidates_per_second": summary["candidates_per_second"],
            "unscorable": summary.get("unscorable", 0),
            "chunk_stages_s": stages(bundle, events_dir, chunk, Path(tmp) / "stage.parquet"),
            "chunk_rows": chunk.height,
        }
        if profile:
            res["featurizer_profile"] = profile_featurizer(bundle, events_dir, chunk)
    res["load_before"], res["load_after"] = load_before, loadavg()
    res["machine"] = machine()
    return res


DOC = Path(__file__).resolve().parents[1] / "docs" / "SERVING.md"


def write_doc(runs: list[dict[str, Any]], doc: Path = DOC) -> None:
    """Replaces the marked ``batch_bench`` section of ``doc`` with the runs' figures."""

    rates = sorted(r["candidates_per_second"] for r in runs)
    last = runs[-1]
    m = last["machine"]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in last["chunk_stages_s"].items())
    text = "\n".join(
        [
            "```bash",
            "python -m bench.serve_batch_bench --repeats 3   # about a minute on 2 cores",
            "```",
            "",
            "```",
            f"machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']}; "
            f"load before {runs[0]['load_before']} after {last['load_after']}",
            f"{last['requests']} requests x {last['candidates_per_request']} candidates "
            f"= {last['candidates']} scores per run, atrank-predict's path (streamed chunks, "
            "Lightning predict loop, parquet parts)",
            "candidates/s per run: "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + f"; median {rates[len(rates) // 2]:,.0f} (aim: 100,000 on 2 CPU cores)",
            f"one {last['chunk_rows']:,}-row chunk, seconds by stage: {stages}",
            "```",
        ]
    )
    replace_marked(doc, "batch_bench", text)


def main() -> None:
    """Command line: prints one JSON line per run; writes the doc section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--profile", action="store_true", help="cProfile the featurizer")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    runs = []
    for _ in range(max(1, args.repeats)):
        runs.append(run(args.requests, args.cache, args.profile))
        print(json.dumps(runs[-1]))
    if not args.no_doc:
        write_doc(runs)


if __name__ == "__main__":
    main()
