"""ATRank's multi-head attention block (self-attention and vanilla/target attention).

Shape glossary:
    B   batch size
    Tq  query length (the history T for self-attention, 1 for target attention)
    Tk  key/value length (the history T)
    d   d_model, hidden size
    nh  number of heads (the paper's "latent semantic spaces")
    hs  head size, d // nh
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atrank.model.config import ScoreKind


class MultiHeadAttentionBlock(nn.Module):
    """Multi-head attention, residual, LayerNorm, then feed-forward, residual, LayerNorm.

    As the official ATRank code: ``Q, K, V = ReLU(Linear(x))``; scores are scaled dot products
    per head (or, with ``score="bilinear"``, ``q^T W_h k`` scaled alike, ``W_h`` starting at the
    identity); padded keys get exactly zero weight; padded query rows are zeroed; dropout on
    the attention weights; no output projection. A query row with no valid key attends to
    nothing: its attended vector is exactly zero, so the block reduces to
    ``LN(q) -> FFN -> LN`` for it.

    Args:
        d_model: hidden size ``d``.
        n_heads: number of heads; must divide ``d_model``.
        ffn_dim: inner width of the feed-forward network.
        dropout: dropout probability on the attention weights.
        score: ``"dot"`` (scaled dot product, official code) or ``"bilinear"`` (paper text).
        eps: LayerNorm epsilon (1e-8 in the official code).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        score: ScoreKind = "dot",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        eye = torch.eye(self.head_dim).expand(n_heads, -1, -1)  # (nh, hs, hs)
        self.bilinear = nn.Parameter(eye.clone()) if score == "bilinear" else None
        self.attn_dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        # The dot score goes through F.scaled_dot_product_attention; False forces the explicit
        # formula (tests compare the two).
        self.use_sdpa = True

    def forward(
        self,
        query: Tensor,
        key_value: Tensor,
        key_mask: Tensor,
        query_mask: Tensor | None = None,
        owner: Tensor | None = None,
    ) -> Tensor:
        """Applies the block.

        Args:
            query: ``(B, Tq, d)``.
            key_value: ``(U, Tk, d)`` memory; ``Tk`` may be 0 (nothing to attend to).
            key_mask: ``(U, Tk)`` bool, True at valid keys.
            query_mask: ``(B, Tq)`` bool, True at valid queries; None means all valid.
            owner: ``(B,)`` long, the memory row each query reads: the keys and values are
                projected once per memory row and shared by its queries (many candidates
                of one user); None means ``U = B``, row ``i`` for query ``i``.

        Returns:
            ``(B, Tq, d)``.
        """
        B, Tq, d = query.shape  # noqa: N806 (shape names)
        if key_value.shape[1] == 0:
            attended = torch.zeros_like(query)  # (B, Tq, d)
        else:
            q, k, v = self._heads(query, key_value)
            if owner is not None:  # (U, nh, Tk, hs) -> (B, nh, Tk, hs)
                k, v, key_mask = k[owner], v[owner], key_mask[owner]
            y = self._attend(q, k, v, key_mask, query_mask)  # (B, nh, Tq, hs)
            attended = y.transpose(1, 2).contiguous().view(B, Tq, d)  # (B, Tq, d)
        x = self.norm1(query + attended)
        return self.norm2(x + self.ffn(x))

    @torch.no_grad()
    def attention_weights(
        self,
        query: Tensor,
        key_value: Tensor,
        key_mask: Tensor,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        """Attention weights without dropout, for inspection (the paper's attention maps).

        Args: as :meth:`forward`.

        Returns:
            ``(B, nh, Tq, Tk)`` weights; rows sum to 1 where a valid key exists, else 0.
        """
        q, k, _ = self._heads(query, key_value)
        return self._weights(q, k, key_mask, query_mask)

    def _heads(self, query: Tensor, key_value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, Tq, d = query.shape  # noqa: N806 (shape names)
        U, Tk = key_value.shape[:2]  # noqa: N806 (shape names)
        nh, hs = self.n_heads, self.head_dim
        q = F.relu(self.q_proj(query)).view(B, Tq, nh, hs).transpose(1, 2)  # (B, nh, Tq, hs)
        k = F.relu(self.k_proj(key_value)).view(U, Tk, nh, hs).transpose(1, 2)  # (U, nh, Tk, hs)
        v = F.relu(self.v_proj(key_value)).view(U, Tk, nh, hs).transpose(1, 2)  # (U, nh, Tk, hs)
        return q, k, v

    def _weights(self, q: Tensor, k: Tensor, key_mask: Tensor, query_mask: Tensor | None) -> Tensor:
        if self.bilinear is not None:
            k = torch.einsum("hij,bhtj->bhti", self.bilinear, k)  # W_h k: (B, nh, Tk, hs)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, nh, Tq, Tk)
        keys = key_mask[:, None, None, :]  # (B, 1, 1, Tk)
        # Finite fill: a row without any valid key gives a uniform softmax, not NaN; the
        # multiplication by the mask then zeroes it (and makes padded weights exactly 0).
        scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
        w = torch.softmax(scores, dim=-1) * keys  # (B, nh, Tq, Tk)
        if query_mask is not None:
            w = w * query_mask[:, None, :, None]  # (B, 1, Tq, 1) broadcast
        return w

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, query_mask: Tensor | None
    ) -> Tensor:
        if self.bilinear is not None or not self.use_sdpa:
            w = self.attn_dropout(self._weights(q, k, key_mask, query_mask))  # (B, nh, Tq, Tk)
            return w @ v  # (B, nh, Tq, hs)
        has_key = key_mask.any(dim=-1)  # (B,)
        # Rows without a valid key may attend everywhere (no NaN) and are zeroed below.
        allowed = (key_mask | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        keep = has_key[:, None, None, None]  # (B, 1, 1, 1)
        if query_mask is not None:
            keep = keep & query_mask[:, None, :, None]  # (B, 1, Tq, 1)
        return y * keep  # (B, nh, Tq, hs)
