"""Attention weights recomputed from a model's own modules, and their aggregation by category.

Nothing of the model is changed or hooked: the ATRank encoder is re-run block by block (each
block's :meth:`~atrank.model.attention.MultiHeadAttentionBlock.attention_weights` on its own
input), and each task head's target-attention block is asked for its weights over the encoded
memory, the target vector as the query. :class:`MassAccumulator` sums, over batches, the
attention mass and the share of behaviours per category (action, group, time bucket, ...),
each sample counted once, padding nowhere.

Shape glossary:
    B   batch size
    T   history length (padded; right-aligned, most recent behaviour last)
    T'  memory length (T for ATRank and target attention, 1 for pooled encoders, 0 for none)
    d   d_model, hidden size
    nh  number of attention heads
    H   series accumulated side by side (heads, or 1 for the mean over heads)
    n   categories
"""

from __future__ import annotations

import torch
from torch import Tensor

from atrank.data.batch import Batch
from atrank.model.atrank import ATRankModel
from atrank.model.attention import MultiHeadAttentionBlock
from atrank.model.encoder import ATRankEncoder
from atrank.report.collect import same_object
from data_prep import contract as C


class MassAccumulator:
    """Sums attention mass and behaviour share per category over batches.

    Every sample counts once: its weights over its real behaviours sum to 1 (per series),
    so the mean mass of the categories sums to 1 too.

    Args:
        n: number of categories (codes ``0..n-1``).
        series: number of weight series accumulated side by side (``H``: heads, or 1).
    """

    def __init__(self, n: int, series: int = 1) -> None:
        self.n = n
        self.mass_sum = torch.zeros(series, n, dtype=torch.float64)  # (H, n)
        self.share_sum = torch.zeros(n, dtype=torch.float64)  # (n,)
        self.samples = 0

    def add(self, weights: Tensor, codes: Tensor, mask: Tensor) -> None:
        """Adds samples.

        Args:
            weights: ``(B, H, T)`` weights over history positions (0 at padding).
            codes: ``(B, T)`` long category of each position (ignored at padding).
            mask: ``(B, T)`` bool, True at real behaviours; samples without one are skipped.
        """
        keep = mask.any(dim=1)  # (B,)
        weights, codes, mask = weights[keep], codes[keep], mask[keep]
        onehot = torch.nn.functional.one_hot(codes.clamp(0, self.n - 1), self.n)  # (B, T, n)
        onehot = onehot.to(torch.float64) * mask.unsqueeze(-1)  # padding counts nowhere
        self.mass_sum += torch.einsum("bht,btn->hn", weights.to(torch.float64), onehot).cpu()
        counts = onehot.sum(dim=1)  # (B, n)
        self.share_sum += (counts / counts.sum(dim=1, keepdim=True)).sum(dim=0).cpu()
        self.samples += int(keep.sum())

    def mass(self) -> Tensor:
        """``(H, n)`` mean attention mass per category (zeros before any sample)."""
        return self.mass_sum / max(self.samples, 1)

    def share(self) -> Tensor:
        """``(n,)`` mean share of the categories among the samples' behaviours."""
        return self.share_sum / max(self.samples, 1)

    def lift(self) -> Tensor:
        """``(H, n)`` mass / share (NaN where the category never occurs)."""
        share = self.share()
        return torch.where(share > 0, self.mass() / share, torch.full_like(share, float("nan")))


@torch.no_grad()
def encoder_rerun(model: ATRankModel, batch: Batch) -> tuple[Tensor, list[Tensor]]:
    """Re-runs the ATRank encoder block by block, with each block's self-attention weights.

    The model must be in eval mode (no dropout), its encoder an :class:`ATRankEncoder`.

    Returns:
        ``(memory, weights)``: ``(B, T, d)`` (equal to ``model.encode_history(batch)[0]``)
        and per block ``(B, nh, T, T)`` weights (query rows of padding are zero).
    """
    encoder = model.encoder
    assert isinstance(encoder, ATRankEncoder)
    mask = batch.hist_mask  # (B, T)
    keep = mask.unsqueeze(-1)  # (B, T, 1)
    x = model.embedding.embed_history(batch)  # (B, T, d)
    weights = []
    for block in encoder.blocks:
        assert isinstance(block, MultiHeadAttentionBlock)
        weights.append(block.attention_weights(x, x, mask, mask))  # (B, nh, T, T)
        x = block(x, x, key_mask=mask, query_mask=mask) * keep  # (B, T, d), as the encoder
    return x, weights


