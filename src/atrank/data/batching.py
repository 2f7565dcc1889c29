"""Vectorised batch assembly: one gather per column, no per-sample Python work.

Shape glossary: B batch size, T history window, N timeline rows, S samples in a split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from atrank.data.batch import Batch
from atrank.data.store import SampleTable, Timeline
from data_prep import contract as C


def time_buckets(gap_seconds: Tensor, unit_seconds: int, thresholds: Tensor) -> Tensor:
    """ATRank's log2 time-gap bucket of each gap.

    Args:
        gap_seconds: non-negative gaps in seconds, any shape.
        unit_seconds: length of one unit (86400 = days, as in the paper).
        thresholds: ``[2, 4, ..., 2**(n-1)]`` (``contract.time_bucket_thresholds``).

    Returns:
        Bucket ``0..n-1`` per gap (same shape): how many thresholds ``whole units + 1`` reaches.
    """
    units = torch.div(gap_seconds.clamp(min=0), unit_seconds, rounding_mode="floor")
    return torch.bucketize(units + 1, thresholds, right=True)


class BatchBuilder:
    """Builds :class:`Batch` objects from sample indices by slicing the stored timelines.

    Args:
        timeline: every user's behaviours.
        max_len: history window T; longer histories keep their most recent behaviours.
        unit_seconds: time-bucket unit, from ``meta.json``.
        n_buckets: number of time buckets, from ``meta.json``.
    """

    def __init__(self, timeline: Timeline, max_len: int, unit_seconds: int, n_buckets: int) -> None:
        if max_len < 1:
            raise ValueError(f"data.max_len must be >= 1, got {max_len}")
        self.timeline = timeline
        self.max_len = max_len
        self.unit_seconds = unit_seconds
        self.thresholds = torch.tensor(C.time_bucket_thresholds(n_buckets), dtype=torch.int64)
        self._offsets = torch.arange(max_len, dtype=torch.int64) - max_len  # (T,) = -T..-1

    def __call__(self, samples: SampleTable, idx: Tensor) -> Batch:
        """Assembles the batch of samples ``idx``.

        Args:
            samples: the split's samples.
            idx: ``(B,)`` int64 sample indices.

        Returns:
            The batch, history right-aligned (most recent behaviour at position T-1).
        """
        tl = self.timeline
        end = samples.hist_end[idx]  # (B,)
        start = torch.maximum(samples.hist_start[idx], end - self.max_len)  # (B,)
        pos = end.unsqueeze(1) + self._offsets  # (B, T)
        mask = pos >= start.unsqueeze(1)  # (B, T)
        pos = torch.where(mask, pos, torch.zeros_like(pos))  # padding reads row 0, then zeroed
        if tl.n_rows == 0:  # no behaviours at all: every position is padding
            pos = torch.zeros_like(pos)
            hist = {f: torch.zeros_like(pos) for f in C.ID_FIELDS}
            action = group = time = torch.zeros_like(pos)
        else:
            hist = {f: tl.fields[f][pos].long() * mask for f in C.ID_FIELDS}
            action = tl.action[pos].long() * mask
            group = tl.group[pos].long() * mask
            ts = samples.ts[idx]
            gap = ts.unsqueeze(1) - tl.ts[pos]  # (B, T)
            time = (time_buckets(gap, self.unit_seconds, self.thresholds) + 1) * mask
        labels, masks = {}, {}
        for task, lab in samples.labels.items():
            raw = lab[idx]
            masks[task] = raw >= 0
            labels[task] = raw.clamp(min=0).float()
        return Batch(
            hist=hist,
            hist_action=action,
            hist_time=time,
            hist_group=group,
            hist_mask=mask,
            target={f: samples.fields[f][idx].long() for f in C.ID_FIELDS},
            target_group=samples.group[idx].long(),
            labels=labels,
            label_mask=masks,
            user=samples.user[idx],
            prob={task: p[idx] for task, p in samples.prob.items()},
        )


class BatchDataset(Dataset[Batch]):
    """A map-style dataset whose items are whole batches: ``ds[index_tensor] -> Batch``.

    Used with ``DataLoader(ds, sampler=BatchIndexSampler(...), batch_size=None)`` so that a
    batch costs a few tensor gathers instead of B ``__getitem__`` calls and a collate.
    """

    def __init__(self, samples: SampleTable, builder: BatchBuilder) -> None:
        self.samples = samples
        self.builder = builder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: Tensor) -> Batch:  # type: ignore[override]
        return self.builder(self.samples, idx)


class BatchIndexSampler(Sampler[Tensor]):
    """Yields index tensors, one per batch, sharded over data-parallel ranks.

    Training (``shuffle=True``): a fresh seeded permutation every epoch (call ``set_epoch``),
    then each rank takes an equal share (the tail that does not divide evenly is dropped so
    that all ranks run the same number of steps). Evaluation (``shuffle=False``): rank r takes
    the contiguous r-th slice, so the union over ranks is every sample exactly once — no sample
    padded in twice, none lost.

    Args:
        n: number of samples.
        batch_size: samples per batch on each rank.
        shuffle: permute every epoch.
        seed: base seed of the permutation.
        rank: this process's data-parallel rank.
        world_size: number of data-parallel processes.
        drop_last: drop a final batch smaller than ``batch_size``.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch, so every epoch gets its own permutation."""
        self.epoch = epoch

    def _indices(self) -> Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g)
            per_rank = self.n // self.world_size
            return perm[self.rank * per_rank : (self.rank + 1) * per_rank]
        bounds = [self.n * r // self.world_size for r in range(self.world_size + 1)]
        return torch.arange(bounds[self.rank], bounds[self.rank + 1])

    def __iter__(self) -> Iterator[Tensor]:
        idx = self._indices()
        for chunk in torch.split(idx, self.batch_size):
            if self.drop_last and chunk.numel() < self.batch_size:
                return
            yield chunk

    def __len__(self) -> int:
        m = (
            self.n // self.world_size
            if self.shuffle
            else (
                self.n * (self.rank + 1) // self.world_size - self.n * self.rank // self.world_size
            )
        )
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)
