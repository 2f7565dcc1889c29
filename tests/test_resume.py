"""A run killed mid-epoch and resumed ends exactly as the run that was never killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SIM

BIN = Path(sys.executable).parent
HELPERS = Path(__file__).parent / "helpers"
RUN = [
    *TINY_SIM,
    "trainer.max_epochs=3",
    "data.batch_size=128",
    "logger=none",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping.patience=5",
    "threads=1",
]


def _train(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ATRANK_CACHE": str(cache),
        "PYTHONPATH": str(HELPERS),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    exe = shutil.which("atrank-train", path=str(BIN)) or "atrank-train"
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _metrics(folder: Path) -> dict[str, float]:
    return {
        k: v
        for k, v in json.loads((folder / "metrics.json").read_text()).items()
        if not k.startswith("fit/seconds")
    }


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_run_killed_mid_epoch_and_resumed_ends_as_the_uninterrupted_one(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    whole = _train([*RUN, f"hydra.run.dir={tmp_path / 'whole'}"], cache, tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    steps = torch.load(
        tmp_path / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )["global_step"]
    per_epoch = steps // 3
    assert per_epoch >= 3
    # killed in the middle of the third epoch: after last.ckpt of the second, mid-way (the
    # per-task bests of the first two epochs must survive: a resumed run without them would
    # report the third epoch's values, and overwrite best-<task>.ckpt with a worse epoch)
    killed = tmp_path / "killed"
    step = 2 * per_epoch + per_epoch // 2
    kill = f"+callbacks.killer={{_target_:killer.KillAtStep,step:{step}}}"
    r = _train([*RUN, kill, f"hydra.run.dir={killed}"], cache, tmp_path)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (killed / "metrics.json").exists()
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * per_epoch
    # resumed in its own folder, with the configuration it was started with (the killer
    # included: it spares a run that does not start at step 0)
    r = _train([f"resume={killed}"], cache, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics(killed) == pytest.approx(_metrics(tmp_path / "whole"), abs=1e-6)
    for task in ("click", "purchase", "coupon"):
        a = torch.load(killed / "checkpoints" / f"best-{task}.ckpt", weights_only=True)
        b = torch.load(tmp_path / "whole" / "checkpoints" / f"best-{task}.ckpt", weights_only=True)
        assert a["epoch"] == b["epoch"], task  # the per-task best kept across the kill


def test_resume_refuses_a_folder_without_a_last_checkpoint_and_other_overrides(
    tmp_path: Path,
) -> None:
    r = _train([f"resume={tmp_path}"], tmp_path / "cache", tmp_path)
    assert r.returncode == 2 and "last.ckpt" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    r = _train([f"resume={tmp_path}", "seed=3"], tmp_path / "cache", tmp_path)
    assert r.returncode == 2 and "seed=3" in r.stderr


def test_per_task_best_keeps_its_state_in_checkpoints() -> None:
    from atrank.system.callbacks import PerTaskBest

    cb = PerTaskBest(["click", "coupon"])
    cb.best = {"click": (1, 0.8), "coupon": (0, 0.7)}
    again = PerTaskBest(["click", "coupon"])
    again.load_state_dict(cb.state_dict())
    assert again.best == cb.best and again.summary() == cb.summary()
    # plain types only: a checkpoint holding it loads with weights_only=True
    import io

    buf = io.BytesIO()
    torch.save({"cb": cb.state_dict()}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["cb"] == cb.state_dict()
