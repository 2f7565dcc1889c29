"""Shared helpers of the benchmark: timing, load average, machine description, data sets."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("ATRANK_BENCH_CACHE", Path.home() / ".cache" / "atrank-bench"))

#: Behaviours per user of the default simulator (253k behaviours for 4,000 users).
EVENTS_PER_USER_DEFAULT = 63.3


def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load averages (how busy the 2 cores were)."""
    return [round(x, 2) for x in os.getloadavg()]


def measure(fn: Callable[[], float | tuple[float, float]], repeats: int) -> dict[str, Any]:
    """Runs ``fn`` ``repeats`` times; ``fn`` returns one figure (seconds or a rate), or a
    pair ``(robust, mean)`` of step rates (see ``train_bench._rate``).

    Returns:
        ``{"median", "values", "load_before", "load_after"}``, plus ``"mean_rate_median"``
        and ``"mean_rate_values"`` for pairs.
    """
    before = loadavg()
    raw = [fn() for _ in range(repeats)]
    values = [r[0] if isinstance(r, tuple) else r for r in raw]
    out: dict[str, Any] = {"median": statistics.median(values), "values": values}
    if isinstance(raw[0], tuple):
        means = [r[1] for r in raw if isinstance(r, tuple)]
        out["mean_rate_median"], out["mean_rate_values"] = statistics.median(means), means
    out["load_before"], out["load_after"] = before, loadavg()
    return out


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and library versions of this machine."""
    import lightning
    import pandas
    import polars
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "lightning": lightning.__version__,
        "polars": polars.__version__,
        "pandas": pandas.__version__,
        "cuda": torch.cuda.is_available(),
    }


def simulated(cache: Path, n_users: int, events_per_user: float = 150.0) -> tuple[Path, dict]:
    """The simulator's canonical log for these settings, generated once into ``cache``.

    Args:
        cache: cache root.
        n_users: simulated users (the default config otherwise).
        events_per_user: mean simulator steps per user (150 gives ~63 behaviours).

    Returns:
        ``(raw_dir, summary)``: the folder with ``events/`` and ``samples/`` parquet parts and
        the simulator's summary (``seconds`` is the generation time, or that of the first run).
    """
    from data_prep.sources.sim import SimConfig, simulate

    raw = cache / "raw" / f"sim-u{n_users}-e{events_per_user:g}"
    done = raw / "_summary.json"
    if not done.exists():
        summary = simulate(SimConfig(n_users=n_users, events_per_user=events_per_user), raw)
        done.write_text(json.dumps(asdict(summary), default=str))
    return raw, json.loads(done.read_text())


def n_events(summary: dict) -> int:
    """Behaviours (rows of the events table) in a simulator summary."""
    return int(sum(summary["events_by_action"].values()))


def prepared(cache: Path, raw: Path) -> Path:
    """The product's preparation of ``raw`` (done once, reused while up to date)."""
    import polars as pl

    from data_prep.pipeline import PrepConfig, prepare

    out = cache / "prepared" / raw.name
    prepare(
        pl.scan_parquet(raw / "events" / "*.parquet"),
        pl.scan_parquet(raw / "samples" / "*.parquet"),
        out,
        PrepConfig(),
        {"name": "sim", "raw": str(raw)},
        f"bench-{raw.name}",
    )
    return out


def replace_marked(doc: Path, name: str, text: str) -> None:
    """Puts ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``doc``.

    Raises:
        ValueError: ``doc`` does not hold exactly one such section.
    """
    import re

    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = doc.read_text(encoding="utf-8")
    block = f"{begin}\n{text.strip()}\n{end}"
    new, n = re.subn(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    if n != 1:
        raise ValueError(f"{doc}: needs exactly one {begin} ... {end} section, found {n}")
    doc.write_text(new, encoding="utf-8")
