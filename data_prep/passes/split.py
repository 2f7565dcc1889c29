"""The train/val/test split: one global time cut over the samples, or a per-user split.

Why a global cut rather than a per-user "last N" split: every evaluated prediction then lies
strictly after everything the model (and its vocabularies) learned from, exactly as in
deployment, so no future behaviour of any user leaks into training. Samples sharing a
timestamp always land in the same split.

The cut times are *observed* sample times taken with the ``"higher"`` quantile rule:
``t_val`` = quantile ``1 - val_frac - test_frac``, ``t_test`` = quantile ``1 - test_frac``;
train: ``ts < t_val``, val: ``t_val <= ts < t_test``, test: ``ts >= t_test``.

The ``leave_last_out`` method instead honours the split the source wrote into each sample
(``contract.SPLIT_COL``, e.g. the next-item protocol: a user's last positive is test, the
second-to-last val). Training material for the vocabularies is then the training samples
plus, per user, the events strictly before the user's first val/test sample (all events of
users without one): see :func:`train_events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError

QUANTILE_METHOD: Final = "higher"
SPLIT = "__split"  # 0 train, 1 val, 2 test
_UCODE, _T_VAL, _T_TEST = "__ucode", "__t_val", "__t_test"
_NEVER = 2**62  # stands for "no val/test sample": every event of the user is before it


@dataclass(frozen=True)
class TimeCut:
    """The two cut times of the global time split (unix seconds).

    Attributes:
        t_val: first time of the validation split.
        t_test: first time of the test split.
    """

    t_val: int
    t_test: int


@dataclass(frozen=True)
class GivenSplit:
    """The ``leave_last_out`` split: each sample's split comes from ``contract.SPLIT_COL``."""

    method: str = "leave_last_out"


#: What :func:`check_cut`/:func:`check_given` return and the passes dispatch on.
Cut = TimeCut | GivenSplit


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


def split_expr(cut: Cut) -> pl.Expr:
    """Split code per sample row: 0 train, 1 val, 2 test (Int8)."""
    if isinstance(cut, GivenSplit):
        return pl.col(c.SPLIT_COL).cast(pl.Int8).alias(SPLIT)
    ts = pl.col(c.TS)
    return (
        pl.when(ts < cut.t_val)
        .then(pl.lit(0, pl.Int8))
        .when(ts < cut.t_test)
        .then(pl.lit(1, pl.Int8))
        .otherwise(pl.lit(2, pl.Int8))
        .alias(SPLIT)
    )


def given_exprs(keep: pl.Expr, prefix: str) -> list[pl.Expr]:
    """Split sizes of a given split (kept rows only), named as in :func:`cut_exprs`."""
    split = pl.col(c.SPLIT_COL)
    return [
        (keep & (split == i)).sum().cast(pl.Int64).alias(f"{prefix}n_{name}")
        for i, name in enumerate(c.SPLITS)
    ]


def check_given(stats: dict[str, int | None], prefix: str) -> GivenSplit:
    """Rejects a given split with an empty train, val or test part."""
    if not sum(int(stats[f"{prefix}n_{s}"] or 0) for s in c.SPLITS):
        raise PrepError("samples: no usable rows left to split (see the drop counts)")
    for split in c.SPLITS:
        if not stats[f"{prefix}n_{split}"]:
            raise PrepError(
                f"split {split!r} is empty: the samples' {c.SPLIT_COL!r} column assigns no "
                "row to it (leave_last_out needs users with at least 3 positives)"
            )
    return GivenSplit()


def user_bounds(samples: pl.LazyFrame, user: pl.Expr) -> pl.LazyFrame:
    """Per user: the time of the first val/test sample and of the first test sample.

    Args:
        samples: samples with ``ts`` and the split code ``SPLIT``.
        user: the user key expression (also the output key column ``__ucode``).

    Returns:
        ``__ucode``, ``__t_val``, ``__t_test`` (Int64, null without such a sample).
    """
    ts, split = pl.col(c.TS), pl.col(SPLIT)
    return samples.group_by(user.alias(_UCODE)).agg(
        ts.filter(split >= 1).min().alias(_T_VAL), ts.filter(split == 2).min().alias(_T_TEST)
    )


def period_expr(cut: Cut) -> pl.Expr:
    """Split period of an event row: 0 train, 1 val, 2 test (Int8).

    For a :class:`GivenSplit` the rows must carry ``__t_val``/``__t_test`` from
    :func:`with_bounds`.
    """
    ts = pl.col(c.TS)
    if isinstance(cut, TimeCut):
        t_val, t_test = pl.lit(cut.t_val), pl.lit(cut.t_test)
    else:
        t_val, t_test = pl.col(_T_VAL).fill_null(_NEVER), pl.col(_T_TEST).fill_null(_NEVER)
    return (
        pl.when(ts < t_val)
        .then(pl.lit(0, pl.Int8))
        .when(ts < t_test)
        .then(pl.lit(1, pl.Int8))
        .otherwise(pl.lit(2, pl.Int8))
    )


def with_bounds(events: pl.LazyFrame, bounds: pl.LazyFrame, user: pl.Expr) -> pl.LazyFrame:
    """Joins :func:`user_bounds` onto events by the same user key."""
    return events.with_columns(user.alias(_UCODE)).join(bounds, on=_UCODE, how="left")


def train_events(events: pl.LazyFrame, samples: pl.LazyFrame, cut: Cut) -> pl.LazyFrame:
    """Events that are training material for the vocabularies.

    Global cut: ``ts < t_val``. Given split: the user's events strictly before the user's
    first val/test sample (every event of a user without one).

    Args:
        events: compact events (Categorical ``user_id``).
        samples: compact samples with ``contract.SPLIT_COL`` (given split only).
        cut: the split.
    """
    if isinstance(cut, TimeCut):
        return events.filter(pl.col(c.TS) < cut.t_val)
    user = pl.col(c.USER).to_physical()
    bounds = user_bounds(samples.with_columns(pl.col(c.SPLIT_COL).alias(SPLIT)), user)
    return with_bounds(events, bounds, user).filter(period_expr(cut) == 0)


def train_samples(samples: pl.LazyFrame, cut: Cut) -> pl.LazyFrame:
    """Training samples: ``ts < t_val`` (global cut) or split code 0 (given split)."""
    if isinstance(cut, TimeCut):
        return samples.filter(pl.col(c.TS) < cut.t_val)
    return samples.filter(pl.col(c.SPLIT_COL) == 0)
