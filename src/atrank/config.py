"""The config schemas: one dataclass per config object, registered with Hydra's ConfigStore.

Every entry point's config is composed through its root schema (``train_schema``,
``eval_schema``, ``prep_schema``: the first entry of ``conf/{train,eval,prep}.yaml``), so a
misspelled or mistyped key anywhere (command line, group file, experiment file) fails when
the config is composed. The dataclasses hold the defaults (the YAML files hold only what
differs) and check their own value ranges when constructed; :func:`train_config` and
friends turn a composed config into those objects at the entry point, naming the full key of
any bad value. Below the entry points nothing reads the config.

The model's settings are :class:`atrank.model.ModelConfig`, the preparation's
:class:`data_prep.pipeline.PrepConfig`, a derived task's
:class:`data_prep.passes.derive.DerivedTask`: this module reuses them, it does not copy them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from atrank.model.config import ModelConfig, SettingError
from data_prep.errors import PrepError
from data_prep.passes.derive import DerivedTask, derived_tasks
from data_prep.pipeline import PrepConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing or malformed; the message names the key."""


#: Metrics a task can log (computed by :class:`atrank.system.metrics.TaskMetrics`).
METRIC_NAMES = ("auc", "gauc", "pair_auc", "logloss")

#: torch.compile backends ``compile`` may name (``true`` means ``inductor``).
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")


class LossWeighting(str, Enum):
    """How the tasks' losses are summed: the fixed ``task.<name>.weight``, or learned
    per-task weights on top of them (Kendall, Gal and Cipolla, 2018)."""

    fixed = "fixed"
    uncertainty = "uncertainty"


class Split(str, Enum):
    """An evaluation split."""

    val = "val"
    test = "test"


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
            Hydra (their keys are the classes' own arguments).
        loss_weighting: ``fixed`` | ``uncertainty``.
        seed: seeds python, numpy, torch and the data shuffle.
        threads: torch intra-op threads; None = the cores left free by DataLoader workers.
        compile: ``torch.compile`` the model: false, true (inductor) or a backend name.
        train: run training.
        test: test the best checkpoint after training.
        ckpt_path: resume training from this checkpoint.
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

    def __post_init__(self) -> None:
        if not self.task:
            raise SettingError("task", "selects no task: use e.g. task=[click,purchase,coupon]")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"must be >= 1 or null, got {self.threads}")
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


@dataclass
class EvalConfig:
    """The root of ``atrank-eval``'s config (``conf/eval.yaml``).

    Attributes:
        ckpt_path: a checkpoint written by ``atrank-train``.
        data_dir: None = the data the checkpoint was trained on.
        split: ``val`` | ``test``.
        batch_size: None = the training run's ``data.eval_batch_size``.
        threads: torch intra-op threads; None = all free cores.
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: Any = None
    logger: Any = None
    ckpt_path: str = MISSING
    data_dir: str | None = None
    split: Split = Split.test
    batch_size: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size <= 0:
            raise SettingError("batch_size", f"must be > 0 or null, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"must be >= 1 or null, got {self.threads}")


@dataclass
class PrepJobConfig:
    """The root of ``atrank-prep``'s config (``conf/prep.yaml``).

    Attributes:
        out_dir: None = ``${paths.cache_dir}/prepared/<dataset>-<fingerprint>``.
        force: prepare again even when ``out_dir`` holds the same inputs and settings.
        derive: tasks derived from behaviours, e.g.
            ``+derive.cart={actions:[cart],target:item,horizon:3600}`` (each entry holds the
            fields of :class:`data_prep.passes.derive.DerivedTask`, which checks them).
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: dict[str, Any] = field(default_factory=dict)
    prep: PrepConfig = field(default_factory=PrepConfig)
    out_dir: str | None = None
    force: bool = False
    # A mapping, not dict[str, DerivedTask]: OmegaConf cannot add a dataclass entry from the
    # command line (+derive.cart=...); derived_tasks() builds and checks the entries.
    derive: dict[str, Any] = field(default_factory=dict)

    def derived(self) -> dict[str, DerivedTask]:
        """The ``derive`` entries as derived tasks.

        Raises:
            PrepError: naming ``derive.<task>`` and the key at fault.
        """
        return derived_tasks(self.derive)


