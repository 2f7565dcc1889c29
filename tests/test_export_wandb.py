"""``atrank-export`` adds the bundle to the training run's W&B run (offline), as a ``bundle``
artifact; ``wandb=false`` logs nothing; ``wandb=true`` without a W&B run is an error."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from test_report import _finished_run_records

from atrank.cli import export as export_cli
from atrank.report import wandb_bundle
from atrank.train import train

Compose = Callable[..., DictConfig]


def _export(tmp_path: Path, ckpt: Path, *overrides: str) -> None:
    """Runs ``atrank-export`` in this process, as its console script does."""
    out = tmp_path / "bundle"
    argv = [f"ckpt_path={ckpt}", f"out={out}", f"hydra.run.dir={tmp_path / 'export'}"]
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["atrank-export", *argv, *overrides])
        export_cli.main()


Artifact = tuple[str, str, list[str], set[str]]


def _artifacts(wandb_dir: Path) -> dict[str, list[Artifact]]:
    """Per W&B run folder: its artifacts as (type, name, aliases, file paths)."""
    found: dict[str, list[Artifact]] = {}
    for run_dir in sorted(wandb_dir.glob("offline-run-*")):
        records = _finished_run_records(next(run_dir.glob("*.wandb")))
        found[run_dir.name] = [
            (a.type, a.name, list(a.aliases), {m.path for m in a.manifest.contents})
            for a in (r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
        ]
    return found


def test_export_logs_the_bundle_to_the_runs_wandb_run(
    compose_cfg: Compose,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    wandb.finish()  # (a run left by another test would be reused)
    cfg = compose_cfg("logger=wandb", "debug=limit", "data.batch_size=64", "report.enabled=false")
    try:
        train(cfg)
    finally:
        wandb.finish()
    run_dir = Path(cfg.paths.output_dir)
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    (trained,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = trained.name.rsplit("-", 1)[1]

    _export(tmp_path, ckpt, "wandb=false")
    assert list((run_dir / "wandb").glob("offline-run-*")) == [trained]
    assert "logged to W&B" not in capsys.readouterr().out

    _export(tmp_path, ckpt)  # wandb=auto: the run has a W&B run
    assert f"artifact bundle-{run_id}" in capsys.readouterr().out
    found = _artifacts(run_dir / "wandb")
    assert len(found) == 2 and all(name.endswith(f"-{run_id}") for name in found)  # one run
    bundles = [a for arts in found.values() for a in arts if a[0] == "bundle"]
    bundle = tmp_path / "bundle"
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert bundles == [("bundle", f"bundle-{run_id}", ["latest"], files)]


def test_export_wandb_true_needs_a_wandb_run(
    tiny_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tiny_run["ckpt"].resolve().parent.parent  # trained with logger=none
    _export(tmp_path, tiny_run["ckpt"])  # auto: nothing to log to, nothing logged
    assert "logged to W&B" not in capsys.readouterr().out
    assert not (run_dir / "wandb").exists()
    with pytest.raises(SystemExit) as exit_:
        _export(tmp_path, tiny_run["ckpt"], "wandb=true")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "wandb=true" in err and str(run_dir) in err


def test_a_wandb_failure_in_auto_mode_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "wandb" / "offline-run-20260101_000000-abc123").mkdir(parents=True)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("logger:\n  wandb:\n    project: mine\n")
    assert wandb_bundle.wandb_project(tmp_path) == "mine"
    assert wandb_bundle.wandb_project(tmp_path / "none") == wandb_bundle.DEFAULT_PROJECT

    def fail(*_: object) -> str:
        raise RuntimeError("no space left")

    monkeypatch.setattr(wandb_bundle, "_log", fail)
    assert wandb_bundle.log_bundle(tmp_path / "bundle", tmp_path, "auto") is None
    assert "warning: bundle not logged to W&B run abc123: no space left" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        wandb_bundle.log_bundle(tmp_path / "bundle", tmp_path, "true")
