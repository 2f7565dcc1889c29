"""Tests of the attention report (src/atrank/report/attention.py, attention_weights.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# The batch helpers of the model tests (pytest puts tests/ on sys.path: no __init__.py there).
from test_model import GROUP_FIELDS, N_ACTIONS, N_BUCKETS, TASKS, VOCAB, make_batch

from atrank.build import build_system, make_datamodule
from atrank.data.batching import time_buckets
from atrank.data.datamodule import ATRankDataModule
from atrank.model import ATRankModel, DataShape, ModelConfig, build_model
from atrank.report.attention import AttentionNames, attention_sections, time_bucket_names
from atrank.report.attention_weights import (
    RELATIONS,
    MassAccumulator,
    encoder_rerun,
    head_weights,
    target_relation,
)
from atrank.report.section import Section, Table
from atrank.runtime import checkpoint_run
from data_prep import contract as C

ACTIONS = ("<pad>", "<oov>", "click", "cart", "purchase", "use")
assert len(ACTIONS) == N_ACTIONS
NAMES = AttentionNames(
    groups=tuple(GROUP_FIELDS),
    actions=ACTIONS,
    time_buckets=time_bucket_names(86_400, N_BUCKETS),
    group_fields=GROUP_FIELDS,
)
LENGTHS = [3, 0, 7, 5, 1, 7]


def model_for(encoder: str = "atrank", **kwargs: object) -> ATRankModel:
    torch.manual_seed(0)
    config = ModelConfig(**({"field_dim": 8, "d_model": 16, "n_heads": 4} | kwargs))  # type: ignore[arg-type]
    config.encoder = encoder
    config.__post_init__()
    shape = DataShape(VOCAB, GROUP_FIELDS, N_ACTIONS, N_BUCKETS, n_users=16)
    return build_model(config, shape, TASKS).eval()


def by_key(sections: list[Section]) -> dict[str, Section]:
    return {s.key: s for s in sections}


def column(table: Table, name: str) -> list[object]:
    i = table.columns.index(name)
    return [r[i] for r in table.rows]


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_the_rerun_gives_the_encoders_memory(n_blocks: int) -> None:
    model = model_for(n_blocks=n_blocks, dropout=0.3)  # eval mode: dropout must not matter
    batch = make_batch(LENGTHS, T=7)
    memory, weights = encoder_rerun(model, batch)
    real, _ = model.encode_history(batch)
    torch.testing.assert_close(memory, real, rtol=0, atol=1e-6)
    assert len(weights) == n_blocks and weights[0].shape == (len(LENGTHS), 4, 7, 7)
    sections = by_key(attention_sections(model, [batch], NAMES))
    assert not any("differs" in n for n in sections["attention/encoder"].notes)


def test_weights_sum_to_one_per_sample_and_padding_gets_nothing() -> None:
    model = model_for(n_blocks=2)
    batch = make_batch(LENGTHS, T=7)
    mask = batch.hist_mask  # (B, T)
    has = mask.any(1)  # (B,)
    for w in encoder_rerun(model, batch)[1]:  # (B, nh, T, T)
        sums = w.sum(-1)  # (B, nh, T)
        real_q = mask[:, None, :].expand_as(sums)
        torch.testing.assert_close(sums[real_q], torch.ones_like(sums[real_q]))
        assert (sums[~real_q] == 0).all()  # padded queries
        assert (w * ~mask[:, None, None, :] == 0).all()  # padded keys
    heads = head_weights(model, batch)
    assert heads is not None and set(heads) == set(TASKS)
    for w in heads.values():  # (B, nh, T)
        torch.testing.assert_close(w.sum(-1)[has], torch.ones(int(has.sum()), 4))
        assert (w.sum(-1)[~has] == 0).all()  # an empty history attends to nothing
        assert (w * ~mask[:, None, :] == 0).all()


@pytest.mark.parametrize("encoder", ["target_att", "bilstm_att"])
def test_memories_of_behaviours_map_back_to_the_history(encoder: str) -> None:
    # bilstm_att moves the real behaviours to the front: the weights must come back to them.
    model = model_for(encoder)
    batch = make_batch(LENGTHS, T=7)
    heads = head_weights(model, batch)
    assert heads is not None
    for w in heads.values():
        has = batch.hist_mask.any(1)
        torch.testing.assert_close(w.sum(-1)[has], torch.ones(int(has.sum()), 4))
        assert (w * ~batch.hist_mask[:, None, :] == 0).all()


def test_aggregation_of_hand_made_weights() -> None:
    # Row 0: [pad, click, cart, cart]; row 1: [click, purchase, click, cart]; row 2: empty.
    codes = torch.tensor([[0, 2, 3, 3], [2, 4, 2, 3], [0, 0, 0, 0]])
    mask = codes > 0
    w = torch.tensor([[0.0, 0.5, 0.25, 0.25], [0.1, 0.6, 0.1, 0.2], [0.0, 0.0, 0.0, 0.0]])
    acc = MassAccumulator(N_ACTIONS)
    acc.add(w[:, None, :], codes, mask)
    assert acc.samples == 2  # the empty history is left out
    click, cart, purchase = 2, 3, 4
    mass, share, lift = acc.mass()[0], acc.share(), acc.lift()[0]
    torch.testing.assert_close(
        mass[[click, cart, purchase]].float(), torch.tensor([0.35, 0.35, 0.3])
    )
    expected_share = torch.tensor([(1 / 3 + 1 / 2) / 2, (2 / 3 + 1 / 4) / 2, (0 + 1 / 4) / 2])
    torch.testing.assert_close(share[[click, cart, purchase]].float(), expected_share)
    torch.testing.assert_close(
        lift[[click, cart, purchase]].float(), torch.tensor([0.35, 0.35, 0.3]) / expected_share
    )
    assert torch.isnan(lift[5])  # "use" never occurs: no lift
    torch.testing.assert_close(float(mass.sum()), 1.0)


def test_uniform_attention_has_lift_one() -> None:
    codes = torch.tensor([[2, 2, 2, 3], [0, 4, 3, 3]])
    mask = codes > 0
    w = mask.float() / mask.sum(1, keepdim=True)
    acc = MassAccumulator(N_ACTIONS)
    acc.add(w[:, None, :], codes, mask)
    lift = acc.lift()[0]
    torch.testing.assert_close(lift[[2, 3, 4]].float(), torch.ones(3))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    heads=st.integers(1, 3),
)
def test_accumulator_matches_an_explicit_loop(seed: int, lengths: list[int], heads: int) -> None:
    g = torch.Generator().manual_seed(seed)
    T = 6  # noqa: N806
    mask = torch.arange(T) >= T - torch.tensor(lengths)[:, None]  # (B, T)
    codes = torch.randint(0, 4, (len(lengths), T), generator=g)
    raw = torch.rand(len(lengths), heads, T, generator=g) * mask[:, None, :]
    w = raw / raw.sum(-1, keepdim=True).clamp(min=1e-12)
    acc = MassAccumulator(4, heads)
    for b in range(len(lengths)):  # one sample at a time: batches add up
        acc.add(w[b : b + 1], codes[b : b + 1], mask[b : b + 1])
    mass = torch.zeros(heads, 4, dtype=torch.float64)
    share = torch.zeros(4, dtype=torch.float64)
    n = 0
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        n += 1
        for t in range(T):
            if mask[b, t]:
                share[codes[b, t]] += 1 / length
                for h in range(heads):
                    mass[h, codes[b, t]] += float(w[b, h, t])
    assert acc.samples == n
    if n:
        torch.testing.assert_close(acc.mass(), mass / n)
        torch.testing.assert_close(acc.share(), share / n)


def test_target_relation() -> None:
    batch = make_batch([4], T=4, seed=3)
    item = 0
    hist = dict(batch.hist)
    hist[C.ITEM] = torch.tensor([[5, 5, 6, 0]])
    hist[C.SHOP] = torch.tensor([[2, 3, 3, 3]])
    target = {**batch.target, C.ITEM: torch.tensor([5]), C.SHOP: torch.tensor([3])}
    batch = replace(
        batch,
        hist=hist,
        hist_group=torch.tensor([[item, item, item, 1]]),
        target=target,
        target_group=torch.tensor([item]),
    )
    rel = target_relation(batch, C.ITEM)
    same, shop, other = (RELATIONS.index(r) for r in ("same object", "same shop", "other"))
    assert rel.tolist() == [[same, same, shop, shop]]
    batch = replace(batch, target={**target, C.ITEM: torch.tensor([C.OOV_INDEX])})
    batch.hist[C.ITEM][0, 0] = C.OOV_INDEX  # out of vocabulary is not "the same object"
    assert target_relation(batch, C.ITEM)[0, 0] == other


def test_time_bucket_names_follow_the_bucketing() -> None:
    names = time_bucket_names(86_400, N_BUCKETS)
    assert names[:3] == ("0d", "1-2d", "3-6d") and names[-1] == "4095d+"
    assert len(names) == N_BUCKETS
    thresholds = torch.tensor(C.time_bucket_thresholds(N_BUCKETS))
    for k, name in enumerate(names):
        low = int(name.rstrip("d+").split("-")[0])
        high = int(name.rstrip("d+").split("-")[-1]) if not name.endswith("+") else low + 10
        gaps = torch.tensor([low, high]) * 86_400
        assert time_buckets(gaps, 86_400, thresholds).tolist() == [k, k], name
    assert time_bucket_names(3_600, 3) == ("0h", "1-2h", "3h+")


def test_sections_tables_and_figures() -> None:
    model = model_for(n_blocks=2)
    batches = [make_batch(LENGTHS, T=7, seed=s) for s in range(3)]
    sections = by_key(attention_sections(model, batches, NAMES, n_users=3, max_batches=2))
    assert list(sections) == ["attention/tasks", "attention/encoder", "attention/timelines"]
    tasks = sections["attention/tasks"]
    assert set(tasks.tables) == {
        "by_action",
        "by_group",
        "by_time",
        "by_relation",
        "by_head_action",
    }
    assert set(tasks.figures) == {"action", "time", "relation"}
    for by in ("action", "group", "time", "relation"):
        table = tasks.tables[f"by_{by}"]
        for task in TASKS:
            masses = [
                m
                for t, m in zip(column(table, "task"), column(table, "mass"), strict=True)
                if t == task
            ]
            assert sum(masses) == pytest.approx(1.0, abs=1e-3), (by, task)  # type: ignore[arg-type]
    assert "<pad>" not in column(tasks.tables["by_action"], "action")
    encoder = sections["attention/encoder"]
    assert set(column(encoder.tables["by_head_action"], "layer")) == {0, 1}
    assert set(column(encoder.tables["by_head_action"], "head")) == {0, 1, 2, 3}
    assert set(encoder.figures) == {"heads"}
    timelines = sections["attention/timelines"].tables["timelines"]
    assert timelines.columns[-3:] == list(TASKS)
    users = column(timelines, "user")
    assert len(set(users)) == 3
    first = batches[0]
    for user in set(users):
        (b,) = (first.user == user).nonzero()[:, 0].tolist()
        rows = [r for r in timelines.rows if r[0] == user]
        assert len(rows) == int(first.hist_mask[b].sum())  # every real behaviour, once
        assert [r[2] for r in rows] == list(range(len(rows)))
        for task, group in TASKS.items():
            weights = column(Table(timelines.columns, rows), task)
            if NAMES.groups[int(first.target_group[b])] == group:
                assert sum(weights) == pytest.approx(1.0, abs=1e-3)  # type: ignore[arg-type]
            else:
                assert set(weights) == {None}
    for s in sections.values():  # the writers close them
        for f in s.figures.values():
            f.clear()


def test_the_models_mode_is_restored() -> None:
    model = model_for().train()
    attention_sections(model, [make_batch(LENGTHS, T=7)], NAMES)
    assert model.training


@pytest.mark.parametrize("encoder", ["mean", "none", "bpr", "cnn", "bilstm"])
def test_encoders_without_attention_yield_notes(encoder: str) -> None:
    model = model_for(encoder)
    sections = by_key(attention_sections(model, [make_batch(LENGTHS, T=7)], NAMES))
    assert set(sections) == {"attention/tasks", "attention/encoder"}
    for s in sections.values():
        assert not s.tables and not s.figures
        assert s.notes
    assert "no self-attention" in sections["attention/encoder"].notes[0]


def test_target_attention_over_raw_behaviours_has_head_weights_only() -> None:
    model = model_for("target_att")
    sections = by_key(attention_sections(model, [make_batch(LENGTHS, T=7)], NAMES))
    assert sections["attention/tasks"].tables["by_action"].rows
    assert sections["attention/timelines"].tables["timelines"].rows
    assert "no self-attention" in sections["attention/encoder"].notes[0]


def test_din_heads_have_no_attention_to_show() -> None:
    model = model_for("din")
    assert all(not hasattr(h, "attention") for h in model.heads.values())
    sections = by_key(attention_sections(model, [make_batch(LENGTHS, T=7)], NAMES))
    assert set(sections) == {"attention/tasks", "attention/encoder"}
    tasks = sections["attention/tasks"]
    assert not tasks.tables and "without an attention block" in tasks.notes[0]


def test_a_head_without_an_attention_block_is_skipped() -> None:
    model = model_for()
    del model.heads["buy"].attention  # as an activation-unit head would be
    sections = by_key(attention_sections(model, [make_batch(LENGTHS, T=7)], NAMES))
    tasks = sections["attention/tasks"]
    assert "buy" not in column(tasks.tables["by_action"], "task")
    assert any("buy" in n for n in tasks.notes)
    assert "buy" not in sections["attention/timelines"].tables["timelines"].columns


def load_run(ckpt: Path) -> tuple[ATRankModel, ATRankDataModule, Path]:
    run, stored = checkpoint_run(ckpt)
    hp = stored["hyper_parameters"]
    data_dir = Path(str(hp["data_dir"]))
    dm = make_datamodule(data_dir, run.data, run.task, run.seed)
    system = build_system(run, dm.prepared_meta, data_dir)
    system.load_state_dict(stored["state_dict"])
    model = system.model
    assert isinstance(model, ATRankModel)
    return model, dm, data_dir


def test_a_trained_run_with_the_prepared_names(tiny_run: dict[str, Path]) -> None:
    model, dm, data_dir = load_run(tiny_run["ckpt"])
    names = AttentionNames.from_meta(dm.prepared_meta, data_dir)
    assert names.actions[:2] == ("<pad>", "<oov>") and "cart" in names.actions
    assert names.vocab_dir is not None and not names.values  # read on demand
    sections = by_key(attention_sections(model, dm.test_dataloader(), names, max_batches=1))
    timelines = sections["attention/timelines"].tables["timelines"]
    objects = column(timelines, "object")
    assert objects and not any(str(o).startswith("#") for o in objects)  # raw values shown
    assert set(column(sections["attention/tasks"].tables["by_action"], "task")) == {
        "click",
        "purchase",
        "coupon",
    }


def action_value(section: Section, table: str, task: str, action: str, measure: str) -> float:
    t = section.tables[table]
    for row in t.rows:
        if row[0] == task and row[t.columns.index("action")] == action:
            return float(row[t.columns.index(measure)])
    raise KeyError((table, task, action))
