"""The ATRank paper's baseline encoders, plus target attention, DIN and mean pooling.

Every encoder here plugs into the same embedding and task heads as ATRank (see
:class:`atrank.model.encoder.HistoryEncoder`): it maps the embedded history to a memory and
its mask, and the heads' target attention reads that memory (DIN's heads read it by DIN's
activation unit instead: ``head_kind = "din"``). Pooled encoders return one slot
(``T' = 1``), masked out when the history is empty. Importing this module registers them in
:data:`atrank.model.encoder.ENCODERS`.

Shape glossary:
    B   batch size
    T   history length (padded; real behaviours are contiguous, most recent last)
    T'  memory length (1 for pooled encoders, T otherwise)
    d   d_model, hidden size
    H   LSTM hidden size per direction (= d)
    C   convolution channels per width (= d)
    K   number of convolution widths
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from atrank.data.batch import Batch
from atrank.model.encoder import ENCODERS, EncoderFactory, HeadKind, HistoryEncoder


def left_align(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Moves each row's real behaviours to the front, in their order, and zeroes the rest.

    Args:
        x: ``(B, T, d)`` embedded history.
        mask: ``(B, T)`` bool, True at real behaviours (left or right padding, or any mix).

    Returns:
        ``(aligned, lengths)``: ``(B, T, d)`` with row ``b``'s behaviours at ``0..lengths[b]-1``
        and exact zeros after them, and ``(B,)`` long lengths.
    """
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # (B, T) real first
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding content must not leak
    aligned = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))  # (B, T, d)
    return aligned, mask.sum(dim=1)


def _prefix_mask(lengths: Tensor, size: int) -> Tensor:
    """``(B, size)`` bool, True at positions ``< lengths[b]``."""
    return torch.arange(size, device=lengths.device) < lengths.unsqueeze(1)


class IdentityEncoder(HistoryEncoder):
    """Target attention over the raw behaviours: ATRank without self-attention.

    The memory is the embedded history itself; the heads' target attention reads it
    (``target_att``). Not DIN: that is :class:`DINEncoder`.
    """

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """See :meth:`HistoryEncoder.forward`; returns ``(x, mask)`` unchanged (``T' = T``)."""
        return x, mask


class DINEncoder(IdentityEncoder):
    """DIN (Zhou et al., 2018): the raw behaviours, read by DIN's local activation unit.

    The memory is the embedded history, as for ``target_att``; the task heads are
    :class:`atrank.model.din.DINHead` (unnormalised activation-unit weights instead of
    softmax attention), behind the same scorer and L2 term.
    """

    head_kind: ClassVar[HeadKind] = "din"


class MeanPoolEncoder(HistoryEncoder):
    """Mean of the real behaviour vectors, one memory slot (masked out for an empty history)."""

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """See :meth:`HistoryEncoder.forward`; ``T' = 1``."""
        count = mask.sum(dim=1, keepdim=True)  # (B, 1)
        total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)  # (B, d)
        mean = total / count.clamp(min=1).to(x.dtype)  # (B, d); 0 for an empty history
        return mean.unsqueeze(1), count > 0  # (B, 1, d), (B, 1)


class UserEmbeddingEncoder(HistoryEncoder):
    """BPR-MF's model, trained here with the pointwise BCE loss, not BPR's pairwise one.

    A free user vector is the memory; the behaviour history is not read. Through the shared
    heads the score is ``<u, t> + bias[t]`` with ``u`` the head's attention block applied to
    the user vector (one always-valid slot), so MF here differs from the paper's BPR-MF by
    that block and by the loss: like every encoder it is trained with the masked sigmoid
    cross-entropy of :func:`atrank.model.loss.multitask_loss` on labelled (target, label)
    rows, so its results are those of a pointwise MF, not of BPR's ranking loss.

    Args:
        n_users: rows of the user table (``batch.user`` indexes it, from 0).
        d_model: hidden size ``d``.

    Raises:
        ValueError: ``n_users`` < 1.
    """

    uses_history = False

    def __init__(self, n_users: int, d_model: int) -> None:
        super().__init__()
        if n_users < 1:
            raise ValueError(
                f"n_users: the bpr encoder needs the number of users (meta.json counts.users) "
                f">= 1, got {n_users}"
            )
        self.users = nn.Embedding(n_users, d_model)

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """See :meth:`HistoryEncoder.forward`; ignores ``x``, ``T' = 1``."""
        u = self.users(batch.user).unsqueeze(1)  # (B, 1, d)
        return u, torch.ones(u.shape[:2], dtype=torch.bool, device=u.device)  # (B, 1)


