"""Task heads: a user vector read from the encoded history, then a score.

:class:`ScoringHead` holds what every head shares (the scorer after the user vector and the
L2 term); :class:`TaskHead` reads the history by vanilla (target) attention, as ATRank.
DIN's head (:class:`atrank.model.din.DINHead`) reads it by DIN's local activation unit.

Shape glossary:
    B  batch size
    T  history length (padded; 0 for a history-blind model)
    d  d_model, hidden size
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from atrank.model.attention import MultiHeadAttentionBlock
from atrank.model.config import ScoreKind, ScorerKind


class ScoringHead(nn.Module):
    """Base of the task heads: user vector ``u`` (a subclass reads it) -> logit, L2 term.

    Score ``"dot"``: ``<u, t> + bias[target id]`` (the paper); ``"mlp"``: an MLP over
    ``[u, t, u * t]``. A subclass builds its reader of the history first, then calls
    :meth:`_add_scorer` (the order fixes the parameters' initialisation order), and
    implements :meth:`_user_vectors`.
    """

    bias: nn.Embedding | None
    mlp: nn.Sequential | None

    def _add_scorer(
        self, d_model: int, n_targets: int, scorer: ScorerKind, mlp_hidden: Sequence[int]
    ) -> None:
        # The bias table starts at zero (set by ATRankModel._init_weights).
        self.bias = nn.Embedding(n_targets, 1) if scorer == "dot" else None
        self.mlp = _mlp(3 * d_model, mlp_hidden) if scorer == "mlp" else None

    def forward(
        self,
        target: Tensor,
        memory: Tensor,
        memory_mask: Tensor,
        target_ids: Tensor,
        owner: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Scores the targets against the users' encoded histories.

        Args:
            target: ``(B, d)`` target vectors.
            memory: ``(U, T, d)`` encoded history.
            memory_mask: ``(U, T)`` bool, True at real behaviours.
            target_ids: ``(B,)`` long, the targets' id (key of the bias table).
            owner: ``(B,)`` long, the memory row of each target (every target of a row is
                scored against it); None means ``U = B``, row ``i`` for target ``i``.

        Returns:
            ``(logits, l2)``, both ``(B,)``: the logits and ``||u||^2 + ||t||^2`` per row.
        """
        u = self._user_vectors(target, memory, memory_mask, owner)  # (B, d)
        if self.mlp is not None:
            logits = self.mlp(torch.cat([u, target, u * target], dim=-1)).squeeze(-1)  # (B,)
        else:
            assert self.bias is not None
            logits = (u * target).sum(-1) + self.bias(target_ids).squeeze(-1)  # (B,)
        l2 = u.pow(2).sum(-1) + target.pow(2).sum(-1)  # (B,)
        return logits, l2

    def _user_vectors(
        self, target: Tensor, memory: Tensor, memory_mask: Tensor, owner: Tensor | None
    ) -> Tensor:
        """``(B, d)`` user vectors, one per target (arguments as :meth:`forward`)."""
        raise NotImplementedError


class TaskHead(ScoringHead):
    """One task's head: target attention -> user vector ``u`` -> logit.

    The target vector (the query, ``(B, 1, d)``) attends over the encoded history with the
    history padding mask, through the same block type as the encoder; the output is the user
    vector ``u`` for this target, scored as :class:`ScoringHead` says. With ``owner``, the
    keys and values are projected once per memory row.

    Args:
        d_model: hidden size ``d``.
        n_heads: number of attention heads.
        ffn_dim: inner width of the attention block's feed-forward network.
        n_targets: rows of the bias table (vocabulary size of the target group's id field).
        dropout: dropout on the attention weights.
        score: attention score, ``"dot"`` or ``"bilinear"``.
        scorer: ``"dot"`` or ``"mlp"``.
        mlp_hidden: hidden widths of the MLP scorer.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn_dim: int,
        n_targets: int,
        dropout: float = 0.0,
        score: ScoreKind = "dot",
        scorer: ScorerKind = "dot",
        mlp_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttentionBlock(d_model, n_heads, ffn_dim, dropout, score)
        self._add_scorer(d_model, n_targets, scorer, mlp_hidden)

    def _user_vectors(
        self, target: Tensor, memory: Tensor, memory_mask: Tensor, owner: Tensor | None
    ) -> Tensor:
        """``(B, d)`` attended user vectors, one per target.

        With ``owner``, the targets of one memory row are its queries: laid out as
        ``(U, M, d)`` (M the most targets of one row), they attend in one call, every row's
        keys and values projected once. The rows are independent, so this equals attending
        one target at a time. When padding would more than double the work (very uneven
        rows), each target reads its row's projected keys and values instead.
        """
        if owner is None:
            return self.attention(target.unsqueeze(1), memory, memory_mask).squeeze(1)
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            # An exported graph cannot take the data-dependent layout below: gathered.
            return self.attention(target.unsqueeze(1), memory, memory_mask, owner=owner).squeeze(1)
        B, d = target.shape  # noqa: N806 (shape names)
        U = memory.shape[0]  # noqa: N806 (shape names)
        counts = torch.bincount(owner, minlength=U)  # (U,)
        M = int(counts.max()) if B else 0  # noqa: N806 (shape names)
        if U * M > 2 * B:
            return self.attention(target.unsqueeze(1), memory, memory_mask, owner=owner).squeeze(1)
        order = torch.argsort(owner, stable=True)  # (B,) targets grouped by row
        rows = owner[order]  # (B,)
        slot = torch.arange(B, device=owner.device) - (torch.cumsum(counts, 0) - counts)[rows]
        queries = target.new_zeros(U, M, d)  # (U, M, d)
        queries[rows, slot] = target[order]
        valid = torch.zeros(U, M, dtype=torch.bool, device=target.device)  # (U, M)
        valid[rows, slot] = True
        attended = self.attention(queries, memory, memory_mask, query_mask=valid)  # (U, M, d)
        u = torch.empty_like(target)  # (B, d)
        u[order] = attended[rows, slot]
        return u


def _mlp(d_in: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, 1))
    return nn.Sequential(*layers)
