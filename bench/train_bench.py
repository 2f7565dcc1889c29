"""Training, data-path, inference and FLOP benchmarks on prepared simulator data.

Shape glossary: B batch size, T history window.

The real training step is :class:`atrank.system.module.ATRankSystem` driven by a Lightning
``Trainer`` configured as ``conf/trainer/default.yaml`` (gradient clipping 5.0, logging every
50 steps, CSV logger, the Rich progress bar of ``conf/callbacks/default.yaml``), without
checkpointing or validation. The raw loop does the same arithmetic by hand: forward,
``multitask_loss``, backward, ``clip_grad_norm_(5.0)``, Adam step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.flop_counter import FlopCounterMode

from atrank.build import data_shape, make_datamodule
from atrank.config import DataConfig, TaskSpec
from atrank.data.batch import Batch
from atrank.data.datamodule import ATRankDataModule
from atrank.model import ATRankModel, ModelConfig, build_model
from atrank.model.loss import multitask_loss
from atrank.system.module import ATRankSystem
from bench.common import measure
from data_prep.meta import PreparedMeta

TASKS: dict[str, TaskSpec] = {
    "click": TaskSpec(target="item"),
    "purchase": TaskSpec(target="item"),
    "coupon": TaskSpec(target="coupon"),
}
WEIGHTS = {name: t.weight for name, t in TASKS.items()}
LR, L2_WEIGHT, CLIP = 3e-3, 5e-5, 5.0


@dataclass(frozen=True)
class Size:
    """A model and history size to benchmark."""

    name: str
    field_dim: int
    d_model: int
    n_heads: int
    max_len: int
    batch_size: int = 512


DEFAULT = Size("default", field_dim=32, d_model=64, n_heads=4, max_len=30)
TINY = Size("tiny", field_dim=8, d_model=16, n_heads=2, max_len=10)


def datamodule(data_dir: Path, max_len: int, batch_size: int) -> ATRankDataModule:
    """The project's DataModule over ``data_dir`` (no workers, as the default config)."""
    return make_datamodule(
        data_dir, DataConfig(max_len=max_len, batch_size=batch_size), TASKS, seed=0
    )


def build(meta: PreparedMeta, size: Size, seed: int = 0) -> ATRankModel:
    """The ATRank model of ``size``, initialised from ``seed`` (same weights every call)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(field_dim=size.field_dim, d_model=size.d_model, n_heads=size.n_heads)
    return build_model(cfg, data_shape(meta), {n: t.target for n, t in TASKS.items()})


def step(model: ATRankModel, opt: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
    """One raw training step: forward, loss, backward, clip, Adam."""
    out = model(batch)
    total, _ = multitask_loss(
        out.logits, batch.labels, batch.label_mask, WEIGHTS, out.l2, L2_WEIGHT
    )
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return total


def _rate(stamps: list[float], warmup: int, batch_size: int) -> tuple[float, float]:
    """Samples/s after ``warmup`` steps, from step-end time stamps.

    Returns:
        ``(robust, mean)``: ``batch_size`` over the median step time (robust to bursts of
        other jobs on a shared machine), and steps x ``batch_size`` over the elapsed time.
    """
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]
    return batch_size / statistics.median(gaps), len(gaps) * batch_size / sum(gaps)


class _StepClock(Callback):
    """Records the time at the end of every training batch."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.stamps.append(time.perf_counter())


def lightning_rate(
    dm: ATRankDataModule, size: Size, steps: int, warmup: int
) -> tuple[float, float]:
    """Samples/s of ``ATRankSystem.training_step`` under a Lightning ``Trainer``.

    Trainer construction and fit set-up are outside the clock: it runs from the end of
    step ``warmup`` to the end of step ``steps`` (data fetch, step, logging, progress bar).
    """
    model = build(dm.prepared_meta, size)
    system = ATRankSystem(
        model,
        tasks=TASKS,
        optimizer=partial(torch.optim.Adam, lr=LR),
        l2_weight=L2_WEIGHT,
    )
    clock = _StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-pl-") as tmp:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            max_epochs=1,
            limit_train_batches=steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            gradient_clip_val=CLIP,
            log_every_n_steps=50,
            use_distributed_sampler=False,
            logger=CSVLogger(tmp, name="csv"),
            callbacks=[RichProgressBar(refresh_rate=10), clock],
            default_root_dir=tmp,
        )
        trainer.fit(system, datamodule=dm)
    return _rate(clock.stamps, warmup, size.batch_size)


def raw_rate(dm: ATRankDataModule, size: Size, steps: int, warmup: int) -> tuple[float, float]:
    """Samples/s of the raw loop over the DataModule's train loader (data fetch included)."""
    model = build(dm.prepared_meta, size)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    stamps: list[float] = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == steps:
            break
        step(model, opt, batch)
        stamps.append(time.perf_counter())
    return _rate(stamps, warmup, size.batch_size)


def first_batches(dm: ATRankDataModule, n: int) -> list[Batch]:
    """The first ``n`` training batches, assembled once."""
    out: list[Batch] = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == n:
            break
        out.append(batch)
    return out


def model_step_rate(
    meta: PreparedMeta, size: Size, batches: list[Batch], warmup: int
) -> tuple[float, float]:
    """Samples/s of the raw step alone, on batches assembled beforehand."""
    model = build(meta, size)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    stamps: list[float] = []
    for batch in batches:
        step(model, opt, batch)
        stamps.append(time.perf_counter())
    return _rate(stamps, warmup, batches[0].size)


