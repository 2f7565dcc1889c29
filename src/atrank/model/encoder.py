"""History encoders: one interface, so that ATRank and its baselines plug in alike.

Shape glossary:
    B   batch size
    T   history length (padded)
    T'  memory length, as the encoder chooses (T, 1 for pooled encoders, 0 for none)
    d   d_model, hidden size
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model.attention import MultiHeadAttentionBlock
from atrank.model.config import DataShape, ModelConfig, ScoreKind

#: How the task heads read an encoder's memory: ``attention`` (target attention,
#: :class:`atrank.model.heads.TaskHead`) or ``din`` (DIN's local activation unit,
#: :class:`atrank.model.din.DINHead`).
HeadKind = Literal["attention", "din"]


class HistoryEncoder(nn.Module):
    """Base of every history encoder.

    An encoder turns the embedded history into the memory that every task head's target
    attention reads, with the memory's own padding mask (a pooled encoder returns one slot,
    masked out when there is nothing to pool). Padded positions of ``x`` must never change
    the unmasked part of the memory.

    Attributes:
        uses_history: False for encoders that do not read the behaviour history; the model
            then skips embedding it and passes an empty ``x`` (``T = 0``). The batch is still
            passed (e.g. for ``batch.user``).
        head_kind: how the task heads read the memory (:data:`HeadKind`); the encoder's
            name chooses it, so ``model.encoder`` alone names the model.
    """

    uses_history: bool = True
    head_kind: ClassVar[HeadKind] = "attention"

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Encodes a padded history.

        Args:
            x: ``(B, T, d)`` embedded behaviours (zero at padding).
            mask: ``(B, T)`` bool, True at real behaviours.
            batch: the batch, for encoders that need more than the history (user ids).

        Returns:
            ``(memory, memory_mask)``: ``(B, T', d)`` and ``(B, T')`` bool, True at the slots
            the task heads may attend to.
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
        d_model: int,
        n_heads: int,
        ffn_dim: int,
        n_blocks: int = 1,
        dropout: float = 0.0,
        score: ScoreKind = "dot",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MultiHeadAttentionBlock(d_model, n_heads, ffn_dim, dropout, score)
            for _ in range(n_blocks)
        )

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """See :meth:`HistoryEncoder.forward`; ``T' = T``, padded positions are zero."""
        keep = mask.unsqueeze(-1)  # (B, T, 1)
        for block in self.blocks:
            x = block(x, x, key_mask=mask, query_mask=mask) * keep  # (B, T, d)
        return x, mask


class NoHistoryEncoder(HistoryEncoder):
    """The history-blind baseline: the model never embeds nor encodes the history."""

    uses_history = False

    def forward(self, x: Tensor, mask: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Returns the empty history it gets (``T = 0``), so the heads see the target alone."""
        return x[:, :0], mask[:, :0]


#: Builds an encoder from the model's configuration and the data's shape (each encoder
#: reads what it needs, e.g. ``bpr`` the number of users).
EncoderFactory = Callable[[ModelConfig, DataShape], HistoryEncoder]

#: Encoders by name, as ``ModelConfig.encoder`` names them; a baseline adds one entry
#: (the paper's baselines register themselves in :mod:`atrank.model.baselines`).
ENCODERS: dict[str, EncoderFactory] = {
    "atrank": lambda c, s: ATRankEncoder(
        c.d_model,
        c.n_heads,
        c.ffn,
        c.n_blocks,
        c.dropout,
        c.score,  # type: ignore[arg-type]
    ),
    "none": lambda c, s: NoHistoryEncoder(),
}
