"""Per-task evaluation metrics: AUC, GAUC (per-user AUC), pair AUC (the paper's), log loss.

All are torchmetrics ``Metric`` objects, so under data parallelism their states are gathered
(``cat``) or summed over every process before ``compute``: the result is the metric over all
samples, never an average of per-process values.

Shape glossary: N samples accumulated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from atrank.config import METRIC_NAMES


def grouped_auc(
    preds: Tensor, target: Tensor, groups: Tensor, tie: float = 0.5, weighting: str = "samples"
) -> Tensor:
    """Mean of per-group AUCs; groups with only one class are left out.

    A group's AUC is the share of its (positive, negative) pairs where the positive scores
    higher, a tie counting ``tie``. GAUC: ``tie=0.5`` (Mann-Whitney), groups weighted by their
    number of samples. The paper's per-user "AUC" (``pair_auc``): ``tie=0.0`` (a tie is a
    failure), every group weighted equally.

    Args:
        preds: ``(N,)`` scores.
        target: ``(N,)`` 0/1 labels.
        groups: ``(N,)`` integer group (user) ids.
        tie: credit of a tied pair.
        weighting: ``"samples"`` or ``"equal"``.

    Returns:
        Scalar float64 tensor; NaN when no group has both classes.
    """
    if weighting not in ("samples", "equal"):
        raise ValueError(f"weighting must be 'samples' or 'equal', got {weighting!r}")
    preds, target, groups = preds.double(), target.long(), groups.long()
    # Order by (group, pred): sort by pred, then stable sort by group.
    order = torch.argsort(preds, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, p, y = groups[order], preds[order], target[order].double()
    _, g_inv, g_counts = torch.unique_consecutive(g, return_inverse=True, return_counts=True)
    # Runs of equal (group, pred): the tied scores.
    key_change = torch.ones_like(g, dtype=torch.bool)
    key_change[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    run_id = torch.cumsum(key_change.long(), 0) - 1  # (N,)
    neg = 1.0 - y
    neg_in_run = torch.zeros(int(run_id[-1]) + 1 if run_id.numel() else 0, dtype=torch.float64)
    neg_in_run.index_add_(0, run_id, neg)  # (R,)
    # Negatives strictly below each run within its group = negatives before the run start
    # minus negatives before the group start.
    neg_cum = torch.cumsum(neg, 0) - neg  # negatives before each position (global)
    first_of_run = torch.nonzero(key_change).squeeze(1)  # (R,)
    g_start = torch.cumsum(g_counts, 0) - g_counts  # (G,)
    below_run = neg_cum[first_of_run] - neg_cum[g_start][g_inv[first_of_run]]  # (R,)
    n_groups = g_counts.numel()
    credit = (below_run[run_id] + tie * neg_in_run[run_id]) * y  # (N,), positives only
    wins = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g_inv, credit)
    n_pos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g_inv, y)
    n_neg = g_counts.double() - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    auc = wins[valid] / (n_pos[valid] * n_neg[valid])
    w = g_counts[valid].double() if weighting == "samples" else torch.ones_like(auc)
    return (auc * w).sum() / w.sum()


class GroupAUC(Metric):
    """Per-user AUC averaged over users (see :func:`grouped_auc`).

    The defaults give GAUC (ties half, users weighted by their number of samples);
    ``tie=0.0, weighting="equal"`` gives the paper's ``pair_auc``.
    """

    full_state_update = False
    higher_is_better = True
    preds: list[Tensor]
    target: list[Tensor]
    groups: list[Tensor]

    def __init__(self, tie: float = 0.5, weighting: str = "samples") -> None:
        super().__init__()
        self.tie, self.weighting = tie, weighting
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
            tie=self.tie,
            weighting=self.weighting,
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

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """``preds``: ``(N,)`` logits; ``target``: ``(N,)`` 0/1 labels."""
        loss = F.binary_cross_entropy_with_logits(preds.float(), target.float(), reduction="sum")
        self.total += loss.double()
        self.count += target.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class LogitAUROC(GroupAUC):
    """Exact ROC AUC of the logits themselves (Mann-Whitney, ties half, in float64): the
    AUC of one group.

    Ranking by the logits, not by ``sigmoid(logits)`` in float32, which saturates large logits
    into ties (two logits 17 and 18 are both 1.0 in float32); and every batch alike (the
    torchmetrics AUROC takes a batch whose values all lie in ``[0, 1]`` as probabilities).
    """

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds, target, torch.zeros_like(target))


#: How each metric name is computed (all take logits).
_FACTORIES: dict[str, Callable[[], Metric]] = {
    "auc": LogitAUROC,
    "gauc": GroupAUC,
    "pair_auc": lambda: GroupAUC(tie=0.0, weighting="equal"),
    "logloss": LogLoss,
}


def task_metrics(names: Sequence[str] = METRIC_NAMES, prefix: str = "") -> MetricCollection:
    """The evaluation metrics of one task, as one collection.

    Update it with ``preds`` (logits ``(N,)``), ``target`` (0/1 ``(N,)``) and ``groups``
    (user ids ``(N,)``) of the task's labelled rows; each metric takes the arguments it needs.

    Args:
        names: metric names, in :data:`atrank.config.METRIC_NAMES` (checked by the task's
            config); computed in that order.
        prefix: key prefix of the computed values, e.g. ``"val/click/"``.

    Returns:
        The collection; ``compute()`` gives ``{prefix + name: value}``.
    """
    ordered = [n for n in METRIC_NAMES if n in names]
    # No compute groups: the metrics' inputs differ (probabilities, logits, groups).
    return MetricCollection(
        {n: _FACTORIES[n]() for n in ordered}, prefix=prefix, compute_groups=False
    )
