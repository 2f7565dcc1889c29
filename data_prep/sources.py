"""Dataset sources: each turns a ``dataset`` config into the two canonical tables.

Only the simulator is registered so far; real-data adapters add one entry each to
``SOURCES``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import polars as pl

from data_prep.pipeline import PrepConfig, PrepError, PrepResult, fingerprint, prepare, up_to_date
from data_prep.simulator import sim_config_from_dict, simulate

# name -> (dataset config without "name", cache dir) -> (events, samples, input files, source info)
SourceFn = Callable[
    [dict[str, Any], Path], tuple[pl.LazyFrame, pl.LazyFrame, list[Path], dict[str, Any]]
]

_SIM_DONE = "_SIMULATED"


def _sim_source(
    params: dict[str, Any], cache_dir: Path
) -> tuple[pl.LazyFrame, pl.LazyFrame, list[Path], dict[str, Any]]:
    try:
        cfg = sim_config_from_dict(params)
    except ValueError as e:
        raise PrepError(f"dataset: {e}") from None
    key = fingerprint(asdict(cfg), [])[:16]
    raw = cache_dir / "raw" / f"sim-{key}"
    if not (raw / _SIM_DONE).exists():
        if raw.exists():
            shutil.rmtree(raw)  # an interrupted earlier run
        summary = simulate(cfg, raw)
        (raw / _SIM_DONE).write_text(json.dumps(asdict(summary), default=str, indent=2))
    events = pl.scan_parquet(raw / "events" / "*.parquet")
    samples = pl.scan_parquet(raw / "samples" / "*.parquet")
    # The simulator's output is a pure function of its config: the config is the fingerprint.
    return (
        events,
        samples,
        [],
        {"name": "sim", "simulator": True, "config": asdict(cfg), "raw_dir": str(raw)},
    )


SOURCES: dict[str, SourceFn] = {"sim": _sim_source}


def prep_config_from_dict(d: dict[str, Any]) -> PrepConfig:
    """Builds a :class:`PrepConfig`, naming any unknown key."""
    known = {f.name for f in fields(PrepConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise PrepError(f"prep: unknown key(s) {unknown}; known: {sorted(known)}")
    return PrepConfig(**d)


def prepare_from_config(
    dataset: dict[str, Any],
    prep: dict[str, Any],
    cache_dir: Path,
    out_dir: Path | None = None,
    force: bool = False,
) -> PrepResult:
    """Reads a dataset through its source and prepares it (skipped when already done).

    Args:
        dataset: the ``dataset`` config; ``name`` picks the source.
        prep: the ``prep`` config (:class:`PrepConfig` fields).
        cache_dir: where raw generated data and default outputs live.
        out_dir: output directory; None = ``cache_dir/prepared/<name>-<fingerprint>``.
        force: prepare again even when the outputs match.

    Returns:
        The preparation result (``skipped`` when the outputs were already there).
    """
    params = dict(dataset)
    name = params.pop("name", None)
    if name not in SOURCES:
        raise PrepError(f"dataset.name: unknown dataset {name!r}; known: {sorted(SOURCES)}")
    prep_cfg = prep_config_from_dict(prep)
    fp_config = {"dataset": {"name": name, **params}, "prep": asdict(prep_cfg)}
    # Inputs named by path in the dataset config count with their size and mtime.
    inputs = [Path(str(v)) for k, v in params.items() if k in ("path", "paths") and v]
    fp = fingerprint(fp_config, inputs)
    target = out_dir if out_dir is not None else cache_dir / "prepared" / f"{name}-{fp[:16]}"
    if not force and (done := up_to_date(target, fp, prep_cfg)) is not None:
        return done  # checked before reading the source: no simulation, no scan
    events, samples, _, source = SOURCES[name](params, cache_dir)
    return prepare(events, samples, target, prep_cfg, source, fp, force=force)
