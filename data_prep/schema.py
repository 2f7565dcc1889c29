"""The canonical tables' polars schemas, built from the dtype names of :mod:`data_prep.contract`.

The contract names its dtypes (``"String"``, ``"Int64"``) so that it imports no polars; the
sources and the passes, which work in polars, take the schemas from here.
"""

from __future__ import annotations

import polars as pl

from data_prep import contract as c


def polars_schema(dtypes: dict[str, str]) -> dict[str, pl.DataType]:
    """Column -> polars dtype for a ``column -> dtype name`` mapping of the contract.

    Args:
        dtypes: e.g. :data:`data_prep.contract.EVENT_DTYPES`.

    Returns:
        The same columns, in order, with polars dtype instances (``pl.String()``, ...).
    """
    return {col: getattr(pl, name)() for col, name in dtypes.items()}


#: The events table: exactly these columns and dtypes (``contract.EVENT_DTYPES``).
EVENT_SCHEMA: dict[str, pl.DataType] = polars_schema(c.EVENT_DTYPES)
#: The samples table's base columns (``contract.SAMPLE_BASE_DTYPES``); labels come on top.
SAMPLE_BASE_SCHEMA: dict[str, pl.DataType] = polars_schema(c.SAMPLE_BASE_DTYPES)
