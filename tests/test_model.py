"""Tests of the ATRank-MT model (src/atrank/model): masking, groups, tasks by name, init."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from atrank.data.batch import Batch
from atrank.model import (
    ATRankModel,
    BehaviourEmbedding,
    DataShape,
    ModelConfig,
    ModelOutput,
    MultiHeadAttentionBlock,
    NoHistoryEncoder,
    TaskHead,
    build_model,
)
from atrank.model.config import SettingError

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
TASKS = {"click": "item", "buy": "item", "redeem": "coupon"}
N_ACTIONS = 6
N_BUCKETS = 13
SHAPE = DataShape(VOCAB, GROUP_FIELDS, N_ACTIONS, N_BUCKETS)


def make_batch(lengths: list[int], T: int, seed: int = 0, left_pad: bool = True) -> Batch:  # noqa: N803
    """A random batch: row b has ``lengths[b]`` real behaviours, padded to ``T``."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)  # noqa: N806
    pos = torch.arange(T)
    n = torch.tensor(lengths)[:, None]
    mask = pos >= T - n if left_pad else pos < n  # (B, T)
    groups = list(GROUP_FIELDS)

    def ids(field: str, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(1, VOCAB[field], shape, generator=g)

    hist_group = torch.randint(len(groups), (B, T), generator=g) * mask
    hist = {f: torch.zeros(B, T, dtype=torch.long) for f in VOCAB}
    target_group = torch.randint(len(groups), (B,), generator=g)
    target = {f: torch.zeros(B, dtype=torch.long) for f in VOCAB}
    for g_idx, group in enumerate(groups):
        in_hist = (hist_group == g_idx) & mask
        for f in GROUP_FIELDS[group]:
            hist[f] = torch.where(in_hist, ids(f, (B, T)), hist[f])
            target[f] = torch.where(target_group == g_idx, ids(f, (B,)), target[f])
    return Batch(
        hist=hist,
        hist_action=torch.randint(1, N_ACTIONS, (B, T), generator=g) * mask,
        hist_time=torch.randint(1, N_BUCKETS + 1, (B, T), generator=g) * mask,
        hist_group=hist_group,
        hist_mask=mask,
        target=target,
        target_group=target_group,
        labels={t: torch.randint(0, 2, (B,), generator=g).float() for t in TASKS},
        label_mask={t: target_group == groups.index(grp) for t, grp in TASKS.items()},
        user=torch.arange(B),
    )


def scramble_padding(batch: Batch, seed: int = 1) -> Batch:
    """The same batch with random (valid-range) junk at every padded history position."""
    g = torch.Generator().manual_seed(seed)
    pad = ~batch.hist_mask

    def junk(x: Tensor, high: int, low: int = 0) -> Tensor:
        return torch.where(pad, torch.randint(low, high, x.shape, generator=g), x)

    return replace(
        batch,
        hist={f: junk(x, VOCAB[f]) for f, x in batch.hist.items()},
        hist_action=junk(batch.hist_action, N_ACTIONS),
        hist_time=junk(batch.hist_time, N_BUCKETS + 1),
        hist_group=junk(batch.hist_group, len(GROUP_FIELDS)),
    )


def pad_more(batch: Batch, extra: int, left: bool = True) -> Batch:
    """The same batch with ``extra`` more padded positions (holding junk) on one side."""

    def grow(x: Tensor, fill: int) -> Tensor:
        block = torch.full((x.shape[0], extra), fill, dtype=x.dtype)
        return torch.cat([block, x] if left else [x, block], dim=1)

    return replace(
        batch,
        hist={f: grow(x, 3) for f, x in batch.hist.items()},
        hist_action=grow(batch.hist_action, 2),
        hist_time=grow(batch.hist_time, 5),
        hist_group=grow(batch.hist_group, 1),
        hist_mask=grow(batch.hist_mask, 0),
    )


def small_model(**kwargs: object) -> ATRankModel:
    torch.manual_seed(0)
    args: dict[str, object] = {"field_dim": 8, "d_model": 16, "n_heads": 4} | kwargs
    return build_model(ModelConfig(**args), SHAPE, TASKS).eval()  # type: ignore[arg-type]


def assert_same_output(a: ModelOutput, b: ModelOutput, tol: float = 1e-6) -> None:
    """Same logits and L2 terms per task (L2 is ~d, so its tolerance is relative too)."""
    assert a.logits.keys() == b.logits.keys()
    for task in a.logits:
        torch.testing.assert_close(a.logits[task], b.logits[task], atol=tol, rtol=tol)
        torch.testing.assert_close(a.l2[task], b.l2[task], atol=tol, rtol=tol)


def logit_sum(out: ModelOutput) -> Tensor:
    """A scalar that depends on every task's logits."""
    return torch.stack([out.logits[t].sum() for t in TASKS]).sum()


def test_forward_shapes() -> None:
    out = small_model()(make_batch([3, 0, 7, 5], T=7))
    assert set(out.logits) == set(out.l2) == set(TASKS)
    for task in TASKS:
        assert out.logits[task].shape == out.l2[task].shape == (4,)
        assert torch.isfinite(out.logits[task]).all()
        assert (out.l2[task] >= 0).all()


@pytest.mark.parametrize("score", ["dot", "bilinear"])
def test_padded_keys_get_zero_weight(score: str) -> None:
    torch.manual_seed(0)
    block = MultiHeadAttentionBlock(16, 4, 4, score=score)  # type: ignore[arg-type]
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    w = block.attention_weights(x, x, mask, mask)  # (B, nh, T, T)
    assert (w.masked_select(~mask[:, None, None, :]) == 0).all()  # padded keys
    assert (w.masked_select(~mask[:, None, :, None]) == 0).all()  # padded queries
    sums = w.sum(-1)  # (B, nh, T)
    valid = mask[:, None, :].expand_as(sums)
    torch.testing.assert_close(sums[valid], torch.ones(int(valid.sum())))


@pytest.mark.parametrize("left_pad", [True, False])
@pytest.mark.parametrize(("score", "scorer"), [("dot", "dot"), ("bilinear", "mlp")])
def test_padding_content_does_not_change_outputs(left_pad: bool, score: str, scorer: str) -> None:
    model = small_model(score=score, scorer=scorer)
    batch = make_batch([4, 1, 6, 0, 2], T=6, left_pad=left_pad)
    assert_same_output(model(batch), model(scramble_padding(batch)))


@pytest.mark.parametrize("left", [True, False])
def test_longer_padding_does_not_change_outputs(left: bool) -> None:
    model = small_model()
    batch = make_batch([4, 1, 6, 0, 2], T=6, left_pad=left)
    assert_same_output(model(batch), model(pad_more(batch, extra=5, left=left)))


def test_empty_history_equals_history_blind_model() -> None:
    model = small_model()
    blind = ATRankModel(model.embedding, NoHistoryEncoder(), model.heads, TASKS, init_weights=False)
    batch = make_batch([0, 4, 6], T=6)
    out, out_blind = model(batch), blind(batch)
    for task in TASKS:
        assert torch.isfinite(out.logits[task]).all()
        for got, blind_got in ((out.logits, out_blind.logits), (out.l2, out_blind.l2)):
            torch.testing.assert_close(got[task][0], blind_got[task][0], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out.logits[task][1:], out_blind.logits[task][1:])


def test_history_blind_model_ignores_history() -> None:
    blind = small_model(encoder="none")
    a, b = make_batch([0, 4, 6], T=6, seed=3), make_batch([5, 1, 2], T=9, seed=4)
    b = replace(b, target=a.target, target_group=a.target_group)
    assert_same_output(blind(a), blind(b))


def reference_block(
    block: MultiHeadAttentionBlock, query: Tensor, kv: Tensor, key_mask: Tensor, query_mask: Tensor
) -> Tensor:
    """The block written out head by head, independently of the module's code paths."""
    nh, hs = block.n_heads, block.head_dim
    q_all, k_all = F.relu(block.q_proj(query)), F.relu(block.k_proj(kv))
    v_all = F.relu(block.v_proj(kv))
    heads = []
    for h in range(nh):
        cols = slice(h * hs, (h + 1) * hs)
        q, k, v = q_all[..., cols], k_all[..., cols], v_all[..., cols]
        form = block.bilinear[h] if block.bilinear is not None else torch.eye(hs)
        s = q @ form @ k.transpose(1, 2) / math.sqrt(hs)  # (B, Tq, Tk)
        s = s.masked_fill(~key_mask[:, None, :], float("-inf"))
        w = torch.softmax(s, dim=-1).nan_to_num(0.0) * query_mask[:, :, None]
        heads.append(w @ v)
    x = block.norm1(query + torch.cat(heads, dim=-1))
    return block.norm2(x + block.ffn(x))


@pytest.mark.parametrize("score", ["dot", "bilinear"])
def test_block_matches_explicit_formula(score: str) -> None:
    torch.manual_seed(0)
    block = MultiHeadAttentionBlock(16, 4, 8, score=score).eval()  # type: ignore[arg-type]
    if block.bilinear is not None:
        nn.init.normal_(block.bilinear)
    query, kv = torch.randn(4, 3, 16), torch.randn(4, 5, 16)
    key_mask = torch.rand(4, 5) > 0.4
    key_mask[1] = False  # a row with no valid key
    query_mask = torch.rand(4, 3) > 0.3
    expected = reference_block(block, query, kv, key_mask, query_mask)
    for use_sdpa in (True, False):
        block.use_sdpa = use_sdpa
        got = block(query, kv, key_mask, query_mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # No valid key: the block is the block applied to the query alone.
    alone = block(query[1:2], kv[1:2, :0], key_mask[1:2, :0], query_mask[1:2])
    torch.testing.assert_close(got[1:2], alone, atol=1e-6, rtol=0)


def test_bilinear_starts_as_dot_and_learns_another_form() -> None:
    torch.manual_seed(0)
    dot = MultiHeadAttentionBlock(16, 4, 4, score="dot")
    bil = MultiHeadAttentionBlock(16, 4, 4, score="bilinear")
    bil.load_state_dict(dot.state_dict(), strict=False)
    x, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(bil(x, x, mask), dot(x, x, mask), atol=1e-6, rtol=0)
    assert bil.bilinear is not None
    nn.init.normal_(bil.bilinear)
    assert not torch.allclose(bil(x, x, mask), dot(x, x, mask), atol=1e-3)
    model = small_model(score="bilinear").train()
    out = model(make_batch([3, 5], T=5))
    logit_sum(out).backward()
    grad = model.get_parameter("encoder.blocks.0.bilinear").grad
    assert grad is not None
    assert grad.abs().sum() > 0


def test_oldest_time_bucket_has_a_trained_row() -> None:
    model = small_model().train()
    assert model.embedding.time.num_embeddings == N_BUCKETS + 1
    batch = make_batch([4, 3], T=4)
    batch.hist_time[batch.hist_mask] = N_BUCKETS  # bucket 12, the oldest
    logit_sum(model(batch)).backward()
    grad = model.embedding.time.weight.grad
    assert grad is not None
    assert grad[N_BUCKETS].abs().sum() > 0
    assert grad[:N_BUCKETS].abs().sum() == 0


def test_target_embedding_has_empty_action_and_time_slots() -> None:
    emb = BehaviourEmbedding(SHAPE, field_dim=8, d_model=16)
    batch = make_batch([3, 2, 4], T=4)
    before = {g: emb.embed_target(batch.target, g) for g in GROUP_FIELDS}
    hist_before = emb.embed_history(batch)
    with torch.no_grad():
        emb.action.weight.normal_()
        emb.time.weight.normal_()
    for g in GROUP_FIELDS:
        torch.testing.assert_close(emb.embed_target(batch.target, g), before[g], atol=0, rtol=0)
    assert not torch.allclose(emb.embed_history(batch), hist_before)


def test_each_group_uses_its_own_projection() -> None:
    emb = BehaviourEmbedding(SHAPE, field_dim=8, d_model=16)
    batch = make_batch([4, 4], T=4)
    before = emb.embed_history(batch)
    with torch.no_grad():
        emb.get_parameter("proj.coupon.weight").normal_()
    after = emb.embed_history(batch)
    is_item = (batch.hist_group == 0) & batch.hist_mask
    is_coupon = (batch.hist_group == 1) & batch.hist_mask
    assert is_item.any() and is_coupon.any()
    torch.testing.assert_close(after[is_item], before[is_item], atol=0, rtol=0)
    assert not torch.allclose(after[is_coupon], before[is_coupon])
    assert (after[~batch.hist_mask] == 0).all()


def test_tasks_are_keyed_by_name() -> None:
    model = small_model()
    batch = make_batch([3, 5, 1], T=5)
    # Heads in reversed order, task groups rotated: no two orders agree.
    names = list(TASKS)
    shuffled = ATRankModel(
        model.embedding,
        model.encoder,
        nn.ModuleDict({t: model.heads[t] for t in reversed(names)}),
        {t: TASKS[t] for t in names[1:] + names[:1]},
        init_weights=False,
    )
    assert_same_output(model(batch), shuffled(batch), tol=0)
    out = model(batch)
    assert not torch.allclose(out.logits["click"], out.logits["buy"])  # distinct heads


def test_history_is_encoded_once_for_all_tasks() -> None:
    model = small_model()
    calls: list[int] = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    out = model(make_batch([3, 5], T=5))
    assert len(out.logits) == 3
    assert len(calls) == 1


@pytest.mark.parametrize(("score", "scorer"), [("dot", "dot"), ("bilinear", "mlp")])
def test_gradients_reach_every_parameter(score: str, scorer: str) -> None:
    model = small_model(score=score, scorer=scorer, n_blocks=2).train()
    out = model(make_batch([6, 3, 6, 5, 4, 6, 2, 6], T=6))
    (logit_sum(out) + torch.stack([out.l2[t].sum() for t in TASKS]).sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_init_zeroes_padding_rows_and_bias_tables() -> None:
    model = small_model()
    tables = [*model.embedding.fields.values(), model.embedding.action, model.embedding.time]
    for emb in tables:
        assert isinstance(emb, nn.Embedding)
        assert (emb.weight[0] == 0).all()
    for head in model.heads.values():
        assert isinstance(head, TaskHead) and head.bias is not None
        assert (head.bias.weight == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"encoder": "lstm"}, "encoder"),
        ({"n_heads": 3}, "n_heads"),
        ({"d_model": 0}, "d_model"),
        ({"ffn_dim": 0}, "ffn_dim"),
        ({"d_model": 2, "n_heads": 1}, "ffn_dim"),  # d_model // 4 = 0
        ({"n_blocks": 0}, "n_blocks"),
        ({"dropout": 1.0}, "dropout"),
        ({"score": "cosine"}, "score"),
        ({"scorer": "fm"}, "scorer"),
        ({"mlp_hidden": [8, 0]}, "mlp_hidden"),
        ({"din_hidden": [0]}, "din_hidden"),
        ({"din_activation": "relu"}, "din_activation"),
        ({"l2_weight": -1.0}, "l2_weight"),
    ],
)
def test_model_config_errors_name_the_setting(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(SettingError, match=rf"^{argument}\b") as e:
        ModelConfig(**kwargs)  # type: ignore[arg-type]
    assert e.value.key == argument


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"vocab_sizes": {k: v for k, v in VOCAB.items() if k != "shop_id"}}, "vocab_sizes"),
        ({"vocab_sizes": VOCAB | {"shop_id": 1}}, "vocab_sizes"),
        ({"n_actions": 1}, "n_actions"),
        ({"n_time_buckets": 0}, "n_time_buckets"),
        ({"group_fields": {"item": ()}}, "group_fields"),
        ({"group_fields": {}}, "group_fields"),
        ({"n_users": -1}, "n_users"),
    ],
)
def test_data_shape_errors_name_the_value(kwargs: dict[str, object], argument: str) -> None:
    args: dict[str, object] = {
        "vocab_sizes": VOCAB,
        "group_fields": GROUP_FIELDS,
        "n_actions": N_ACTIONS,
        "n_time_buckets": N_BUCKETS,
    } | kwargs
    with pytest.raises(SettingError, match=rf"^{argument}\b"):
        DataShape(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("task_groups", [{"search": "query"}, {}])
def test_build_model_refuses_tasks_on_unknown_groups(task_groups: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"^task_groups\b"):
        build_model(ModelConfig(), SHAPE, task_groups)


@cache
def _property_model() -> ATRankModel:
    return small_model(n_blocks=2)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 8), min_size=1, max_size=5),
    extra=st.integers(0, 4),
    left_pad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_padding_invariance_property(
    lengths: list[int], extra: int, left_pad: bool, seed: int
) -> None:
    model = _property_model()
    batch = make_batch(lengths, T=8, seed=seed, left_pad=left_pad)
    varied = pad_more(scramble_padding(batch, seed=seed + 1), extra, left=left_pad)
    with torch.no_grad():
        assert_same_output(model(batch), model(varied))


