"""The scoring graph exported to ONNX gives the PyTorch model's logits under ONNX Runtime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch
from torch import Tensor

from atrank.model import ATRankModel, ModelConfig, build_model
from atrank.serve.features import Features
from atrank.serve.onnx_export import ONNX_FILE, OnnxScorer, ScoringGraph, export_onnx
from atrank.serve.predictor import Predictor
from data_prep import contract as C

pytest.importorskip("onnxruntime", reason="onnxruntime is in the 'serve' extra")

ATOL = 1e-5


@pytest.fixture(scope="module")
def served(tiny_run: dict[str, Path]) -> tuple[Predictor, pl.DataFrame]:
    """A bundle of a short run on the tiny simulated data, its predictor and raw events."""
    return Predictor(tiny_run["bundle"]), pl.read_parquet(tiny_run["raw"] / "events" / "*.parquet")


def _requests(
    predictor: Predictor, events: pl.DataFrame, plan: list[tuple[int, int, int, int]]
) -> pl.DataFrame:
    """Requests ``(user rank, events before the request, items, coupons)``: the user with
    that rank by number of events, just after their n-th event (0: before the first), with
    catalogue candidates. A negative user rank is a user the bundle has never seen."""
    counts = events.group_by(C.USER).len()
    users = counts.sort(["len", C.USER], descending=[True, False])[C.USER]  # most events first
    items = predictor.bundle.catalogue["item"][C.ITEM]
    coupons = predictor.bundle.catalogue["coupon"][C.COUPON]
    rows: list[dict[str, object]] = []
    for rank, n_before, n_items, n_coupons in plan:
        if rank < 0:
            user, ts = "never-seen-user", 2_000_000_000
        else:
            user = users[rank]
            times = events.filter(pl.col(C.USER) == user)[C.TS].sort()
            ts = int(times[0]) if n_before == 0 else int(times[n_before - 1]) + 1
        rows += [{C.USER: user, C.TS: ts, C.ITEM: items[rank + i]} for i in range(n_items)]
        rows += [
            {C.USER: user, C.TS: ts, C.GROUP: "coupon", C.COUPON: coupons[rank + i]}
            for i in range(n_coupons)
        ]
    return pl.DataFrame(rows).with_columns(pl.col(C.GROUP).fill_null("item"))


def _trimmed(features: Features) -> Features:
    """The same requests with the history window cut to its longest real history (the
    columns cut are padding in every row)."""
    h = features.history
    T = max(int(h.hist_mask.sum(1).max()), 1)  # noqa: N806 (shape names)
    history = replace(
        h,
        hist={f: v[:, -T:] for f, v in h.hist.items()},
        hist_action=h.hist_action[:, -T:],
        hist_time=h.hist_time[:, -T:],
        hist_group=h.hist_group[:, -T:],
        hist_mask=h.hist_mask[:, -T:],
    )
    return replace(features, history=history)


def _torch_logits(model: ATRankModel, features: Features) -> dict[str, Tensor]:
    """The eager encode-once path, as :meth:`Predictor.logits`."""
    with torch.no_grad():
        memory, mask = model.encode_history(features.history)
        return model.score(memory, mask, features.target, features.owner).logits


def _assert_equal(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert list(got) == list(want)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=0, atol=ATOL)


def test_onnx_runtime_scores_equal_pytorch_for_two_shapes(
    served: tuple[Predictor, pl.DataFrame],
) -> None:
    predictor, events = served
    path = export_onnx(predictor.bundle.root)
    assert path == predictor.bundle.root / ONNX_FILE
    scorer = OnnxScorer(predictor.bundle.root, threads=1)
    assert scorer.tasks == tuple(predictor.bundle.tasks)
    # R = 4, N = 11: a full window, 3 events, an empty history (before the first event) and
    # an unknown user; items and coupons mixed
    big = predictor.featurizer(
        events,
        _requests(predictor, events, [(0, 35, 3, 2), (1, 3, 2, 1), (2, 0, 1, 1), (-1, 0, 1, 0)]),
    )
    # R = 2, N = 7, and the window cut to the longest history (T = 5 instead of 30)
    small = predictor.featurizer(events, _requests(predictor, events, [(3, 5, 3, 1), (4, 2, 2, 1)]))
    cut = _trimmed(small)
    shapes = {(f.history.size, f.history.hist_mask.shape[1], f.owner.numel()) for f in (big, cut)}
    assert shapes == {(4, predictor.bundle.max_len, 11), (2, 5, 7)}
    assert big.history.hist_mask.sum(1).tolist() == [predictor.bundle.max_len, 3, 0, 0]
    for f in (big, small):
        groups = f.target_group.tolist()
        assert 0 in groups and 1 in groups
    _assert_equal(scorer.logits(big), predictor.logits(big))
    _assert_equal(scorer.logits(cut), predictor.logits(small))  # the cut is padding only
    _assert_equal(scorer.logits(small), predictor.logits(small))


def test_the_history_blind_model_exports_and_baselines_refuse(
    served: tuple[Predictor, pl.DataFrame], tmp_path: Path
) -> None:
    predictor, events = served
    bundle = predictor.bundle
    groups = {n: t.target for n, t in bundle.tasks.items()}
    torch.manual_seed(0)
    blind = build_model(ModelConfig(encoder="none"), bundle.shape, groups).eval()
    scorer = OnnxScorer(export_onnx(blind, tmp_path / "none.onnx"))
    features = predictor.featurizer(
        events, _requests(predictor, events, [(0, 10, 2, 1), (5, 1, 1, 1)])
    )
    _assert_equal(scorer.logits(features), _torch_logits(blind, features))
    mean = build_model(ModelConfig(encoder="mean"), bundle.shape, groups)
    with pytest.raises(NotImplementedError, match="MeanPoolEncoder is not supported"):
        ScoringGraph(mean)
    with pytest.raises(ValueError, match="path is required"):
        export_onnx(blind)
