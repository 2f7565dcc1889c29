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
    "taobao": Setup("taobao", "taobao_click_purchase", ("click", "purchase"), ("auc", "gauc")),
}


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


def run_one(setup: Setup, encoder: str, seed: int, out: Path, extra: list[str]) -> dict[str, float]:
    """Trains and tests one (setup, encoder, seed)."""
    overrides = [f"experiment={setup.experiment}", f"model/encoder={encoder}", f"seed={seed}"]
    return train_run(out / setup.name / encoder / f"seed{seed}", [*overrides, *extra])


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


def cell(values: list[float]) -> str:
    """``mean ± sd`` of a list (``-`` when empty)."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(setup: Setup, results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown table: one row per encoder, mean ± sd over seeds."""
    cols = [f"{t} {m}" for t in setup.tasks for m in setup.metrics]
    lines = [
        "| encoder | " + " | ".join(cols) + " | s / epoch | epochs |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for enc, runs in results.items():
        cells = [
            cell([r[f"test/{t}/{m}"] for r in runs]) for t in setup.tasks for m in setup.metrics
        ]
        per_epoch = [r["fit/seconds"] / max(r["fit/epochs"], 1.0) for r in runs]
        epochs = [r["fit/epochs"] for r in runs]
        label = LABELS.get(enc, enc)
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(per_epoch):.0f} | "
            f"{statistics.mean(epochs):.1f} |"
        )
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
            enc: [run_one(setup, enc, s, args.out, extra) for s in args.seeds]
            for enc in args.encoders
        }
        sections.append(f"## {name} (`experiment={setup.experiment}`)\n")
        sections.append(table(setup, results) + "\n")
    write_section(args.results, "reproduce", "\n".join(sections))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