def rows_of(users: Batch, targets: Batch, owner: torch.Tensor) -> Batch:
    """One batch row per target: its owner's history (``users`` row ``owner[i]``) and target."""
    return replace(
        users,
        hist={f: v[owner] for f, v in users.hist.items()},
        hist_action=users.hist_action[owner],
        hist_time=users.hist_time[owner],
        hist_group=users.hist_group[owner],
        hist_mask=users.hist_mask[owner],
        target=targets.target,
        user=users.user[owner],
    )


@pytest.mark.parametrize("counts", [[2, 1, 4], [1, 1, 10], [3, 0, 2]])
@pytest.mark.parametrize("scorer", ["dot", "mlp"])
def test_scoring_many_targets_per_history_equals_one_row_each(
    counts: list[int], scorer: str
) -> None:
    """model.score with ``owner`` (each history encoded once, its targets scored together,
    padded or gathered) gives each target the logits of a batch row of its own."""
    model = small_model(scorer=scorer)
    users = make_batch([0, 3, 6], T=6, seed=5)
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    owner = owner[torch.randperm(owner.numel(), generator=torch.Generator().manual_seed(1))]
    targets = make_batch([1] * owner.numel(), T=1, seed=9)
    with torch.no_grad():
        memory, mask = model.encode_history(users)
        once = model.score(memory, mask, targets.target, owner)
        each = model(rows_of(users, targets, owner))
    assert_same_output(once, each, tol=1e-5)
