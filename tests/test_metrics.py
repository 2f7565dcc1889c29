"""GAUC and log loss against straightforward reference computations."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from atrank.system.metrics import GroupAUC, LogLoss, TaskMetrics, grouped_auc


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


def test_task_metrics_count_only_masked_in_rows() -> None:
    logits = torch.tensor([2.0, -2.0, 5.0, -5.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])  # rows 2 and 3 are wrong, but masked out
    mask = torch.tensor([True, True, False, False])
    users = torch.tensor([0, 0, 0, 0])
    tm = TaskMetrics()
    tm.update(logits, labels, mask, users)
    out = tm.compute()
    assert float(out["auc"]) == 1.0
    assert float(out["gauc"]) == 1.0
    assert abs(float(out["logloss"]) - float(F.softplus(torch.tensor(-2.0)))) < 1e-6


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
