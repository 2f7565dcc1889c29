"""Batch assembly from stored timelines: windows, padding, time buckets, sharding."""

from __future__ import annotations

import torch

from atrank.data.batching import BatchBuilder, BatchIndexSampler, time_buckets
from atrank.data.store import SampleTable, Timeline
from data_prep import contract as C

DAY = 86_400


def _thresholds(n: int = 13) -> torch.Tensor:
    return torch.tensor(C.time_bucket_thresholds(n))


def test_thirteen_time_buckets_the_last_one_reachable() -> None:
    gaps_days = torch.tensor([0, 1, 2, 3, 4, 7, 8, 2047, 4094, 4095, 10_000_000])
    b = time_buckets(gaps_days * DAY, DAY, _thresholds())
    assert b.tolist() == [0, 1, 1, 2, 2, 3, 3, 11, 11, 12, 12]
    assert (
        int(b.max()) == 12
    )  # the 13th bucket exists (the official code's depth-12 one-hot lost it)


def test_time_bucket_unit_is_configurable() -> None:
    hour = 3600
    b = time_buckets(torch.tensor([0, hour - 1, hour, 3 * hour]), hour, _thresholds())
    assert b.tolist() == [0, 0, 1, 2]


def _toy() -> tuple[Timeline, SampleTable]:
    # user 0: rows 0..4 at days 0..4; user 1: rows 5..6 at days 10, 11.
    ts = torch.tensor([0, 1, 2, 3, 4, 10, 11]) * DAY
    n = ts.numel()
    item = torch.arange(2, 2 + n, dtype=torch.int32)
    timeline = Timeline(
        ts=ts,
        group=torch.zeros(n, dtype=torch.int8),
        action=torch.full((n,), 2, dtype=torch.int32),
        fields={
            f: (item if f == C.ITEM else torch.zeros(n, dtype=torch.int32)) for f in C.ID_FIELDS
        },
    )
    # sample 0: user 0 at day 4 (history rows 0..3); sample 1: user 1 at day 10 (no history);
    # sample 2: user 1 at day 30 (rows 5, 6).
    samples = SampleTable(
        user=torch.tensor([0, 1, 1]),
        ts=torch.tensor([4, 10, 30]) * DAY,
        group=torch.zeros(3, dtype=torch.int8),
        fields={f: torch.full((3,), 9, dtype=torch.int32) for f in C.ID_FIELDS},
        hist_start=torch.tensor([0, 5, 5]),
        hist_end=torch.tensor([4, 5, 7]),
        labels={"click": torch.tensor([1, -1, 0], dtype=torch.int8)},
        prob={},
    )
    return timeline, samples


def test_batch_keeps_the_most_recent_window_right_aligned() -> None:
    timeline, samples = _toy()
    b = BatchBuilder(timeline, max_len=3, unit_seconds=DAY, n_buckets=13)(
        samples, torch.tensor([0, 1, 2])
    )
    # sample 0 has 4 past behaviours, window 3: rows 1, 2, 3 (items 3, 4, 5).
    assert b.hist[C.ITEM][0].tolist() == [3, 4, 5]
    assert b.hist_mask[0].tolist() == [True, True, True]
    # gaps 3, 2, 1 days -> buckets 2, 1, 1 -> stored +1
    assert b.hist_time[0].tolist() == [3, 2, 2]
    # sample 1: empty history, everything padding and zero
    assert b.hist_mask[1].tolist() == [False, False, False]
    assert b.hist[C.ITEM][1].tolist() == [0, 0, 0] and b.hist_time[1].tolist() == [0, 0, 0]
    # sample 2: two behaviours, left-padded; never reaches into user 0's rows
    assert b.hist_mask[2].tolist() == [False, True, True]
    assert b.hist[C.ITEM][2].tolist() == [0, 7, 8]
    assert b.hist_action[2].tolist() == [0, 2, 2]


def test_labels_and_masks_keyed_by_task() -> None:
    timeline, samples = _toy()
    b = BatchBuilder(timeline, max_len=2, unit_seconds=DAY, n_buckets=13)(
        samples, torch.tensor([0, 1, 2])
    )
    assert b.label_mask["click"].tolist() == [True, False, True]
    assert b.labels["click"].tolist() == [1.0, 0.0, 0.0]


def test_eval_sharding_covers_every_sample_once() -> None:
    n, world = 1003, 3
    seen = torch.cat(
        [
            torch.cat(list(BatchIndexSampler(n, 64, shuffle=False, rank=r, world_size=world)))
            for r in range(world)
        ]
    )
    assert sorted(seen.tolist()) == list(range(n))


def test_train_sharding_is_disjoint_equal_and_reshuffled_per_epoch() -> None:
    n, world = 1000, 2
    samplers = [
        BatchIndexSampler(n, 32, shuffle=True, seed=7, rank=r, world_size=world)
        for r in range(world)
    ]
    e0 = [torch.cat(list(s)) for s in samplers]
    assert e0[0].numel() == e0[1].numel() == 500
    assert not set(e0[0].tolist()) & set(e0[1].tolist())
    for s in samplers:
        s.set_epoch(1)
    e1 = torch.cat(list(samplers[0]))
    assert not torch.equal(e0[0], e1)
    assert len(samplers[0]) == len(list(samplers[0]))
