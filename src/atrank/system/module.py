"""The training system: losses, metrics, optimisation and logging around a plain model."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model.loss import multitask_loss
from atrank.system.metrics import TaskMetrics

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

EVAL_STAGES = ("val", "test")

# Evaluation metrics are torchmetrics objects synchronised over all processes in compute():
# the logged values are already global, so Lightning's advice to average them again over
# ranks (sync_dist=True) does not apply.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.* when logging on epoch level")


class ATRankSystem(L.LightningModule):
    """Multi-task training of one shared-encoder model.

    Logs ``train/loss``, ``train/<task>/loss`` and, per evaluation stage, ``<stage>/<task>/auc``,
    ``<stage>/<task>/gauc``, ``<stage>/<task>/logloss`` plus ``<stage>/monitor``: the
    weighted mean of the tasks' AUCs used for checkpointing and early stopping.

    Args:
        model: the plain ``nn.Module``; ``model(batch).logits`` maps task name to ``(B,)``.
        task_weights: loss weight per task name (the tasks trained and scored).
        optimizer: factory completing a partially configured optimizer with the parameters.
        scheduler: optional factory taking the optimizer, returning an LR scheduler.
        l2_weight: weight of the L2 penalty on the user vector and the target vector.
        monitor_weights: weight per task in ``<stage>/monitor`` (default: equal).
        run_config: the resolved run config, kept in checkpoints so ``atrank-eval`` can rebuild
            the model without the original command line.
        data_dir: the prepared data trained on (kept in checkpoints likewise).
        loss_weighting: ``"fixed"`` (the task weights) or ``"uncertainty"`` (learned per-task
            weights, Kendall et al. 2018, on top of the fixed ones); logged as
            ``train/<task>/log_var``.
    """

    def __init__(
        self,
        model: nn.Module,
        task_weights: dict[str, float],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        l2_weight: float = 0.0,
        monitor_weights: dict[str, float] | None = None,
        run_config: dict[str, Any] | None = None,
        data_dir: str | None = None,
        loss_weighting: str = "fixed",
        task_metrics: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        if not task_weights:
            raise ValueError("no task to train: give at least one with task=[...]")
        for task, w in task_weights.items():
            if w < 0:
                raise ValueError(f"task.{task}.weight must be >= 0, got {w}")
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.task_weights = dict(task_weights)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.l2_weight = l2_weight
        self.monitor_weights = dict(monitor_weights or {t: 1.0 for t in task_weights})
        if loss_weighting not in ("fixed", "uncertainty"):
            raise ValueError(
                f"loss_weighting must be 'fixed' or 'uncertainty', got {loss_weighting!r}"
            )
        self.log_vars = (
            nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in task_weights})
            if loss_weighting == "uncertainty"
            else None
        )
        names = {t: (task_metrics or {}).get(t) or TaskMetrics.NAMES for t in task_weights}
        self.metrics = nn.ModuleDict(
            {
                s: nn.ModuleDict({t: TaskMetrics(names[t]) for t in task_weights})
                for s in EVAL_STAGES
            }
        )

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Inference: task name -> probability ``(B,)``."""
        return {t: torch.sigmoid(v) for t, v in self.model(batch).logits.items()}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.model(batch)
        log_vars = dict(self.log_vars.items()) if self.log_vars is not None else None
        total, per_task = multitask_loss(
            out.logits,
            batch.labels,
            batch.label_mask,
            self.task_weights,
            out.l2,
            self.l2_weight,
            log_vars,
        )
        bs = batch.size
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for task, loss in per_task.items():
            self.log(f"train/{task}/loss", loss, batch_size=bs)
            if log_vars is not None:
                self.log(f"train/{task}/log_var", log_vars[task], batch_size=bs)
        return total

    def _stage_metrics(self, stage: str) -> dict[str, TaskMetrics]:
        return dict(self.metrics[stage].items())  # type: ignore[operator]

    def _eval_step(self, stage: str, batch: Batch) -> None:
        out = self.model(batch)
        metrics = self._stage_metrics(stage)
        for task in self.task_weights:
            metrics[task].update(
                out.logits[task], batch.labels[task], batch.label_mask[task], batch.user
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        weighted, total_w = 0.0, 0.0
        for task, m in self._stage_metrics(stage).items():
            values = m.compute()  # gathered over all processes by torchmetrics
            m.reset()
            for name, v in values.items():
                self.log(f"{stage}/{task}/{name}", v, sync_dist=False, rank_zero_only=False)
            w = self.monitor_weights.get(task, 0.0)
            weighted += w * float(values["auc"])
            total_w += w
        monitor = weighted / total_w if total_w > 0 else float("nan")
        self.log(f"{stage}/monitor", monitor, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return self(batch)

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"},
        }
