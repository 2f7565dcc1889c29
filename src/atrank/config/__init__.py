"""The config schemas: one dataclass per config object, registered with Hydra's ConfigStore.

Every entry point's config is composed through its root schema (``train_schema``,
``eval_schema``, ``prep_schema``: the first entry of ``conf/{train,eval,prep}.yaml``), so a
misspelled or mistyped key anywhere (command line, group file, experiment file) fails when
the config is composed. The dataclasses hold the defaults (the YAML files hold only what
differs) and check their own value ranges when constructed; :func:`train_config` and
friends turn a composed config into those objects at the entry point, naming the full key of
any bad value; for a new training run :func:`train_config` also checks the ``_target_``
nodes against their classes' signatures (:mod:`atrank.config.targets`), before any data is
read. Below the entry points nothing reads the config.

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
    ReportConfig,
    TaskSpec,
    TrainConfig,
)
from atrank.config.targets import check_new_run
from atrank.model.config import SettingError

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
    "ReportConfig",
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


def _sweep(attr: str) -> str | None:
    """A value of the running Hydra multirun job (None outside one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return str(hc.sweep.dir) if attr == "dir" else (hc.job.override_dirname or str(hc.job.num))


def _sweep_group() -> str | None:
    """W&B group of a run: its sweep's folder in a multirun, else none."""
    return _sweep("dir")


def _sweep_job_name() -> str | None:
    """W&B name of a run: its overrides in a multirun, else W&B's own."""
    return _sweep("name")


def register_configs() -> None:
    """Registers the root schemas with Hydra's ConfigStore, and the resolvers the config
    files use (idempotent)."""
    OmegaConf.register_new_resolver(
        "atrank_run_dir", lambda resume, fresh: str(resume) if resume else fresh, replace=True
    )
    OmegaConf.register_new_resolver("atrank_wandb_group", _sweep_group, replace=True)
    OmegaConf.register_new_resolver("atrank_wandb_name", _sweep_job_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="prep_schema", node=PrepJobConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="predict_schema", node=PredictConfig)


def train_config(cfg: DictConfig, *, stored: bool = False) -> TrainConfig:
    """The typed ``atrank-train`` config (also the one stored in checkpoints).

    A new run's config is checked further, before anything is read or built: every key of
    the ``_target_`` nodes (optimizer, scheduler, trainer, callbacks, loggers) against its
    class's signature and range rules (:mod:`atrank.config.targets`), and ``ckpt_path``
    must be a file.

    Args:
        cfg: the composed config, or the one stored in a checkpoint.
        stored: ``cfg`` is a checkpoint's stored config (eval, export, resume): only the
            schema is checked (the checkpoint it once started from may be gone, and its
            ``_target_`` nodes are not instantiated again).

    Raises:
        ConfigError: naming the full key of the first missing, mistyped or invalid value.
    """
    run = typed_root(TrainConfig, cfg)
    if not stored:
        try:
            check_new_run(run)
        except SettingError as e:
            raise ConfigError(f"config key '{e.key}': {e.why}") from None
    return run


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
