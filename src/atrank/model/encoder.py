"""History encoders: one interface, so that ATRank and its baselines plug in alike.

Shape glossary:
    B  batch size
    T  history length (padded)
    d  d_model, hidden size
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atrank.model.attention import MultiHeadAttentionBlock, ScoreKind


class HistoryEncoder(nn.Module):
    """Base of every history encoder.

    Attributes:
        uses_history: False for history-blind encoders; the model then skips embedding the
            history and the task heads attend over an empty memory.
    """

    uses_history: bool = True

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encodes a padded history.

        Args:
            x: ``(B, T, d)`` embedded behaviours (zero at padding).
            mask: ``(B, T)`` bool, True at real behaviours.

        Returns:
            ``(B, T, d)`` encoded behaviours (the task heads' memory).
        """
        raise NotImplementedError


class ATRankEncoder(HistoryEncoder):
    """Self-attention blocks over the whole mixed history, with one padding mask.

    Args:
        d_model: hidden size ``d``.
        n_heads: number of heads; must divide ``d_model``.
        ffn_dim: inner width of each block's feed-forward network.
        n_blocks: number of stacked blocks (1 in ATRank).
        dropout: dropout on the attention weights.
        score: ``"dot"`` or ``"bilinear"`` attention scores.
    """

    def __init__(
        self,
        d_model: int = 64,
        n_heads: int = 4,
        ffn_dim: int = 16,
        n_blocks: int = 1,
        dropout: float = 0.0,
        score: ScoreKind = "dot",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MultiHeadAttentionBlock(d_model, n_heads, ffn_dim, dropout, score)
            for _ in range(n_blocks)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """See :meth:`HistoryEncoder.forward`; padded positions of the output are zero."""
        keep = mask.unsqueeze(-1)  # (B, T, 1)
        for block in self.blocks:
            x = block(x, x, key_mask=mask, query_mask=mask) * keep  # (B, T, d)
        return x


class NoHistoryEncoder(HistoryEncoder):
    """The history-blind baseline: the model never embeds nor encodes the history."""

    uses_history = False

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Returns zeros ``(B, T, d)``; not called by the model (``uses_history`` is False)."""
        return torch.zeros_like(x)


@dataclass(frozen=True)
class EncoderArgs:
    """The arguments every encoder factory receives (each uses what it needs)."""

    d_model: int
    n_heads: int
    ffn_dim: int
    n_blocks: int
    dropout: float
    score: ScoreKind


EncoderFactory = Callable[[EncoderArgs], HistoryEncoder]

#: Encoders by name, as ``build_model(encoder=...)`` takes them; a baseline adds one entry.
ENCODERS: dict[str, EncoderFactory] = {
    "atrank": lambda a: ATRankEncoder(
        a.d_model, a.n_heads, a.ffn_dim, a.n_blocks, a.dropout, a.score
    ),
    "none": lambda a: NoHistoryEncoder(),
}
