"""One multi-task model against separate single-task models, same budget, 3 seeds.

    python -m bench.single_vs_multi                    # default generated data (CPU: ~25 min)
    python -m bench.single_vs_multi --setups taobao    # the Taobao samples (click, purchase)

Every model gets the same trainer budget (max epochs, early stopping on its own validation
monitor) and the same sizes; the single-task models are the same code with ``task=[<one>]``.
Writes its section of ``docs/RESULTS.md`` (or ``--results``), keeping the other sections.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench.reproduce import ROOT, cell, machine, train_run, write_section

SETUPS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "default": ([], ("click", "purchase", "coupon")),
    "taobao": (["experiment=taobao_click_purchase"], ("click", "purchase")),
}


def _params(run_dir: Path) -> int:
    import torch

    (ckpt,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return sum(v.numel() for k, v in state.items() if k.startswith("model."))


def section(name: str, seeds: list[int], out: Path, extra: list[str]) -> str:
    """Runs one setup and returns its markdown section."""
    base, tasks = SETUPS[name]
    variants = {"multi-task": list(tasks), **{f"{t} alone": [t] for t in tasks}}
    rows = [
        f"## {name}: one multi-task model vs separate models ({len(seeds)} seeds)\n",
        "| model | task | test AUC | test GAUC | parameters | fit s |",
        "|---|---|---|---|---|---|",
    ]
    for label, trained in variants.items():
        runs = []
        for seed in seeds:
            run_dir = out / name / label.replace(" ", "_") / f"seed{seed}"
            ov = [*base, f"task=[{','.join(trained)}]", f"seed={seed}", *extra]
            runs.append((run_dir, train_run(run_dir, ov)))
        params = _params(runs[0][0])
        fit = statistics.mean(m["fit/seconds"] for _, m in runs)
        for t in trained:
            auc = cell([m[f"test/{t}/auc"] for _, m in runs])
            gauc = cell([m[f"test/{t}/gauc"] for _, m in runs])
            rows.append(f"| {label} | {t} | {auc} | {gauc} | {params:,} | {fit:.0f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setups", nargs="+", default=["default"], choices=list(SETUPS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "single_vs_multi")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="a few batches per run (plumbing only)")
    args = ap.parse_args()
    extra = ["debug=limit"] if args.quick else []
    cmd = " ".join(["python -m bench.single_vs_multi", *sys.argv[1:]])
    parts = [f"\nProduced by `{cmd}` on {machine()}.\n"]
    parts += [section(name, args.seeds, args.out, extra) for name in args.setups]
    write_section(args.results, "single_vs_multi", "\n".join(parts))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
