"""Typed schemas of the project's own config groups, checked at the entry points.

Hydra already refuses a misspelled key at compose time (struct mode); these schemas also
refuse a value of the wrong type or range before any data is read or any model is built, with
the full key in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config value is missing or malformed; the message names the key."""


@dataclass
class DataConfig:
    dir: str | None = None
    batch_size: int = 512
    eval_batch_size: int = 2048
    max_len: int = 30
    num_workers: int = 0
    pin_memory: bool = False


@dataclass
class EncoderConfig:
    name: str = "atrank"


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    field_dim: int = 32
    d_model: int = 64
    n_heads: int = 4
    ffn_dim: int | None = None
    n_blocks: int = 1
    dropout: float = 0.0
    score: str = "dot"
    scorer: str = "dot"
    mlp_hidden: list[int] = field(default_factory=lambda: [64])
    l2_weight: float = 5e-5


#: Metrics a task can log (computed by atrank.system.metrics.TaskMetrics).
METRIC_NAMES = ("auc", "gauc", "pair_auc", "logloss")


@dataclass
class TaskConfig:
    target: str = "item"
    weight: float = 1.0
    monitor_weight: float = 1.0
    label: str | None = None  # the data's label to learn; None = the task's own name
    space: dict[str, int] = field(default_factory=dict)  # rows kept: other labels == values
    # Derived at preparation time: the behaviours that make a positive (None = the data's own
    # label), where negatives come from (impressions | sampled | None = the data's protocol)
    # and, on impressions, how many seconds after the impression a behaviour counts.
    positive: list[str] | None = None
    negatives: str | None = None
    horizon: int = 3600
    # Validation/test metrics of the task (auc is always computed: model selection reads it).
    metrics: list[str] = field(default_factory=lambda: list(METRIC_NAMES))


def typed(schema: type, node: Any, key: str) -> Any:
    """Validates ``node`` against the dataclass ``schema``; returns the dataclass instance."""
    if node is None:
        raise ConfigError(f"config key {key!r} is missing")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        sub = getattr(e, "full_key", None) or ""
        raise ConfigError(
            f"config key '{key}.{sub}': {e.msg if hasattr(e, 'msg') else e}"
        ) from None


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"config key {key!r} must be > 0, got {value}")


def data_config(cfg: DictConfig) -> DataConfig:
    """Checks ``cfg.data``."""
    d: DataConfig = typed(DataConfig, cfg.data, "data")
    for k in ("batch_size", "eval_batch_size", "max_len"):
        _positive(getattr(d, k), f"data.{k}")
    if d.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers' must be >= 0, got {d.num_workers}")
    return d


def model_config(cfg: DictConfig) -> ModelConfig:
    """Checks ``cfg.model``."""
    m: ModelConfig = typed(ModelConfig, cfg.model, "model")
    for k in ("field_dim", "d_model", "n_heads", "n_blocks"):
        _positive(getattr(m, k), f"model.{k}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {m.dropout}")
    if m.l2_weight < 0:
        raise ConfigError(f"config key 'model.l2_weight' must be >= 0, got {m.l2_weight}")
    return m


def loss_weighting(cfg: DictConfig) -> str:
    """Checks ``cfg.loss_weighting``."""
    value = cfg.get("loss_weighting", "fixed")
    if value not in ("fixed", "uncertainty"):
        raise ConfigError(
            f"config key 'loss_weighting' must be fixed or uncertainty, got {value!r}"
        )
    return str(value)


def _check_derived(name: str, t: TaskConfig) -> None:
    """Checks the keys of a task derived from behaviours (``positive``, ``negatives``, ...)."""
    if t.positive is not None and not t.positive:
        raise ConfigError(
            f"config key 'task.{name}.positive' must list behaviours (e.g. [cart]) or be null"
        )
    if t.negatives not in (None, "impressions", "sampled"):
        raise ConfigError(
            f"config key 'task.{name}.negatives' must be impressions, sampled or null, "
            f"got {t.negatives!r}"
        )
    if t.positive is None and t.negatives is not None:
        raise ConfigError(
            f"config key 'task.{name}.negatives' needs 'task.{name}.positive' (the behaviours "
            "that make a positive)"
        )
    if t.horizon <= 0:
        raise ConfigError(f"config key 'task.{name}.horizon' must be > 0, got {t.horizon}")
    if t.positive is not None and t.label is not None:
        raise ConfigError(
            f"config key 'task.{name}': a derived task (positive) has its own label; "
            "set label: null"
        )


def task_configs(cfg: DictConfig) -> dict[str, TaskConfig]:
    """Checks ``cfg.task``: one entry per trained task, keyed by task name."""
    node = cfg.get("task")
    if not node:
        raise ConfigError(
            "config key 'task' selects no task: use e.g. task=[click,purchase,coupon]"
        )
    tasks: dict[str, TaskConfig] = {}
    for name in node:
        t: TaskConfig = typed(TaskConfig, node[name], f"task.{name}")
        if t.weight < 0:
            raise ConfigError(f"config key 'task.{name}.weight' must be >= 0, got {t.weight}")
        if t.monitor_weight < 0:
            raise ConfigError(
                f"config key 'task.{name}.monitor_weight' must be >= 0, got {t.monitor_weight}"
            )
        _check_derived(name, t)
        bad = sorted(set(t.metrics) - set(METRIC_NAMES))
        if bad or "auc" not in t.metrics:
            raise ConfigError(
                f"config key 'task.{name}.metrics' must be a subset of {list(METRIC_NAMES)} "
                f"that includes auc, got {list(t.metrics)}"
            )
        for dep, value in t.space.items():
            if value not in (0, 1):
                raise ConfigError(
                    f"config key 'task.{name}.space.{dep}' must be 0 or 1, got {value}"
                )
        tasks[str(name)] = t
    return tasks


def compile_backend(value: object) -> str | None:
    """Checks ``cfg.compile``: false/null = eager PyTorch, true = ``inductor``, or a
    ``torch.compile`` backend name (``eager``, ``aot_eager``: tracing only, for checks)."""
    if value in (None, False):
        return None
    if value is True:
        return "inductor"
    if isinstance(value, str) and value in ("inductor", "eager", "aot_eager", "cudagraphs"):
        return value
    raise ConfigError(
        f"config key 'compile' must be true, false or a backend (inductor, eager, aot_eager, "
        f"cudagraphs), got {value!r}"
    )
