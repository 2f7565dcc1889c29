"""Dataset sources: each turns a ``dataset`` config into the two canonical tables.

Two kinds of source:

* ``sim`` (:data:`SOURCES`): the project's simulator, split with the global time cut;
* the real-data adapters (:data:`data_prep.adapters.ADAPTERS`: ``amazon_reviews``,
  ``amazon_seq``, ``taobao``, ``o2o``, ``movielens``). Their ``dataset`` config is
  ``name`` (the adapter), ``path`` (file or folder), the protocol keys below, and any other
  key is passed to the adapter as an option (an unknown one is a :class:`PrepError`
  naming ``dataset.<key>``):

  - ``protocol``: ``next_item`` (the paper's protocol on positive-only logs, see
    :mod:`data_prep.protocol`; split ``leave_last_out``) or ``global_time`` (the source's
    own labelled samples, e.g. O2O coupon use; the global time cut of ``prep``);
  - ``tasks``: ``{task: [actions]}``, the positives of each next-item task (default: one
    task ``click`` whose positives are every action of the log);
  - ``negatives`` (default 1) and ``seed`` (default 0): negative sampling.

The adapter's skip counts and notes land in ``report.json`` (``source``) and ``meta.json``
(``source``); the files it actually read (``AdapterResult.inputs``) are fingerprinted, so a
changed input file prepares again.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import polars as pl

from data_prep.adapters import ADAPTERS
from data_prep.derive import DerivedTask, add_derived_labels, check_negatives, derived_tasks
from data_prep.pipeline import PrepConfig, PrepError, PrepResult, fingerprint, prepare, up_to_date
from data_prep.protocol import next_item_samples
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
    derive: dict[str, Any] | None = None,
) -> PrepResult:
    """Reads a dataset through its source and prepares it (skipped when already done).

    Args:
        dataset: the ``dataset`` config; ``name`` picks the source.
        prep: the ``prep`` config (:class:`PrepConfig` fields).
        cache_dir: where raw generated data and default outputs live.
        out_dir: output directory; None = ``cache_dir/prepared/<name>-<fingerprint>``.
        force: prepare again even when the outputs match.
        derive: tasks derived from behaviours (:mod:`data_prep.derive`), e.g.
            ``{"cart": {"actions": ["cart"]}}``.

    Returns:
        The preparation result (``skipped`` when the outputs were already there).
    """
    params = dict(dataset)
    name = params.pop("name", None)
    if name not in SOURCES and name not in ADAPTERS:
        known = sorted([*SOURCES, *ADAPTERS])
        raise PrepError(f"dataset.name: unknown dataset {name!r}; known: {known}")
    prep_cfg = prep_config_from_dict(prep)
    derived = derived_tasks(derive)
    fp_config: dict[str, Any] = {"dataset": {"name": name, **params}, "prep": asdict(prep_cfg)}
    if derived:  # (absent when empty: earlier preparations keep their fingerprint)
        fp_config["derive"] = {k: asdict(t) for k, t in derived.items()}
    if name in ADAPTERS:
        return _prepare_adapter(
            name, params, prep_cfg, cache_dir, out_dir, force, derived, fp_config
        )
    check_negatives(derived, "impressions", name)
    # Inputs named by path in the dataset config count with their size and mtime.
    inputs = [Path(str(v)) for k, v in params.items() if k in ("path", "paths") and v]
    fp = fingerprint(fp_config, inputs)
    target = out_dir if out_dir is not None else cache_dir / "prepared" / f"{name}-{fp[:16]}"
    if not force and (done := up_to_date(target, fp, prep_cfg)) is not None:
        return done  # checked before reading the source: no simulation, no scan
    events, samples, _, source = SOURCES[name](params, cache_dir)
    samples = add_derived_labels(events, samples, derived, name)
    if derived:
        source = {**source, "derive": fp_config["derive"]}
    return prepare(events, samples, target, prep_cfg, source, fp, force=force)


PROTOCOLS: tuple[str, ...] = ("global_time", "next_item")
_PROTOCOL_KEYS = ("protocol", "tasks", "negatives", "seed")
_PATH_OPTIONS = ("attributes", "reviews", "meta")  # adapter options that name input files
_MISSING = (None, "", "???")


def _protocol_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Pops and checks the protocol keys of an adapter's dataset config."""
    protocol = params.pop("protocol", "next_item")
    if protocol not in PROTOCOLS:
        raise PrepError(f"dataset.protocol: must be one of {list(PROTOCOLS)}, got {protocol!r}")
    tasks = params.pop("tasks", None)
    if tasks is not None:
        if not isinstance(tasks, dict) or not tasks:
            raise PrepError(f"dataset.tasks: expected {{task: [actions]}}, got {tasks!r}")
        tasks = {str(t): [a] if isinstance(a, str) else list(a) for t, a in tasks.items()}
        for t, actions in tasks.items():
            if not t or not actions or not all(isinstance(a, str) for a in actions):
                raise PrepError(f"dataset.tasks.{t}: expected a non-empty list of actions")
    negatives, seed = params.pop("negatives", 1), params.pop("seed", 0)
    for key, v, low in (("negatives", negatives, 1), ("seed", seed, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise PrepError(f"dataset.{key}: expected an integer >= {low}, got {v!r}")
    return {"protocol": protocol, "tasks": tasks, "negatives": negatives, "seed": seed}


def _adapter_options(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The adapter's keyword arguments (``path`` and options), checked against its signature."""
    known = [k for k in inspect.signature(ADAPTERS[name]).parameters if k != "path"]
    opts: dict[str, Any] = {}
    for key, v in params.items():
        if key != "path" and key not in known:
            raise PrepError(
                f"dataset.{key}: unknown option of the {name!r} adapter; known: "
                f"path, {', '.join([*known, *_PROTOCOL_KEYS])}"
            )
        if key == "path" or key in _PATH_OPTIONS:
            v = None if v in _MISSING else Path(str(v))
        opts[key] = v
    if opts.get("path") is None and opts.get("reviews") is None:
        raise PrepError(f"dataset.path: required for the {name!r} dataset (a file or folder)")
    return opts


def _inputs(base: list[Path], more: list[str] | list[Path]) -> list[Path]:
    """Input files for the fingerprint: ``base`` plus ``more``, unique, in a stable order."""
    unique = {Path(p).resolve().as_posix(): Path(p) for p in [*base, *more]}
    return [unique[k] for k in sorted(unique)]


def _stored_inputs(target: Path) -> list[str] | None:
    """The input files recorded by an earlier preparation in ``target`` (None if none)."""
    try:
        meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
        inputs = meta["source"]["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return inputs if isinstance(inputs, list) else None


def _prepare_adapter(
    name: str,
    params: dict[str, Any],
    prep_cfg: PrepConfig,
    cache_dir: Path,
    out_dir: Path | None,
    force: bool,
    derived: dict[str, DerivedTask],
    fp_config: dict[str, Any],
) -> PrepResult:
    """:func:`prepare_from_config` for a real-data adapter (see the module docstring);
    ``fp_config`` is the fingerprinted configuration (dataset, prep, derived tasks)."""
    proto = _protocol_settings(params)
    check_negatives(derived, "sampled" if proto["protocol"] == "next_item" else "impressions", name)
    opts = _adapter_options(name, params)
    base = [opts[k] for k in ("path", *_PATH_OPTIONS) if opts.get(k) is not None]
    for p in base:
        if not p.exists():
            key = "path" if p == opts.get("path") else next(k for k in opts if opts[k] == p)
            raise PrepError(f"dataset.{key}: {str(p)!r} does not exist")
    target = out_dir or cache_dir / "prepared" / f"{name}-{fingerprint(fp_config, base)[:16]}"
    # The adapter's actual inputs are known after reading; an earlier run recorded them.
    if not force and (stored := _stored_inputs(target)) is not None:
        try:
            fp = fingerprint(fp_config, _inputs(base, stored))
        except PrepError:
            fp = ""  # a recorded input is gone: prepare again
        if fp and (done := up_to_date(target, fp, prep_cfg)) is not None:
            return done
    result = ADAPTERS[name](**opts)
    inputs = _inputs(base, result.inputs)
    fp = fingerprint(fp_config, inputs)
    report: dict[str, Any] = {
        "adapter": name,
        "skipped": dict(result.skipped),
        "notes": list(result.notes),
        "protocol": proto["protocol"],
    }
    if proto["protocol"] == "next_item":
        events = result.events.collect()
        tasks = proto["tasks"] or {"click": sorted(events["action"].drop_nulls().unique())}
        tasks = {**tasks, **{k: list(t.actions) for k, t in derived.items()}}
        samples, stats = next_item_samples(events, tasks, proto["negatives"], proto["seed"])
        report["next_item"] = stats
        events_lf, samples_lf, split = events.lazy(), samples.lazy(), "leave_last_out"
        proto["tasks"] = tasks
    else:
        if result.samples is None:
            raise PrepError(
                f"dataset.protocol: global_time needs labelled samples, but the {name!r} "
                f"input {opts.get('path')} has no labels ({'; '.join(result.notes)}); use a "
                "file with labels (O2O: the training file with a Date column) or "
                "protocol=next_item"
            )
        events_lf, split = result.events, "global_time_cut"
        samples_lf = add_derived_labels(events_lf, result.samples, derived, name)
        if derived:
            proto["derive"] = fp_config["derive"]
    source = {
        "name": name,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.items()},
        "inputs": [p.resolve().as_posix() for p in inputs],
        **proto,
        "skipped": report["skipped"],
        "notes": report["notes"],
    }
    return prepare(
        events_lf,
        samples_lf,
        target,
        prep_cfg,
        source,
        fp,
        force=force,
        split=split,
        extra_report={"source": report},
    )
