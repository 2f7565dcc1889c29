"""The model's configuration and the data shape it is built for: one typed object each.

:class:`ModelConfig` is the one list of the model's settings, with their defaults; it is the
Hydra schema of the ``model`` config group, it is stored in checkpoints and bundles, and
:func:`atrank.model.build_model` takes it whole. It checks its own values when constructed.
:class:`DataShape` holds what the prepared data decides (vocabulary sizes, groups, actions,
time buckets, users), read from ``meta.json``, never written by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

ScoreKind = Literal["dot", "bilinear"]
#: Attention scores: ``dot`` (scaled dot product, official code), ``bilinear`` (paper text).
SCORES: tuple[str, ...] = get_args(ScoreKind)
ScorerKind = Literal["dot", "mlp"]
#: Task scorers: ``dot`` (``<u, t> + bias``, the paper) or ``mlp`` over ``[u, t, u * t]``.
SCORERS: tuple[str, ...] = get_args(ScorerKind)
DINActivation = Literal["dice", "prelu"]
#: Activations of DIN's activation unit: ``dice`` (the DIN paper's) or ``prelu``.
DIN_ACTIVATIONS: tuple[str, ...] = get_args(DINActivation)


class SettingError(ValueError):
    """A setting is out of its range; ``key`` names it (relative to its config object)."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key, self.why = key, why


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise SettingError(key, why)


@dataclass
class ModelConfig:
    """Every setting of an ATRank-MT model (paper sizes: ``experiment=paper_amazon``).

    Attributes:
        encoder: the history encoder, a name in :data:`atrank.model.encoder.ENCODERS`
            (``atrank`` or a baseline); it also chooses how the task heads read the history
            (target attention, or DIN's activation unit for ``din``).
        field_dim: width of each field, action and time embedding.
        d_model: the shared latent size ``d``.
        n_heads: attention heads (the paper's latent semantic spaces); must divide ``d_model``.
        ffn_dim: feed-forward inner width; None means ``d_model // 4`` (official code).
        n_blocks: self-attention blocks in the encoder.
        dropout: dropout on the attention weights, in ``[0, 1)``.
        score: attention score, ``dot`` or ``bilinear``.
        scorer: task scorer, ``dot`` or ``mlp``.
        mlp_hidden: hidden widths of the MLP scorer.
        din_hidden: hidden widths of DIN's local activation unit (encoder ``din`` only;
            36 in the DIN paper's figure, 80 and 40 in its code).
        din_activation: activation of those layers, ``dice`` or ``prelu`` (``din`` only).
        l2_weight: weight of the *per-row mean* of ``||u||^2 + ||t||^2`` (user and target
            vectors) added to each task's mean loss (see
            :func:`atrank.model.loss.multitask_loss`). Not the official code's rate, which
            multiplies a batch *sum* of ``||x||^2 / 2``: ``l2_weight = rate * batch / 2``
            (the official 5e-5 at batch 32 is 8e-4; ``experiment=paper_amazon``). The
            default 5e-5 is this platform's own choice at batch 512.
        embed_l2: weight of the mini-batch-aware L2 on the id embedding tables (DIN, Zhou et
            al. 2018, section 4.1): each step penalises only the rows the batch uses, each
            row ``j`` by ``||w_j||^2 / n_j`` with ``n_j`` its training count, so over an
            epoch rare and frequent rows are pulled to zero roughly alike. 0 (default)
            switches it off. Not weight decay: rows the batch does not use are untouched.

    Raises:
        SettingError: naming the first invalid setting.
    """

    encoder: str = "atrank"
    field_dim: int = 32
    d_model: int = 64
    n_heads: int = 4
    ffn_dim: int | None = None
    n_blocks: int = 1
    dropout: float = 0.0
    score: str = "dot"
    scorer: str = "dot"
    mlp_hidden: list[int] = field(default_factory=lambda: [64])
    din_hidden: list[int] = field(default_factory=lambda: [36])
    din_activation: str = "dice"
    l2_weight: float = 5e-5
    embed_l2: float = 0.0

    def __post_init__(self) -> None:
        # The registry fills as the encoders' modules are imported (atrank.model does).
        from atrank.model.encoder import ENCODERS

        names = sorted(ENCODERS)
        _require(
            self.encoder in ENCODERS, "encoder", f"must be one of {names}, got {self.encoder!r}"
        )
        for key in ("field_dim", "d_model", "n_heads", "n_blocks"):
            _require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _require(
            self.d_model % self.n_heads == 0,
            "n_heads",
            f"{self.n_heads} does not divide d_model={self.d_model}",
        )
        _require(
            self.ffn_dim is None or self.ffn_dim >= 1,
            "ffn_dim",
            f"must be >= 1 or null (d_model // 4), got {self.ffn_dim}",
        )
        _require(self.ffn >= 1, "ffn_dim", f"d_model // 4 is 0 for d_model={self.d_model}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _require(
            self.score in SCORES, "score", f"must be one of {list(SCORES)}, got {self.score!r}"
        )
        _require(
            self.scorer in SCORERS, "scorer", f"must be one of {list(SCORERS)}, got {self.scorer!r}"
        )
        _require(
            all(h >= 1 for h in self.mlp_hidden),
            "mlp_hidden",
            f"widths must be >= 1, got {list(self.mlp_hidden)}",
        )
        _require(
            all(h >= 1 for h in self.din_hidden),
            "din_hidden",
            f"widths must be >= 1, got {list(self.din_hidden)}",
        )
        _require(
            self.din_activation in DIN_ACTIVATIONS,
            "din_activation",
            f"must be one of {list(DIN_ACTIVATIONS)}, got {self.din_activation!r}",
        )
        _require(self.l2_weight >= 0, "l2_weight", f"must be >= 0, got {self.l2_weight}")
        _require(self.embed_l2 >= 0, "embed_l2", f"must be >= 0, got {self.embed_l2}")

    @property
    def ffn(self) -> int:
        """The feed-forward inner width in use (``ffn_dim``, or ``d_model // 4``)."""
        return self.d_model // 4 if self.ffn_dim is None else self.ffn_dim


