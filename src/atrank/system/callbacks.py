"""Callbacks for multi-task model selection."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class PerTaskBest(Callback):
    """Keeps the best validation epoch of every task, and its checkpoint.

    The run's own checkpoint follows ``val/monitor`` (a weighted mean over tasks); this keeps,
    next to it, ``best-<task>.ckpt`` for each task and reports ``best/<task>/epoch`` and
    ``best/<task>/val_<metric>`` in ``metrics.json``.

    Args:
        tasks: task names (``${oc.dict.keys:task}`` in the config).
        dirpath: where the per-task checkpoints go; None keeps no files.
        metric: the validation metric compared (higher is better).
    """

    def __init__(self, tasks: list[str], dirpath: str | None = None, metric: str = "auc") -> None:
        self.tasks = [str(t) for t in tasks]
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.metric = metric
        self.best: dict[str, tuple[int, float]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for task in self.tasks:
            value = trainer.callback_metrics.get(f"val/{task}/{self.metric}")
            if value is None:
                continue
            v = float(value)
            if task in self.best and not v > self.best[task][1]:
                continue
            self.best[task] = (trainer.current_epoch, v)
            if self.dirpath is not None:
                trainer.save_checkpoint(str(self.dirpath / f"best-{task}.ckpt"))

    def state_dict(self) -> dict[str, object]:
        """The best epoch and value of every task, kept in checkpoints (plain types), so that
        a resumed run keeps comparing against them."""
        return {"best": {t: [int(e), float(v)] for t, (e, v) in self.best.items()}}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        """Restores :meth:`state_dict` (a resumed run)."""
        best = state_dict.get("best", {})
        assert isinstance(best, dict)
        self.best = {str(t): (int(e), float(v)) for t, (e, v) in best.items()}

    def summary(self) -> dict[str, float]:
        """``best/<task>/epoch`` and ``best/<task>/val_<metric>`` for every task seen."""
        out: dict[str, float] = {}
        for task, (epoch, value) in self.best.items():
            out[f"best/{task}/epoch"] = float(epoch)
            out[f"best/{task}/val_{self.metric}"] = value
        return out
