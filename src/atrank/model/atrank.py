"""ATRank-MT: one shared history encoding, one vanilla-attention head per task.

Shape glossary:
    B  batch size
    T  history length (padded)
    d  d_model, hidden size
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model import baselines  # noqa: F401 (importing it registers the baselines)
from atrank.model.attention import MultiHeadAttentionBlock
from atrank.model.config import DataShape, ModelConfig
from atrank.model.din import DINHead
from atrank.model.embedding import BehaviourEmbedding
from atrank.model.encoder import ENCODERS, HeadKind, HistoryEncoder
from atrank.model.heads import ScoringHead, TaskHead

EMBEDDING_STD = 0.02


@dataclass
class ModelOutput:
    """What the model returns, keyed by task name.

    Attributes:
        logits: ``task -> (B,)`` logits (meaningful where the task's label mask is True).
        l2: ``task -> (B,)`` per-row ``||u||^2 + ||t||^2``, for the L2 term of the loss.
    """

    logits: dict[str, Tensor]
    l2: dict[str, Tensor]


class ATRankModel(nn.Module):
    """Behaviour embedding -> shared history encoder -> one head per task.

    Args:
        embedding: the behaviour embedding (fields, actions, time, per-group projections).
        encoder: the history encoder (ATRank self-attention or a baseline).
        heads: ``task -> ScoringHead`` (:class:`TaskHead`, or :class:`DINHead` for DIN).
        task_groups: ``task -> group of its targets``; same task names as ``heads``.
        init_weights: apply :meth:`_init_weights` to every submodule (False keeps the given
            modules' weights, e.g. pretrained or shared ones).
    """

    def __init__(
        self,
        embedding: BehaviourEmbedding,
        encoder: HistoryEncoder,
        heads: nn.ModuleDict,
        task_groups: dict[str, str],
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        if not task_groups:
            raise ValueError("task_groups: needs at least one task")
        unknown = {t: g for t, g in task_groups.items() if g not in embedding.group_fields}
        if unknown:
            raise ValueError(f"task_groups: groups the embedding lacks: {unknown}")
        if set(heads) != set(task_groups):
            raise ValueError(
                f"heads and task_groups must name the same tasks, got {sorted(heads)} "
                f"and {sorted(task_groups)}"
            )
        self.embedding = embedding
        self.encoder = encoder
        self.heads = heads
        self.task_groups = dict(task_groups)
        if init_weights:
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Glorot for dense layers (TF's default, as the official code); small normal
        # embeddings with a zero padding row; zero bias tables; identity bilinear forms.
        # Module.apply visits children first, so the head-level rules below win.
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=EMBEDDING_STD)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MultiHeadAttentionBlock) and module.bilinear is not None:
            with torch.no_grad():
                module.bilinear.copy_(torch.eye(module.head_dim).expand_as(module.bilinear))
        elif isinstance(module, ScoringHead) and module.bias is not None:
            nn.init.zeros_(module.bias.weight)

    def encode_history(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The shared history encoding (the memory every task head attends over).

        Args:
            batch: the batch.

        Returns:
            ``(memory, mask)``: ``(B, T', d)`` and ``(B, T')`` bool, as the encoder returns
            them (``T' = T`` for ATRank, 1 for pooled baselines, 0 for ``none``).
        """
        if self.encoder.uses_history:
            x, mask = self.embedding.embed_history(batch), batch.hist_mask  # (B, T, d), (B, T)
        else:  # the history is not embedded: the encoder gets an empty one (T = 0)
            B, d = batch.size, self.embedding.d_model  # noqa: N806 (shape names)
            weight = self.embedding.action.weight
            x = weight.new_zeros(B, 0, d)  # (B, 0, d)
            mask = torch.zeros(B, 0, dtype=torch.bool, device=weight.device)  # (B, 0)
        memory, memory_mask = self.encoder(x, mask, batch)
        return memory, memory_mask

    def embedding_l2(self, batch: Batch, inv_counts: Mapping[str, Tensor]) -> Tensor:
        """The mini-batch-aware L2 of the id embedding rows this batch uses (scalar).

        See :meth:`BehaviourEmbedding.frequency_l2`; history rows count only for encoders
        that read the history.
        """
        return self.embedding.frequency_l2(batch, inv_counts, history=self.encoder.uses_history)

    def forward(self, batch: Batch) -> ModelOutput:
        """Scores every task's target for every row of the batch.

        Each task reads ``batch.target`` with its group's fields; rows whose target belongs to
        another group get a meaningless score that the loss masks out with
        ``batch.label_mask``.

        Args:
            batch: the batch.

        Returns:
            :class:`ModelOutput` with ``(B,)`` logits and L2 terms per task.
        """
        memory, mask = self.encode_history(batch)  # once, shared by every task
        return self.score(memory, mask, batch.target)

    def score(
        self,
        memory: Tensor,
        mask: Tensor,
        target: dict[str, Tensor],
        owner: Tensor | None = None,
    ) -> ModelOutput:
        """Scores targets against encoded histories, every task in one pass.

        The history encoding does not depend on the target, so a user's history is encoded
        once (:meth:`encode_history`), each head projects its keys and values once per user,
        and any number of candidates are scored against them: ``owner`` says whose memory
        each target reads.

        Args:
            memory: ``(U, T', d)`` encoded histories (:meth:`encode_history`).
            mask: ``(U, T')`` bool memory mask.
            target: coded target fields, ``field -> (N,)`` long.
            owner: ``(N,)`` long, the row of ``memory`` each target is scored against;
                None means ``N = U``, target ``i`` against memory ``i``.

        Returns:
            :class:`ModelOutput` with ``(N,)`` logits and L2 terms per task (meaningful for
            targets of the task's group only).
        """
        targets: dict[str, Tensor] = {}  # group -> (N, d); tasks of one group share it
        logits: dict[str, Tensor] = {}
        l2: dict[str, Tensor] = {}
        for task, group in self.task_groups.items():
            if group not in targets:
                targets[group] = self.embedding.embed_target(target, group)
            ids = target[self.embedding.id_field(group)]  # (N,)
            logits[task], l2[task] = self.heads[task](targets[group], memory, mask, ids, owner)
        return ModelOutput(logits=logits, l2=l2)


def build_model(config: ModelConfig, shape: DataShape, task_groups: dict[str, str]) -> ATRankModel:
    """Builds and initialises an ATRank-MT model.

    Args:
        config: the model's settings (checked when the config was made).
        shape: what the prepared data fixes (``meta.json``: vocabulary sizes, groups,
            actions, time buckets, users).
        task_groups: ``task -> group of its targets``; one head per task.

    Returns:
        The model, its weights initialised once.

    Raises:
        ValueError: naming the offending argument (a task on an unknown group, an encoder
            that needs what the data lacks).
    """
    embedding = BehaviourEmbedding(shape, config.field_dim, config.d_model)
    history_encoder = ENCODERS[config.encoder](config, shape)
    heads = nn.ModuleDict(
        {
            task: _head(config, shape.vocab_sizes[shape.id_field(group)], history_encoder.head_kind)
            for task, group in task_groups.items()
            if group in shape.group_fields  # (an unknown group is refused by ATRankModel)
        }
    )
    return ATRankModel(embedding, history_encoder, heads, task_groups)


def _head(config: ModelConfig, n_targets: int, kind: HeadKind) -> ScoringHead:
    """One task head of the kind the encoder asks for, scoring ``n_targets`` ids."""
    if kind == "din":
        return DINHead(
            d_model=config.d_model,
            n_targets=n_targets,
            hidden=config.din_hidden,
            activation=config.din_activation,  # type: ignore[arg-type]
            scorer=config.scorer,  # type: ignore[arg-type]
            mlp_hidden=config.mlp_hidden,
        )
    return TaskHead(
        d_model=config.d_model,
        n_heads=config.n_heads,
        ffn_dim=config.ffn,
        n_targets=n_targets,
        dropout=config.dropout,
        score=config.score,  # type: ignore[arg-type]
        scorer=config.scorer,  # type: ignore[arg-type]
        mlp_hidden=config.mlp_hidden,
    )
