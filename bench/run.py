"""The benchmark suite: ``python -m bench.run [--quick]`` prints a table, writes results.json.

Every figure is the median of several repeats; the load average is recorded before and
after each measurement (figures taken under load are pessimistic). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from bench import prep_bench
from bench import train_bench as tb
from bench.common import DEFAULT_CACHE, loadavg, machine, measure, n_events, prepared, simulated

RESULTS = Path(__file__).resolve().parent / "results.json"


def _plan(quick: bool) -> dict[str, Any]:
    """Sizes and repeats of a run; ``quick`` is for development (under a minute)."""
    if quick:
        return {
            "steps": 6, "warmup": 2, "repeats": 1, "tiny_steps": 12,
            "infer_budget_s": 0.2, "max_lens": (10, 50), "hist_batch": 128, "hist_steps": 2,
            "profile_steps": 4,
            "prep": [("sim250k", 4000, 150.0, 1, 1)],
        }  # fmt: skip
    return {
        "steps": 20, "warmup": 3, "repeats": 3, "tiny_steps": 60,
        "infer_budget_s": 1.0, "max_lens": (10, 50, 200, 500), "hist_batch": 128,
        "hist_steps": 3, "profile_steps": 10,
        # (case, n_users, events_per_user, polars repeats, pandas repeats)
        "prep": [
            ("sim1M", 16300, 150.0, 3, 3),
            ("sim1M_long", 1000, 1200.0, 3, 1),
            ("sim10M", 163000, 150.0, 3, 1),
        ],
    }  # fmt: skip


def run(quick: bool, cache: Path, skip_prep: bool = False) -> dict[str, Any]:
    """Runs every benchmark and returns the results (see README for the keys)."""
    torch.set_num_threads(2)
    plan = _plan(quick)
    res: dict[str, Any] = {"quick": quick, "machine": machine(), "load_start": loadavg()}
    t_start = time.perf_counter()

    raw_default, _ = simulated(cache, 4000)
    data = prepared(cache, raw_default)
    res["matmul_peak_flop_s"] = measure(lambda: tb.matmul_peak(2048, 5), 3)

    res["train"] = {}
    for size, steps in ((tb.DEFAULT, plan["steps"]), (tb.TINY, plan["tiny_steps"])):
        res["train"][size.name] = tb.bench_size(data, size, steps, plan["warmup"], plan["repeats"])
    peak = res["matmul_peak_flop_s"]["median"]
    for r in res["train"].values():
        r["lightning_share_of_peak"] = r["lightning_flop_s"] / peak
        r["raw_share_of_peak"] = r["raw_flop_s"] / peak

    res["inference"] = tb.bench_inference(
        data, tb.DEFAULT, (1, 256, 4096), plan["repeats"], plan["infer_budget_s"]
    )

    raw_long, _ = simulated(cache, 1000, 1200.0)
    res["history_scaling"] = tb.bench_history(
        prepared(cache, raw_long),
        tb.DEFAULT,
        plan["max_lens"],
        plan["hist_batch"],
        plan["hist_steps"],
        plan["repeats"],
    )

    before = loadavg()
    res["profile_default"] = tb.bench_profile(data, tb.DEFAULT, plan["profile_steps"])
    res["profile_default"]["load_before"], res["profile_default"]["load_after"] = (
        before,
        loadavg(),
    )

    res["prep"] = {}
    if not skip_prep:
        for case, users, epu, pl_rep, pd_rep in plan["prep"]:
            raw, summary = simulated(cache, users, epu)
            entry: dict[str, Any] = {
                "n_users": users,
                "events_per_user": epu,
                "events": n_events(summary),
                "simulation_seconds": summary["seconds"],
                "polars": prep_bench.run_case("polars", raw, pl_rep),
            }
            if pd_rep:
                entry["pandas"] = prep_bench.run_case("pandas", raw, pd_rep)
                entry["speedup"] = entry["pandas"]["seconds"] / entry["polars"]["seconds"]
            res["prep"][case] = entry
    res["load_end"] = loadavg()
    res["wall_seconds"] = time.perf_counter() - t_start
    return res


def _med(x: dict[str, Any]) -> float:
    return float(x["median"])


def table(res: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    m = res["machine"]
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu']}, torch {m['torch']} "
        f"(threads {m['torch_threads']}), CUDA: {m['cuda']}; load start {res['load_start']} "
        f"end {res['load_end']}; wall {res['wall_seconds']:.0f} s",
        f"matmul fp32 peak (2048^2): {_med(res['matmul_peak_flop_s']) / 1e9:.1f} GFLOP/s",
        "",
        f"{'training (samples/s)':<24}{'lightning':>11}{'raw loop':>11}{'ratio':>7}{'(mean)':>7}"
        f"{'model only':>12}{'data path':>11}{'GFLOP/step':>11}{'% peak':>8}",
    ]
    for name, r in res["train"].items():
        lines.append(
            f"{name + ' (hist ' + format(r['mean_history'], '.1f') + ')':<24}"
            f"{_med(r['lightning_samples_s']):>11.0f}{_med(r['raw_samples_s']):>11.0f}"
            f"{r['ratio_lightning_over_raw']:>7.2f}{r['ratio_of_mean_rates']:>7.2f}"
            f"{_med(r['model_step_samples_s']):>12.0f}"
            f"{_med(r['data_path_samples_s']):>11.0f}{r['flops_per_step'] / 1e9:>11.2f}"
            f"{100 * r['lightning_share_of_peak']:>7.1f}%"
        )
    lines += ["", "inference, default size (samples/s): " + ", ".join(
        f"B={bs}: {_med(v):.0f}" for bs, v in res["inference"].items()
    )]  # fmt: skip
    lines += ["", f"{'history window T':<18}{'mean hist':>10}{'step ms':>10}{'GFLOP/step':>12}"]
    for r in res["history_scaling"]:
        lines.append(
            f"{r['max_len']:<18}{r['mean_history']:>10.1f}{r['step_ms']:>10.1f}"
            f"{r['flops_per_step'] / 1e9:>12.2f}"
        )
    if res["prep"]:
        lines += [
            "",
            f"{'preparation':<12}{'events':>11}{'samples':>10}{'polars s':>10}{'peak MB':>9}"
            f"{'pandas s':>10}{'peak MB':>9}{'speedup':>9}",
        ]
        for case, e in res["prep"].items():
            p, d = e["polars"], e.get("pandas")
            lines.append(
                f"{case:<12}{e['events']:>11,}{p['rows']['samples']:>10,}{p['seconds']:>10.2f}"
                f"{p['peak_rss_mb']:>9.0f}"
                + (
                    f"{d['seconds']:>10.2f}{d['peak_rss_mb']:>9.0f}{e['speedup']:>9.1f}"
                    if d
                    else ""
                )
            )
    lines += ["", "top ops, Lightning run at default size (self CPU):"]
    for op in res["profile_default"]["lightning"][:8]:
        lines.append(f"  {op['op']:<40}{op['self_cpu_ms']:>10.1f} ms {100 * op['share']:>5.1f}%")
    return "\n".join(lines)


def main() -> None:
    """Command line: ``python -m bench.run [--quick] [--out PATH] [--skip-prep]``."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (~1 min)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="simulated data cache")
    ap.add_argument("--skip-prep", action="store_true", help="no preparation benchmark")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    res = run(args.quick, args.cache, args.skip_prep)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
