"""A callback that kills its own process (SIGKILL, as an OOM killer or a lost node would) at a
given training step: the tests' way to interrupt a run at an exact point."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """Kills the process when the trainer reaches ``step`` (no cleanup, no checkpoint), in a
    run that started from step 0 only: the same run resumed (its stored configuration holds
    this callback too) goes on.

    Args:
        step: the global step after which the process dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.started_at = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started_at = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.started_at == 0 and trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
