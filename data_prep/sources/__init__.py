"""Dataset sources: each turns a ``dataset`` config into the two canonical tables.

:data:`SOURCES` maps a dataset name to its :class:`Source`: the simulator (``sim``) and the
real-data adapters (:data:`ADAPTERS`: ``amazon_reviews``, ``amazon_seq``, ``taobao``,
``o2o``, ``movielens``, one reader per original file format, and ``events``, a log of your
own: parquet or CSV, its columns mapped in the config, :mod:`data_prep.sources.events`).
Every reader returns an
:class:`~data_prep.sources.base.AdapterResult` (events, samples or None, skip counts, notes,
the files read); adapter failures are :class:`~data_prep.sources.base.AdapterError` naming
the file, line and problem (policy in :mod:`data_prep.sources.base`, each format's mapping in
its module). :mod:`data_prep.sources.protocol` makes next-item samples from positive-only
events. :func:`data_prep.run.prepare_from_config` reads any of them the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from data_prep.errors import PrepError
from data_prep.sources.amazon_reviews import read_amazon_reviews
from data_prep.sources.amazon_seq import read_amazon_seq
from data_prep.sources.base import AdapterError, AdapterResult
from data_prep.sources.events import read_events
from data_prep.sources.movielens import read_movielens
from data_prep.sources.o2o import read_o2o
from data_prep.sources.sim import SimConfig, read_sim
from data_prep.sources.taobao import read_taobao

#: The protocols of a source: its own labelled samples split by the global time cut, or
#: next-item samples made from its events (:mod:`data_prep.sources.protocol`).
GLOBAL_TIME, NEXT_ITEM = "global_time", "next_item"


@dataclass(frozen=True)
class Source:
    """What reading one dataset needs (see :func:`data_prep.run.prepare_from_config`).

    Attributes:
        read: the reader, called with the options as keywords (plus ``cache_dir`` when
            ``needs_cache``).
        protocols: the protocols it can give (:data:`GLOBAL_TIME`, :data:`NEXT_ITEM`); the
            first is the default.
        options: the ``dataset`` keys the reader takes (besides ``name`` and the protocol
            keys).
        files: the options that name input files or folders: checked to exist and
            fingerprinted.
        required: at least one of these options must be given (named by the first).
        needs_cache: the reader keeps generated raw data under the cache directory.
        pick_protocol: chooses the protocol from the ``dataset`` config (its options and
            ``protocol``, null = choose) instead of the first of ``protocols``, raising a
            :class:`PrepError` when the given one does not fit the options; None = not used.
    """

    read: Callable[..., AdapterResult]
    protocols: tuple[str, ...]
    options: tuple[str, ...]
    files: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    needs_cache: bool = False
    pick_protocol: Callable[[Mapping[str, Any]], str] | None = None


#: Adapter name -> reader ``(path, **options) -> AdapterResult``.
ADAPTERS: dict[str, Callable[..., AdapterResult]] = {
    "amazon_reviews": read_amazon_reviews,
    "amazon_seq": read_amazon_seq,
    "taobao": read_taobao,
    "o2o": read_o2o,
    "movielens": read_movielens,
    "events": read_events,
}

#: Options of the adapters that name input files besides ``path``.
_FILE_OPTIONS = ("attributes", "reviews", "meta", "impressions")


def _adapter(name: str, protocols: tuple[str, ...] = (NEXT_ITEM, GLOBAL_TIME)) -> Source:
    """The :class:`Source` of a real-data adapter; its options are the reader's parameters."""
    read = ADAPTERS[name]
    options = tuple(inspect.signature(read).parameters)
    files = tuple(k for k in options if k == "path" or k in _FILE_OPTIONS)
    required = ("path", "reviews") if "reviews" in options else ("path",)
    return Source(read, protocols, options, files, required)


def _events_protocol(dataset: Mapping[str, Any]) -> str:
    """The ``events`` source's protocol: ``global_time`` with labelled impressions (its own
    samples), ``next_item`` without; a given protocol must fit."""
    with_impressions = dataset.get("impressions") not in (None, "", "???")
    fits = GLOBAL_TIME if with_impressions else NEXT_ITEM
    given = dataset.get("protocol")
    if given == NEXT_ITEM and with_impressions:
        raise PrepError(
            f"dataset.protocol: {NEXT_ITEM} makes its samples from the events, but "
            "dataset.impressions gives labelled samples; use protocol=global_time (the "
            "default with impressions) or drop dataset.impressions"
        )
    if given == GLOBAL_TIME and not with_impressions:
        raise PrepError(
            f"dataset.protocol: {GLOBAL_TIME} needs labelled samples: give dataset.impressions "
            f"and dataset.labels ({{task: column}}), or use protocol={NEXT_ITEM} (the default "
            "without impressions)"
        )
    return fits if given is None else str(given)


#: Dataset name -> source. The simulator and O2O have labelled samples of their own (default
#: ``global_time``); the other logs are positive-only (default ``next_item``); ``events``
#: is either, by whether labelled impressions are given.
SOURCES: dict[str, Source] = {
    "sim": Source(
        read_sim,
        protocols=(GLOBAL_TIME,),
        options=tuple(f.name for f in fields(SimConfig)),
        needs_cache=True,
    ),
    **{name: _adapter(name) for name in ADAPTERS if name not in ("o2o", "events")},
    "o2o": _adapter("o2o", (GLOBAL_TIME, NEXT_ITEM)),
    "events": replace(_adapter("events"), pick_protocol=_events_protocol),
}

__all__ = [
    "ADAPTERS",
    "GLOBAL_TIME",
    "NEXT_ITEM",
    "SOURCES",
    "AdapterError",
    "AdapterResult",
    "Source",
]
