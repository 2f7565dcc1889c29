"""LightningDataModule over a prepared-data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, get_worker_info

from atrank.data.batch import Batch
from atrank.data.batching import BatchBuilder, BatchDataset, BatchIndexSampler
from atrank.data.store import LabelSpec, SampleTable, Timeline, read_prepared
from data_prep.meta import PreparedMeta


def _one_thread_per_worker(_: int) -> None:
    # Workers only gather tensors; several threads each would oversubscribe the cores.
    if get_worker_info() is not None:
        torch.set_num_threads(1)


class ATRankDataModule(L.LightningDataModule):
    """Reads ``atrank-prep`` output and serves whole-batch tensors.

    Args:
        dir: prepared-data directory (``meta.json``, ``timeline.parquet``, ``samples_*.parquet``).
        tasks: task names whose labels are loaded, or task name -> :class:`LabelSpec` (label
            source and sample space); every label read must exist in the data.
        batch_size: training samples per batch and per device.
        eval_batch_size: validation/test samples per batch and per device.
        max_len: history window T (most recent behaviours kept).
        num_workers: DataLoader worker processes (0 = assemble in the main process).
        pin_memory: pin host memory for faster copies to a GPU.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        dir: str,
        tasks: list[str] | dict[str, LabelSpec],
        batch_size: int = 512,
        eval_batch_size: int = 2048,
        max_len: int = 30,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dir = Path(dir)
        self.tasks = tasks
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_len, self.num_workers, self.pin_memory = max_len, num_workers, pin_memory
        self.seed = seed
        self.meta: PreparedMeta | None = None
        self.timeline: Timeline | None = None
        self.splits: dict[str, SampleTable] = {}
        self.builder: BatchBuilder | None = None

    def setup(self, stage: str | None = None) -> None:
        """Loads the prepared data once (every stage shares it)."""
        if self.timeline is not None:
            return
        self.meta, self.timeline, self.splits = read_prepared(self.dir, self.tasks)
        time = self.meta.time
        self.builder = BatchBuilder(self.timeline, self.max_len, time.unit_seconds, time.n_buckets)

    @property
    def prepared_meta(self) -> PreparedMeta:
        """The prepared data's metadata (reads the data on first use)."""
        self.setup()
        assert self.meta is not None
        return self.meta

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, shuffle: bool) -> DataLoader[Batch]:
        if self.builder is None:
            self.setup()
        assert self.builder is not None
        samples = self.splits[split]
        rank, world = self._rank_world()
        sampler = BatchIndexSampler(
            len(samples),
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            BatchDataset(samples, self.builder),
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_one_thread_per_worker,
        )

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        if isinstance(batch, Batch):
            return batch.to(device, non_blocking=self.pin_memory)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader[Batch]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._loader("test", shuffle=False)
