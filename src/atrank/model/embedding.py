"""Behaviour embedding: object fields + action + time gap, projected per group to one space.

Shape glossary:
    B  batch size
    T  history length (padded)
    G  number of behaviour groups
    F  number of fields of one group's objects
    e  field_dim, width of every field, action and time embedding
    d  d_model, the shared hidden size
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model.config import DataShape
from data_prep.contract import PAD_INDEX


class BehaviourEmbedding(nn.Module):
    """Embeds behaviours (action, object, time gap) of several groups into one space.

    A behaviour is ``concat(field embeddings of its group's object, action, time)`` of width
    ``(F + 2) * e``, then a per-group ``nn.Linear`` to ``d`` (ATRank section 2). Field tables
    are shared across groups (``shop_id`` of items and coupons is one table). A group's first
    field is its id field (the key of the task heads' bias tables).

    Args:
        shape: the data's vocabulary sizes (index 0 is padding), groups (the group index
            used by ``Batch.hist_group`` and ``Batch.target_group`` is the position in
            ``shape.group_fields``), actions (index 0 is padding) and time buckets (the table
            has one more row because ``Batch.hist_time`` is ``bucket + 1`` with 0 for padding).
        field_dim: width ``e`` of each field, action and time embedding.
        d_model: shared hidden size ``d``.
    """

    def __init__(self, shape: DataShape, field_dim: int, d_model: int) -> None:
        super().__init__()
        vocab_sizes = shape.vocab_sizes
        self.group_fields = {g: tuple(fs) for g, fs in shape.group_fields.items()}
        self.groups: tuple[str, ...] = tuple(self.group_fields)
        self.field_dim = field_dim
        self.d_model = d_model
        used = dict.fromkeys(f for fs in self.group_fields.values() for f in fs)  # ordered set
        self.fields = nn.ModuleDict(
            {f: nn.Embedding(vocab_sizes[f], field_dim, padding_idx=PAD_INDEX) for f in used}
        )
        self.action = nn.Embedding(shape.n_actions, field_dim, padding_idx=PAD_INDEX)
        self.time = nn.Embedding(shape.n_time_buckets + 1, field_dim, padding_idx=PAD_INDEX)
        self.proj = nn.ModuleDict(
            {
                g: nn.Linear((len(fs) + 2) * field_dim, d_model)
                for g, fs in self.group_fields.items()
            }
        )

    def id_field(self, group: str) -> str:
        """The id field of a group's objects (its first field)."""
        return self.group_fields[group][0]

    def embed_history(self, batch: Batch) -> Tensor:
        """Embeds every history position with its own group's projection.

        Args:
            batch: the batch; reads ``hist``, ``hist_action``, ``hist_time``, ``hist_group``
                and ``hist_mask``.

        Returns:
            ``(B, T, d)`` behaviour vectors, exactly zero at padded positions.
        """
        B, T = batch.hist_mask.shape  # noqa: N806 (shape names)
        out = self.action.weight.new_zeros(B * T, self.d_model)  # (B*T, d), padding stays 0
        group = batch.hist_group.reshape(-1)  # (B*T,)
        valid = batch.hist_mask.reshape(-1)  # (B*T,)
        # Look up and project only the real positions of each group, with that group's own
        # Linear: no work is spent on padding or on other groups' projections.
        for g_idx, g in enumerate(self.groups):
            pos = torch.nonzero(valid & (group == g_idx)).squeeze(1)  # (P,)
            if pos.numel() == 0:
                continue
            parts = [self.fields[f](batch.hist[f].reshape(-1)[pos]) for f in self.group_fields[g]]
            parts.append(self.action(batch.hist_action.reshape(-1)[pos]))  # (P, e)
            parts.append(self.time(batch.hist_time.reshape(-1)[pos]))  # (P, e)
            x = torch.cat(parts, dim=-1)  # (P, (F + 2) * e)
            out = out.index_copy(0, pos, self.proj[g](x).to(out.dtype))  # (B*T, d)
        return out.view(B, T, self.d_model)  # (B, T, d)

    def embed_target(self, target: dict[str, Tensor], group: str) -> Tensor:
        """Embeds prediction targets of one group, with the action and time slots empty.

        Args:
            target: coded target fields, ``field -> (B,)`` long.
            group: the targets' group; selects the fields and the projection.

        Returns:
            ``(B, d)`` target vectors.
        """
        parts = [self.fields[f](target[f]) for f in self.group_fields[group]]  # F x (B, e)
        empty = parts[0].new_zeros(parts[0].shape[0], 2 * self.field_dim)  # (B, 2e)
        x = torch.cat([*parts, empty], dim=-1)  # (B, (F + 2) * e)
        return self.proj[group](x)  # (B, d)

    def batch_rows(self, batch: Batch, history: bool = True) -> dict[str, Tensor]:
        """The rows of each id table that this batch looks up (padding left out).

        Args:
            batch: the batch; its targets always count, its history when ``history``.
            history: count the history's ids too (False for encoders that never read it).

        Returns:
            ``field -> (R,)`` long, the distinct row indices of that field's table.
        """
        rows: dict[str, Tensor] = {}
        for f in self.fields:
            ids = [batch.target[f].reshape(-1)] if f in batch.target else []
            if history and f in batch.hist:
                ids.append(batch.hist[f][batch.hist_mask])  # (P,)
            if not ids:
                continue
            used = torch.unique(torch.cat(ids))  # (R,)
            rows[f] = used[used != PAD_INDEX]
        return rows

    def frequency_l2(
        self, batch: Batch, inv_counts: Mapping[str, Tensor], history: bool = True
    ) -> Tensor:
        """Mini-batch-aware L2 (DIN, Zhou et al. 2018, section 4.1) of the rows a batch uses.

        ``sum_f sum_{j in batch} inv_counts[f][j] * ||w_fj||^2``: only the rows the batch
        looks up enter (so the gradient stays sparse in effect), each scaled by the inverse
        of its training count ``n_j``. The number of batches that use row ``j`` in an epoch
        grows with ``n_j``, so the scaling roughly evens out the total pull on rare and
        frequent rows (exactly only if each occurrence fell in its own batch).

        Args:
            batch: the batch (see :meth:`batch_rows`).
            inv_counts: ``field -> (V_f,)`` float, ``1 / n_j`` per row of the field's table;
                fields without an entry are not penalised.
            history: count the history's ids too.

        Returns:
            Scalar penalty (0 when no row is penalised).
        """
        total = self.action.weight.new_zeros(())
        for f, rows in self.batch_rows(batch, history).items():
            if f not in inv_counts:
                continue
            table: nn.Embedding = self.fields[f]  # type: ignore[assignment]
            w = table.weight[rows]  # (R, e)
            total = total + (inv_counts[f][rows] * w.pow(2).sum(-1)).sum()
        return total
