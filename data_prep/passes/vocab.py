"""Vocabularies (value -> index) and the integer coding of ids.

Conventions (contract): ``0`` = absent/padding (null), ``1`` = out of vocabulary (a value
never seen in training, or seen fewer than ``min_count`` times), ``2..`` = known values
ranked by training count (descending), ties broken by the value (ascending), so the coding
is a pure function of the training data.

Mechanics: the compact tables hold ids as Categorical, whose integer codes are arbitrary
(first come, first served) but shared by events and samples. A vocabulary is fitted by
counting codes, then ranked by count and *string*; coding is a gather through a small
lookup array ``code -> index``. The arbitrary codes never reach a written file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from data_prep import contract as c
from data_prep.passes.validate import group_has

VALUE = "value"
INDEX = "index"
COUNT = "count"
CODE = "__code"  # Categorical physical code, in memory only
ACTION_VOCAB = "action"  # file stem and key of the action vocabulary
PAD_NAME = "<pad>"
OOV_NAME = "<oov>"


def _codes(frames: Iterable[pl.LazyFrame], col: str) -> pl.LazyFrame:
    """``col`` (Categorical) and its physical code, stacked over ``frames``."""
    return pl.concat([f.select(pl.col(col), pl.col(col).to_physical().alias(CODE)) for f in frames])


def fit_vocab(
    train: Iterable[pl.LazyFrame], col: str, min_count: int, masked: bool = True
) -> pl.LazyFrame:
    """Fits one vocabulary on the training rows.

    Args:
        train: training-split frames holding ``col`` as Categorical (nulls ignored).
        col: the id column.
        min_count: minimum number of occurrences to get an own index.
        masked: count only rows whose group carries ``col`` (true for object fields).

    Returns:
        ``value`` (String), ``index`` (Int32, from ``contract.FIRST_INDEX``), ``count``
        (Int64) and the in-memory ``__code``, sorted by index.
    """
    frames = [f.filter(group_has(col)) for f in train] if masked else list(train)
    return (
        _codes(frames, col)
        .drop_nulls(CODE)
        .group_by(CODE)
        .agg(pl.len().cast(pl.Int64).alias(COUNT), pl.col(col).first().alias(VALUE))
        .filter(pl.col(COUNT) >= min_count)
        .with_columns(pl.col(VALUE).cast(pl.String))
        .sort([COUNT, VALUE], descending=[True, False])
        .with_row_index(INDEX, offset=c.FIRST_INDEX)
        .select(VALUE, pl.col(INDEX).cast(pl.Int32), COUNT, CODE)
    )


def fit_users(frames: Iterable[pl.LazyFrame]) -> pl.LazyFrame:
    """Dense user index over every user of ``frames``, ordered by ``user_id``.

    Args:
        frames: kept rows with ``user_id`` as Categorical (no nulls).

    Returns:
        ``user_idx`` (Int32, from 0), ``user_id`` (String) and ``__code``.
    """
    return (
        _codes(frames, c.USER)
        .unique(CODE)
        .select(pl.col(c.USER).cast(pl.String), CODE)
        .sort(c.USER)
        .with_row_index(c.USER_IDX)
        .select(pl.col(c.USER_IDX).cast(pl.Int32), c.USER, CODE)
    )


def lookup(table: pl.DataFrame, target: str, size: int, default: int) -> pl.Series:
    """Dense array ``code -> target`` for a gather.

    Args:
        table: a fitted table with ``__code`` and ``target``.
        target: the column to look up (``index`` or ``user_idx``).
        size: number of codes (one more than the largest code to be looked up).
        default: value for codes absent from ``table`` (OOV for vocabularies).

    Returns:
        An Int32 Series of length ``max(size, 1)``.
    """
    arr = np.full(max(size, 1), default, dtype=np.int32)
    arr[table[CODE].to_numpy()] = table[target].to_numpy()
    return pl.Series(arr)


def vocab_lookups(
    vocabs: Mapping[str, pl.DataFrame], frames: Sequence[pl.DataFrame]
) -> dict[str, pl.Series]:
    """Lookup arrays that code new rows with stored vocabularies (scoring new data).

    The new rows' ids are Categorical with codes of their own; each code is matched to the
    vocabulary by value, so a value the training data never gave an index is OOV, exactly as
    :func:`fit_vocab` and :func:`lookup` code the training files.

    Args:
        vocabs: column -> the stored vocabulary (``value``, ``index``), for the id fields and
            ``contract.ACTION``.
        frames: compact frames holding those columns as Categorical (a column absent from
            every frame gets an empty lookup).

    Returns:
        Column -> dense ``code -> index`` array (:func:`lookup`), for :func:`code_expr`.
    """
    column = "__column"
    sizes = code_counts(frames, list(vocabs))
    # One query for every column: (column, value, code) of the new rows, matched by value.
    seen = [
        f.lazy().select(
            pl.lit(col).alias(column),
            pl.col(col).cast(pl.String).alias(VALUE),
            pl.col(col).to_physical().cast(pl.UInt32).alias(CODE),
        )
        for f in frames
        for col in vocabs
        if col in f.columns
    ]
    known = pl.concat(
        [v.lazy().select(pl.lit(col).alias(column), VALUE, INDEX) for col, v in vocabs.items()]
    )
    found: dict[str, pl.DataFrame] = {}
    if seen:
        matched = (
            pl.concat(seen)
            .drop_nulls(VALUE)
            .unique([column, CODE])
            .join(known, on=[column, VALUE], how="inner")
            .collect()
        )
        found = {str(k[0]): v for k, v in matched.partition_by(column, as_dict=True).items()}
    empty = pl.DataFrame(schema={CODE: pl.UInt32, INDEX: pl.Int32})
    return {col: lookup(found.get(col, empty), INDEX, sizes[col], c.OOV_INDEX) for col in vocabs}


def code_counts(frames: Sequence[pl.DataFrame], cols: Sequence[str]) -> dict[str, int]:
    """:func:`n_codes` of several columns at once (one pass per frame)."""
    out = dict.fromkeys(cols, 0)
    for f in frames:
        present = [col for col in cols if col in f.columns]
        if not present:
            continue
        top = f.select(pl.col(col).to_physical().max() for col in present).row(0)
        for col, t in zip(present, top, strict=True):
            if t is not None:
                out[col] = max(out[col], int(t) + 1)
    return out


def n_codes(frames: Iterable[pl.DataFrame], col: str) -> int:
    """One more than the largest Categorical code of ``col`` in ``frames`` (0 if none)."""
    top = [f.select(pl.col(col).to_physical().max()).item() for f in frames]
    return max((int(t) + 1 for t in top if t is not None), default=0)


def code_expr(col: str, table: pl.Series, out: str, masked: bool = True) -> pl.Expr:
    """Int32 index of a Categorical column: 0 null (or outside the row's group), else lookup.

    Args:
        col: the Categorical column.
        table: from :func:`lookup`.
        out: output column name.
        masked: zero the value where the row's group does not carry ``col``, so a
            field of another group never leaks in.

    Returns:
        The coding expression.
    """
    code = pl.lit(table).gather(pl.col(col).to_physical()).fill_null(c.PAD_INDEX)
    if masked:
        code = pl.when(group_has(col)).then(code).otherwise(pl.lit(c.PAD_INDEX, pl.Int32))
    return code.cast(pl.Int32).alias(out)


def action_names(vocab: pl.DataFrame) -> list[str]:
    """Action names by index, with the padding and OOV names at 0 and 1."""
    return [PAD_NAME, OOV_NAME, *vocab.sort(INDEX)[VALUE].to_list()]