class BiLSTMEncoder(HistoryEncoder):
    """Bidirectional LSTM over the real behaviours (packed, so padding never enters it).

    Args:
        d_model: hidden size ``d`` (also the LSTM's hidden size per direction).
        attend: False: one slot, the concatenated final forward/backward states projected
            to ``d`` (Bi-LSTM baseline); True: every step's output projected to ``d``
            (``T' = T``), read by the heads' attention (Bi-LSTM + attention baseline).
    """

    def __init__(self, d_model: int, attend: bool = False) -> None:
        super().__init__()
        self.attend = attend
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """See :meth:`HistoryEncoder.forward`; ``T' = T`` if ``attend`` else 1.

        The memory keeps the behaviours' order but not their positions: real steps come
        first (the heads' attention has no positions, so this changes nothing).
        """
        B, T, _ = x.shape  # noqa: N806 (shape names)
        aligned, lengths = left_align(x, mask)  # (B, T, d), (B,)
        # An empty history runs one zero step (packing refuses length 0); its slot is masked.
        packed = pack_padded_sequence(
            aligned, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, (h_n, _) = self.lstm(packed)  # h_n: (2, B, H), forward then backward
        if self.attend:
            steps, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, 2H)
            return self.proj(steps), _prefix_mask(lengths, T)  # (B, T, d), (B, T)
        final = torch.cat([h_n[0], h_n[1]], dim=-1)  # (B, 2H)
        return self.proj(final).unsqueeze(1), (lengths > 0).unsqueeze(1)  # (B, 1, d), (B, 1)


class CNNEncoder(HistoryEncoder):
    """Text-CNN: convolutions of several widths, ReLU, max over time, projection to ``d``.

    A width-``w`` window starts at every real behaviour and reads up to ``w`` behaviours
    from there (zeros past the most recent one), so even a history shorter than ``w`` has
    windows, and padding never enters a window.

    Args:
        d_model: hidden size ``d`` (also the channels per width).
        widths: convolution widths.
    """

    def __init__(self, d_model: int, widths: Sequence[int] = (2, 3, 4)) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be >= 1, got {tuple(widths)}")
        self.widths = tuple(widths)
        self.convs = nn.ModuleList(nn.Conv1d(d_model, d_model, w) for w in self.widths)
        self.proj = nn.Linear(len(self.widths) * d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """See :meth:`HistoryEncoder.forward`; ``T' = 1``."""
        T = x.shape[1]  # noqa: N806 (shape names)
        aligned, lengths = left_align(x, mask)  # (B, T, d), (B,)
        channels = aligned.transpose(1, 2)  # (B, d, T)
        starts = _prefix_mask(lengths, T).unsqueeze(1)  # (B, 1, T), windows at real steps
        pooled = []
        for w, conv in zip(self.widths, self.convs, strict=True):
            y = F.relu(conv(F.pad(channels, (0, w - 1))))  # (B, C, T)
            y = y.masked_fill(~starts, float("-inf"))
            pooled.append(y.max(dim=-1).values)  # (B, C); -inf for an empty history
        has = lengths > 0  # (B,)
        feats = torch.cat(pooled, dim=-1)  # (B, K*C)
        feats = torch.where(has.unsqueeze(1), feats, torch.zeros_like(feats))  # finite
        return self.proj(feats).unsqueeze(1), has.unsqueeze(1)  # (B, 1, d), (B, 1)


BASELINES: dict[str, EncoderFactory] = {
    "mean": lambda c, s: MeanPoolEncoder(),
    "bpr": lambda c, s: UserEmbeddingEncoder(s.n_users, c.d_model),
    "bilstm": lambda c, s: BiLSTMEncoder(c.d_model, attend=False),
    "bilstm_att": lambda c, s: BiLSTMEncoder(c.d_model, attend=True),
    "cnn": lambda c, s: CNNEncoder(c.d_model),
    "target_att": lambda c, s: IdentityEncoder(),
    "din": lambda c, s: DINEncoder(),
}


def _register(factories: dict[str, EncoderFactory]) -> None:
    clash = sorted(set(factories) & set(ENCODERS))
    if clash:
        raise RuntimeError(f"encoder names registered twice: {clash}")
    ENCODERS.update(factories)


_register(BASELINES)

__all__ = [
    "BASELINES",
    "BiLSTMEncoder",
    "CNNEncoder",
    "DINEncoder",
    "IdentityEncoder",
    "MeanPoolEncoder",
    "UserEmbeddingEncoder",
    "left_align",
]
