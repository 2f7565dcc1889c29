"""The schemas of a training run: data, tasks, the run's root (the model's is
:class:`atrank.model.ModelConfig`, the preparation's :class:`data_prep.pipeline.PrepConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from atrank.model.config import ModelConfig, SettingError
from data_prep.errors import PrepError
from data_prep.passes.derive import DerivedTask
from data_prep.pipeline import PrepConfig

#: Metrics a task can log (computed by :class:`atrank.system.metrics.TaskMetrics`).
METRIC_NAMES = ("auc", "gauc", "pair_auc", "logloss")

#: torch.compile backends ``compile`` may name (``true`` means ``inductor``).
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")


class LossWeighting(str, Enum):
    """How the tasks' losses are summed: the fixed ``task.<name>.weight``, or learned
    per-task weights on top of them (Kendall, Gal and Cipolla, 2018)."""

    fixed = "fixed"
    uncertainty = "uncertainty"


def check_threads(threads: int | None) -> None:
    """The ``threads`` key of every entry point: torch intra-op threads, >= 1 or null (all
    free cores)."""
    if threads is not None and threads < 1:
        raise SettingError("threads", f"must be >= 1 or null, got {threads}")


@dataclass
class PathsConfig:
    """Where data is cached and where a run writes (``conf/paths/default.yaml``)."""

    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class DataConfig:
    """How prepared data is served to the model.

    Attributes:
        dir: a prepared-data directory (``atrank-prep``); None = the configured dataset,
            prepared into the cache on first use.
        batch_size: training samples per batch and per device.
        eval_batch_size: validation/test samples per batch and per device.
        max_len: history window: the most recent behaviours kept.
        num_workers: DataLoader workers (batches are tensor gathers: rarely worth it on 2 cores).
        pin_memory: pin host memory for faster copies to a GPU.
    """

    dir: str | None = None
    batch_size: int = 512
    eval_batch_size: int = 2048
    max_len: int = 30
    num_workers: int = 0
    pin_memory: bool = False

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "max_len"):
            if getattr(self, key) <= 0:
                raise SettingError(key, f"must be > 0, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise SettingError("num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class TaskSpec:
    """One trained task: what it scores, how its loss and metrics count, where its label is.

    A ``conf/task/<name>.yaml`` file holds only what differs from these defaults.

    Attributes:
        target: the target type scored (a behaviour group: ``item`` | ``coupon``).
        weight: loss weight (>= 0).
        monitor_weight: weight in ``val/monitor`` (checkpointing, early stopping).
        label: the data's label to learn; None = the task's own name.
        space: the sample space: rows whose other labels equal these, e.g. ``{click: 1}``.
        positive: behaviours that make a positive, the label then derived from the log at
            preparation time; None = the data's own label.
        negatives: where a derived task's negatives come from: ``impressions`` | ``sampled``
            | None (the data's protocol decides).
        horizon: impressions: seconds after the impression in which the behaviour counts.
        metrics: validation/test metrics (``auc`` always: model selection reads it).
    """

    target: str = "item"
    weight: float = 1.0
    monitor_weight: float = 1.0
    label: str | None = None
    space: dict[str, int] = field(default_factory=dict)
    positive: list[str] | None = None
    negatives: str | None = None
    horizon: int = DerivedTask.horizon
    metrics: list[str] = field(default_factory=lambda: list(METRIC_NAMES))

    def __post_init__(self) -> None:
        for key in ("weight", "monitor_weight"):
            if getattr(self, key) < 0:
                raise SettingError(key, f"must be >= 0, got {getattr(self, key)}")
        bad = sorted(set(self.metrics) - set(METRIC_NAMES))
        if bad or "auc" not in self.metrics:
            raise SettingError(
                "metrics",
                f"must be a subset of {list(METRIC_NAMES)} that includes auc, "
                f"got {list(self.metrics)}",
            )
        for dep, value in self.space.items():
            if value not in (0, 1):
                raise SettingError(f"space.{dep}", f"must be 0 or 1, got {value}")
        if self.positive is None:
            if self.negatives is not None:
                raise SettingError(
                    "negatives", "needs 'positive' (the behaviours that make a positive)"
                )
            return
        if self.label is not None:
            raise SettingError("label", "a derived task (positive) has its own label; set null")
        self.derived()  # the derived task's own rules

    def label_of(self, name: str) -> str:
        """The data's label this task (named ``name``) learns."""
        return self.label or name

    def derived(self) -> DerivedTask | None:
        """The task as the preparation derives it from the log, or None (the data's label).

        Raises:
            SettingError: naming the key the derived task refuses.
        """
        if self.positive is None:
            return None
        try:
            return DerivedTask(list(self.positive), self.target, self.negatives, self.horizon)
        except PrepError as e:
            key, _, why = str(e).partition(": ")
            raise SettingError("positive" if key == "actions" else key, why) from None


#: Evaluation stages a run report can cover.
REPORT_STAGES = ("val", "test")


@dataclass
class ReportConfig:
    """The run report (``atrank.report``): figures and tables per task, the run record.

    Written into the run folder (``report.html`` and ``report/*.png``) with any logger, and
    to W&B when ``logger=wandb``.

    Attributes:
        enabled: write the report.
        stages: ``val`` (the best validation epoch by ``val/monitor``, drawn once at the end
            of fitting) and/or ``test``.
        max_points: most points kept per drawn curve (ROC, PR); the AUCs, ECE and segment
            tables are computed on every sample.
        n_bins: equal-width probability bins of the reliability diagram and the ECE.
        history_bounds: ``[short, medium]``: a history of 1..short behaviours (in the
            ``data.max_len`` window) is short, up to medium is medium, longer is long; 0 is
            none.
        attention_users: users whose attention the report shows (test stage; 0: none).
    """

    enabled: bool = True
    stages: list[str] = field(default_factory=lambda: list(REPORT_STAGES))
    max_points: int = 1000
    n_bins: int = 15
    history_bounds: list[int] = field(default_factory=lambda: [5, 15])
    attention_users: int = 5

    def __post_init__(self) -> None:
        bad = sorted(set(self.stages) - set(REPORT_STAGES))
        if bad:
            raise SettingError("stages", f"must be among {list(REPORT_STAGES)}, got {bad}")
        for key, low in (("max_points", 2), ("n_bins", 2), ("attention_users", 0)):
            if getattr(self, key) < low:
                raise SettingError(key, f"must be >= {low}, got {getattr(self, key)}")
        b = list(self.history_bounds)
        if len(b) != 2 or not 1 <= b[0] < b[1]:
            raise SettingError(
                "history_bounds", f"must be [short, medium] with 1 <= short < medium, got {b}"
            )


@dataclass
class TrainConfig:
    """The root of ``atrank-train``'s config (``conf/train.yaml``).

    Attributes:
        paths: cache and output locations.
        dataset: the data source when ``data.dir`` is null; checked by the source itself,
            whose options differ (``data_prep.sources``).
        prep: the preparation's settings.
        data: batching and history window.
        task: the trained tasks by name.
        model: the model's settings.
        optimizer, scheduler, trainer, callbacks, logger: ``_target_`` nodes instantiated by
            Hydra (their keys are the classes' own arguments, checked against the classes'
            signatures for a new run: :mod:`atrank.config.targets`).
        loss_weighting: ``fixed`` | ``uncertainty``.
        seed: seeds python, numpy, torch and the data shuffle.
        threads: torch intra-op threads; None = the cores left free by DataLoader workers.
        compile: ``torch.compile`` the model: false, true (inductor) or a backend name.
        train: run training.
        test: test the best checkpoint after training.
        ckpt_path: start training from this checkpoint (weights, optimizer, loop state),
            writing into a new run folder.
        resume: a run folder of ``atrank-train``: continue that run from its
            ``checkpoints/last.ckpt``, in that folder, with the configuration stored in it.
        report: the run report (figures, tables, run record).
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: dict[str, Any] = field(default_factory=dict)
    prep: PrepConfig = field(default_factory=PrepConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: dict[str, TaskSpec] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    callbacks: Any = None
    logger: Any = None
    loss_weighting: LossWeighting = LossWeighting.fixed
    seed: int = 1234
    threads: int | None = None
    compile: Any = False
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    resume: str | None = None
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        if self.resume is not None and self.ckpt_path is not None:
            raise SettingError("resume", "give resume=<run folder> or ckpt_path, not both")
        if not self.task:
            raise SettingError("task", "selects no task: use e.g. task=[click,purchase,coupon]")
        check_threads(self.threads)
        if self.compile not in (None, False, True, *COMPILE_BACKENDS):
            raise SettingError(
                "compile",
                f"must be true, false or a backend ({', '.join(COMPILE_BACKENDS)}), "
                f"got {self.compile!r}",
            )

    @property
    def compile_backend(self) -> str | None:
        """The ``torch.compile`` backend, or None for eager PyTorch."""
        if self.compile in (None, False):
            return None
        return "inductor" if self.compile is True else str(self.compile)
