"""Serving benchmark: ``python -m bench.serve_bench [--quick] [--bundle DIR]``.

Latency of one request (one user, their raw events, C candidates) through
:meth:`Predictor.score <atrank.serve.predictor.Predictor.score>` (features included) and of
the model part alone (encode once + score on prepared :class:`Features`), in PyTorch eager
and under ONNX Runtime; encode-once against repeating the history for every candidate; where
the time of a request goes. Writes ``bench/serve_results.json`` and the marked section of
``docs/SERVING.md``, prints the table. See ``docs/SERVING.md`` for what each figure means.

Shape glossary: C candidates of the request, T history window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from atrank.data.batch import Batch
from atrank.model import ModelConfig, build_model
from atrank.serve.bundle import Bundle, load_bundle, write_bundle
from atrank.serve.features import Features
from atrank.serve.onnx_export import OnnxScorer, export_onnx
from atrank.serve.predictor import Predictor
from bench import serve_profile
from bench.common import DEFAULT_CACHE, loadavg, machine, replace_marked
from data_prep import contract as C
from data_prep.meta import read_meta

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "serve_results.json"
DOC = ROOT / "docs" / "SERVING.md"
SECTION = "serve_bench"  # the marked section of docs/SERVING.md
#: The paper's sizes (``experiment=paper_amazon``), random weights on the default data shape.
PAPER = ModelConfig(field_dim=64, d_model=128, n_heads=8, ffn_dim=32)
PAPER_MAX_LEN = 100
HISTORIES = (50, 200, 1000)
CANDIDATES = (10, 100, 500)
TARGET_MS = 20.0  # default size, one user x 500 candidates, p99 of Predictor.score
THREADS = 2


def _plan(quick: bool) -> dict[str, Any]:
    """Calls per measurement (at most ``calls``, at most ``budget_s`` seconds, after
    ``warmup`` calls); ``quick`` is for development (about a minute)."""
    if quick:
        return {"calls": 15, "budget_s": 0.4, "warmup": 2, "profile_calls": 10}
    return {"calls": 200, "budget_s": 3.0, "warmup": 3, "profile_calls": 40}


def latency(fn: Callable[[], object], calls: int, budget_s: float, warmup: int) -> dict[str, Any]:
    """p50/p99/mean of ``fn`` in ms over at most ``calls`` calls and ``budget_s`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < calls and (len(times) < 5 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    ms = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "calls": len(times),
    }


def trained_bundle(cache: Path) -> Path:
    """The bundle of a one-epoch run on the default data (trained and exported once)."""
    bundle = cache / "serve" / "bundle"
    if (bundle / "bundle.json").is_file():
        return bundle
    run_dir = cache / "serve" / "run"
    bin_dir = Path(sys.executable).parent
    train = [f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", "logger=none", "test=false"]
    subprocess.run([str(bin_dir / "atrank-train"), *train], check=True, capture_output=True)
    (ckpt,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    export = [f"ckpt_path={ckpt}", f"out={bundle}"]
    subprocess.run([str(bin_dir / "atrank-export"), *export], check=True, capture_output=True)
    return bundle


def prepared_of(bundle: Bundle, roots: list[Path]) -> Path:
    """The prepared-data directory a bundle was trained on (same fingerprint), under ``roots``."""
    for root in roots:
        for meta in sorted(root.glob("prepared/*/meta.json")):
            if read_meta(meta.parent).fingerprint == bundle.fingerprint:
                return meta.parent
    raise FileNotFoundError(f"no prepared data with fingerprint {bundle.fingerprint} in {roots}")


def paper_bundle(bundle: Bundle, prepared: Path, out: Path) -> Path:
    """A bundle of the paper's sizes with random weights (seed 0) on ``bundle``'s data."""
    torch.manual_seed(0)
    groups = {n: t.target for n, t in bundle.tasks.items()}
    state = build_model(PAPER, bundle.shape, groups).state_dict()
    return write_bundle(
        out, state, PAPER, bundle.shape, bundle.tasks, bundle.time, PAPER_MAX_LEN,
        bundle.fingerprint, prepared,
    )  # fmt: skip


def user_events(bundle: Bundle, n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` raw events of one user (``u-bench``): catalogue objects, 1 in 6 a coupon, one
    behaviour every 10 minutes up to ``ts = 10**9``."""
    rng = np.random.default_rng(seed)
    frames = []
    is_coupon = np.arange(n) % 6 == 5
    for group, actions, rows in (
        ("item", ["click", "cart", "purchase"], ~is_coupon),
        ("coupon", ["receive", "use"], is_coupon),
    ):
        cat = bundle.catalogue[group]
        k = int(rows.sum())
        picked = cat[rng.integers(0, cat.height, k)]
        frames.append(
            picked.with_columns(
                pl.Series(C.TS, 10**9 - 600 * np.flatnonzero(rows)[::-1], dtype=pl.Int64),
                pl.lit(group).alias(C.GROUP),
                pl.Series(C.ACTION, rng.choice(actions, k)),
            )
        )
    events = pl.concat(frames, how="diagonal").with_columns(pl.lit("u-bench").alias(C.USER))
    return events.sort(C.TS)


def request(bundle: Bundle, n: int) -> pl.DataFrame:
    """One request of ``u-bench`` at ``ts = 10**9 + 1`` with ``n`` candidates named by id
    (1 in 5 a coupon; the other fields come from the catalogue)."""
    is_coupon = np.arange(n) % 5 == 4
    items = bundle.catalogue["item"][C.ITEM]
    coupons = bundle.catalogue["coupon"][C.COUPON]
    return pl.DataFrame(
        {
            C.USER: ["u-bench"] * n,
            C.TS: [10**9 + 1] * n,
            C.GROUP: np.where(is_coupon, "coupon", "item").tolist(),
            C.ITEM: [None if c else items[i % items.len()] for i, c in enumerate(is_coupon)],
            C.COUPON: [coupons[i % coupons.len()] if c else None for i, c in enumerate(is_coupon)],
        }
    )


def naive_batch(features: Features) -> Batch:
    """The request as training batches it: its history repeated for every candidate."""
    h, rows = features.history, features.owner  # rows: (C,) the request of each candidate
    return replace(
        h,
        hist={f: v[rows] for f, v in h.hist.items()},  # (C, T) each
        hist_action=h.hist_action[rows],  # (C, T)
        hist_time=h.hist_time[rows],  # (C, T)
        hist_group=h.hist_group[rows],  # (C, T)
        hist_mask=h.hist_mask[rows],  # (C, T)
        target=features.target,
        target_group=features.target_group,
        user=h.user[rows],  # (C,)
        labels={},
        label_mask={},
    )


def bench_cell(
    predictor: Predictor, scorer: OnnxScorer, events: pl.DataFrame, req: pl.DataFrame,
    plan: dict[str, Any], naive: bool,
) -> dict[str, Any]:  # fmt: skip
    """Every path on one (size, history, candidates) request."""
    lat = partial_latency(plan)
    features = predictor.featurizer(events, req)
    out: dict[str, Any] = {
        "window": int(features.history.hist_mask.sum()),
        "score": lat(lambda: predictor.score(events, req)),
        "model": lat(lambda: predictor.logits(features)),
        "onnx": lat(lambda: scorer.logits(features)),
    }
    want, got = predictor.logits(features), scorer.logits(features)
    out["onnx_max_abs_diff"] = max(float((want[t] - got[t]).abs().max()) for t in want)
    if naive:
        batch = naive_batch(features)
        with torch.inference_mode():
            out["naive"] = lat(lambda: predictor.model(batch))
        out["encode_once_speedup"] = out["naive"]["p50_ms"] / out["model"]["p50_ms"]
    return out


def partial_latency(plan: dict[str, Any]) -> Callable[[Callable[[], object]], dict[str, Any]]:
    """:func:`latency` with the plan's bounds."""
    return lambda fn: latency(fn, plan["calls"], plan["budget_s"], plan["warmup"])


