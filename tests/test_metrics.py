"""GAUC and log loss against straightforward reference computations."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from atrank.config import METRIC_NAMES
from atrank.system.metrics import GroupAUC, LogLoss, grouped_auc, task_metrics


def _pairwise_auc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def _reference_gauc(p: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    num, den = 0.0, 0.0
    for user in np.unique(g):
        m = g == user
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * _pairwise_auc(p[m], y[m])
            den += m.sum()
    return num / den if den else math.nan


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 6)), min_size=1, max_size=60
    )
)
def test_grouped_auc_matches_pairwise_reference(rows: list[tuple[int, int, int]]) -> None:
    g = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    p = np.array([r[2] for r in rows], dtype=np.float64) / 3.0  # small range: many ties
    got = float(grouped_auc(torch.tensor(p), torch.tensor(y), torch.tensor(g)))
    want = _reference_gauc(p, y, g)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert abs(got - want) < 1e-9


def test_gauc_leaves_out_single_class_users_and_weights_by_samples() -> None:
    # user 0: perfect (AUC 1, 4 samples); user 1: inverted (AUC 0, 2 samples); user 2: one class.
    p = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.9, 0.1, 0.5, 0.6])
    y = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    m = GroupAUC()
    m.update(p[:3], y[:3], g[:3])  # accumulates across updates
    m.update(p[3:], y[3:], g[3:])
    assert abs(float(m.compute()) - (4 * 1.0 + 2 * 0.0) / 6) < 1e-6


def test_logloss_is_mean_bce_over_updates() -> None:
    logits = torch.randn(50)
    y = (torch.rand(50) > 0.5).float()
    m = LogLoss()
    m.update(logits[:20], y[:20])
    m.update(logits[20:], y[20:])
    want = F.binary_cross_entropy_with_logits(logits, y)
    assert abs(float(m.compute()) - float(want)) < 1e-6


def test_task_metrics_compute_every_configured_metric_under_its_key() -> None:
    logits = torch.tensor([2.0, -2.0, 0.5, -0.5])
    labels = torch.tensor([1, 0, 0, 1])
    users = torch.tensor([0, 0, 1, 1])
    tm = task_metrics(prefix="val/click/")
    tm.update(preds=logits, target=labels, groups=users)
    out = tm.compute()
    assert set(out) == {f"val/click/{m}" for m in METRIC_NAMES}
    assert float(out["val/click/auc"]) == 0.75  # 3 of the 4 pairs ordered
    assert float(out["val/click/gauc"]) == 0.5  # user 0 right, user 1 wrong
    assert float(out["val/click/pair_auc"]) == 0.5
    want = F.binary_cross_entropy_with_logits(logits, labels.float())
    assert abs(float(out["val/click/logloss"]) - float(want)) < 1e-6
    only = task_metrics(["logloss", "auc"])
    only.update(preds=logits, target=labels, groups=users)
    assert set(only.compute()) == {"auc", "logloss"}


def test_auc_applies_the_sigmoid_to_every_batch() -> None:
    # torchmetrics' BinaryAUROC takes a batch whose values all lie in [0, 1] as
    # probabilities and any other batch as logits; logits must be treated alike.
    first = torch.tensor([0.3, 0.1])  # logits that happen to lie in [0, 1]
    second = torch.tensor([0.0, -5.0])
    labels = torch.tensor([1, 0, 0, 0])
    m = task_metrics(["auc"])
    m.update(preds=first, target=labels[:2], groups=torch.zeros(2))
    m.update(preds=second, target=labels[2:], groups=torch.zeros(2))
    # the positive (0.3) outscores every negative; read as a probability it would lose to
    # the negative logit 0.0 (sigmoid 0.5), giving 2/3
    assert float(m.compute()["auc"]) == 1.0


def _reference_pair_auc(p: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    aucs = []
    for user in np.unique(g):
        m = g == user
        pos, neg = p[m][y[m] == 1], p[m][y[m] == 0]
        if len(pos) and len(neg):
            aucs.append((pos[:, None] > neg[None, :]).mean())  # ties are failures
    return float(np.mean(aucs)) if aucs else math.nan


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 4)), min_size=1, max_size=60
    )
)
def test_pair_auc_matches_strict_reference(rows: list[tuple[int, int, int]]) -> None:
    g = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    p = np.array([r[2] for r in rows], dtype=np.float64)
    got = float(grouped_auc(torch.tensor(p), torch.tensor(y), torch.tensor(g), 0.0, "equal"))
    want = _reference_pair_auc(p, y, g)
    assert (math.isnan(got) and math.isnan(want)) or abs(got - want) < 1e-9


def test_pair_auc_is_the_share_of_users_whose_positive_wins() -> None:
    # the paper's protocol: one (positive, negative) pair per user; a tie is a failure
    users = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    y = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    p = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.7, 0.6])  # wins: users 0 and 3
    m = GroupAUC(tie=0.0, weighting="equal")
    m.update(p, y, users)
    assert float(m.compute()) == 0.5


def test_auc_ranks_large_logits_that_a_float32_sigmoid_would_tie() -> None:
    # sigmoid(17) and sigmoid(18) are both 1.0 in float32: AUC on probabilities gives 0.5
    m = task_metrics(["auc"])
    m.update(preds=torch.tensor([18.0, 17.0]), target=torch.tensor([1, 0]), groups=torch.zeros(2))
    assert float(m.compute()["auc"]) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 1)), min_size=2, max_size=40))
def test_auc_equals_the_pairwise_definition(rows: list[tuple[int, int]]) -> None:
    p = torch.tensor([float(r[0]) for r in rows])
    y = torch.tensor([r[1] for r in rows])
    pos, neg = p[y == 1], p[y == 0]
    m = task_metrics(["auc"])
    m.update(preds=p, target=y, groups=torch.zeros(len(rows)))
    got = float(m.compute()["auc"])
    if len(pos) == 0 or len(neg) == 0:
        assert math.isnan(got)
        return
    want = float(
        (
            (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
        ).mean()
    )
    assert abs(got - want) < 1e-6
