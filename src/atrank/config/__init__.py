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

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from atrank.config.convert import ConfigError, plain, typed_root
from atrank.config.jobs import (
    EvalConfig,
    ExportConfig,
    PredictConfig,
    PrepJobConfig,
    ServeConfig,
    Split,
)
from atrank.config.run import (
    COMPILE_BACKENDS,
    METRIC_NAMES,
    DataConfig,
    LossWeighting,
    PathsConfig,
    TaskSpec,
    TrainConfig,
)

__all__ = [
    "COMPILE_BACKENDS",
    "METRIC_NAMES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "LossWeighting",
    "PathsConfig",
    "PredictConfig",
    "PrepJobConfig",
    "ServeConfig",
    "Split",
    "TaskSpec",
    "TrainConfig",
    "eval_config",
    "export_config",
    "plain",
    "predict_config",
    "prep_job_config",
    "register_configs",
    "serve_config",
    "train_config",
]


def register_configs() -> None:
    """Registers the root schemas with Hydra's ConfigStore, and the resolvers the config
    files use (idempotent)."""
    OmegaConf.register_new_resolver(
        "atrank_run_dir", lambda resume, fresh: str(resume) if resume else fresh, replace=True
    )
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="prep_schema", node=PrepJobConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="predict_schema", node=PredictConfig)


def train_config(cfg: DictConfig) -> TrainConfig:
    """The typed ``atrank-train`` config (also the one stored in checkpoints).

    Raises:
        ConfigError: naming the full key of the first missing, mistyped or invalid value.
    """
    return typed_root(TrainConfig, cfg)


def eval_config(cfg: DictConfig) -> EvalConfig:
    """The typed ``atrank-eval`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return typed_root(EvalConfig, cfg)


def prep_job_config(cfg: DictConfig) -> PrepJobConfig:
    """The typed ``atrank-prep`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return typed_root(PrepJobConfig, cfg)


def export_config(cfg: DictConfig) -> ExportConfig:
    """The typed ``atrank-export`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return typed_root(ExportConfig, cfg)


def serve_config(cfg: DictConfig) -> ServeConfig:
    """The typed ``atrank-serve`` config; raises :class:`ConfigError` like :func:`train_config`."""
    return typed_root(ServeConfig, cfg)


def predict_config(cfg: DictConfig) -> PredictConfig:
    """The typed ``atrank-predict`` config (errors as :func:`train_config`)."""
    return typed_root(PredictConfig, cfg)
