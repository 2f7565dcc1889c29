"""Tests of DIN (src/atrank/model/din.py): Dice, the local activation unit, DIN's head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from test_baselines import model_for

# The batch helpers of the model tests (pytest puts tests/ on sys.path: no __init__.py there).
from test_model import (
    TASKS,
    assert_same_output,
    make_batch,
    pad_more,
    rows_of,
    scramble_padding,
)
from torch import Tensor, nn

from atrank.model import ATRankModel, Dice, DINHead, LocalActivationUnit, TaskHead

D = 16  # d_model of model_for


def din_model(**kwargs: object) -> ATRankModel:
    return model_for("din", **kwargs)


def _head(model: ATRankModel, task: str = "click") -> DINHead:
    head = model.heads[task]
    assert isinstance(head, DINHead)
    return head


def _memory_and_targets(
    model: ATRankModel, lengths: list[int], seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(memory (B, 6, d), mask (B, 6), item targets (B, d))`` of a random batch."""
    batch = make_batch(lengths, T=6, seed=seed)
    memory, mask = model.encode_history(batch)
    return memory, mask, model.embedding.embed_target(batch.target, "item")


# ------------------------------------------------------------------ the encoder names


def test_din_and_target_att_build_their_own_heads() -> None:
    din, target_att = din_model(), model_for("target_att")
    assert all(isinstance(h, DINHead) for h in din.heads.values())
    assert all(isinstance(h, TaskHead) for h in target_att.heads.values())
    assert not any(isinstance(m, nn.MultiheadAttention) for m in din.modules())
    assert not any(n.startswith("heads.click.attention.") for n, _ in din.named_parameters())
    # both read the raw behaviours: the memory is the embedded history itself
    batch = make_batch([3, 0, 5], T=5)
    with torch.no_grad():
        for model in (din, target_att):
            memory, mask = model.encode_history(batch)
            assert torch.equal(memory, model.embedding.embed_history(batch))
            assert torch.equal(mask, batch.hist_mask)


def test_a_target_att_state_refused_by_din_names_target_att() -> None:
    """The checkpoints of the encoder once named `din` (now `target_att`) fail clearly."""
    old = model_for("target_att").state_dict()
    with pytest.raises(RuntimeError, match=r"model\.encoder=target_att") as err:
        din_model().load_state_dict(old)
    assert "heads.click.attention.*" in str(err.value)
    din_model().load_state_dict(din_model().state_dict())  # its own state loads


# ------------------------------------------------------------------ activation weights


def test_weights_are_not_softmax_normalised() -> None:
    model = din_model()
    head = _head(model)
    memory, mask, target = _memory_and_targets(model, [4, 1, 6, 3])
    with torch.no_grad():
        w = head.weights(target, memory, mask)  # (B, T)
        sums = w.sum(1)
        assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-2)
        # Shifting the unit's output by c shifts every real weight by c (a softmax would
        # not move) and the user vector by c * sum(h).
        u = head._user_vectors(target, memory, mask, None)
        head.activation_unit.out.bias += 0.5
        shifted = head.weights(target, memory, mask)
        shifted_u = head._user_vectors(target, memory, mask, None)
    torch.testing.assert_close(shifted[mask], w[mask] + 0.5)
    assert (shifted[~mask] == 0).all()
    torch.testing.assert_close(shifted_u, u + 0.5 * (memory * mask.unsqueeze(-1)).sum(1))


def test_user_vector_is_the_weighted_sum_of_the_behaviours() -> None:
    model = din_model()
    head = _head(model)
    memory, mask, target = _memory_and_targets(model, [4, 0, 6])
    with torch.no_grad():
        w = head.weights(target, memory, mask)
        u = head._user_vectors(target, memory, mask, None)
    for b in range(3):
        want = sum((w[b, j] * memory[b, j] for j in range(6) if mask[b, j]), torch.zeros(D))
        torch.testing.assert_close(u[b], want, atol=1e-7, rtol=1e-5)
    assert (u[1] == 0).all()  # an empty history: a zero user vector


