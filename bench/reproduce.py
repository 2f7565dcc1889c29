"""Reproduction: every encoder x 3 seeds on Amazon Beauty (paper protocol) and Taobao.

Runs ``atrank-train`` once per (setup, encoder, seed) in a subprocess, reads each run's
``metrics.json`` and writes ``docs/RESULTS.md`` with mean and standard deviation.

    python -m bench.reproduce                      # the full table (hours on 2 CPU cores)
    python -m bench.reproduce --quick              # a few batches per run: checks the plumbing
    python -m bench.reproduce --encoders atrank target_att din --seeds 1 --setups taobao

Selection is on the validation split (checkpoint on ``val/monitor``); the test split is only
read once per run, for the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ("none", "mean", "bpr", "bilstm", "bilstm_att", "cnn", "target_att", "din", "atrank")
#: Table labels where the encoder's name alone would mislead (bpr is not trained with BPR).
LABELS = {"bpr": "bpr (pointwise BCE loss)"}


@dataclass(frozen=True)
class Setup:
    """One dataset and protocol: the experiment config and the metrics reported."""

    name: str
    experiment: str
    tasks: tuple[str, ...]
    metrics: tuple[str, ...]


SETUPS = {
    "beauty": Setup("beauty", "beauty_next_item", ("click",), ("pair_auc", "auc")),
    "ml100k": Setup("ml100k", "ml100k_next_item", ("click",), ("pair_auc", "auc")),
    "taobao": Setup("taobao", "taobao_click_purchase", ("click", "purchase"), ("auc", "gauc")),
    "taobao_users": Setup("taobao_users", "taobao_users", ("click", "purchase"), ("auc", "gauc")),
}

#: The tuning grid: name -> overrides. Learning rate x regularisation (the L2 term on the
#: user and target vectors, and weight decay of every weight, the embeddings included; or
#: the mini-batch-aware L2 on the embedding rows each batch uses, ``embed``).
GRID: dict[str, list[str]] = {
    "base": [],
    "reg": ["optimizer=adamw", "optimizer.weight_decay=0.05", "model.l2_weight=1e-3"],
    "embed": ["model.embed_l2=0.01"],
    "slow": ["optimizer.lr=1e-3"],
    "slow_reg": [
        "optimizer=adamw",
        "optimizer.lr=1e-3",
        "optimizer.weight_decay=0.05",
        "model.l2_weight=1e-3",
    ],
}


#: The settings the published tables tried (``slow`` and ``slow_reg`` lost on Beauty's
#: validation and are left to ``--grid``).
DEFAULT_GRID = ("base", "reg", "embed")


def train_run(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """Runs ``atrank-train`` with these overrides into ``run_dir``; returns its metrics.json.

    Resumable: a run whose metrics.json exists is not run again.
    """
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        return dict(json.loads(metrics_file.read_text()))
    exe = shutil.which("atrank-train", path=str(Path(sys.executable).parent)) or "atrank-train"
    cmd = [exe, *overrides, "logger=csv", "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": "offline"})
    return dict(json.loads(metrics_file.read_text()))


def run_one(
    setup: Setup, encoder: str, setting: str, seed: int, out: Path, extra: list[str]
) -> dict[str, float]:
    """Trains and tests one (setup, encoder, grid setting, seed)."""
    overrides = [f"experiment={setup.experiment}", f"model/encoder={encoder}", f"seed={seed}"]
    folder = out / setup.name / encoder / setting / f"seed{seed}"
    return train_run(folder, [*overrides, *GRID[setting], *extra])


def tuned(
    setup: Setup, encoder: str, grid: list[str], seeds: list[int], out: Path, extra: list[str]
) -> tuple[str, list[dict[str, float]]]:
    """The grid setting with the best validation monitor (first seed), run with every seed."""
    first = {g: run_one(setup, encoder, g, seeds[0], out, extra) for g in grid}
    best = max(grid, key=lambda g: first[g]["best/val_monitor"])
    runs = [first[best], *(run_one(setup, encoder, best, s, out, extra) for s in seeds[1:])]
    return best, runs


def rule_aucs(setup: Setup, out: Path) -> dict[str, float | None]:
    """Test AUC of the rule "target in history", per task, from the prepared report."""
    from hydra import compose, initialize_config_module

    from atrank.build import resolve_data_dir
    from atrank.config import register_configs, train_config

    register_configs()
    with initialize_config_module(config_module="atrank.conf", version_base="1.3"):
        overrides = [f"experiment={setup.experiment}", f"paths.output_dir={out / 'compose'}"]
        cfg = compose("train", overrides=overrides)
    report = json.loads((resolve_data_dir(train_config(cfg)) / "report.json").read_text())
    tasks = report.get("source", {}).get("next_item", {}).get("tasks", {})
    return {
        t: tasks.get(t, {}).get("in_history", {}).get("test", {}).get("rule_auc")
        for t in setup.tasks
    }


def write_section(path: Path, key: str, text: str) -> None:
    """Puts ``text`` between ``<!-- begin:key -->`` and ``<!-- end:key -->`` in ``path``.

    Replaces an earlier section of the same key, keeps everything else (the other scripts'
    sections and hand-written analysis).
    """
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    old = path.read_text() if path.exists() else "# Results\n"
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    """``mean ± sd`` of a list (``-`` when empty)."""
    if not values:
        return "-"
    mean, sd = mean_sd(values)
    return f"{mean:.4f} ± {sd:.4f}"


def table(
    setup: Setup,
    results: dict[str, tuple[str, list[dict[str, float]]]],
    rule: dict[str, float | None],
) -> str:
    """Markdown table: one row per encoder (mean ± sd over seeds), then the rule baseline."""
    cols = [f"{t} {m}" for t in setup.tasks for m in setup.metrics]
    lines = [
        "| encoder | setting | " + " | ".join(cols) + " | best epoch | s / epoch |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for enc, (setting, runs) in results.items():
        cells = [
            cell([r[f"test/{t}/{m}"] for r in runs]) for t in setup.tasks for m in setup.metrics
        ]
        per_epoch = [r["fit/seconds"] / max(r["fit/epochs"], 1.0) for r in runs]
        best = [
            r[f"best/{setup.tasks[0]}/epoch"] for r in runs if f"best/{setup.tasks[0]}/epoch" in r
        ]
        label = LABELS.get(enc, enc)
        best_cell = f"{statistics.mean(best):.1f}" if best else "-"
        lines.append(
            f"| {label} | {setting} | " + " | ".join(cells) + f" | {best_cell} | "
            f"{statistics.mean(per_epoch):.0f} |"
        )
    rule_cells = []
    for t in setup.tasks:
        for m in setup.metrics:
            v = rule.get(t)
            rule_cells.append("-" if v is None or m not in ("auc", "pair_auc") else f"{v:.4f}")
    lines.append("| rule: target in history | - | " + " | ".join(rule_cells) + " | - | - |")
    return "\n".join(lines)


def leads(
    setup: Setup,
    results: dict[str, tuple[str, list[dict[str, float]]]],
    focus: str = "atrank",
) -> str:
    """Per task, on the setup's first metric: who leads, by how much, against what spread.

    "Ahead by more than the spread" means the gap between the two best means is larger than
    the sum of their standard deviations over seeds (the mean +- sd intervals do not
    overlap). When ``focus`` is not first, its rank and its distance to the leader are given.
    """
    metric = setup.metrics[0]
    lines = []
    for task in setup.tasks:
        stats = {
            enc: mean_sd([r[f"test/{task}/{metric}"] for r in runs])
            for enc, (_, runs) in results.items()
        }
        if len(stats) < 2:
            continue
        order = sorted(stats, key=lambda e: stats[e][0], reverse=True)
        first, second = order[0], order[1]
        gap = stats[first][0] - stats[second][0]
        spread = stats[first][1] + stats[second][1]
        verdict = "ahead by more than the spread" if gap > spread else "within the spread"
        line = (
            f"- {task} {metric}: **{first}** leads {second} by {gap:.4f}, summed sd "
            f"{spread:.4f}: {verdict}."
        )
        if focus in stats and focus != first:
            rank = order.index(focus) + 1
            line += (
                f" {focus} is #{rank} of {len(order)}, "
                f"{stats[first][0] - stats[focus][0]:.4f} behind."
            )
        lines.append(line)
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine the table was measured on."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    import torch

    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, no GPU"


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument(
        "--grid",
        nargs="+",
        default=list(DEFAULT_GRID),
        choices=list(GRID),
        help="settings tried per encoder on seed 1's validation "
        f"(default: {' '.join(DEFAULT_GRID)}, the tables' grid)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproduce")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="a few batches per run (plumbing only)")
    ap.add_argument("overrides", nargs="*", help="extra atrank-train overrides for every run")
    args = ap.parse_args()
    extra = list(args.overrides) + (["debug=limit"] if args.quick else [])
    sections = [
        f"Produced by `python -m bench.reproduce {' '.join(sys.argv[1:])}` on {machine()}.\n",
    ]
    for name in args.setups:
        setup = SETUPS[name]
        results = {
            enc: tuned(setup, enc, args.grid, args.seeds, args.out, extra) for enc in args.encoders
        }
        sections.append(f"## {name} (`experiment={setup.experiment}`)\n")
        sections.append(table(setup, results, rule_aucs(setup, args.out)) + "\n")
        sections.append(leads(setup, results) + "\n")
    write_section(args.results, "reproduce_tuned", "\n".join(sections))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
