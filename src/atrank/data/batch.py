"""The typed batch that crosses every module boundary (data -> model -> system).

Shape glossary: B batch size, T history window (padded; most recent behaviour last).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


def _move(
    d: dict[str, Tensor], device: torch.device | str, non_blocking: bool
) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}


@dataclass
class Batch:
    """One batch of samples with their histories.

    Attributes:
        hist: coded object fields of the history, ``field -> (B, T)`` long; 0 where the
            behaviour's group lacks the field or the position is padding.
        hist_action: action index per history position, ``(B, T)`` long (0 = padding).
        hist_time: time-gap bucket + 1 per position, ``(B, T)`` long (0 = padding).
        hist_group: group index per position, ``(B, T)`` long.
        hist_mask: ``(B, T)`` bool, True at real behaviours.
        target: coded fields of the target object, ``field -> (B,)`` long (0 for fields of
            other groups).
        target_group: group index of the target, ``(B,)`` long.
        labels: ``task -> (B,)`` float 0/1 (value undefined where the mask is False).
        label_mask: ``task -> (B,)`` bool, True where the task's label exists.
        user: ``(B,)`` long user index, for per-user metrics (GAUC).
        prob: ``task -> (B,)`` float true probability (simulated data only), else empty.
    """

    hist: dict[str, Tensor]
    hist_action: Tensor
    hist_time: Tensor
    hist_group: Tensor
    hist_mask: Tensor
    target: dict[str, Tensor]
    target_group: Tensor
    labels: dict[str, Tensor]
    label_mask: dict[str, Tensor]
    user: Tensor
    prob: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Returns a copy of the batch on ``device``."""
        moved: dict[str, object] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                moved[f.name] = _move(v, device, non_blocking)
            else:
                moved[f.name] = v.to(device, non_blocking=non_blocking)
        return replace(self, **moved)  # type: ignore[arg-type]

    def pin_memory(self) -> Batch:
        """Returns a copy in pinned host memory (used by DataLoader(pin_memory=True))."""
        pinned: dict[str, object] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                pinned[f.name] = {k: t.pin_memory() for k, t in v.items()}
            else:
                pinned[f.name] = v.pin_memory()
        return replace(self, **pinned)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        """Number of samples B."""
        return int(self.user.shape[0])
