"""The schemas of the other entry points: evaluation, preparation, export, serving, scoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from atrank.config.run import PathsConfig, check_threads
from atrank.model.config import SettingError
from data_prep.passes.derive import DerivedTask, derived_tasks
from data_prep.pipeline import PrepConfig


class Split(str, Enum):
    """An evaluation split."""

    val = "val"
    test = "test"


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
        check_threads(self.threads)


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
        onnx: also write the scoring graph as ``model.onnx`` (for ONNX Runtime).
        wandb: add the bundle to the training run's W&B run (:mod:`atrank.report.wandb_bundle`):
            ``auto`` (when it has one), ``true`` (it must) or ``false``.
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    ckpt_path: str = MISSING
    out: str = MISSING
    data_dir: str | None = None
    onnx: bool = False
    wandb: str = "auto"

    def __post_init__(self) -> None:
        self.wandb = str(self.wandb).lower()  # (`wandb=true` on the command line is a bool)
        if self.wandb not in ("auto", "true", "false"):
            raise SettingError("wandb", f"must be auto, true or false, got {self.wandb}")


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

    paths: PathsConfig = field(default_factory=PathsConfig)
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
        check_threads(self.threads)


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
            raise SettingError("blend", "rank_by=blend needs blend weights, e.g. +blend.click=1")
        if any(w < 0 for w in self.blend.values()):
            raise SettingError("blend", f"weights must be >= 0, got {dict(self.blend)}")
        check_threads(self.threads)
