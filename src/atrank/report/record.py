"""The run record: the environment (commit, packages), training throughput and memory, the
prepared data's ``report.json`` and the resolved configuration, as report sections."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from atrank.report.section import Section, Table
from data_prep import contract as C

#: The packages whose versions the record lists (distribution names).
PACKAGES = (
    "atrank-mt",
    "torch",
    "lightning",
    "torchmetrics",
    "polars",
    "hydra-core",
    "omegaconf",
    "numpy",
    "wandb",
    "matplotlib",
)


@dataclass
class Throughput:
    """Training speed, measured by the report's callback.

    Attributes:
        samples: training samples seen.
        step_seconds: seconds spent in training batches (loading and steps; validation
            excluded).
        epoch_seconds: wall seconds of each training epoch (its validation included).
    """

    samples: int = 0
    step_seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)


def git_commit(where: Path | None = None) -> str:
    """The commit of the checkout holding ``where`` (default: this package), ``+ local
    changes`` when tracked files differ from it; without git or a checkout: the package
    version. Never raises."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"unknown (no git checkout; atrank-mt {package_version('atrank-mt')})"
    return head + (" + local changes" if dirty else "")


def package_version(name: str) -> str | None:
    """An installed distribution's version, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (MiB), and peak CUDA memory allocated by torch
    when a GPU is in use."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # (kibibytes on Linux, bytes on macOS)
    out = {"peak CPU RSS (MiB)": rss / (1024**2 if sys.platform == "darwin" else 1024)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak CUDA allocated (MiB)"] = torch.cuda.max_memory_allocated() / 1024**2
    return out


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as ``(dotted.key, leaf)`` pairs; lists are leaves (as JSON text)."""
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, (list, tuple)):
        return [(prefix, json.dumps(obj))]
    return [(prefix, obj)]


def environment_section(
    throughput: Throughput | None, extra: dict[str, Any] | None = None
) -> Section:
    """Commit, package versions, training throughput and memory."""
    run = [["git commit", git_commit()], ["python", sys.version.split()[0]]]
    run += [[k, v] for k, v in (extra or {}).items()]
    packages = [[p, package_version(p)] for p in PACKAGES]
    speed: list[list[Any]] = [[k, v] for k, v in peak_memory_mb().items()]
    notes = []
    if throughput is not None and throughput.samples:
        t = throughput
        epochs = t.epoch_seconds
        speed = [
            ["training samples", t.samples],
            ["training seconds (batches only)", t.step_seconds],
            ["training samples/s", t.samples / t.step_seconds if t.step_seconds else None],
            ["epochs", len(epochs)],
            ["seconds per epoch (with validation)", sum(epochs) / len(epochs) if epochs else None],
            *speed,
        ]
    else:
        notes.append("no training in this run: no throughput")
    return Section(
        key="run/environment",
        title="Run: commit, packages, throughput, memory",
        tables={
            "run": Table(["key", "value"], run),
            "throughput and memory": Table(["quantity", "value"], speed),
            "packages": Table(["package", "version"], packages),
        },
        notes=notes,
    )


def config_section(run_config: dict[str, Any] | None) -> Section:
    """The resolved run configuration as a table of dotted keys."""
    if not run_config:
        return Section("run/config", "Configuration", notes=["no configuration stored"])
    rows = [
        [k, v if isinstance(v, (int, float, str, bool)) or v is None else str(v)]
        for k, v in flatten(run_config)
    ]
    return Section("run/config", "Configuration", tables={"config": Table(["key", "value"], rows)})


def _rows_tables(report: dict[str, Any]) -> dict[str, Table]:
    kept, dropped = [], []
    for name in ("events", "samples"):
        t = report.get(name)
        if not isinstance(t, dict):
            continue
        kept.append([name, t.get("rows_read"), t.get("rows_kept"), t.get("rows_dropped")])
        for reason, n in (t.get("dropped_by_reason") or {}).items():
            dropped.append([name, reason, n])
    return {
        "rows kept and dropped": Table(["table", "read", "kept", "dropped"], kept),
        "rows dropped by reason": Table(["table", "reason", "rows"], dropped),
    }


def _oov_table(report: dict[str, Any]) -> Table:
    rows = []
    for source, by_split in (report.get("oov_rate") or {}).items():
        for split, by_field in (by_split or {}).items():
            for f, rate in (by_field or {}).items():
                rows.append([source, split, f, rate])
    return Table(["table", "split", "field", "OOV rate"], rows)


def _label_table(report: dict[str, Any]) -> Table:
    rows = []
    for split, s in (report.get("splits") or {}).items():
        for task, c in (s.get("tasks") or {}).items():
            n, pos = c.get("labelled", 0), c.get("positives", 0)
            rows.append([split, task, s.get("rows"), n, pos, pos / n if n else None])
    return Table(["split", "task", "rows", "labelled", "positives", "positive rate"], rows)


_KNOWN = {"events", "samples", "oov_rate", "splits", "warnings"}


def data_section(data_dir: Path | None) -> Section:
    """The prepared data's ``report.json``: rows kept and dropped (by reason), OOV rates,
    label rates per split; its warnings as notes, any other key as a flat table."""
    sec = Section("run/data", "Prepared data (report.json)")
    path = Path(data_dir) / C.REPORT_FILE if data_dir is not None else None
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError) as e:
        report = None
        sec.notes.append(f"{path}: unreadable ({e})")
    if not isinstance(report, dict):
        sec.notes.append("no data report" if path is None else f"no data report at {path}")
        return sec
    sec.notes += [f"source: {path}"] + [str(w) for w in report.get("warnings") or []]
    sec.tables.update(_rows_tables(report))
    sec.tables["OOV rates"] = _oov_table(report)
    sec.tables["labels per split"] = _label_table(report)
    other = [[k, v] for k, v in flatten({k: v for k, v in report.items() if k not in _KNOWN})]
    if other:
        sec.tables["other"] = Table(["key", "value"], other)
    return sec


def record_sections(
    run_config: dict[str, Any] | None,
    data_dir: Path | None,
    throughput: Throughput | None,
    extra: dict[str, Any] | None = None,
) -> list[Section]:
    """The run record: environment, data report, configuration.

    Args:
        run_config: the resolved run configuration (plain values).
        data_dir: the prepared data directory (its ``report.json`` is read).
        throughput: the training speed measured, or None (no training).
        extra: more ``key -> value`` rows for the environment's run table.
    """
    return [
        environment_section(throughput, extra),
        data_section(data_dir),
        config_section(run_config),
    ]
