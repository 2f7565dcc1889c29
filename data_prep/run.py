"""``prepare_from_config``: a ``dataset`` config, through its source, into ``prepare()``.

One path for every source of :data:`data_prep.sources.SOURCES` (the simulator and the
real-data adapters). The ``dataset`` config is ``name`` (the source), the source's options
(a :class:`~data_prep.sources.Source` declares them; an unknown key, or a value of another
type than the reader's annotation, e.g. ``ts_min=abc``, is a :class:`PrepError` naming
``dataset.<key>``, raised before anything is read) and the protocol keys:

- ``protocol``: one the source gives (:attr:`Source.protocols`, its default first, or the
  one :attr:`Source.pick_protocol` chooses from the options: ``events`` by its impressions):
  ``global_time`` (the source's own labelled samples, e.g. the simulator's impressions or
  O2O coupon use; the global time cut of ``prep``) or ``next_item`` (the paper's protocol on
  positive-only logs, see :mod:`data_prep.sources.protocol`; split ``leave_last_out``);
- only for sources that can give ``next_item``: ``tasks`` (``{task: [actions]}``, the positives
  of each next-item task; default: one task ``click`` whose positives are every action of the
  log), ``negatives`` (default 1) and ``seed`` (default 0) of the negative sampling, and
  how negatives are drawn: ``negative_pool`` (``matched``), ``negative_weights``
  (``uniform``) and ``negative_exclude`` (``user_items``); see
  :class:`~data_prep.sources.protocol.NegativeSampling`.
- ``kcore`` (every source; default null: off): the users and items kept have at least that
  many item interactions each (:mod:`data_prep.passes.kcore`, right after the source is
  read, before the protocol); its counts land in ``source.kcore`` of both files.

The source's skip counts and notes land in ``report.json`` (``source``) and ``meta.json``
(``source``); the files it actually read (``AdapterResult.inputs``) are fingerprinted, so a
changed input file prepares again. The skip rule is checked before any reading or
simulating: an earlier preparation recorded its inputs in ``meta.json``.

Processes that prepare the same target at once (two jobs on one cache, every rank of a
``torchrun``) take turns on the target's lock (:mod:`data_prep.locks`), held from the skip
check to the publication: one prepares, the others wait and then find it done.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import polars as pl

from data_prep import contract as c
from data_prep.annotations import describe, fits
from data_prep.errors import PrepError
from data_prep.locks import folder_lock
from data_prep.meta import read_meta
from data_prep.passes.derive import DerivedTask, add_derived_labels, check_negatives
from data_prep.passes.kcore import kcore_filter
from data_prep.pipeline import PrepConfig, PrepResult, fingerprint, prepare, up_to_date
from data_prep.sources import GLOBAL_TIME, NEXT_ITEM, SOURCES, AdapterResult, Source
from data_prep.sources.protocol import PROTOCOL_VERSION, NegativeSampling, next_item_samples

_NEXT_ITEM_KEYS = (
    "tasks",
    "negatives",
    "seed",
    "negative_pool",
    "negative_weights",
    "negative_exclude",
)
_MISSING = (None, "", "???")


def prepare_from_config(
    dataset: dict[str, Any],
    prep: PrepConfig,
    cache_dir: Path,
    out_dir: Path | None = None,
    force: bool = False,
    derive: Mapping[str, DerivedTask] | None = None,
) -> PrepResult:
    """Reads a dataset through its source and prepares it (skipped when already done).

    Args:
        dataset: the ``dataset`` config; ``name`` picks the source (see the module docstring).
        prep: the preparation settings.
        cache_dir: where generated raw data and default outputs live.
        out_dir: output directory; None = ``cache_dir/prepared/<name>-<fingerprint>``.
        force: prepare again even when the outputs match.
        derive: tasks derived from behaviours (:mod:`data_prep.passes.derive`), by name.

    Returns:
        The preparation result (``skipped`` when the outputs were already there).

    Raises:
        PrepError: naming ``dataset.<key>`` for a bad dataset config, the lock file when
            another process prepared the same target for too long, or what failed later.
    """
    params = dict(dataset)
    name = params.pop("name", None)
    if name not in SOURCES:
        raise PrepError(f"dataset.name: unknown dataset {name!r}; known: {sorted(SOURCES)}")
    source = SOURCES[name]
    derived = dict(derive or {})
    kcore = _kcore_setting(params)  # (null or absent: off, and not in the fingerprint)
    fp_config: dict[str, Any] = {"dataset": {"name": name, **params}, "prep": asdict(prep)}
    if kcore is not None:
        fp_config["dataset"]["kcore"] = kcore
    if derived:  # (absent when empty: earlier preparations keep their fingerprint)
        fp_config["derive"] = {k: asdict(t) for k, t in derived.items()}
    if source.pick_protocol is not None:  # (e.g. events: by whether impressions are given)
        params["protocol"] = source.pick_protocol(params)
    proto = _protocol_settings(source, params)
    if proto["protocol"] == NEXT_ITEM:  # (the sampling's resolved defaults, and the
        # protocol's version: samples made by an older protocol are made again)
        fp_config["next_item"] = {"sampling": proto["sampling"], "version": PROTOCOL_VERSION}
    check_negatives(derived, "sampled" if proto["protocol"] == NEXT_ITEM else "impressions", name)
    opts = _options(name, source, params)
    files = [opts[k] for k in source.files if opts.get(k) is not None]
    target = out_dir or cache_dir / "prepared" / f"{name}-{fingerprint(fp_config, files)[:16]}"
    with folder_lock(target):
        if not force and (done := _up_to_date(target, fp_config, files, prep)) is not None:
            return done  # checked before reading the source: no simulation, no scan
        extra = {"cache_dir": cache_dir} if source.needs_cache else {}
        result = source.read(**opts, **extra)
        result, kcore_report = _kcore(result, kcore)
        inputs = _inputs(files, result.inputs)
        report: dict[str, Any] = {
            "adapter": name,
            "skipped": dict(result.skipped),
            "notes": list(result.notes),
            "protocol": proto["protocol"],
            **kcore_report,
        }
        if proto["protocol"] == NEXT_ITEM:
            events, samples = _next_item(result, proto, derived, report)
            split = "leave_last_out"
        else:
            events, samples = result.events, _own_samples(name, result, opts, derived)
            split = "global_time_cut"
            if derived:
                proto["derive"] = fp_config["derive"]
        info = {
            "name": name,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.items()},
            "inputs": [p.resolve().as_posix() for p in inputs],
            **proto,
            "skipped": report["skipped"],
            "notes": report["notes"],
            **kcore_report,
            **result.details,
        }
        fp = fingerprint(fp_config, inputs)
        return prepare(
            events,
            samples,
            target,
            prep,
            info,
            fp,
            force=True,  # (the skip rule was checked above, under this lock)
            split=split,
            extra_report={"source": report},
        )


def _protocol_settings(source: Source, params: dict[str, Any]) -> dict[str, Any]:
    """Pops and checks the protocol keys of a dataset config."""
    protocol = params.pop("protocol", source.protocols[0])
    if protocol not in source.protocols:
        raise PrepError(
            f"dataset.protocol: must be one of {list(source.protocols)}, got {protocol!r}"
        )
    if NEXT_ITEM not in source.protocols:
        return {"protocol": protocol}  # (no next-item keys: e.g. the simulator's own seed)
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
    sampling = NegativeSampling(  # (checks the values, naming dataset.<key>)
        pool=params.pop("negative_pool", NegativeSampling.pool),
        weights=params.pop("negative_weights", NegativeSampling.weights),
        exclude=params.pop("negative_exclude", NegativeSampling.exclude),
    )
    return {
        "protocol": protocol,
        "tasks": tasks,
        "negatives": negatives,
        "seed": seed,
        "sampling": asdict(sampling),
    }


def _options(name: str, source: Source, params: dict[str, Any]) -> dict[str, Any]:
    """The reader's keyword options: known keys only, file options as existing paths."""
    opts: dict[str, Any] = {}
    hints = typing.get_type_hints(source.read)
    for key, v in params.items():
        if key not in source.options:
            keys = [*source.options, "protocol", "kcore"]
            if NEXT_ITEM in source.protocols:
                keys += _NEXT_ITEM_KEYS
            raise PrepError(
                f"dataset.{key}: unknown option of the {name!r} source; known: {', '.join(keys)}"
            )
        if key in source.files:
            v = None if v in _MISSING else Path(str(v))
        elif key in hints and not fits(v, hints[key]):
            raise PrepError(f"dataset.{key}: expected {describe(hints[key])}, got {v!r}")
        opts[key] = v
    if source.required and all(opts.get(k) is None for k in source.required):
        raise PrepError(
            f"dataset.{source.required[0]}: required for the {name!r} dataset (a file or folder)"
        )
    for key in source.files:
        if opts.get(key) is not None and not opts[key].exists():
            raise PrepError(f"dataset.{key}: {str(opts[key])!r} does not exist")
    return opts


