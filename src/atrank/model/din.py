"""DIN (Zhou et al., 2018, "Deep Interest Network"): Dice, the local activation unit, the head.

The head scores a target as every task head does (:class:`atrank.model.heads.ScoringHead`:
the same scorer and L2 term); only the user vector differs from ATRank's target attention.
The local activation unit, an MLP over ``[h, t, h - t, h * t]``, gives each behaviour ``h``
one weight for the target ``t``; the weights are not normalised by a softmax (the paper keeps
the intensity of the user's interest that way), padding gets weight 0, and the user vector
is the weighted sum of the behaviour vectors.

Shape glossary:
    B  targets
    U  memory rows (one per user; U = B without ``owner``)
    T  history length (padded)
    d  d_model, hidden size
    N  rows an activation sees (B * T behaviour-target pairs)
    C  width of one activation-unit layer
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from atrank.model.config import DINActivation, ScorerKind
from atrank.model.heads import ScoringHead

#: Part of the message for a target-attention state loaded into a DIN head.
OLD_DIN = (
    "the state holds a target-attention head ({keys}): it was saved by the encoder that was "
    "called `din` before DIN proper was added, and is now `target_att` (target attention "
    "over the raw behaviours: ATRank without self-attention); rebuild the model with "
    "model.encoder=target_att to load it"
)


class Dice(nn.Module):
    """Dice, DIN's data-adaptive activation: ``f(s) = p(s) * s + (1 - p(s)) * alpha * s``.

    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))`` per feature. In training ``E`` and
    ``Var`` are the batch's, over the rows ``mask`` keeps (padding never enters them); in
    eval they are running averages. As :class:`torch.nn.BatchNorm1d` without affine: the
    biased variance normalises, the unbiased one enters the running average, and each
    training batch with a kept row moves the averages by ``momentum``. ``alpha`` is learnt
    per feature and starts at 0 (the paper's code).

    Args:
        num_features: ``C``.
        eps: added to the variance (``1e-8`` in the paper).
        momentum: weight of a training batch in the running statistics.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, s: Tensor, mask: Tensor | None = None) -> Tensor:
        """Applies Dice.

        Args:
            s: ``(N, C)`` pre-activations.
            mask: ``(N,)`` bool, True at the rows that enter the batch statistics; None
                means every row.

        Returns:
            ``(N, C)``.
        """
        if self.training:
            mean, var = self._batch_stats(s, mask)  # (C,), (C,)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((s - mean) / torch.sqrt(var + self.eps))  # (N, C)
        return p * s + (1 - p) * self.alpha * s

    def _batch_stats(self, s: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Masked mean and biased variance ``(C,)``; updates the running averages."""
        if mask is None:
            mask = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        keep = mask.unsqueeze(-1)  # (N, 1)
        n = mask.sum().to(s.dtype)  # rows kept
        zero = s.new_zeros(())
        # where(), not multiplication, so that nothing of a dropped row (not even NaN) enters.
        mean = torch.where(keep, s, zero).sum(0) / n.clamp(min=1)  # (C,)
        var = torch.where(keep, (s - mean).pow(2), zero).sum(0) / n.clamp(min=1)  # (C,)
        with torch.no_grad():
            buf = self.running_mean
            rate = (self.momentum * (n > 0)).to(buf.dtype)  # a batch with no row: no update
            unbiased = var * n / (n - 1).clamp(min=1)
            self.running_mean.lerp_(mean.to(buf.dtype), rate)
            self.running_var.lerp_(unbiased.to(buf.dtype), rate)
        return mean, var


class LocalActivationUnit(nn.Module):
    """DIN's local activation unit: one unnormalised weight per (behaviour, target) pair.

    An MLP over ``[h, t, h - t, h * t]`` (the DIN code's form of the paper's inputs and their
    out product), each hidden layer followed by Dice or PReLU, ending in one linear output.

    Args:
        d_model: hidden size ``d`` (the unit reads ``4 d`` features).
        hidden: hidden widths.
        activation: ``"dice"`` or ``"prelu"``.
    """

    def __init__(
        self, d_model: int, hidden: Sequence[int] = (36,), activation: DINActivation = "dice"
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.activations = nn.ModuleList()
        d_in = 4 * d_model
        for width in hidden:
            self.layers.append(nn.Linear(d_in, width))
            self.activations.append(Dice(width) if activation == "dice" else nn.PReLU(width))
            d_in = width
        self.out = nn.Linear(d_in, 1)

    def forward(self, behaviours: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Weighs every behaviour for its row's target.

        Args:
            behaviours: ``(B, T, d)`` behaviour vectors.
            target: ``(B, d)`` target vectors.
            mask: ``(B, T)`` bool, True at real behaviours.

        Returns:
            ``(B, T)`` weights, exactly 0 at padding (real ones are any real number).
        """
        h = behaviours.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T, d)
        t = target.unsqueeze(1).expand_as(h)  # (B, T, d)
        z = torch.cat([h, t, h - t, h * t], dim=-1)  # (B, T, 4d)
        z = z.reshape(-1, z.shape[-1])  # (N, 4d)
        rows = mask.reshape(-1)  # (N,)
        for linear, act in zip(self.layers, self.activations, strict=True):
            z = linear(z)  # (N, C)
            z = act(z, rows) if isinstance(act, Dice) else act(z)  # (N, C)
        w = self.out(z).view(mask.shape)  # (B, T)
        return w.masked_fill(~mask, 0.0)