@pytest.mark.parametrize("training", [False, True])
def test_padding_gets_zero_weight_and_its_content_changes_nothing(training: bool) -> None:
    model = din_model().train(training)
    head = _head(model)
    memory, mask, target = _memory_and_targets(model, [4, 1, 6, 0, 2])
    ids = torch.arange(5)
    junk = torch.where(mask.unsqueeze(-1), memory, 1e4 * torch.randn_like(memory))
    dice = head.activation_unit.activations[0]
    assert isinstance(dice, Dice)
    with torch.no_grad():
        w = head.weights(target, memory, mask)
        stats = dice.running_mean.clone(), dice.running_var.clone()
        ref = head(target, memory, mask, ids)
        stats_ref = dice.running_mean.clone(), dice.running_var.clone()
        dice.running_mean.copy_(stats[0])  # the same running averages before each call
        dice.running_var.copy_(stats[1])
        out = head(target, junk, mask, ids)
    assert (w[~mask] == 0).all() and (w[mask] != 0).all()
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close((dice.running_mean, dice.running_var), stats_ref, atol=0, rtol=0)


def test_non_finite_padding_reaches_neither_the_logits_nor_the_gradients() -> None:
    model = din_model().train()
    head = _head(model)
    memory, mask, target = _memory_and_targets(model, [4, 1, 6, 0, 2])
    memory = memory.detach().masked_fill(~mask.unsqueeze(-1), float("nan"))
    logits, l2 = head(target.detach(), memory, mask, torch.arange(5))
    assert torch.isfinite(logits).all() and torch.isfinite(l2).all()
    (logits.sum() + l2.sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("training", [False, True])
def test_the_whole_model_ignores_padding(training: bool) -> None:
    model = din_model().train(training)
    batch = make_batch([4, 1, 6, 0, 2], T=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(batch)
        for other in (scramble_padding(batch), pad_more(batch, extra=3)):
            model.load_state_dict(state)  # the same running statistics before each call
            assert_same_output(ref, model(other), tol=1e-5)


# ------------------------------------------------------------------ the activation unit


def test_activation_unit_reads_h_t_their_difference_and_product() -> None:
    model = din_model()
    unit = _head(model).activation_unit
    first = unit.layers[0]
    assert isinstance(first, nn.Linear) and first.in_features == 4 * D
    seen: list[Tensor] = []
    first.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    memory, mask, target = _memory_and_targets(model, [3, 5])
    with torch.no_grad():
        unit(memory, target, mask)
    t = target.unsqueeze(1).expand_as(memory)
    want = torch.cat([memory, t, memory - t, memory * t], dim=-1).reshape(-1, 4 * D)
    (got,) = seen
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_activation_unit_by_hand() -> None:
    """No hidden layer: the weight is one linear form of [h, t, h - t, h * t] (d = 2)."""
    unit = LocalActivationUnit(2, hidden=())
    with torch.no_grad():
        unit.out.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0, -1.0, 3.0, 0.5]]))
        unit.out.bias.fill_(0.25)
        h = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [9.0, 9.0]]])  # (1, 3, 2)
        t = torch.tensor([[2.0, -2.0]])  # (1, 2)
        mask = torch.tensor([[True, True, False]])
        w = unit(h, t, mask)
    # [h, t, h-t, h*t] . weight + 0.25, by hand:
    # h=(1, 2):  1*1 + 2*(-2) + (-1)*(4) + 3*(2) + 0.5*(-4) + 0.25 = -2.75
    # h=(3, -1): 1*3 + 2*(-2) + (-1)*(1) + 3*(6) + 0.5*(2) + 0.25 = 17.25
    torch.testing.assert_close(w, torch.tensor([[-2.75, 17.25, 0.0]]))


