"""Tests of the losses (src/atrank/model/loss.py): masking, NaN safety, tasks by name."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from atrank.model import masked_bce_with_logits, multitask_loss


def test_masked_rows_give_no_loss_and_no_gradient() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.tensor([True, False, True, False])
    loss = masked_bce_with_logits(logits, labels, mask)
    loss.backward()
    assert logits.grad is not None
    assert (logits.grad[~mask] == 0).all()
    assert (logits.grad[mask] != 0).all()
    flipped = masked_bce_with_logits(logits, torch.tensor([1.0, 1.0, 1.0, 0.0]), mask)
    assert flipped.item() == loss.item()


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_nan_labels_and_logits_under_the_mask_are_harmless() -> None:
    mask = torch.tensor([True, False, True, False])
    logits = torch.tensor([0.3, float("nan"), 2.0, float("inf")], requires_grad=True)
    labels = torch.tensor([1.0, float("nan"), 0.0, float("nan")])
    with torch.autograd.detect_anomaly():  # no NaN anywhere in the backward pass either
        loss = masked_bce_with_logits(logits, labels, mask)
        loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()
    expected = F.binary_cross_entropy_with_logits(logits[mask].detach(), labels[mask])
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("size", [0, 3])
def test_all_masked_gives_exact_zero(size: int) -> None:
    logits = torch.randn(size, requires_grad=True)
    labels = torch.full((size,), float("nan"))
    loss = masked_bce_with_logits(logits, labels, torch.zeros(size, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None
    assert (logits.grad == 0).all()


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(-20, 20), st.sampled_from([0.0, 1.0]), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_equals_bce_on_kept_rows(rows: list[tuple[float, float, bool]]) -> None:
    logits = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    mask = torch.tensor([r[2] for r in rows])
    loss = masked_bce_with_logits(logits, labels, mask)
    if mask.any():
        expected = F.binary_cross_entropy_with_logits(logits[mask], labels[mask])
    else:
        expected = torch.tensor(0.0)
    torch.testing.assert_close(loss, expected)


def _tasks() -> tuple[dict[str, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(0)
    names = ("click", "buy", "redeem")
    logits = {t: torch.randn(6, generator=g) for t in names}
    labels = {t: torch.randint(0, 2, (6,), generator=g).float() for t in names}
    masks = {t: torch.rand(6, generator=g) > 0.3 for t in names}
    l2 = {t: torch.rand(6, generator=g) * 10 for t in names}
    return logits, labels, masks, l2


def test_multitask_loss_is_the_weighted_sum_by_name() -> None:
    logits, labels, masks, l2 = _tasks()
    weights = {"click": 1.0, "buy": 0.5, "redeem": 2.0}
    total, per_task = multitask_loss(logits, labels, masks, weights, l2=l2, l2_weight=0.01)
    expected = torch.tensor(0.0)
    for t in logits:
        bce = masked_bce_with_logits(logits[t], labels[t], masks[t])
        torch.testing.assert_close(per_task[t], bce)
        expected = expected + weights[t] * (bce + 0.01 * l2[t][masks[t]].mean())
    torch.testing.assert_close(total, expected)

    # The dicts in different orders from one another: same result.
    def reordered(d: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
        return {t: d[t] for t in order}

    total_re, per_task_re = multitask_loss(
        reordered(logits, ("redeem", "click", "buy")),
        reordered(labels, ("buy", "redeem", "click")),
        reordered(masks, ("click", "redeem", "buy")),
        reordered(weights, ("buy", "click", "redeem")),
        l2=reordered(l2, ("redeem", "buy", "click")),
        l2_weight=0.01,
    )
    torch.testing.assert_close(total_re, total)
    assert per_task_re == per_task


@pytest.mark.parametrize("missing_from", ["labels", "masks", "weights", "l2"])
def test_missing_entry_raises_key_error_naming_the_task(missing_from: str) -> None:
    logits, labels, masks, l2 = _tasks()
    tables = {
        "labels": labels,
        "masks": masks,
        "weights": {"click": 1.0, "buy": 1.0, "redeem": 1.0},
        "l2": l2,
    }
    del tables[missing_from]["buy"]  # type: ignore[attr-defined]
    with pytest.raises(KeyError, match="'buy'"):
        multitask_loss(
            logits,
            tables["labels"],  # type: ignore[arg-type]
            tables["masks"],  # type: ignore[arg-type]
            tables["weights"],  # type: ignore[arg-type]
            l2=tables["l2"],  # type: ignore[arg-type]
            l2_weight=1e-3,
        )


def test_uncertainty_weighting_at_zero_equals_fixed_and_moves_the_log_vars() -> None:
    logits = {"a": torch.randn(8), "b": torch.randn(8)}
    labels = {k: (torch.rand(8) > 0.5).float() for k in logits}
    masks = {k: torch.ones(8, dtype=torch.bool) for k in logits}
    weights = {"a": 1.0, "b": 2.0}
    fixed, _ = multitask_loss(logits, labels, masks, weights)
    s = {k: torch.zeros((), requires_grad=True) for k in logits}
    learned, per_task = multitask_loss(logits, labels, masks, weights, log_vars=s)
    assert torch.allclose(fixed, learned)
    learned.backward()
    for k in logits:  # d/ds [w (exp(-s) L + s/2)] at s=0 = w (1/2 - L)
        want = weights[k] * (0.5 - float(per_task[k]))
        assert s[k].grad is not None and abs(float(s[k].grad) - want) < 1e-5
    with pytest.raises(KeyError, match="'b'"):
        multitask_loss(logits, labels, masks, weights, log_vars={"a": s["a"]})
