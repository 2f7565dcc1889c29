"""Fixed-seed snapshot of every encoder's logits on a tiny batch.

The golden values were written by the code before the typed-config refactor; a change that
moves any logit (initialisation order, a layer, a default) fails here, so refactors that must
not change numbers are checked against them. ``target_att`` holds the values written for the
encoder then named ``din`` (the rename must not move them); ``din`` (DIN proper) was added
with its own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atrank.data.batch import Batch

GOLDEN = Path(__file__).parent / "golden" / "model_logits.json"
ENCODERS = ("atrank", "none", "mean", "bpr", "bilstm", "bilstm_att", "cnn", "target_att", "din")
VOCAB = {
    "item_id": 50,
    "category_id": 8,
    "brand_id": 9,
    "shop_id": 10,
    "coupon_id": 20,
    "discount_level": 5,
}
GROUP_FIELDS = {
    "item": ("item_id", "category_id", "brand_id", "shop_id"),
    "coupon": ("coupon_id", "shop_id", "discount_level"),
}
TASK_GROUPS = {"click": "item", "buy": "item", "redeem": "coupon"}
SHAPE_ARGS = {
    "vocab_sizes": VOCAB,
    "group_fields": GROUP_FIELDS,
    "n_actions": 6,
    "n_time_buckets": 13,
    "n_users": 7,
}


def golden_batch() -> Batch:
    """Four rows with 0, 1, 3 and 5 behaviours (left-padded to 6), both groups mixed."""
    g = torch.Generator().manual_seed(3)
    lengths, T = [0, 1, 3, 5], 6  # noqa: N806
    B = len(lengths)  # noqa: N806
    mask = torch.arange(T) >= T - torch.tensor(lengths)[:, None]  # (B, T)
    groups = list(GROUP_FIELDS)
    hist_group = torch.randint(len(groups), (B, T), generator=g) * mask
    hist = {f: torch.zeros(B, T, dtype=torch.long) for f in VOCAB}
    target_group = torch.randint(len(groups), (B,), generator=g)
    target = {f: torch.zeros(B, dtype=torch.long) for f in VOCAB}
    for g_idx, group in enumerate(groups):
        for f in GROUP_FIELDS[group]:
            ids = torch.randint(1, VOCAB[f], (B, T), generator=g)
            hist[f] = torch.where((hist_group == g_idx) & mask, ids, hist[f])
            tids = torch.randint(1, VOCAB[f], (B,), generator=g)
            target[f] = torch.where(target_group == g_idx, tids, target[f])
    return Batch(
        hist=hist,
        hist_action=torch.randint(1, 6, (B, T), generator=g) * mask,
        hist_time=torch.randint(1, 14, (B, T), generator=g) * mask,
        hist_group=hist_group,
        hist_mask=mask,
        target=target,
        target_group=target_group,
        labels={t: torch.zeros(B) for t in TASK_GROUPS},
        label_mask={t: target_group == groups.index(grp) for t, grp in TASK_GROUPS.items()},
        user=torch.tensor([0, 1, 2, 6]),
    )


@pytest.mark.parametrize("encoder", ENCODERS)
def test_default_model_logits_match_the_snapshot(encoder: str) -> None:
    from atrank.model import DataShape, ModelConfig, build_model

    golden = json.loads(GOLDEN.read_text())["encoders"][encoder]
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder=encoder), DataShape(**SHAPE_ARGS), TASK_GROUPS)
    with torch.no_grad():
        logits = model.eval()(golden_batch()).logits
    assert set(logits) == set(golden)
    for task, values in golden.items():
        torch.testing.assert_close(logits[task], torch.tensor(values), rtol=0, atol=1e-6)