def test_prelu_activation_and_hidden_widths_are_configurable() -> None:
    model = din_model(din_hidden=[12, 5], din_activation="prelu").train()
    unit = _head(model).activation_unit
    assert [layer.out_features for layer in unit.layers] == [12, 5]
    assert all(isinstance(a, nn.PReLU) for a in unit.activations)
    assert unit.out.in_features == 5
    out = model(make_batch([3, 0, 6], T=6))
    torch.stack([out.logits[t].sum() for t in TASKS]).sum().backward()
    assert all(p.grad is not None for p in unit.parameters())


# ------------------------------------------------------------------ Dice


def _dice(c: int = 3, seed: int = 0) -> Dice:
    torch.manual_seed(seed)
    dice = Dice(c)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([-0.5, 0.25, 2.0][:c]))
    return dice


def _dice_formula(s: Tensor, mean: Tensor, var: Tensor, alpha: Tensor, eps: float) -> Tensor:
    p = torch.sigmoid((s - mean) / torch.sqrt(var + eps))
    return p * s + (1 - p) * alpha * s


def test_dice_in_training_normalises_by_the_kept_rows_of_the_batch() -> None:
    dice = _dice().train()
    s = 3.0 * torch.randn(10, 3) + 1.0
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    out = dice(s, mask)
    real = s[mask]
    mean, var = real.mean(0), real.var(0, unbiased=False)
    torch.testing.assert_close(out[mask], _dice_formula(real, mean, var, dice.alpha, dice.eps))
    # the same statistics as BatchNorm1d without affine on the kept rows alone
    bn = nn.BatchNorm1d(3, eps=dice.eps, momentum=dice.momentum, affine=False).train()
    normed = bn(real)
    p = torch.sigmoid(normed)
    torch.testing.assert_close(out[mask], p * real + (1 - p) * dice.alpha * real)
    assert bn.running_mean is not None and bn.running_var is not None
    torch.testing.assert_close(dice.running_mean, bn.running_mean)
    torch.testing.assert_close(dice.running_var, bn.running_var)


def test_dropped_rows_never_enter_the_batch_statistics() -> None:
    dice = _dice().train()
    s = torch.randn(8, 3)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    ref = dice(s, mask)
    stats = dice.running_mean.clone(), dice.running_var.clone()
    other = _dice().train()
    junk = torch.where(mask.unsqueeze(-1), s, torch.full_like(s, 1e6))
    junk[1] = float("nan")
    out = other(junk, mask)
    torch.testing.assert_close(out[mask], ref[mask], atol=0, rtol=0)
    torch.testing.assert_close((other.running_mean, other.running_var), stats, atol=0, rtol=0)
    # without the mask the same junk does change the statistics
    assert not torch.allclose(_dice().train()(junk.nan_to_num(), None)[mask], ref[mask])


def test_dice_in_eval_uses_the_running_averages_row_by_row() -> None:
    dice = _dice().eval()
    with torch.no_grad():
        dice.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        dice.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    s = torch.randn(6, 3)
    before = dice.running_mean.clone(), dice.running_var.clone()
    out = dice(s, torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool))
    want = _dice_formula(s, dice.running_mean, dice.running_var, dice.alpha, dice.eps)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(dice(s[:1]), out[:1])  # a row does not depend on the others
    torch.testing.assert_close((dice.running_mean, dice.running_var), before, atol=0, rtol=0)


def test_dice_in_training_depends_on_the_batch_and_moves_its_averages() -> None:
    dice = _dice().train()
    s = torch.randn(6, 3)
    a = dice(s)
    b = dice(torch.cat([s[:1], s[1:] + 5.0]))
    assert not torch.allclose(a[0], b[0])  # row 0 is normalised by the batch it is in
    assert not torch.allclose(dice.running_mean, torch.zeros(3))
    # p(s) is the gate: far below the mean f(s) = alpha * s, far above f(s) = s
    spread = torch.zeros(1000, 3)
    spread[0], spread[-1] = -1e4, 1e4  # 22 standard deviations from the mean
    out = _dice().train()(spread)
    torch.testing.assert_close(out[0], _dice().alpha.detach() * -1e4)
    torch.testing.assert_close(out[-1], spread[-1])


