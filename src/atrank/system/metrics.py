"""Per-task evaluation metrics: AUC, GAUC (per-user AUC), log loss.

All are torchmetrics ``Metric`` objects, so under data parallelism their states are gathered
(``cat``) or summed over every process before ``compute``: the result is the metric over all
samples, never an average of per-process values.

Shape glossary: N samples accumulated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat


def grouped_auc(preds: Tensor, target: Tensor, groups: Tensor) -> Tensor:
    """Sample-weighted mean of per-group AUCs; groups with only one class are left out.

    Ties share their average rank (Mann-Whitney), so a tie counts one half.

    Args:
        preds: ``(N,)`` scores.
        target: ``(N,)`` 0/1 labels.
        groups: ``(N,)`` integer group (user) ids.

    Returns:
        Scalar tensor; NaN when no group has both classes.
    """
    preds, target, groups = preds.double(), target.long(), groups.long()
    # Order by (group, pred): sort by pred, then stable sort by group.
    order = torch.argsort(preds, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, p, y = groups[order], preds[order], target[order]
    _, g_inv, g_counts = torch.unique_consecutive(g, return_inverse=True, return_counts=True)
    g_start = torch.cumsum(g_counts, 0) - g_counts  # (G,)
    # Average rank within each run of equal (group, pred).
    key_change = torch.ones_like(g, dtype=torch.bool)
    key_change[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    run_id = torch.cumsum(key_change.long(), 0) - 1  # (N,)
    run_counts = torch.bincount(run_id)
    run_start = torch.cumsum(run_counts, 0) - run_counts  # global position of each run
    pos_in_group = run_start[run_id] - g_start[g_inv]  # 0-based start of the run in its group
    rank = pos_in_group.double() + (run_counts[run_id].double() + 1) / 2  # 1-based average
    n_groups = g_counts.numel()
    n_pos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g_inv, y.double())
    n_tot = g_counts.double()
    n_neg = n_tot - n_pos
    rank_pos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g_inv, rank * y)
    valid = (n_pos > 0) & (n_neg > 0)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    auc = (rank_pos[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    w = n_tot[valid]
    return (auc * w).sum() / w.sum()


class GroupAUC(Metric):
    """GAUC: per-user AUC averaged with each user weighted by its number of samples."""

    full_state_update = False
    higher_is_better = True
    preds: list[Tensor]
    target: list[Tensor]
    groups: list[Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:  # type: ignore[override]
        self.preds.append(preds.detach().float())
        self.target.append(target.detach().long())
        self.groups.append(groups.detach().long())

    def compute(self) -> Tensor:
        return grouped_auc(
            dim_zero_cat(self.preds),
            dim_zero_cat(self.target),
            dim_zero_cat(self.groups),
        ).float()


class LogLoss(Metric):
    """Mean binary cross-entropy of logits (log loss)."""

    full_state_update = False
    higher_is_better = False
    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="sum")
        self.total += loss.double()
        self.count += target.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class TaskMetrics(nn.Module):
    """AUC, GAUC and log loss of one task, updated only on rows where the task's label exists."""

    def __init__(self) -> None:
        super().__init__()
        self.auc = BinaryAUROC()
        self.gauc = GroupAUC()
        self.logloss = LogLoss()

    def update(self, logits: Tensor, labels: Tensor, mask: Tensor, users: Tensor) -> None:
        """Adds a batch.

        Args:
            logits: ``(B,)``.
            labels: ``(B,)`` 0/1.
            mask: ``(B,)`` bool, rows to count.
            users: ``(B,)`` user ids.
        """
        logits, labels, users = logits[mask].float(), labels[mask].long(), users[mask]
        self.auc.update(torch.sigmoid(logits), labels)
        self.gauc.update(logits, labels, users)
        self.logloss.update(logits, labels)

    def compute(self) -> dict[str, Tensor]:
        """Returns ``{"auc", "gauc", "logloss"}``."""
        return {
            "auc": self.auc.compute(),
            "gauc": self.gauc.compute(),
            "logloss": self.logloss.compute(),
        }

    def reset(self) -> None:
        """Clears the accumulated state."""
        self.auc.reset()
        self.gauc.reset()
        self.logloss.reset()
