"""The run report as a Lightning callback: collects what it needs while the run evaluates,
writes ``report.html`` and ``report/*.png`` into the run folder (any logger) and logs the
same to W&B when a ``WandbLogger`` is among the trainer's loggers.

When: the best validation epoch (by ``val/monitor``, as the checkpoint that is tested) is
drawn once, at the end of fitting; the test at the end of testing. Every validation and test
also logs ``<stage>/<task>/ece`` to every logger (a number, cheap). Under data parallelism
every process collects its samples, they are gathered (as the exact metrics are) and the
first process draws and writes.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from atrank.config import ReportConfig
from atrank.data.batch import Batch
from atrank.model.atrank import ATRankModel
from atrank.report.collect import StageCollector, TaskOutputs
from atrank.report.figures import expected_calibration_error, probabilities, task_section
from atrank.report.record import (
    PACKAGES,
    Throughput,
    git_commit,
    package_version,
    record_sections,
)
from atrank.report.section import Section
from atrank.report.write import log_wandb, write_html, write_pngs
from data_prep.meta import PreparedMeta

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
PNG_DIR = "report"
#: Test batches kept (on the CPU) for the attention analysis: the first ones (4,096 samples at
#: the default eval batch size: enough for stable means, and half a second on 2 CPU cores).
ATTENTION_BATCHES = 2


def attention_report(
    model: nn.Module,
    batches: list[Batch],
    meta: PreparedMeta,
    data_dir: Path | None,
    n_users: int,
) -> list[Section]:
    """The attention analysis's sections (:func:`atrank.report.attention.attention_sections`)
    over the given test batches.

    A missing analysis module or a model that is not an ``ATRankModel`` gives no section; a
    failing analysis a section whose note says why (the run goes on).
    """
    if n_users <= 0 or not batches or not isinstance(model, ATRankModel):
        return []
    if importlib.util.find_spec("atrank.report.attention") is None:
        return []
    was_training = model.training
    try:
        from atrank.report.attention import AttentionNames, attention_sections

        names = AttentionNames.from_meta(meta, data_dir)
        return list(attention_sections(model, batches, names, n_users=n_users))
    except Exception as e:  # the analysis is an add-on: its failure must not end the run
        log.warning("attention report failed: %s: %s", type(e).__name__, e)
        return [Section("attention", "Attention", notes=[f"attention analysis failed: {e!r}"])]
    finally:
        model.train(was_training)


def _guarded(what: str, build: Callable[[], list[Section]]) -> list[Section]:
    """``build()``, or one section whose note names the failure (a report never ends a run)."""
    try:
        return build()
    except Exception as e:
        log.warning("report: %s failed: %s: %s", what, type(e).__name__, e)
        return [Section(f"failed/{what}", f"{what}: failed", notes=[f"{what} failed: {e!r}"])]


class RunReport(Callback):
    """Writes the run report (see the module docstring).

    Args:
        settings: the report's settings (``report.*``).
        out_dir: the run folder: ``report.html`` and ``report/*.png`` go there.
        tasks: the tasks evaluated.
        meta: the prepared data's metadata (groups' id fields; the attention analysis).
        data_dir: the prepared data (its ``report.json`` goes into the run record).
        run_config: the resolved run configuration, for the record.
    """

    def __init__(
        self,
        settings: ReportConfig,
        out_dir: str | Path,
        tasks: list[str],
        meta: PreparedMeta,
        data_dir: str | Path | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.run_config = run_config
        id_fields = {g.index: g.fields[0] for g in meta.groups.values()}
        self.collectors = {s: StageCollector(tasks, id_fields) for s in ("val", "test")}
        self.throughput = Throughput()
        self.best_val: tuple[int, float, dict[str, TaskOutputs]] | None = None
        self.attention_batches: list[Batch] = []
        self.sections: dict[str, list[Section]] = {}  # stage -> written sections
        self._record_logged = False
        self._epoch_start = self._last = 0.0
        self.seconds = 0.0  # spent in this callback's collecting and writing

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    # --- training throughput ---------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        self.throughput.samples += batch.size if isinstance(batch, Batch) else 0
        self.throughput.step_seconds += now - self._last
        self._last = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.throughput.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    # --- collecting ------------------------------------------------------------------------
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict):
            return
        with self._timed():
            self.collectors["val"].add(outputs, batch)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict):
            return
        with self._timed():
            self.collectors["test"].add(outputs, batch)
            if len(self.attention_batches) < ATTENTION_BATCHES and self.settings.attention_users:
                self.attention_batches.append(batch.to("cpu"))

    def _stage_outputs(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str
    ) -> dict[str, TaskOutputs]:
        """The stage's samples from every process; logs ``<stage>/<task>/ece``."""
        outs = self.collectors[stage].outputs(pl_module.device)  # (every process)
        self.collectors[stage].reset()
        ece: dict[str, float] = {}
        for task, o in outs.items():
            e = expected_calibration_error(probabilities(o.logits), o.labels, self.settings.n_bins)
            if e is not None:
                ece[f"{stage}/{task}/ece"] = e
        for lg in trainer.loggers:
            lg.log_metrics(ece, step=trainer.global_step)
        return outs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        with self._timed():
            outs = self._stage_outputs(trainer, pl_module, "val")
            value = trainer.callback_metrics.get("val/monitor")
            m = float(value) if value is not None else float("nan")
            best = self.best_val[1] if self.best_val is not None else float("nan")
            # (as the checkpoint: the first epoch of the highest finite monitor)
            if self.best_val is None or (math.isfinite(m) and not m <= best):
                self.best_val = (trainer.current_epoch, m, outs)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self._timed():
            outs = self._stage_outputs(trainer, pl_module, "test")
            batches, self.attention_batches = self.attention_batches, []
            if not trainer.is_global_zero:
                return
            sections = []
            if "test" in self.settings.stages:
                sections += self._task_sections("test", "test", outs)
            model = getattr(pl_module, "model", pl_module)
            n_users = self.settings.attention_users
            sections += attention_report(model, batches, self.meta, self.data_dir, n_users)
            self._publish(trainer, "test", sections)
        log.info("run report: %s (%.2f s in all)", self.out_dir / REPORT_HTML, self.seconds)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        with self._timed():
            sections = []
            if "val" in self.settings.stages and self.best_val is not None:
                epoch, _, outs = self.best_val
                sections = self._task_sections("val", f"validation (best epoch {epoch})", outs)
            self.best_val = None  # (the samples are drawn: free them)
            self._publish(trainer, "val", sections)

    # --- writing ---------------------------------------------------------------------------
    def _task_sections(self, stage: str, label: str, outs: dict[str, TaskOutputs]) -> list[Section]:
        s = self.settings

        def one(task: str, o: TaskOutputs) -> list[Section]:
            return [task_section(stage, task, o, label, s.max_points, s.n_bins, s.history_bounds)]

        out: list[Section] = []
        for task, o in outs.items():
            out += _guarded(f"{stage}/{task}", partial(one, task, o))
        return out

    def _record(self, trainer: L.Trainer) -> list[Section]:
        extra = {
            "run folder": str(self.out_dir),
            "accelerator": type(trainer.accelerator).__name__,
            "processes": trainer.world_size,
            "global step": trainer.global_step,
            "report seconds (before this page)": round(self.seconds, 2),
        }
        speed = self.throughput if self.throughput.samples else None
        return _guarded(
            "run record",
            lambda: record_sections(self.run_config, self.data_dir, speed, extra),
        )

    def _publish(self, trainer: L.Trainer, stage: str, sections: list[Section]) -> None:
        """Writes ``sections`` (the stage's) as PNGs, the whole page again, and W&B; a
        failure is logged, never raised (the run's metrics come after)."""
        try:
            self._write(trainer, stage, sections)
        except Exception:
            log.exception("run report: writing the %s report failed", stage)

    def _write(self, trainer: L.Trainer, stage: str, sections: list[Section]) -> None:
        written = write_pngs(sections, self.out_dir / PNG_DIR)
        self.sections[stage] = written
        record = self._record(trainer)
        ordered = [*self.sections.get("test", []), *self.sections.get("val", []), *record]
        page = write_html(ordered, self.out_dir / REPORT_HTML)
        run = next((lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if run is None:
            return
        if not self._record_logged:
            versions = {p: package_version(p) for p in PACKAGES}
            run.config.update(
                {"git_commit": git_commit(), "packages": versions}, allow_val_change=True
            )
        log_wandb(written + ([] if self._record_logged else record), run, trainer.global_step)
        self._record_logged = True
        run.save(str(page), base_path=str(self.out_dir), policy="end")
