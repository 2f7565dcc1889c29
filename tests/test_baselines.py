"""Tests of the baseline encoders (src/atrank/model/baselines.py) behind the shared heads."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

# The batch helpers of the model tests (pytest puts tests/ on sys.path: no __init__.py there).
from test_model import (
    GROUP_FIELDS,
    N_ACTIONS,
    N_BUCKETS,
    TASKS,
    VOCAB,
    assert_same_output,
    logit_sum,
    make_batch,
    pad_more,
    scramble_padding,
)
from torch import Tensor

from atrank.model import ENCODERS, ATRankModel, DataShape, ModelConfig, build_model
from atrank.model.baselines import BiLSTMEncoder, MeanPoolEncoder, left_align

ALL = ("none", "mean", "bpr", "bilstm", "bilstm_att", "cnn", "target_att", "din", "atrank")
#: Memory length T' per encoder: "T" follows the history, an int is fixed.
MEMORY_LEN: dict[str, int | str] = {
    "none": 0,
    "mean": 1,
    "bpr": 1,
    "bilstm": 1,
    "bilstm_att": "T",
    "cnn": 1,
    "target_att": "T",
    "din": "T",
    "atrank": "T",
}
N_USERS = 16


def model_for(encoder: str, n_users: int = N_USERS, **kwargs: object) -> ATRankModel:
    torch.manual_seed(0)
    config = ModelConfig(**({"field_dim": 8, "d_model": 16, "n_heads": 4} | kwargs))  # type: ignore[arg-type]
    config.encoder = encoder
    config.__post_init__()
    shape = DataShape(VOCAB, GROUP_FIELDS, N_ACTIONS, N_BUCKETS, n_users=n_users)
    return build_model(config, shape, TASKS).eval()


def test_registry_holds_every_encoder() -> None:
    assert set(ENCODERS) == set(ALL)


@pytest.mark.parametrize("encoder", ALL)
def test_forward_backward_and_empty_histories(encoder: str) -> None:
    model = model_for(encoder).train()
    out = model(make_batch([3, 0, 7, 5, 0], T=7))
    for task in TASKS:
        assert out.logits[task].shape == out.l2[task].shape == (5,)
        assert torch.isfinite(out.logits[task]).all(), task
        assert torch.isfinite(out.l2[task]).all(), task
    logit_sum(out).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("encoder", ALL)
def test_memory_shapes_and_masks(encoder: str) -> None:
    model = model_for(encoder)
    batch = make_batch([3, 0, 7, 5], T=7)
    memory, mask = model.encode_history(batch)
    expected = MEMORY_LEN[encoder]
    t_mem = 7 if expected == "T" else expected
    assert memory.shape == (4, t_mem, 16)
    assert mask.shape == (4, t_mem) and mask.dtype == torch.bool
    if encoder != "none" and model.encoder.uses_history:
        assert not mask[1].any()  # empty history: nothing to attend to
        assert mask[[0, 2, 3]].any(dim=1).all()


@pytest.mark.parametrize("left_pad", [True, False])
@pytest.mark.parametrize("encoder", ALL)
def test_padding_never_changes_outputs(encoder: str, left_pad: bool) -> None:
    model = model_for(encoder)
    batch = make_batch([4, 1, 6, 0, 2], T=6, left_pad=left_pad)
    with torch.no_grad():
        ref = model(batch)
        assert_same_output(ref, model(scramble_padding(batch)), tol=1e-5)
        assert_same_output(ref, model(pad_more(batch, extra=3, left=left_pad)), tol=1e-5)


@pytest.mark.parametrize("encoder", [e for e in ALL if e not in ("none", "bpr")])
def test_history_encoders_read_the_history(encoder: str) -> None:
    model = model_for(encoder)
    batch = make_batch([4, 3], T=5)
    changed = replace(batch, hist_time=torch.where(batch.hist_mask, 1 + batch.hist_time % 5, 0))
    with torch.no_grad():
        a, b = model(batch), model(changed)
    assert not torch.allclose(a.logits["click"], b.logits["click"])


def test_bpr_reads_the_user_not_the_history() -> None:
    model = model_for("bpr")
    a, b = make_batch([0, 4, 6], T=6, seed=3), make_batch([5, 1, 2], T=9, seed=4)
    b = replace(b, target=a.target, target_group=a.target_group)
    with torch.no_grad():
        assert_same_output(model(a), model(b), tol=0)
        other = model(replace(a, user=a.user + 5))
    assert not torch.allclose(model(a).logits["click"], other.logits["click"])


def _exempt(encoder: str) -> list[str]:
    """Parameters that cannot get a gradient with this encoder, and why."""
    out: list[str] = []
    if MEMORY_LEN[encoder] == 1:  # softmax over one slot is constant: no gradient to Q, K
        out.append(r"heads\.\w+\.attention\.[qk]_proj\.")
    if MEMORY_LEN[encoder] == 0:  # nothing to attend to
        out.append(r"heads\.\w+\.attention\.[qkv]_proj\.")
    if encoder in ("none", "bpr"):  # the history is never embedded
        out.append(r"embedding\.(action|time)\.")
    return out


@pytest.mark.parametrize("encoder", ALL)
def test_gradients_reach_every_parameter(encoder: str) -> None:
    model = model_for(encoder).train()
    out = model(make_batch([6, 3, 6, 5, 4, 6, 2, 6], T=6))
    (logit_sum(out) + torch.stack([out.l2[t].sum() for t in TASKS]).sum()).backward()
    exempt = [re.compile(p) for p in _exempt(encoder)]
    checked = 0
    for name, p in model.named_parameters():
        if any(e.match(name) for e in exempt):
            continue
        checked += 1
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    encoder_params = sum(1 for _ in model.encoder.parameters())
    assert checked >= encoder_params  # every encoder parameter was checked


def test_unknown_encoder_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"^encoder\b") as err:
        model_for("transformer")
    for name in ALL:
        assert repr(name) in str(err.value)


@pytest.mark.parametrize("n_users", [0, -1])
def test_bpr_needs_the_number_of_users(n_users: int) -> None:
    with pytest.raises(ValueError, match=r"^n_users\b"):
        model_for("bpr", n_users=n_users)


def test_left_align_keeps_order_and_zeroes_the_rest() -> None:
    x = torch.arange(1.0, 13.0).view(2, 6, 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 0, 0]], dtype=torch.bool)
    aligned, lengths = left_align(x, mask)
    assert lengths.tolist() == [3, 2]
    assert aligned.squeeze(-1).tolist() == [[4, 5, 6, 0, 0, 0], [7, 9, 0, 0, 0, 0]]


def test_mean_pool_is_the_mean_of_real_behaviours() -> None:
    x = torch.randn(3, 4, 5)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    memory, memory_mask = MeanPoolEncoder()(x, mask, make_batch([3, 0, 4], T=4))
    torch.testing.assert_close(memory[0, 0], x[0, 1:].mean(0))
    torch.testing.assert_close(memory[2, 0], x[2].mean(0))
    assert memory_mask.squeeze(1).tolist() == [True, False, True]


@pytest.mark.parametrize("attend", [False, True])
def test_bilstm_equals_the_lstm_run_on_each_history_alone(attend: bool) -> None:
    torch.manual_seed(0)
    enc = BiLSTMEncoder(8, attend=attend).eval()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        memory, memory_mask = enc(x, mask, make_batch([3, 1, 5], T=5))
        for b in range(3):
            steps, (h_n, _) = enc.lstm(x[b, mask[b]].unsqueeze(0))  # (1, L, 2H), (2, 1, H)
            n = int(mask[b].sum())
            if attend:
                want: Tensor = enc.proj(steps[0])  # (L, d)
                assert memory_mask[b].tolist() == [True] * n + [False] * (5 - n)
                torch.testing.assert_close(memory[b, :n], want, atol=1e-5, rtol=1e-5)
            else:
                want = enc.proj(torch.cat([h_n[0, 0], h_n[1, 0]]))  # (d,)
                torch.testing.assert_close(memory[b, 0], want, atol=1e-5, rtol=1e-5)
