"""What the report needs from each evaluated sample, gathered batch by batch and over ranks.

Shape glossary: B batch size, T history window, N labelled samples of one task and stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from atrank.data.batch import Batch
from data_prep import contract as C


@dataclass
class TaskOutputs:
    """One task's labelled samples of one stage.

    Attributes:
        logits: ``(N,)`` float32 model logits.
        labels: ``(N,)`` int64 0/1.
        hist_len: ``(N,)`` int64 behaviours in the sample's history window.
        in_hist: ``(N,)`` bool, the target object appears in the history window.
        prob: ``(N,)`` float32 oracle probability (NaN where unknown), or None.
    """

    logits: Tensor
    labels: Tensor
    hist_len: Tensor
    in_hist: Tensor
    prob: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: Tensor) -> TaskOutputs:
        """The samples where ``mask`` (``(N,)`` bool) is True."""
        return TaskOutputs(
            self.logits[mask],
            self.labels[mask],
            self.hist_len[mask],
            self.in_hist[mask],
            None if self.prob is None else self.prob[mask],
        )


def same_object(batch: Batch, id_field: str) -> Tensor:
    """``(B, T)`` bool: the history position holds the row's target object.

    Same group as the target and the same id in ``id_field``; padding and out-of-vocabulary
    ids never match.
    """
    target_id = batch.target[id_field].unsqueeze(1)  # (B, 1)
    same = (batch.hist[id_field] == target_id) & batch.hist_mask  # (B, T)
    same &= batch.hist_group == batch.target_group.unsqueeze(1)
    return same & (target_id >= C.FIRST_INDEX)


def target_in_history(batch: Batch, id_fields: dict[int, str]) -> Tensor:
    """Whether each sample's target object is among its history's behaviours.

    The target matches a history position of the same group with the same id (the group's
    first field): :func:`same_object`.

    Args:
        batch: the batch.
        id_fields: group index -> the group's id field (``meta.groups[g].fields[0]``).

    Returns:
        ``(B,)`` bool.
    """
    out = torch.zeros(batch.size, dtype=torch.bool, device=batch.user.device)
    for g, name in id_fields.items():
        if name not in batch.target or name not in batch.hist:
            continue
        out |= (batch.target_group == g) & same_object(batch, name).any(dim=1)
    return out


class StageCollector:
    """Accumulates :class:`TaskOutputs` of one evaluation stage, on the CPU.

    Args:
        tasks: the tasks evaluated (every process collects the same ones).
        id_fields: group index -> id field, for :func:`target_in_history`.
    """

    def __init__(self, tasks: list[str], id_fields: dict[int, str]) -> None:
        self.tasks = sorted(tasks)
        self.id_fields = id_fields
        self.parts: dict[str, list[tuple[Tensor, ...]]] = {}

    def reset(self) -> None:
        """Forgets every sample."""
        self.parts = {}

    def add(self, logits: dict[str, Tensor], batch: Batch) -> None:
        """Adds one evaluated batch.

        Args:
            logits: task -> ``(B,)`` logits of the batch (what the system's eval step returns).
            batch: the batch.
        """
        hist_len = batch.hist_mask.sum(dim=1)  # (B,)
        in_hist = target_in_history(batch, self.id_fields)
        for task, lg in logits.items():
            m = batch.label_mask[task]
            prob = batch.prob.get(task)
            nan = torch.full_like(lg, float("nan"), dtype=torch.float32)
            part = (
                lg[m].detach().float(),
                batch.labels[task][m].long(),
                hist_len[m].long(),
                in_hist[m],
                (prob.float() if prob is not None else nan)[m],
            )
            self.parts.setdefault(task, []).append(tuple(t.cpu() for t in part))

    def outputs(self, device: torch.device | None = None) -> dict[str, TaskOutputs]:
        """Every task's samples, gathered from every process when distributed.

        Every process must call it (a collective); each gets the whole data.

        Args:
            device: where the processes exchange tensors (their module's device: NCCL needs
                CUDA tensors); unused in a single process.
        """
        out: dict[str, TaskOutputs] = {}
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        for task in self.tasks:
            parts = self.parts.get(task) or [_EMPTY]  # (a process may have had no batch)
            cols = [torch.cat(c) for c in zip(*parts, strict=True)]
            if distributed:
                cols = [_gather(c, device) for c in cols]
            logits, labels, hist_len, in_hist, prob = cols
            has_prob = bool((~torch.isnan(prob)).any())
            out[task] = TaskOutputs(logits, labels, hist_len, in_hist, prob if has_prob else None)
        return out


#: The columns of a process that evaluated no sample (dtypes as :meth:`StageCollector.add`).
_EMPTY = (
    torch.zeros(0),
    torch.zeros(0, dtype=torch.long),
    torch.zeros(0, dtype=torch.long),
    torch.zeros(0, dtype=torch.bool),
    torch.zeros(0),
)


def _gather(t: Tensor, device: torch.device | None) -> Tensor:
    """``t`` of every process, concatenated (sizes may differ; bool travels as uint8)."""
    sent = t.to(torch.uint8) if t.dtype == torch.bool else t
    parts = gather_all_tensors(sent.to(device) if device is not None else sent)
    return torch.cat([p.cpu() for p in parts]).to(t.dtype)
