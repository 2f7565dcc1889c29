"""A scoring bundle (``atrank-export``) as a ``bundle`` artifact of its training run's W&B run."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from atrank.config import ConfigError

DEFAULT_PROJECT = "atrank-mt"  # conf/logger/wandb.yaml's


@dataclass(frozen=True)
class WandbRun:
    """A W&B run recorded in a training run folder.

    Attributes:
        id: the W&B run id (the last ``-<id>`` of its folder's name).
        folder: its folder, ``<run>/wandb/offline-run-<time>-<id>`` or ``.../run-<time>-<id>``.
        offline: whether it was an offline run.
    """

    id: str
    folder: Path
    offline: bool


def find_wandb_run(run_dir: Path) -> WandbRun | None:
    """The newest W&B run in a training run folder (its ``wandb/``), or None."""
    runs = [
        p
        for p in (run_dir / "wandb").glob("*run-*-*")
        if p.is_dir() and not p.is_symlink() and p.name.startswith(("offline-run-", "run-"))
    ]
    if not runs:
        return None
    newest = max(runs, key=lambda p: p.name.rsplit("-", 2)[-2])  # <time>: yyyymmdd_hhmmss
    return WandbRun(newest.name.rsplit("-", 1)[1], newest, newest.name.startswith("offline-"))


def wandb_project(run_dir: Path) -> str:
    """The W&B project of a run: its saved ``.hydra/config.yaml``'s, or the default."""
    from omegaconf import OmegaConf

    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        project = OmegaConf.select(OmegaConf.load(saved), "logger.wandb.project", default=None)
        if isinstance(project, str) and project:
            return project
    return DEFAULT_PROJECT


def log_bundle(bundle: Path, run_dir: Path, when: str = "auto") -> str | None:
    """Adds a bundle to the W&B run of the training run it was exported from.

    The run is resumed (same id and project, in ``run_dir``) and the bundle logged as artifact
    ``bundle-<id>`` of type ``bundle``, alias ``latest``. Offline unless ``WANDB_MODE`` says
    otherwise or the run was logged online: ``wandb sync`` uploads it with the run; no key is
    needed offline.

    Args:
        bundle: the bundle directory.
        run_dir: the training run folder (the checkpoint's ``checkpoints/``'s parent).
        when: ``auto`` (only if ``run_dir`` has a W&B run; a failure is a warning on stderr),
            ``true`` (always: no W&B run is an error) or ``false`` (never).

    Returns:
        The artifact's name, or None when nothing was logged.

    Raises:
        ConfigError: ``when`` is ``true`` and ``run_dir`` holds no W&B run.
    """
    if when == "false":
        return None
    run = find_wandb_run(run_dir)
    if run is None:
        if when == "true":
            raise ConfigError(
                f"wandb=true: {run_dir} holds no W&B run (no wandb/offline-run-* or "
                "wandb/run-*; train with logger=wandb), or set wandb=false"
            )
        return None
    try:
        return _log(bundle, run_dir, run)
    except Exception as e:  # W&B is a side channel: the bundle is written either way
        if when == "true":
            raise
        print(f"warning: bundle not logged to W&B run {run.id}: {e}", file=sys.stderr)
        return None


def _log(bundle: Path, run_dir: Path, run: WandbRun) -> str:
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("offline" if run.offline else "online")
    name = f"bundle-{run.id}"
    with wandb.init(
        id=run.id,
        project=wandb_project(run_dir),
        dir=str(run_dir),
        resume="allow",
        mode=mode,  # type: ignore[arg-type]
        reinit="create_new",  # never another run of this process
    ) as wb:
        artifact = wandb.Artifact(name, type="bundle", metadata={"bundle": str(bundle)})
        artifact.add_dir(str(bundle))
        wb.log_artifact(artifact, aliases=["latest"])
    return name
