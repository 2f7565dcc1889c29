"""The console scripts as a user runs them: atrank-prep, atrank-train (multirun, DDP)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SIM

BIN = Path(sys.executable).parent


def _run(
    cmd: list[str], cwd: Path, cache: Path, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ATRANK_CACHE": str(cache),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    exe = shutil.which(cmd[0], path=str(BIN)) or cmd[0]
    return subprocess.run(
        [exe, *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_prep_writes_where_asked_and_train_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    r = _run(["atrank-prep", f"out_dir={out}", *TINY_SIM], tmp_path, tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert (out / "meta.json").is_file() and (out / "report.json").is_file()
    again = _run(["atrank-prep", f"out_dir={out}", *TINY_SIM], tmp_path, tmp_path / "cache")
    assert again.returncode == 0 and "already prepared" in again.stdout

    r = _run(
        ["atrank-train", f"data.dir={out}", "debug=fdr", "logger=none", "hydra.run.dir=run"],
        tmp_path,
        tmp_path / "cache",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"test/click/auc", "test/purchase/auc", "test/coupon/auc"} <= set(metrics)
    assert "metrics.json" in r.stdout  # the table ends with the path of the file


def test_bad_value_exits_with_a_message_naming_the_key(tmp_path: Path) -> None:
    r = _run(["atrank-train", "data.max_len=-3", *TINY_SIM], tmp_path, tmp_path / "cache")
    assert r.returncode == 2
    assert "data.max_len" in r.stderr and "Traceback" not in r.stderr


def test_multirun_runs_every_job(tmp_path: Path) -> None:
    r = _run(
        [
            "atrank-train",
            "-m",
            "seed=1,2",
            "debug=fdr",
            "logger=none",
            *TINY_SIM,
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
        tmp_path / "cache",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="DDP on CPU needs process spawning via fork")
def test_ddp_on_cpu_with_two_processes(tmp_path: Path) -> None:
    r = _run(
        [
            "atrank-train",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "debug=limit",
            "logger=none",
            "callbacks.progress_bar=null",
            *TINY_SIM,
            "hydra.run.dir=run",
        ],
        tmp_path,
        tmp_path / "cache",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/click/auc"] <= 1.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="DDP on CPU needs process spawning via fork")
def test_eval_metrics_identical_with_one_and_two_processes(tmp_path: Path) -> None:
    """AUC/GAUC/log loss are computed over gathered predictions of every sample exactly once,
    so 2 processes give the 1-process numbers (no padded sampler, no per-rank averaging)."""
    cache = tmp_path / "cache"
    r = _run(
        [
            "atrank-train",
            "debug=limit",
            "logger=none",
            "callbacks.progress_bar=null",
            "data.eval_batch_size=100",
            *TINY_SIM,
            "hydra.run.dir=run",
        ],
        tmp_path,
        cache,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    results = []
    for devices in (1, 2):
        out = f"eval{devices}"
        r = _run(
            [
                "atrank-eval",
                f"ckpt_path={ckpt}",
                "trainer=ddp",
                "trainer.accelerator=cpu",
                f"trainer.devices={devices}",
                "batch_size=77",
                f"hydra.run.dir={out}",
            ],
            tmp_path,
            cache,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        results.append(json.loads((tmp_path / out / "metrics.json").read_text()))
    one, two = results
    assert set(one) == set(two) and len(one) >= 9
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_optuna_search_selects_on_the_validation_monitor(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optuna sweeper not installed")
    import yaml

    r = _run(
        [
            "atrank-train",
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "debug=fdr",
            "logger=none",
            "threads=1",
            *TINY_SIM,
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
        tmp_path / "cache",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    trials = [json.loads((tmp_path / "sweep" / j / "metrics.json").read_text()) for j in "01"]
    assert result["best_value"] == pytest.approx(max(t["best/val_monitor"] for t in trials))
    assert {"optimizer.lr", "model.d_model", "model.dropout", "model.l2_weight"} <= set(
        result["best_params"]
    )