@dataclass(frozen=True)
class DataShape:
    """What the prepared data fixes about the model (``meta.json``).

    Attributes:
        vocab_sizes: rows of each field's table (index 0 padding, 1 out of vocabulary).
        group_fields: ``group -> fields``, in group-index order; a group's first field is
            its id field.
        n_actions: rows of the action table (padding and OOV included).
        n_time_buckets: number of time-gap buckets (13 in ATRank).
        n_users: rows of the user table (needed by ``bpr`` only; 0 = unknown).

    Raises:
        SettingError: naming the first inconsistent value.
    """

    vocab_sizes: dict[str, int]
    group_fields: dict[str, tuple[str, ...]]
    n_actions: int
    n_time_buckets: int
    n_users: int = 0

    def __post_init__(self) -> None:
        _require(bool(self.group_fields), "group_fields", "needs at least one group")
        for group, fields in self.group_fields.items():
            _require(len(fields) > 0, "group_fields", f"group {group!r} has no fields")
            for f in fields:
                size = self.vocab_sizes.get(f)
                _require(size is not None, "vocab_sizes", f"no size for field {f!r} of {group!r}")
                _require(size is not None and size >= 2, "vocab_sizes", f"{f!r} needs >= 2 rows")
        _require(
            self.n_actions >= 2,
            "n_actions",
            f"needs >= 2 (padding + one action), got {self.n_actions}",
        )
        _require(
            self.n_time_buckets >= 1, "n_time_buckets", f"must be >= 1, got {self.n_time_buckets}"
        )
        _require(self.n_users >= 0, "n_users", f"must be >= 0 (0 = unknown), got {self.n_users}")

    def id_field(self, group: str) -> str:
        """The id field of a group's objects (its first field)."""
        return self.group_fields[group][0]