def data_rate(dm: ATRankDataModule, steps: int) -> float:
    """Samples/s of the data path alone: iterating the DataModule's train loader."""
    t0 = time.perf_counter()
    n = 0
    for i, batch in enumerate(dm.train_dataloader()):
        if i == steps:
            break
        n += batch.size
    return n / (time.perf_counter() - t0)


def step_flops(meta: PreparedMeta, size: Size, batch: Batch) -> int:
    """FLOPs of one forward + backward (``FlopCounterMode``: matmuls, attention, convs;
    embedding gathers, softmax and element-wise work are not counted)."""
    model = build(meta, size)
    with FlopCounterMode(display=False) as counter:
        out = model(batch)
        total, _ = multitask_loss(
            out.logits, batch.labels, batch.label_mask, WEIGHTS, out.l2, L2_WEIGHT
        )
        total.backward()
    return int(counter.get_total_flops())


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured dense fp32 FLOP/s: best of ``repeats`` timings of an ``n x n`` matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def inference_rate(model: ATRankModel, batch: Batch, calls: int) -> float:
    """Samples/s of ``model(batch)`` in eval mode under ``torch.inference_mode``."""
    model.eval()
    with torch.inference_mode():
        model(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(calls):
            model(batch)
        return calls * batch.size / (time.perf_counter() - t0)


def batch_of(dm: ATRankDataModule, size: int, split: str = "train") -> Batch:
    """A batch of the first ``size`` samples of ``split`` (wrapping around if needed)."""
    assert dm.builder is not None
    samples = dm.splits[split]
    idx = torch.arange(size, dtype=torch.int64) % len(samples)
    return dm.builder(samples, idx)


def profile_top(fn: Callable[[], object], rows: int = 12) -> list[dict[str, Any]]:
    """The ops with the most self CPU time while ``fn`` runs (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def bench_size(data_dir: Path, size: Size, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Lightning vs raw loop, model step alone, data path alone, FLOPs for one size."""
    dm = datamodule(data_dir, size.max_len, size.batch_size)
    pl_rate = measure(lambda: lightning_rate(dm, size, steps, warmup), repeats)
    raw = measure(lambda: raw_rate(dm, size, steps, warmup), repeats)
    batches = first_batches(dm, steps)
    model_only = measure(lambda: model_step_rate(dm.prepared_meta, size, batches, warmup), repeats)
    data = measure(lambda: data_rate(dm, steps), repeats)
    flops = step_flops(dm.prepared_meta, size, batches[0])
    hist_len = float(batches[0].hist_mask.sum(1).float().mean())
    return {
        "size": size.__dict__,
        "mean_history": hist_len,
        "lightning_samples_s": pl_rate,
        "raw_samples_s": raw,
        "ratio_lightning_over_raw": pl_rate["median"] / raw["median"],
        "ratio_of_mean_rates": pl_rate["mean_rate_median"] / raw["mean_rate_median"],
        "model_step_samples_s": model_only,
        "data_path_samples_s": data,
        "flops_per_step": flops,
        "lightning_flop_s": flops * pl_rate["median"] / size.batch_size,
        "raw_flop_s": flops * raw["median"] / size.batch_size,
    }


def bench_profile(data_dir: Path, size: Size, steps: int) -> dict[str, Any]:
    """Top ops of the Lightning training run and of the raw loop at ``size``."""
    dm = datamodule(data_dir, size.max_len, size.batch_size)
    return {
        "lightning": profile_top(lambda: lightning_rate(dm, size, steps, 1)),
        "raw": profile_top(lambda: raw_rate(dm, size, steps, 1)),
    }


def bench_inference(
    data_dir: Path, size: Size, batch_sizes: tuple[int, ...], repeats: int, budget_s: float
) -> dict[str, Any]:
    """Inference samples/s per batch size (model forward alone, batches assembled before)."""
    dm = datamodule(data_dir, size.max_len, size.batch_size)
    model = build(dm.prepared_meta, size)
    out: dict[str, Any] = {}
    for bs in batch_sizes:
        batch = batch_of(dm, bs)
        # Size the calls so that one timing takes about budget_s.
        t = _time(partial(inference_rate, model, batch, 1))
        calls = max(1, int(budget_s / max(t / 2, 1e-6)))
        out[str(bs)] = measure(partial(inference_rate, model, batch, calls), repeats)
        out[str(bs)]["calls"] = calls
    return out


def bench_history(
    data_dir: Path,
    size: Size,
    max_lens: tuple[int, ...],
    batch_size: int,
    steps: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Raw training-step time against the history window T (model step alone)."""
    rows = []
    for t in max_lens:
        s = Size(f"T{t}", size.field_dim, size.d_model, size.n_heads, t, batch_size)
        dm = datamodule(data_dir, t, batch_size)
        batches = first_batches(dm, steps + 2)  # one warm-up step, then ``steps`` timed
        rate = measure(partial(model_step_rate, dm.prepared_meta, s, batches, 1), repeats)
        rows.append(
            {
                "max_len": t,
                "batch_size": batch_size,
                "mean_history": float(
                    torch.cat([b.hist_mask.sum(1) for b in batches]).float().mean()
                ),
                "step_ms": 1e3 * batch_size / rate["median"],
                "samples_s": rate,
                "flops_per_step": step_flops(dm.prepared_meta, s, batches[0]),
            }
        )
    return rows
