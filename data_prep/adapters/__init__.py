"""Real-data adapters: one reader per original file format, into the canonical tables.

Each adapter takes ``path`` (a file or folder) and keyword options with defaults, and
returns an :class:`~data_prep.adapters.base.AdapterResult`; failures are
:class:`~data_prep.adapters.base.AdapterError` naming the file, line and problem. The error
policy is described in :mod:`data_prep.adapters.base`, each format's mapping in its module.
"""

from __future__ import annotations

from collections.abc import Callable

from data_prep.adapters.amazon_reviews import read_amazon_reviews
from data_prep.adapters.amazon_seq import read_amazon_seq
from data_prep.adapters.base import AdapterError, AdapterResult
from data_prep.adapters.movielens import read_movielens
from data_prep.adapters.o2o import read_o2o
from data_prep.adapters.taobao import read_taobao

#: Adapter name -> reader ``(path, **options) -> AdapterResult``.
ADAPTERS: dict[str, Callable[..., AdapterResult]] = {
    "amazon_reviews": read_amazon_reviews,
    "amazon_seq": read_amazon_seq,
    "taobao": read_taobao,
    "o2o": read_o2o,
    "movielens": read_movielens,
}

__all__ = ["ADAPTERS", "AdapterError", "AdapterResult"]
