"""The train/val/test split: one global time cut over the samples.

Why a global cut rather than a per-user "last N" split: every evaluated prediction then lies
strictly after everything the model (and its vocabularies) learned from, exactly as in
deployment, so no future behaviour of any user leaks into training. Samples sharing a
timestamp always land in the same split.

The cut times are *observed* sample times taken with the ``"higher"`` quantile rule:
``t_val`` = quantile ``1 - val_frac - test_frac``, ``t_test`` = quantile ``1 - test_frac``;
train: ``ts < t_val``, val: ``t_val <= ts < t_test``, test: ``ts >= t_test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError

QUANTILE_METHOD: Final = "higher"
SPLIT = "__split"  # 0 train, 1 val, 2 test


@dataclass(frozen=True)
class TimeCut:
    """The two cut times of the global time split (unix seconds).

    Attributes:
        t_val: first time of the validation split.
        t_test: first time of the test split.
    """

    t_val: int
    t_test: int


def cut_exprs(ts: pl.Expr, val_frac: float, test_frac: float, prefix: str) -> list[pl.Expr]:
    """Aggregations giving the cut times and the split sizes in one pass.

    Args:
        ts: the sample times to split (already restricted to kept rows).
        val_frac: share of samples for validation.
        test_frac: share of samples for test.
        prefix: output column prefix.

    Returns:
        ``<prefix>t_val``, ``<prefix>t_test`` (Int64, null without samples) and
        ``<prefix>n_<split>`` (Int64) for every split.
    """
    t_val = ts.quantile(1.0 - val_frac - test_frac, QUANTILE_METHOD).cast(pl.Int64)
    t_test = ts.quantile(1.0 - test_frac, QUANTILE_METHOD).cast(pl.Int64)
    return [
        t_val.alias(prefix + "t_val"),
        t_test.alias(prefix + "t_test"),
        (ts < t_val).sum().cast(pl.Int64).alias(prefix + "n_train"),
        ((ts >= t_val) & (ts < t_test)).sum().cast(pl.Int64).alias(prefix + "n_val"),
        (ts >= t_test).sum().cast(pl.Int64).alias(prefix + "n_test"),
    ]


def check_cut(stats: dict[str, int | None], prefix: str) -> TimeCut:
    """Turns the aggregated cut statistics into a :class:`TimeCut`, rejecting empty splits.

    Args:
        stats: one row of the aggregation from :func:`cut_exprs`.
        prefix: the prefix used there.

    Returns:
        The cut.
    """
    t_val, t_test = stats[prefix + "t_val"], stats[prefix + "t_test"]
    if t_val is None or t_test is None:
        raise PrepError("samples: no usable rows left to split (see the drop counts)")
    for split in c.SPLITS:
        n = stats[prefix + "n_" + split]
        if not n:
            raise PrepError(
                f"split {split!r} is empty: the global time cut (t_val={t_val}, "
                f"t_test={t_test}) leaves no sample in it; the samples have too few distinct "
                "times for these shares: adjust val_frac/test_frac or provide more samples"
            )
    return TimeCut(int(t_val), int(t_test))


def split_expr(cut: TimeCut) -> pl.Expr:
    """Split code per sample row: 0 train, 1 val, 2 test (Int8)."""
    ts = pl.col(c.TS)
    return (
        pl.when(ts < cut.t_val)
        .then(pl.lit(0, pl.Int8))
        .when(ts < cut.t_test)
        .then(pl.lit(1, pl.Int8))
        .otherwise(pl.lit(2, pl.Int8))
        .alias(SPLIT)
    )