def test_dice_without_a_kept_row_is_finite_and_keeps_its_averages() -> None:
    dice = _dice().train()
    out = dice(torch.randn(4, 3), torch.zeros(4, dtype=torch.bool))
    assert torch.isfinite(out).all()
    assert (dice.running_mean == 0).all() and (dice.running_var == 1).all()
    assert dice(torch.randn(0, 3)).shape == (0, 3)


# ------------------------------------------------------------------ packed multi-target path


@pytest.mark.parametrize("counts", [[2, 1, 4], [1, 1, 10], [3, 0, 2]])
@pytest.mark.parametrize("scorer", ["dot", "mlp"])
def test_scoring_many_targets_per_history_equals_one_row_each(
    counts: list[int], scorer: str
) -> None:
    model = din_model(scorer=scorer)
    users = make_batch([0, 3, 6], T=6, seed=5)
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    owner = owner[torch.randperm(owner.numel(), generator=torch.Generator().manual_seed(1))]
    targets = make_batch([1] * owner.numel(), T=1, seed=9)
    with torch.no_grad():
        memory, mask = model.encode_history(users)
        once = model.score(memory, mask, targets.target, owner)
        each = model(rows_of(users, targets, owner))
        single = []  # one target at a time, against its own history alone
        for i, o in enumerate(owner.tolist()):
            one = {f: v[i : i + 1] for f, v in targets.target.items()}
            single.append(model.score(memory[o : o + 1], mask[o : o + 1], one))
    assert_same_output(once, each, tol=1e-6)
    for task in TASKS:
        torch.testing.assert_close(
            once.logits[task], torch.cat([s.logits[task] for s in single]), atol=1e-6, rtol=1e-6
        )


class _ClickScores(nn.Module):
    """Click logits of item targets against encoded histories (a module, to be traced)."""

    def __init__(self, model: ATRankModel, target: dict[str, Tensor]) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, memory: Tensor, mask: Tensor, item: Tensor, owner: Tensor) -> Tensor:
        target = {**self.target, "item_id": item}
        return self.model.score(memory, mask, target, owner).logits["click"]


def test_din_traces_with_owner() -> None:
    model = din_model()
    users = make_batch([2, 5], T=5, seed=2)
    targets = make_batch([1] * 4, T=1, seed=3).target
    scores = _ClickScores(model, targets)
    owner, other = torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 0])
    with torch.no_grad():
        memory, mask = model.encode_history(users)
        traced = torch.jit.trace(scores, (memory, mask, targets["item_id"], owner))
        for o in (owner, other):
            want = model.score(memory, mask, targets, o).logits["click"]
            torch.testing.assert_close(traced(memory, mask, targets["item_id"], o), want)


# ------------------------------------------------------------------ training


def test_din_trains_through_the_training_command(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    from atrank.evaluate import evaluate
    from atrank.train import train

    cfg = compose_cfg("model/encoder=din", "debug=limit", "data.batch_size=64")
    metrics = train(cfg)
    test = {k: v for k, v in metrics.items() if k.startswith("test/") and k.endswith("/auc")}
    assert test and all(0.0 <= v <= 1.0 for v in test.values())
    (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    means = [v for k, v in state.items() if k.endswith("unit.activations.0.running_mean")]
    assert len(means) == 3  # one DIN head per task, Dice statistics saved
    assert all(not torch.equal(m, torch.zeros_like(m)) for m in means)  # learnt in training
    assert not any(".attention." in k for k in state)
    again = evaluate(compose_cfg(f"ckpt_path={ckpt}", config_name="eval"))
    assert {k: again[k] for k in test} == pytest.approx(test, abs=1e-6)