def run(quick: bool, bundle_dir: Path | None, cache: Path) -> dict[str, Any]:
    """Runs every measurement and returns the results (see ``docs/SERVING.md``)."""
    torch.set_num_threads(THREADS)
    plan = _plan(quick)
    res: dict[str, Any] = {"quick": quick, "plan": plan, "machine": machine()}
    res["load_start"], t_start = loadavg(), time.perf_counter()
    default_dir = bundle_dir if bundle_dir is not None else trained_bundle(cache)
    default = load_bundle(default_dir)
    atrank_cache = Path(os.environ.get("ATRANK_CACHE", Path.home() / ".cache" / "atrank"))
    prepared = prepared_of(default, [atrank_cache])
    paper_dir = paper_bundle(default, prepared, cache / "serve" / "paper_bundle")
    res["bundle"], res["cells"] = str(default_dir), []
    for size, path in (("default", default_dir), ("paper", paper_dir)):
        predictor = Predictor(path)
        cfg = predictor.bundle.config
        export_onnx(predictor.bundle)
        scorer = OnnxScorer(path, threads=THREADS)
        for n_events in HISTORIES:
            events = user_events(predictor.bundle, n_events)
            for n_cand in CANDIDATES:
                cell = {"size": size, "d_model": cfg.d_model, "max_len": predictor.bundle.max_len}
                cell |= {"history_events": n_events, "candidates": n_cand}
                req = request(predictor.bundle, n_cand)
                cell |= bench_cell(predictor, scorer, events, req, plan, n_cand == CANDIDATES[-1])
                res["cells"].append(cell)
                print(_row(cell), flush=True)
        if size == "default":
            events, req = user_events(predictor.bundle, 200), request(predictor.bundle, 500)
            res["profile"] = serve_profile.profile(predictor, events, req, plan["profile_calls"])
    target = _cell(res, "default", 1000, CANDIDATES[-1])["score"]["p99_ms"]
    res["target"] = {"p99_ms_limit": TARGET_MS, "worst_p99_ms": target, "met": target < TARGET_MS}
    res["load_end"], res["wall_seconds"] = loadavg(), time.perf_counter() - t_start
    return res


