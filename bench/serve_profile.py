"""Where the time of one ``Predictor.score`` call goes: stage timers and a cProfile."""

from __future__ import annotations

import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from atrank.serve.predictor import Predictor

TOP = 12


def _median_ms(times: list[float]) -> float:
    return float(np.median(times)) * 1e3


def stages(predictor: Predictor, events: pl.DataFrame, req: pl.DataFrame, calls: int) -> dict:
    """Median ms of the three stages of ``Predictor.score``: features, model, output table."""
    spent: dict[str, list[float]] = {"features": [], "model": [], "table": []}
    for _ in range(calls):
        t0 = time.perf_counter()
        features = predictor.featurizer(events, req)
        t1 = time.perf_counter()
        logits = predictor.logits(features)
        t2 = time.perf_counter()
        predictor.table(features, logits)
        t3 = time.perf_counter()
        for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            spent[key].append(dt)
    return {k: _median_ms(v) for k, v in spent.items()}


def _name(key: tuple[str, int, str]) -> str:
    file, line, func = key
    if file == "~":  # a builtin: its name says it
        return func
    parts = Path(file).parts
    for anchor in ("atrank", "data_prep", "polars", "torch"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[i:])}:{line}({func})"
    return f"{Path(file).name}:{line}({func})"


def _top(stats: pstats.Stats, field: int, calls: int, only_ours: bool) -> list[dict[str, Any]]:
    """The TOP functions by total (field 3, cumulative) or own (field 2) time, per call."""
    rows = []
    for key, (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = _name(key)
        if only_ours and not name.startswith(("atrank/", "data_prep/")):
            continue
        rows.append(
            {"function": name, "ms_per_call": 1e3 * (tottime, cumtime)[field - 2] / calls,
             "ncalls": ncalls // calls}
        )  # fmt: skip
    return sorted(rows, key=lambda r: -r["ms_per_call"])[:TOP]


def profile(predictor: Predictor, events: pl.DataFrame, req: pl.DataFrame, calls: int) -> dict:
    """Stage timers, then a cProfile of ``calls`` calls of the featurizer.

    Returns:
        ``{"stages_ms", "calls", "cumulative", "own"}``: median ms per stage; the project's
        functions with the most cumulative time, and the functions (polars methods mostly,
        whose own time is the Rust engine's) with the most own time, in ms per call.
    """
    predictor.score(events, req)  # warm
    out: dict[str, Any] = {"stages_ms": stages(predictor, events, req, calls), "calls": calls}
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        predictor.featurizer(events, req)
    prof.disable()
    stats = pstats.Stats(prof)
    out["cumulative"] = _top(stats, 3, calls, only_ours=True)
    out["own"] = _top(stats, 2, calls, only_ours=False)
    return out


def table(prof: dict[str, Any]) -> str:
    """The profile as text."""
    s = prof["stages_ms"]
    lines = [
        "where Predictor.score spends its time (default size, 200 events, 500 candidates, "
        f"median ms): features {s['features']:.1f}, model {s['model']:.1f}, "
        f"table {s['table']:.1f}",
        "featurizer, cumulative ms per call (cProfile, project functions):",
        *(f"  {r['function']:<64}{r['ms_per_call']:>7.2f}" for r in prof["cumulative"]),
        "featurizer, own ms per call (cProfile; polars methods = time in the engine):",
        *(f"  {r['function']:<64}{r['ms_per_call']:>7.2f}  x{r['ncalls']}" for r in prof["own"]),
    ]
    return "\n".join(lines)