def slot_positions(memory_mask: Tensor, hist_mask: Tensor) -> Tensor | None:
    """Which history position each memory slot stands for, when slots are behaviours.

    Returns:
        ``(B, T)`` long, the history position of each slot: the identity when the memory
        keeps the history's positions (ATRank, target_att), the real positions in order when it
        moved them to the front (Bi-LSTM + attention); None when slots are not behaviours
        (pooled or history-blind encoders).
    """
    if memory_mask.shape != hist_mask.shape:
        return None
    B, T = hist_mask.shape  # noqa: N806 (shape names)
    if torch.equal(memory_mask, hist_mask):
        return torch.arange(T, device=hist_mask.device).expand(B, T)
    prefix = torch.arange(T, device=hist_mask.device) < hist_mask.sum(1, keepdim=True)  # (B, T)
    if torch.equal(memory_mask, prefix):
        return torch.argsort((~hist_mask).to(torch.uint8), dim=1, stable=True)  # real first
    return None


def attention_block(model: ATRankModel, task: str) -> MultiHeadAttentionBlock | None:
    """The task head's target-attention block, None for heads without one (DIN's)."""
    block = getattr(model.heads[task], "attention", None)
    return block if isinstance(block, MultiHeadAttentionBlock) else None


@torch.no_grad()
def head_weights(model: ATRankModel, batch: Batch) -> dict[str, Tensor] | None:
    """Each task head's target attention over the history positions.

    Returns:
        ``task -> (B, nh, T)`` weights (rows sum to 1 where the history is not empty),
        tasks whose head has no attention block left out; None when the memory slots are
        not behaviours.
    """
    memory, memory_mask = model.encode_history(batch)  # (B, T', d), (B, T')
    slots = slot_positions(memory_mask, batch.hist_mask)
    if slots is None:
        return None
    out: dict[str, Tensor] = {}
    targets: dict[str, Tensor] = {}
    for task, group in model.task_groups.items():
        block = attention_block(model, task)
        if block is None:
            continue
        if group not in targets:
            targets[group] = model.embedding.embed_target(batch.target, group)  # (B, d)
        w = block.attention_weights(targets[group].unsqueeze(1), memory, memory_mask)
        w = w[:, :, 0, :]  # (B, nh, T')
        out[task] = torch.zeros_like(w).scatter_(2, slots.unsqueeze(1).expand_as(w), w)
    return out


def task_rows(model: ATRankModel, batch: Batch, task: str) -> Tensor:
    """``(B,)`` bool: the rows whose target is of the task's group (and labelled for it)."""
    rows = batch.target_group == model.embedding.groups.index(model.task_groups[task])
    if task in batch.label_mask:
        rows = rows & batch.label_mask[task]
    return rows


#: How a behaviour relates to the row's target: the same object, another object of the same
#: shop (``contract.SHOP``, shared by items and coupons), or neither.
RELATIONS: tuple[str, ...] = ("same object", "same shop", "other")


def target_relation(batch: Batch, id_field: str) -> Tensor:
    """``(B, T)`` long index into :data:`RELATIONS` of each history position.

    Args:
        batch: the batch.
        id_field: the id field of the targets' group (the rows' targets share one group).
    """
    same = same_object(batch, id_field)  # (B, T)
    shop = batch.hist.get(C.SHOP)
    if shop is None or C.SHOP not in batch.target:
        near = torch.zeros_like(same)
    else:
        target_shop = batch.target[C.SHOP].unsqueeze(1)  # (B, 1)
        near = (shop == target_shop) & (target_shop >= C.FIRST_INDEX)
    return torch.where(same, 0, torch.where(near, 1, 2))  # (B, T)