def _cell(res: dict[str, Any], size: str, hist: int, cand: int) -> dict[str, Any]:
    (cell,) = (
        c for c in res["cells"]
        if (c["size"], c["history_events"], c["candidates"]) == (size, hist, cand)
    )  # fmt: skip
    return cell


HEADER = (
    f"{'size':<8}{'events':>7}{'cands':>6}{'score p50':>10}{'p99':>7}{'model p50':>10}"
    f"{'p99':>7}{'onnx p50':>9}{'p99':>7}{'naive p50':>10}{'speed-up':>9}"
)


def _row(c: dict[str, Any]) -> str:
    naive = (
        f"{c['naive']['p50_ms']:>10.1f}{c['encode_once_speedup']:>8.1f}x" if "naive" in c else ""
    )
    return (
        f"{c['size']:<8}{c['history_events']:>7}{c['candidates']:>6}"
        f"{c['score']['p50_ms']:>10.1f}{c['score']['p99_ms']:>7.1f}"
        f"{c['model']['p50_ms']:>10.2f}{c['model']['p99_ms']:>7.2f}"
        f"{c['onnx']['p50_ms']:>9.2f}{c['onnx']['p99_ms']:>7.2f}{naive}"
    )


def table(res: dict[str, Any]) -> str:
    """The results as a plain-text table (milliseconds per request)."""
    m, t = res["machine"], res["target"]
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']} ({THREADS} threads), "
        f"polars {m['polars']}, CUDA: {m['cuda']}; load start {res['load_start']} end "
        f"{res['load_end']}; wall {res['wall_seconds']:.0f} s{' (quick)' if res['quick'] else ''}",
        "",
        HEADER,
        *(_row(c) for c in res["cells"]),
        "",
        f"target: default size, 1 user x {CANDIDATES[-1]} candidates, Predictor.score p99 < "
        f"{t['p99_ms_limit']:.0f} ms: worst case (1,000 events) {t['worst_p99_ms']:.1f} ms "
        f"-> {'met' if t['met'] else 'MISSED'}",
        "",
        serve_profile.table(res["profile"]),
    ]
    return "\n".join(lines)


def write_doc(res: dict[str, Any], doc: Path = DOC) -> None:
    """Replaces the marked section of ``doc`` with the table of ``res``."""
    replace_marked(doc, SECTION, f"```\n{table(res)}\n```")


def main() -> None:
    """Command line: ``python -m bench.serve_bench [--quick] [--bundle DIR] [--out PATH]``."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="few calls per figure (~1 min)")
    ap.add_argument("--bundle", type=Path, help="a bundle of the default data (else trained)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="bench cache")
    ap.add_argument("--no-doc", action="store_true", help="leave docs/SERVING.md alone")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    res = run(args.quick, args.bundle, args.cache)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_doc:
        write_doc(res)
    print("\n" + table(res))
    print(f"\nresults written to {args.out}" + ("" if args.no_doc else f" and {DOC}"))


if __name__ == "__main__":
    main()