def _inputs(base: list[Path], more: list[str] | list[Path]) -> list[Path]:
    """Input files for the fingerprint: ``base`` plus ``more``, unique, in a stable order."""
    unique = {Path(p).resolve().as_posix(): Path(p) for p in [*base, *more]}
    return [unique[k] for k in sorted(unique)]


def _up_to_date(
    target: Path, fp_config: dict[str, Any], files: list[Path], prep: PrepConfig
) -> PrepResult | None:
    """An earlier preparation in ``target`` that matches, else None.

    The source's actual inputs are known only after reading it; an earlier preparation
    recorded them (``meta.json`` ``source.inputs``), so they are fingerprinted from there.
    """
    try:
        stored = read_meta(target).source.get("inputs")
    except PrepError:
        return None  # nothing usable there
    if not isinstance(stored, list):
        return None
    try:
        fp = fingerprint(fp_config, _inputs(files, stored))
    except PrepError:
        return None  # a recorded input is gone: prepare again
    return up_to_date(target, fp, prep)


def _next_item(
    result: AdapterResult,
    proto: dict[str, Any],
    derived: dict[str, DerivedTask],
    report: dict[str, Any],
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Events and next-item samples (``leave_last_out``); records the tasks and statistics."""
    events = result.events.collect()
    tasks = proto["tasks"] or {"click": sorted(events[c.ACTION].drop_nulls().unique())}
    tasks = {**tasks, **{k: list(t.actions) for k, t in derived.items()}}
    samples, stats = next_item_samples(
        events, tasks, proto["negatives"], proto["seed"], NegativeSampling(**proto["sampling"])
    )
    report["next_item"] = stats
    proto["tasks"] = tasks
    return events.lazy(), samples.lazy()


def _own_samples(
    name: str, result: AdapterResult, opts: dict[str, Any], derived: dict[str, DerivedTask]
) -> pl.LazyFrame:
    """The source's labelled samples (``global_time``), with the derived labels added."""
    if result.samples is None:
        raise PrepError(
            f"dataset.protocol: {GLOBAL_TIME} needs labelled samples, but the {name!r} "
            f"input {opts.get('path')} has no labels ({'; '.join(result.notes)}); use a "
            "file with labels (O2O: the training file with a Date column) or "
            f"protocol={NEXT_ITEM}"
        )
    return add_derived_labels(result.events, result.samples, derived, name)


def _kcore_setting(params: dict[str, Any]) -> int | None:
    """Pops and checks ``kcore`` (any source; null or absent: no k-core filtering)."""
    k = params.pop("kcore", None)
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise PrepError(f"dataset.kcore: expected an integer >= 1 or null, got {k!r}")
    return k


def _kcore(result: AdapterResult, k: int | None) -> tuple[AdapterResult, dict[str, Any]]:
    """The source's tables k-core filtered (:mod:`data_prep.passes.kcore`), and their
    ``kcore`` entry of the report (none when off)."""
    if k is None:
        return result, {}
    try:
        core = kcore_filter(result.events, result.samples, k)
    except PrepError as e:
        raise PrepError(f"dataset.{e}") from None
    return replace(result, events=core.events, samples=core.samples), {"kcore": core.stats}