class DINHead(ScoringHead):
    """One task's head as DIN: activation-unit weights -> user vector ``u`` -> logit.

    ``u = sum_j w_j h_j`` over the real behaviours ``h_j`` of the target's row, ``w_j`` from
    the :class:`LocalActivationUnit`; ``u`` is scored as :class:`ScoringHead` says. With
    ``owner``, each target reads its row's behaviours (``memory[owner]``).

    Args:
        d_model: hidden size ``d``.
        n_targets: rows of the bias table (vocabulary size of the target group's id field).
        hidden: hidden widths of the activation unit.
        activation: ``"dice"`` or ``"prelu"``.
        scorer: ``"dot"`` or ``"mlp"``.
        mlp_hidden: hidden widths of the MLP scorer.
    """

    def __init__(
        self,
        d_model: int,
        n_targets: int,
        hidden: Sequence[int] = (36,),
        activation: DINActivation = "dice",
        scorer: ScorerKind = "dot",
        mlp_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.activation_unit = LocalActivationUnit(d_model, hidden, activation)
        self._add_scorer(d_model, n_targets, scorer, mlp_hidden)

    def weights(
        self, target: Tensor, memory: Tensor, memory_mask: Tensor, owner: Tensor | None = None
    ) -> Tensor:
        """``(B, T)`` weight of each behaviour of the target's row (0 at padding).

        Arguments as :meth:`ScoringHead.forward`.
        """
        if owner is not None:
            memory, memory_mask = memory[owner], memory_mask[owner]  # (B, T, d), (B, T)
        return self.activation_unit(memory, target, memory_mask)

    def _user_vectors(
        self, target: Tensor, memory: Tensor, memory_mask: Tensor, owner: Tensor | None
    ) -> Tensor:
        """``(B, d)`` weighted sums of the behaviours, one per target."""
        if owner is not None:
            memory, memory_mask = memory[owner], memory_mask[owner]  # (B, T, d), (B, T)
        w = self.activation_unit(memory, target, memory_mask)  # (B, T)
        h = memory.masked_fill(~memory_mask.unsqueeze(-1), 0.0)  # (B, T, d)
        return (w.unsqueeze(-1) * h).sum(1)  # (B, d)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A state saved by the target-attention model once named `din` would otherwise fail
        # with a list of missing and unexpected keys only: say what it is and how to load it.
        if any(k.startswith(f"{prefix}attention.") for k in state_dict):
            error_msgs.append(OLD_DIN.format(keys=f"{prefix}attention.*"))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


__all__ = ["OLD_DIN", "DINHead", "Dice", "LocalActivationUnit"]
