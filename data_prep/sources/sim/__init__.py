"""The simulator as a source: ``dataset=sim`` generates the shop log once into the cache.

The simulation is a pure function of its config, so it is stored under
``cache_dir/raw/sim-<key>`` (``key`` from the config alone) and generated only when that
folder has no ``_SIMULATED`` marker. It is generated into a private temporary folder
(``.sim-<key>.tmp-<owner>``), marked, and renamed into place, all under the folder's lock
(:mod:`data_prep.locks`): processes asking at once for the same simulation wait for one,
and a folder in ``raw/`` is always complete.
The modules, in the order the data flows: :mod:`~data_prep.sources.sim.config` (settings),
:mod:`~data_prep.sources.sim.world` (catalogue and chunk state),
:mod:`~data_prep.sources.sim.steps` (the vectorised steps) and
:mod:`~data_prep.sources.sim.simulate` (chunks and parquet parts).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from data_prep.errors import PrepError
from data_prep.locks import clean_stale, folder_lock, temp_dir
from data_prep.pipeline import fingerprint
from data_prep.sources.base import AdapterResult
from data_prep.sources.sim.config import SimConfig, sim_config_from_dict
from data_prep.sources.sim.simulate import TASKS, SimSummary, simulate

SIMULATED = "_SIMULATED"  # marker of a finished simulation in its raw folder

__all__ = [
    "SIMULATED",
    "TASKS",
    "SimConfig",
    "SimSummary",
    "read_sim",
    "sim_config_from_dict",
    "simulate",
]


def read_sim(cache_dir: Path, **options: Any) -> AdapterResult:
    """The simulated log for these settings, generated into ``cache_dir`` on first use.

    Args:
        cache_dir: the cache; the log lives in ``cache_dir/raw/sim-<key>``.
        **options: :class:`SimConfig` fields (the ``dataset`` keys); missing ones keep their
            defaults.

    Returns:
        The canonical events and labelled samples; no input files (the config is the
        simulation's identity), the whole config and the raw folder as ``details``.

    Raises:
        PrepError: a value of the wrong type or out of range, naming the key.
    """
    try:
        cfg = sim_config_from_dict(options)
    except ValueError as e:
        raise PrepError(f"dataset: {e}") from None
    key = fingerprint(asdict(cfg), [])[:16]
    raw = Path(cache_dir) / "raw" / f"sim-{key}"
    if not (raw / SIMULATED).exists():
        with folder_lock(raw):
            if not (raw / SIMULATED).exists():  # (another process may have made it meanwhile)
                _generate(cfg, raw)
    return AdapterResult(
        events=pl.scan_parquet(raw / "events" / "*.parquet"),
        samples=pl.scan_parquet(raw / "samples" / "*.parquet"),
        details={"config": asdict(cfg), "raw_dir": str(raw)},
    )


def _generate(cfg: SimConfig, raw: Path) -> None:
    """Simulates into a private temporary folder, marks it finished, renames it to ``raw``.

    Call it holding the lock of ``raw``.
    """
    prefix = f".{raw.name}.tmp-"
    clean_stale(raw.parent, prefix)
    if raw.exists():
        # Unfinished, yet nobody writes there now: only a version of this code that simulated
        # in place (and was interrupted) leaves such a folder.
        shutil.rmtree(raw)
    tmp = temp_dir(raw.parent, prefix)
    try:
        summary = simulate(cfg, tmp)
        (tmp / SIMULATED).write_text(json.dumps(asdict(summary), default=str, indent=2))
        os.replace(tmp, raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