@dataclass
class ExportConfig:
    """The root of ``atrank-export``'s config (``conf/export.yaml``).

    Attributes:
        ckpt_path: a checkpoint written by ``atrank-train``.
        out: the bundle directory (replaced if it exists).
        data_dir: the prepared data it was trained on; None = the one it records.
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    ckpt_path: str = MISSING
    out: str = MISSING
    data_dir: str | None = None


@dataclass
class ServeConfig:
    """The root of ``atrank-serve``'s config (``conf/serve.yaml``).

    Attributes:
        bundle: the bundle directory (``atrank-export``).
        host: the address to listen on (127.0.0.1: this machine only).
        port: the TCP port.
        max_batch_size: requests of several clients scored in one model call, at most.
        batch_timeout: seconds a request waits for others to fill a batch.
        workers: server worker processes.
        max_events: events one request may carry (more: HTTP 413).
        max_candidates: candidates one request may carry (more: HTTP 413).
        device: where the model runs (``cpu``, ``cuda``).
        threads: torch intra-op threads per worker; None = all free cores.
    """

    bundle: str = MISSING
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    batch_timeout: float = 0.002
    workers: int = 1
    max_events: int = 10_000
    max_candidates: int = 2_000
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        for key in ("max_batch_size", "workers", "max_events", "max_candidates"):
            if getattr(self, key) < 1:
                raise SettingError(key, f"must be >= 1, got {getattr(self, key)}")
        if not 0 < self.port < 65536:
            raise SettingError("port", f"must be in 1..65535, got {self.port}")
        if self.batch_timeout < 0:
            raise SettingError("batch_timeout", f"must be >= 0, got {self.batch_timeout}")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"must be >= 1 or null, got {self.threads}")


@dataclass
class PredictConfig:
    """The root of ``atrank-predict``'s config (``conf/predict.yaml``).

    Attributes:
        bundle: the bundle directory (``atrank-export``).
        events: the users' behaviours: a parquet or CSV file, or a folder of them
            (canonical ``events`` columns).
        requests: one row per (request, candidate): ``user_id``, ``ts``, the candidate
            (``group``, id, optional fields), optional ``request_id``; parquet or CSV.
        out: the output: a ``.parquet`` or ``.csv`` path; with several processes, or when
            written in parts, a folder of ``part-<rank>-<chunk>`` files.
        chunk_rows: request rows read and scored at a time (bounds memory).
        top_k: keep only the best ``top_k`` candidates of each request (null: all).
        rank_by: what ``top_k`` ranks by: a task name, or ``blend``.
        blend: ``task -> weight`` of a weighted blend of the tasks' probabilities, written as
            the ``p_blend`` column (empty: no blend).
        trainer: Lightning ``Trainer`` arguments of the predict loop (``trainer=ddp``: one
            part per process).
        threads: torch intra-op threads; None = all free cores.
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: Any = None
    bundle: str = MISSING
    events: str = MISSING
    requests: str = MISSING
    out: str = MISSING
    chunk_rows: int = 100_000
    top_k: int | None = None
    rank_by: str | None = None
    blend: dict[str, float] = field(default_factory=dict)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise SettingError("chunk_rows", f"must be >= 1, got {self.chunk_rows}")
        if self.top_k is not None and self.top_k < 1:
            raise SettingError("top_k", f"must be >= 1 or null, got {self.top_k}")
        if self.top_k is not None and self.rank_by is None:
            raise SettingError("rank_by", "top_k needs rank_by: a task name or blend")
        if self.rank_by == "blend" and not self.blend:
            raise SettingError("blend", "rank_by=blend needs blend weights, e.g. blend.click=1")
        if any(w < 0 for w in self.blend.values()):
            raise SettingError("blend", f"weights must be >= 0, got {dict(self.blend)}")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"must be >= 1 or null, got {self.threads}")


