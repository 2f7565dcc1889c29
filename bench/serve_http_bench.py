"""Server benchmark: ``python -m bench.serve_http_bench [--quick] [--bundle DIR]``.

Starts ``atrank-serve`` on 127.0.0.1 with a bundle of the default data, then runs closed-loop
clients (each sends a request, waits for the answer, sends the next) with 1, 4 and 16
concurrent clients, each loop bounded in time; reports throughput, latency p50/p95/p99 and
errors (non-200 answers or failed connections), and the server's overhead against calling
the model in process on the same request. Writes the marked ``server_bench`` section of
``docs/SERVING.md`` and ``bench/serve_http_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import requests

from atrank.serve.bundle import load_bundle
from atrank.serve.predictor import Predictor
from bench.common import DEFAULT_CACHE, loadavg, machine, replace_marked
from bench.serve_bench import request, trained_bundle, user_events

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "SERVING.md"
RESULTS = Path(__file__).resolve().parent / "serve_http_results.json"
CLIENTS = (1, 4, 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(bundle_dir: Path, n_events: int, n_candidates: int) -> dict[str, Any]:
    """One request body: a user's raw events and candidates named by id (as serve_bench)."""
    bundle = load_bundle(bundle_dir)
    events = user_events(bundle, n_events)
    cands = request(bundle, n_candidates)
    ts = int(cands["ts"][0])
    ev = [
        {k: v for k, v in row.items() if v is not None and k != "user_id"}
        for row in events.to_dicts()
    ]
    cand = [
        {
            "group": r["group"],
            ("item_id" if r["group"] == "item" else "coupon_id"): r[
                "item_id" if r["group"] == "item" else "coupon_id"
            ],
        }
        for r in cands.to_dicts()
    ]
    return {"user_id": str(cands["user_id"][0]), "ts": ts, "events": ev, "candidates": cand}


def in_process_ms(bundle_dir: Path, doc: dict[str, Any], calls: int) -> float:
    """Median ms of Predictor.score on the same request (raw tables in, probabilities out)."""
    predictor = Predictor(bundle_dir)
    events = pl.DataFrame([{**e, "user_id": doc["user_id"]} for e in doc["events"]])
    reqs = pl.DataFrame(
        [{**c, "user_id": doc["user_id"], "ts": doc["ts"]} for c in doc["candidates"]]
    )
    for _ in range(3):
        predictor.score(events, reqs)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        predictor.score(events, reqs)
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def closed_loop(url: str, doc: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, each sending ``doc`` again as soon as it has its answer."""
    stop = time.perf_counter() + seconds
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    payload = json.dumps(doc)

    def run(i: int) -> None:
        with requests.Session() as s:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = s.post(
                        url, data=payload, headers={"Content-Type": "application/json"}, timeout=30
                    )
                    ok = r.status_code == 200
                except requests.RequestException:
                    ok = False
                lat[i].append(1e3 * (time.perf_counter() - t0))
                errors[i] += 0 if ok else 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.asarray([x for xs in lat for x in xs])
    return {
        "clients": clients,
        "requests": int(ms.size),
        "seconds": wall,
        "rps": float(ms.size / wall),
        "candidates_per_s": float(ms.size * len(doc["candidates"]) / wall),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": int(sum(errors)),
    }


def start_server(bundle_dir: Path, port: int, max_batch_size: int) -> subprocess.Popen[bytes]:
    """``atrank-serve`` in its own process group, waited for until /health answers."""
    exe = shutil.which("atrank-serve", path=str(Path(sys.executable).parent)) or "atrank-serve"
    cmd = [exe, f"bundle={bundle_dir}", f"port={port}", f"max_batch_size={max_batch_size}"]
    cmd += ["hydra.run.dir=/tmp/atrank-serve-bench", "hydra.output_subdir=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "POLARS_MAX_THREADS": "2"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"atrank-serve exited with {proc.returncode}")
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError("atrank-serve did not answer /health within 120 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl+C to the server's process group, then a kill if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def run(quick: bool, bundle_dir: Path | None, cache: Path) -> dict[str, Any]:
    """Every figure of the section."""
    bundle_dir = bundle_dir or trained_bundle(cache)
    seconds = 5.0 if quick else 30.0
    doc = body(bundle_dir, n_events=200, n_candidates=100)
    load0 = loadavg()
    res: dict[str, Any] = {"machine": machine(), "load_start": load0, "seconds_per_loop": seconds}
    res["in_process_ms"] = in_process_ms(bundle_dir, doc, 20 if quick else 100)
    port = _free_port()
    proc = start_server(bundle_dir, port, max_batch_size=16)
    try:
        url = f"http://127.0.0.1:{port}/score"
        closed_loop(url, doc, 1, 2.0)  # warm-up
        res["loops"] = [closed_loop(url, doc, n, seconds) for n in CLIENTS]
    finally:
        stop_server(proc)
    res["load_end"] = loadavg()
    return res


def table(res: dict[str, Any]) -> str:
    """The section's text."""
    m = res["machine"]
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']}; "
        f"load start {res['load_start']} end {res['load_end']}; "
        f"{res['seconds_per_loop']:.0f} s per loop; request: 1 user, 200 events, 100 candidates",
        "",
        "clients  requests  req/s  cand/s   p50 ms  p95 ms  p99 ms  errors",
    ]
    for r in res["loops"]:
        lines.append(
            f"{r['clients']:7d} {r['requests']:9d} {r['rps']:6.1f} {r['candidates_per_s']:7.0f} "
            f"{r['p50_ms']:8.1f} {r['p95_ms']:7.1f} {r['p99_ms']:7.1f} {r['errors']:7d}"
        )
    one = res["loops"][0]
    lines += [
        "",
        f"in process (Predictor.score, same request, median): {res['in_process_ms']:.1f} ms; "
        f"server overhead at 1 client: {one['p50_ms'] - res['in_process_ms']:.1f} ms "
        "(HTTP, JSON, validation, the batching queue)",
    ]
    return "\n".join(lines)


def write_doc(res: dict[str, Any], doc: Path = DOC) -> None:
    """Replaces the marked section of ``doc``."""
    cmd = "python -m bench.serve_http_bench     # about 2 minutes; --quick: 5 s per loop\n"
    replace_marked(doc, "server_bench", f"```bash\n{cmd}```\n\n```\n{table(res)}\n```")


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    res = run(args.quick, args.bundle, args.cache)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    if not args.no_doc:
        write_doc(res)


if __name__ == "__main__":
    main()
