"""Preparation benchmark: ``data_prep.prepare`` (polars) against ``bench.pandas_prep``.

Each case runs in its own child process (``python -m bench.prep_bench <impl> <raw> <out>``),
so that its peak RSS (``ru_maxrss`` of the child) is its own and no cache is shared. The
child times only the preparation call (imports and interpreter start excluded) and prints
one JSON line.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import loadavg


def _rss_mb() -> float:
    """Peak RSS of this process in MiB.

    ``VmHWM`` (the high-water mark of this process's own memory map) where Linux has it:
    ``ru_maxrss`` of a forked child starts at the parent's RSS at fork time, which would
    charge the benchmark driver's memory to every case.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _history_cells(out: Path) -> int:
    """Sum over all samples of their full history length: samples x history, the size a
    per-sample copy of histories would have."""
    import polars as pl

    total = 0
    for split in ("train", "val", "test"):
        df = pl.read_parquet(out / f"samples_{split}.parquet", columns=["hist_start", "hist_end"])
        total += int((df["hist_end"] - df["hist_start"]).sum())
    return total


def child(impl: str, raw: Path, out: Path) -> dict[str, Any]:
    """Runs one preparation in this process and returns its figures."""
    if impl == "polars":
        import polars as pl

        from data_prep.pipeline import PrepConfig, prepare

        base = _rss_mb()
        t0 = time.perf_counter()
        res = prepare(
            pl.scan_parquet(raw / "events" / "*.parquet"),
            pl.scan_parquet(raw / "samples" / "*.parquet"),
            out,
            PrepConfig(),
            {"name": "sim", "bench": True},
            "bench",
            force=True,
        )
        seconds = time.perf_counter() - t0
        counts = res.meta.counts
        rows = {"events": counts.events, "users": counts.users}
        rows["samples"] = sum(s["rows"] for s in counts.splits.values())
    elif impl == "pandas":
        from bench.pandas_prep import prepare_pandas

        base = _rss_mb()
        t0 = time.perf_counter()
        rows = prepare_pandas(raw, out)
        seconds = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return {
        "seconds": seconds,
        "peak_rss_mb": _rss_mb(),
        "rss_after_imports_mb": base,
        "rows": rows,
        "history_cells": _history_cells(out),
    }


def run_case(impl: str, raw: Path, repeats: int) -> dict[str, Any]:
    """Prepares ``raw`` with ``impl`` in ``repeats`` fresh child processes.

    Returns:
        ``{"seconds": median, "peak_rss_mb": median, "runs": [...], "load_before",
        "load_after"}``.
    """
    runs = []
    before = loadavg()
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix=f"bench-prep-{impl}-"))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.prep_bench", impl, str(raw), str(out / "p")],
                check=True,
                capture_output=True,
                text=True,
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    secs = sorted(r["seconds"] for r in runs)
    rss = sorted(r["peak_rss_mb"] for r in runs)
    return {
        "seconds": secs[len(secs) // 2],
        "peak_rss_mb": rss[len(rss) // 2],
        "rows": runs[0]["rows"],
        "history_cells": runs[0]["history_cells"],
        "runs": runs,
        "load_before": before,
        "load_after": loadavg(),
    }


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
