"""The training system: losses, metrics, optimisation and logging around a plain model."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from atrank.config import LossWeighting, TaskSpec
from atrank.data.batch import Batch
from atrank.model.loss import multitask_loss
from atrank.system.metrics import task_metrics

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

EVAL_STAGES = ("val", "test")

# Evaluation metrics are torchmetrics objects synchronised over all processes in compute():
# the logged values are already global, so Lightning's advice to average them again over
# ranks (sync_dist=True) does not apply.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.* when logging on epoch level")


class ATRankSystem(L.LightningModule):
    """Multi-task training of one shared-encoder model.

    Logs ``train/loss``, ``train/<task>/loss`` and, per evaluation stage, the task's configured
    metrics as ``<stage>/<task>/<metric>`` (``auc``, ``gauc``, ``pair_auc``, ``logloss``) plus
    ``<stage>/monitor``: the weighted mean of the tasks' AUCs used for checkpointing and
    early stopping.

    Args:
        model: the plain ``nn.Module``; ``model(batch).logits`` maps task name to ``(B,)``.
        tasks: the tasks trained and scored, by name: each one's loss weight, monitor weight
            and metrics (:class:`atrank.config.TaskSpec`).
        optimizer: factory completing a partially configured optimizer with the parameters.
        scheduler: optional factory taking the optimizer, returning an LR scheduler.
        l2_weight: weight of the L2 penalty on the user vector and the target vector.
        embed_l2: weight of the mini-batch-aware L2 on the id embedding rows each batch uses
            (:meth:`atrank.model.ATRankModel.embedding_l2`); logged as ``train/embed_l2``.
        inv_counts: ``field -> (V_f,)`` inverse training counts of the id tables' rows
            (:func:`atrank.data.store.read_inverse_counts`); needed when ``embed_l2 > 0``.
        loss_weighting: ``"fixed"`` (the task weights) or ``"uncertainty"`` (learned per-task
            weights, Kendall et al. 2018, on top of the fixed ones); logged as
            ``train/<task>/log_var``.
        run_config: the resolved run config, kept in checkpoints so ``atrank-eval`` can rebuild
            the model without the original command line.
        data_dir: the prepared data trained on (kept in checkpoints likewise).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, TaskSpec],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        l2_weight: float = 0.0,
        embed_l2: float = 0.0,
        inv_counts: Mapping[str, Tensor] | None = None,
        loss_weighting: str = "fixed",
        run_config: dict[str, Any] | None = None,
        data_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("no task to train: give at least one with task=[...]")
        weighting = LossWeighting(loss_weighting)
        # Plain values only in checkpoints: the tasks are rebuilt from run_config.
        self.save_hyperparameters(ignore=["model", "tasks", "optimizer", "scheduler", "inv_counts"])
        self.model = model
        self.tasks = dict(tasks)
        self.task_weights = {n: t.weight for n, t in self.tasks.items()}  # (read every step)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.l2_weight = l2_weight
        self.embed_l2 = embed_l2
        if embed_l2 > 0 and inv_counts is None:
            raise ValueError("embed_l2 > 0 needs inv_counts (the id tables' training counts)")
        # Derived from the prepared data at build time: moved with the module, not saved.
        self.inv_counts = nn.Module()
        if embed_l2 > 0 and inv_counts is not None:
            for f, inv in inv_counts.items():
                self.inv_counts.register_buffer(f, inv, persistent=False)
        self.log_vars = (
            nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in tasks})
            if weighting is LossWeighting.uncertainty
            else None
        )
        self.metrics = nn.ModuleDict(
            {
                s: nn.ModuleDict(
                    {n: task_metrics(t.metrics, prefix=f"{s}/{n}/") for n, t in tasks.items()}
                )
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
        if self.embed_l2 > 0:
            inv = dict(self.inv_counts.named_buffers())
            penalty = self.model.embedding_l2(batch, inv)  # type: ignore[operator]
            total = total + self.embed_l2 * penalty
            self.log("train/embed_l2", penalty, batch_size=bs)
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for task, loss in per_task.items():
            self.log(f"train/{task}/loss", loss, batch_size=bs)
            if log_vars is not None:
                self.log(f"train/{task}/log_var", log_vars[task], batch_size=bs)
        return total

    def _stage_metrics(self, stage: str) -> dict[str, MetricCollection]:
        return dict(self.metrics[stage].items())  # type: ignore[operator]

    def _eval_step(self, stage: str, batch: Batch) -> dict[str, Tensor]:
        out = self.model(batch)
        for task, metrics in self._stage_metrics(stage).items():
            mask = batch.label_mask[task]
            metrics.update(
                preds=out.logits[task][mask].float(),
                target=batch.labels[task][mask].long(),
                groups=batch.user[mask],
            )
        return dict(out.logits)

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Updates the validation metrics; returns task -> ``(B,)`` logits (for callbacks:
        the run report)."""
        return self._eval_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Updates the test metrics; returns task -> ``(B,)`` logits."""
        return self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        weighted, total_w = 0.0, 0.0
        for task, metrics in self._stage_metrics(stage).items():
            values = metrics.compute()  # gathered over all processes by torchmetrics
            metrics.reset()
            for key, v in values.items():
                self.log(key, v, sync_dist=False, rank_zero_only=False)
            w = self.tasks[task].monitor_weight
            auc = float(values[f"{stage}/{task}/auc"])
            if math.isfinite(auc):  # (NaN: one class only in this split; left out)
                weighted += w * auc
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
