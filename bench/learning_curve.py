"""Learning curve on the simulated shop: how much of the blind-to-oracle gap ATRank closes.

For each data size (``dataset.n_users``; the other simulator settings are the defaults),
trains the history-blind model (``model/encoder=none``) and ATRank with the same trainer
budget, and reads each run's test AUC and the oracle's test AUC (the simulator's true
probabilities, ``oracle/<task>/auc`` in ``metrics.json``). The share of the gap closed is

    closed = (auc_atrank - auc_blind) / (auc_oracle - auc_blind)

per task. Writes the table between the ``learning_curve`` markers of ``docs/RESULTS.md``.

    python -m bench.learning_curve                         # 4k, 20k, 100k users, seed 1
    python -m bench.learning_curve --sizes 4000 20000 --seeds 1 2 3
    python -m bench.learning_curve --quick                 # a few batches (plumbing only)

Resumable: a run folder with a ``metrics.json`` is read, not trained again. Selection is
on validation only (the checkpoint of the best ``val/monitor``); test is read once per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench.reproduce import ROOT, machine, train_run, write_section

TASKS = ("click", "purchase", "coupon")
ENCODERS = ("none", "atrank")


def run(n_users: int, encoder: str, seed: int, out: Path, extra: list[str]) -> dict[str, float]:
    """One training run of ``encoder`` on ``n_users`` simulated users."""
    overrides = [f"dataset.n_users={n_users}", f"model/encoder={encoder}", f"seed={seed}"]
    return train_run(out / f"users{n_users}" / encoder / f"seed{seed}", [*overrides, *extra])


def table(results: dict[int, dict[str, list[dict[str, float]]]]) -> str:
    """One row per size and task: blind, ATRank, oracle AUC and the share of the gap closed."""
    lines = [
        "| users | task | blind AUC | ATRank AUC | oracle AUC | gap closed | fit s (ATRank) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, runs in results.items():
        fit = statistics.mean(r["fit/seconds"] for r in runs["atrank"])
        for t in TASKS:
            blind = statistics.mean(r[f"test/{t}/auc"] for r in runs["none"])
            model = statistics.mean(r[f"test/{t}/auc"] for r in runs["atrank"])
            oracle = statistics.mean(r[f"oracle/{t}/auc"] for r in runs["atrank"])
            closed = (model - blind) / (oracle - blind) if oracle > blind else float("nan")
            lines.append(
                f"| {n:,} | {t} | {blind:.4f} | {model:.4f} | {oracle:.4f} | {closed:.0%} | "
                f"{fit:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[4000, 20000, 100000])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "learning_curve")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="a few batches per run (plumbing only)")
    ap.add_argument("overrides", nargs="*", help="extra atrank-train overrides for every run")
    args = ap.parse_args()
    extra = list(args.overrides) + (["debug=limit"] if args.quick else [])
    results = {
        n: {e: [run(n, e, s, args.out, extra) for s in args.seeds] for e in ENCODERS}
        for n in args.sizes
    }
    text = (
        f"Produced by `python -m bench.learning_curve {' '.join(sys.argv[1:])}` on {machine()}"
        f"; seeds {', '.join(map(str, args.seeds))} (means).\n\n" + table(results)
    )
    write_section(args.results, "learning_curve", text)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
