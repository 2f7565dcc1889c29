"""From a typed run config to the objects of a run: prepared data, datamodule, model, system.

Training and evaluation build through the same functions, so a checkpoint is always
rebuilt exactly as it was trained (tasks, loss weighting, model settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import hydra

from atrank.config import ConfigError, DataConfig, TaskSpec, TrainConfig
from atrank.data.datamodule import ATRankDataModule
from atrank.data.store import LabelSpec, read_inverse_counts
from atrank.model import DataShape, build_model
from atrank.system.module import ATRankSystem
from data_prep.meta import PreparedMeta
from data_prep.passes.derive import DerivedTask
from data_prep.run import prepare_from_config


def derived_tasks(tasks: Mapping[str, TaskSpec]) -> dict[str, DerivedTask]:
    """The tasks whose labels the preparation derives from the log (``positive`` set)."""
    out: dict[str, DerivedTask] = {}
    for name, t in tasks.items():
        if (derived := t.derived()) is not None:
            out[name] = derived
    return out


def resolve_data_dir(run: TrainConfig) -> Path:
    """The prepared-data directory of a run: ``data.dir``, or the configured dataset prepared.

    Without ``data.dir`` the configured ``dataset`` is generated (or read) and prepared into
    the cache on first use, with the labels of the tasks declared by behaviour derived from
    the log; later runs with the same dataset, prep settings and derived tasks reuse it.
    """
    derive = derived_tasks(run.task)
    if run.data.dir is not None:
        if derive:
            raise ConfigError(
                f"task.{next(iter(derive))}.positive: derived tasks are prepared from the "
                f"log, but data.dir={run.data.dir} is already prepared; drop data.dir, or "
                "prepare with atrank-prep derive.<task>.actions=[...]"
            )
        return Path(run.data.dir)
    result = prepare_from_config(
        run.dataset, run.prep, cache_dir=Path(run.paths.cache_dir), derive=derive
    )
    return result.out_dir


def label_specs(tasks: Mapping[str, TaskSpec]) -> dict[str, LabelSpec]:
    """What the data layer reads for each task: its label and its sample space."""
    return {n: LabelSpec(t.label_of(n), dict(t.space)) for n, t in tasks.items()}


def make_datamodule(
    data_dir: Path,
    data: DataConfig,
    tasks: Mapping[str, TaskSpec],
    seed: int,
    eval_batch_size: int | None = None,
) -> ATRankDataModule:
    """Loads the prepared data and checks the configured tasks against it."""
    dm = ATRankDataModule(
        dir=str(data_dir),
        tasks=label_specs(tasks),
        batch_size=data.batch_size,
        eval_batch_size=eval_batch_size or data.eval_batch_size,
        max_len=data.max_len,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        seed=seed,
    )
    dm.setup()
    check_tasks(tasks, dm.prepared_meta, data_dir)
    return dm


def check_tasks(tasks: Mapping[str, TaskSpec], meta: PreparedMeta, data_dir: Path) -> None:
    """Each configured task's labels must be on targets of the declared type.

    (That the labels exist is checked when the data is read, :func:`read_prepared`.)
    """
    for name, t in tasks.items():
        info = meta.tasks[t.label_of(name)]
        if t.target not in meta.groups:
            raise ConfigError(
                f"task.{name}.target: unknown target type {t.target!r} "
                f"(known: {sorted(meta.groups)})"
            )
        if t.target not in info.target_groups:
            raise ConfigError(
                f"task.{name}.target: the data's {name!r} labels are on "
                f"{list(info.target_groups)} targets, not {t.target!r}"
            )


def data_shape(meta: PreparedMeta) -> DataShape:
    """The model's data shape, read from the prepared data's metadata."""
    return DataShape(
        vocab_sizes=dict(meta.vocab_sizes),
        group_fields=meta.group_fields,
        n_actions=meta.n_actions,
        n_time_buckets=meta.time.n_buckets,
        n_users=meta.counts.users,
    )


def build_system(
    run: TrainConfig,
    meta: PreparedMeta,
    data_dir: Path,
    run_config: dict[str, object] | None = None,
    compile_model: bool = False,
) -> ATRankSystem:
    """The model and its training system, as ``run`` describes them.

    Args:
        run: the typed run config (from the command line, or stored in a checkpoint).
        meta: the prepared data's metadata (the model's data shape).
        data_dir: the prepared data (kept in checkpoints).
        run_config: the plain run config kept in checkpoints (None keeps none).
        compile_model: apply ``run.compile`` (training only).

    Raises:
        ConfigError: the model cannot be built for this data.
    """
    try:
        model = build_model(
            run.model, data_shape(meta), {name: t.target for name, t in run.task.items()}
        )
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    backend = run.compile_backend if compile_model else None
    if backend is not None:
        # In place: the module's state_dict keys (and so checkpoints) stay the same.
        model.compile(backend=backend, dynamic=True)
    return ATRankSystem(
        model,
        tasks=run.task,
        optimizer=hydra.utils.instantiate(run.optimizer),
        scheduler=hydra.utils.instantiate(run.scheduler) if run.scheduler else None,
        l2_weight=run.model.l2_weight,
        embed_l2=run.model.embed_l2,
        inv_counts=(
            # the tables the model really embeds (it owns that list), with their sizes
            read_inverse_counts(data_dir, {f: meta.vocab_sizes[f] for f in model.embedding.fields})
            if run.model.embed_l2 > 0
            else None
        ),
        loss_weighting=run.loss_weighting.value,
        run_config=run_config,
        data_dir=str(data_dir),
    )
