"""Losses on logits: masked sigmoid cross-entropy per task, summed over tasks by name.

Shape glossary:
    B  batch size
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_bce_with_logits(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean sigmoid cross-entropy over the rows where ``mask`` is True.

    Masked-out rows contribute nothing, neither to the loss nor to the gradient, whatever
    their labels or logits hold (NaN included). With no row kept the loss is exactly 0.

    Args:
        logits: ``(B,)`` logits.
        labels: ``(B,)`` 0/1 labels (any dtype; ignored where the mask is False).
        mask: ``(B,)`` bool, True where the label exists.

    Returns:
        Scalar loss.
    """
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    # where(), not multiplication: 0 * NaN is NaN, and its gradient would be too.
    safe_logits = torch.where(mask, logits, zero)
    safe_labels = torch.where(mask, labels.to(logits.dtype), zero)
    per_row = F.binary_cross_entropy_with_logits(safe_logits, safe_labels, reduction="none")
    kept = mask.sum().clamp_min(1).to(logits.dtype)
    return torch.where(mask, per_row, zero).sum() / kept


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` ``(B,)`` over rows where ``mask`` ``(B,)`` is True; 0 if none."""
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    kept = mask.sum().clamp_min(1).to(values.dtype)
    return torch.where(mask, values, zero).sum() / kept


def multitask_loss(
    logits: dict[str, Tensor],
    labels: dict[str, Tensor],
    masks: dict[str, Tensor],
    weights: dict[str, float],
    l2: dict[str, Tensor] | None = None,
    l2_weight: float = 0.0,
    log_vars: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the tasks' masked losses, tasks matched by name.

    ``total = sum_task weights[task] * (bce[task] + l2_weight * mean_kept(l2[task]))``, where
    ``mean_kept`` averages the per-row L2 term over the task's labelled rows. (The official
    ATRank code adds ``rate * sum_rows(||u||^2 + ||t||^2) / 2`` instead: a batch-size
    dependent scale; ``l2_weight = rate * B / 2`` reproduces it at batch size B.)

    Args:
        logits: ``task -> (B,)`` logits; defines the tasks.
        labels: ``task -> (B,)`` labels.
        masks: ``task -> (B,)`` bool label masks.
        weights: ``task -> weight``; entries for tasks absent from ``logits`` are ignored.
        l2: ``task -> (B,)`` per-row L2 terms (``ModelOutput.l2``), or None.
        l2_weight: weight of the L2 term; 0 skips it.
        log_vars: learned ``task -> log sigma^2`` for uncertainty weighting (Kendall, Gal and
            Cipolla, 2018): a task's cross-entropy becomes ``exp(-s) * bce + s / 2``, so noisy
            tasks are weighted down and ``s`` cannot run off to infinity. None: fixed weights.

    Returns:
        ``(total, per_task)``: the scalar total and ``task -> scalar`` cross-entropy (without
        weights or L2), for logging.

    Raises:
        KeyError: naming the task when its label, mask, weight (or L2 term) is missing.
    """
    if not logits:
        raise ValueError("logits: no task to compute a loss for")
    per_task: dict[str, Tensor] = {}
    total: Tensor | None = None
    for task, task_logits in logits.items():
        for name, table in (("labels", labels), ("masks", masks), ("weights", weights)):
            if task not in table:
                raise KeyError(f"{name} has no entry for task {task!r}")
        per_task[task] = masked_bce_with_logits(task_logits, labels[task], masks[task])
        task_loss = per_task[task]
        if log_vars is not None:
            if task not in log_vars:
                raise KeyError(f"log_vars has no entry for task {task!r}")
            s = log_vars[task]
            task_loss = torch.exp(-s) * task_loss + 0.5 * s
        if l2 is not None and l2_weight != 0.0:
            if task not in l2:
                raise KeyError(f"l2 has no entry for task {task!r}")
            task_loss = task_loss + l2_weight * masked_mean(l2[task], masks[task])
        weighted = weights[task] * task_loss
        total = weighted if total is None else total + weighted
    assert total is not None
    return total, per_task