def register_configs() -> None:
    """Registers the root schemas with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="prep_schema", node=PrepJobConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="predict_schema", node=PredictConfig)


def _convert(schema: type[T], node: Any, key: str) -> T:
    """Builds ``schema`` from ``node`` field by field, so that an error names its full key."""
    if node is None:
        raise ConfigError(f"config key {key!r} is missing")
    hints = get_type_hints(schema)
    values: dict[str, Any] = {}
    known = {f.name for f in fields(schema)}  # type: ignore[arg-type]
    extra = sorted(set(node) - known) if isinstance(node, (dict, DictConfig)) else []
    if extra:  # a `+key=value` added to a typed node: refused, never silently dropped
        raise ConfigError(f"config key '{_join(key, extra[0])}': not a key of {schema.__name__}")
    for f in fields(schema):  # type: ignore[arg-type]
        sub = _join(key, f.name)
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, f.name):
            raise ConfigError(f"config key {sub!r} is missing: set it, e.g. {sub}=...")
        if f.name not in node:
            continue  # the schema's default
        try:
            value = node[f.name]  # (resolves interpolations)
        except OmegaConfBaseException as e:
            raise ConfigError(f"config key {sub!r}: {_message(e)}") from None
        values[f.name] = _value(hints[f.name], value, sub)
    try:
        return schema(**values)
    except SettingError as e:
        raise ConfigError(f"config key '{_join(key, e.key)}': {e.why}") from None
    except (PrepError, ValueError, TypeError) as e:
        raise ConfigError(f"config key {key!r}: {e}") from None


def _value(hint: Any, value: Any, key: str) -> Any:
    """One field's value: a nested schema, a mapping of schemas, an enum or a plain value."""
    if isinstance(hint, type) and is_dataclass(hint):
        return _convert(hint, value, key)
    if get_origin(hint) is dict and is_dataclass(get_args(hint)[1]) and value is not None:
        return {
            str(k): _convert(get_args(hint)[1], v, _join(key, str(k))) for k, v in value.items()
        }
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _message(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "msg", None) or e).splitlines()[0]


def _typed_root(schema: type[T], cfg: DictConfig) -> T:
    """Re-validates ``cfg`` against ``schema`` (types at the edge), then converts it."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key '{getattr(e, 'full_key', '')}': {_message(e)}") from None
    return _convert(schema, merged, "")


def train_config(cfg: DictConfig) -> TrainConfig:
    """The typed ``atrank-train`` config (also the one stored in checkpoints).

    Raises:
        ConfigError: naming the full key of the first missing, mistyped or invalid value.
    """
    return _typed_root(TrainConfig, cfg)


def eval_config(cfg: DictConfig) -> EvalConfig:
    """The typed ``atrank-eval`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return _typed_root(EvalConfig, cfg)


def prep_job_config(cfg: DictConfig) -> PrepJobConfig:
    """The typed ``atrank-prep`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return _typed_root(PrepJobConfig, cfg)


def export_config(cfg: DictConfig) -> ExportConfig:
    """The typed ``atrank-export`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return _typed_root(ExportConfig, cfg)


def serve_config(cfg: DictConfig) -> ServeConfig:
    """The typed ``atrank-serve`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return _typed_root(ServeConfig, cfg)


def predict_config(cfg: DictConfig) -> PredictConfig:
    """The typed ``atrank-predict`` config (errors as :func:`train_config`)."""
    return _typed_root(PredictConfig, cfg)


def plain(cfg: DictConfig) -> dict[str, Any]:
    """A composed config as plain, resolved JSON types (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
