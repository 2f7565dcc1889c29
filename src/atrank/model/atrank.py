"""ATRank-MT: one shared history encoding, one vanilla-attention head per task.

Shape glossary:
    B  batch size
    T  history length (padded)
    d  d_model, hidden size
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model.attention import SCORES, MultiHeadAttentionBlock, ScoreKind
from atrank.model.baselines import NEEDS_USERS  # importing it registers the baselines
from atrank.model.embedding import BehaviourEmbedding
from atrank.model.encoder import ENCODERS, EncoderArgs, HistoryEncoder
from atrank.model.heads import SCORERS, ScorerKind, TaskHead

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
        heads: ``task -> TaskHead``.
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
        if set(heads) != set(task_groups):
            raise ValueError(
                f"heads and task_groups must name the same tasks, got {sorted(heads)} "
                f"and {sorted(task_groups)}"
            )
        unknown = {t: g for t, g in task_groups.items() if g not in embedding.group_fields}
        if unknown:
            raise ValueError(f"task_groups name groups the embedding lacks: {unknown}")
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
        elif isinstance(module, TaskHead) and module.bias is not None:
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
        targets: dict[str, Tensor] = {}  # group -> (B, d); tasks of one group share it
        logits: dict[str, Tensor] = {}
        l2: dict[str, Tensor] = {}
        for task, group in self.task_groups.items():
            if group not in targets:
                targets[group] = self.embedding.embed_target(batch.target, group)
            ids = batch.target[self.embedding.id_field(group)]  # (B,)
            logits[task], l2[task] = self.heads[task](targets[group], memory, mask, ids)
        return ModelOutput(logits=logits, l2=l2)


def build_model(
    vocab_sizes: dict[str, int],
    group_fields: dict[str, tuple[str, ...]],
    n_actions: int,
    n_time_buckets: int,
    task_groups: dict[str, str],
    encoder: str = "atrank",
    field_dim: int = 32,
    d_model: int = 64,
    n_heads: int = 4,
    ffn_dim: int | None = None,
    n_blocks: int = 1,
    dropout: float = 0.0,
    score: ScoreKind = "dot",
    scorer: ScorerKind = "dot",
    mlp_hidden: Sequence[int] = (64,),
    n_users: int = 0,
) -> ATRankModel:
    """Builds and initialises an ATRank-MT model.

    Args:
        vocab_sizes: rows of each field's table (``meta.json`` of the prepared data).
        group_fields: ``group -> fields``; a group's first field is its id field.
        n_actions: rows of the action table.
        n_time_buckets: number of time-gap buckets (13 in ATRank).
        task_groups: ``task -> group of its targets``.
        encoder: a name in :data:`atrank.model.encoder.ENCODERS`.
        field_dim: width of each field, action and time embedding.
        d_model: hidden size.
        n_heads: attention heads; must divide ``d_model``.
        ffn_dim: feed-forward inner width; None means ``d_model // 4`` (ATRank).
        n_blocks: self-attention blocks in the encoder.
        dropout: dropout on attention weights.
        score: attention score, ``"dot"`` or ``"bilinear"``.
        scorer: ``"dot"`` (``<u, t> + bias``) or ``"mlp"``.
        mlp_hidden: hidden widths of the MLP scorer.
        n_users: rows of the user table (``meta.json`` ``counts.users``); needed by ``bpr``
            only, 0 means unknown.

    Returns:
        The model, its weights initialised once.

    Raises:
        ValueError: naming the offending argument.
    """
    ffn = d_model // 4 if ffn_dim is None else ffn_dim
    _check_args(
        vocab_sizes=vocab_sizes,
        group_fields=group_fields,
        n_actions=n_actions,
        n_time_buckets=n_time_buckets,
        task_groups=task_groups,
        encoder=encoder,
        field_dim=field_dim,
        d_model=d_model,
        n_heads=n_heads,
        ffn_dim=ffn,
        n_blocks=n_blocks,
        dropout=dropout,
        score=score,
        scorer=scorer,
        mlp_hidden=mlp_hidden,
        n_users=n_users,
    )
    embedding = BehaviourEmbedding(
        vocab_sizes, group_fields, n_actions, n_time_buckets, field_dim, d_model
    )
    history_encoder = ENCODERS[encoder](
        EncoderArgs(d_model, n_heads, ffn, n_blocks, dropout, score, n_users)
    )
    heads = nn.ModuleDict(
        {
            task: TaskHead(
                d_model=d_model,
                n_heads=n_heads,
                ffn_dim=ffn,
                n_targets=vocab_sizes[embedding.id_field(group)],
                dropout=dropout,
                score=score,
                scorer=scorer,
                mlp_hidden=mlp_hidden,
            )
            for task, group in task_groups.items()
        }
    )
    return ATRankModel(embedding, history_encoder, heads, task_groups)


def _require(ok: bool, arg: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{arg}: {why}")


def _check_args(
    *,
    vocab_sizes: dict[str, int],
    group_fields: dict[str, tuple[str, ...]],
    n_actions: int,
    n_time_buckets: int,
    task_groups: dict[str, str],
    encoder: str,
    field_dim: int,
    d_model: int,
    n_heads: int,
    ffn_dim: int,
    n_blocks: int,
    dropout: float,
    score: str,
    scorer: str,
    mlp_hidden: Sequence[int],
    n_users: int,
) -> None:
    _require(bool(group_fields), "group_fields", "needs at least one group")
    for group, fields in group_fields.items():
        _require(len(fields) > 0, "group_fields", f"group {group!r} has no fields")
        for f in fields:
            _require(f in vocab_sizes, "vocab_sizes", f"no size for field {f!r} of {group!r}")
            _require(vocab_sizes.get(f, 0) >= 2, "vocab_sizes", f"{f!r} needs >= 2 rows")
    _require(n_actions >= 2, "n_actions", f"needs >= 2 (padding + one action), got {n_actions}")
    _require(n_time_buckets >= 1, "n_time_buckets", f"must be >= 1, got {n_time_buckets}")
    _require(bool(task_groups), "task_groups", "needs at least one task")
    for task, group in task_groups.items():
        _require(group in group_fields, "task_groups", f"task {task!r}: unknown group {group!r}")
    _require(encoder in ENCODERS, "encoder", f"must be one of {sorted(ENCODERS)}, got {encoder!r}")
    _require(field_dim >= 1, "field_dim", f"must be >= 1, got {field_dim}")
    _require(d_model >= 1, "d_model", f"must be >= 1, got {d_model}")
    _require(n_heads >= 1, "n_heads", f"must be >= 1, got {n_heads}")
    _require(d_model % max(n_heads, 1) == 0, "n_heads", f"{n_heads} does not divide d_model")
    _require(ffn_dim >= 1, "ffn_dim", f"must be >= 1 (None means d_model // 4), got {ffn_dim}")
    _require(n_blocks >= 1, "n_blocks", f"must be >= 1, got {n_blocks}")
    _require(0.0 <= dropout < 1.0, "dropout", f"must be in [0, 1), got {dropout}")
    _require(score in SCORES, "score", f"must be one of {SCORES}, got {score!r}")
    _require(scorer in SCORERS, "scorer", f"must be one of {SCORERS}, got {scorer!r}")
    _require(all(h >= 1 for h in mlp_hidden), "mlp_hidden", f"widths must be >= 1: {mlp_hidden}")
    _require(n_users >= 0, "n_users", f"must be >= 0 (0 = unknown), got {n_users}")
    _require(
        encoder not in NEEDS_USERS or n_users >= 1,
        "n_users",
        f"encoder {encoder!r} needs the number of users (meta.json counts.users), got {n_users}",
    )
