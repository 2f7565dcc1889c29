"""Tianchi O2O coupon CSVs: ``User_id,Merchant_id,Coupon_id,Discount_rate,Distance,...``.

Format (the ``ccf_offline_stage1_*`` files of the Tianchi O2O coupon competition), header
``User_id,Merchant_id,Coupon_id,Discount_rate,Distance,Date_received[,Date]``, no
quoting, the literal ``null`` for missing values, dates as ``yyyymmdd``. The
test file has no ``Date`` column; the training file has it (the day the coupon was used,
or ``null``). ``Distance`` is not used.

Mapping (one row per coupon received):

* event ``receive`` (group ``coupon``) at ``Date_received`` 00:00 UTC, and, when ``Date`` is
  given, event ``use`` at ``Date`` 00:00 UTC; ``coupon_id`` = ``Coupon_id``,
  ``shop_id`` = ``Merchant_id``, ``discount_level`` from ``Discount_rate`` (below).
* samples, only when the file has a ``Date`` column: one per received coupon (target = the
  coupon, ``ts`` = the receive time), ``label_coupon`` = 1 if used within 15 days of receipt
  (``Date - Date_received <= 15`` days, the competition's definition), else 0. Without a
  ``Date`` column ``samples`` is None and a note says so. A receive and a use on the same day
  share a ``ts``, so the use is never in the history of its own sample.

Discount levels: ``Discount_rate`` is a rate paid (``0.9``) or ``threshold:off`` (``30:5``,
spend 30 save 5, rate = 1 - off/threshold). The fraction off, ``1 - rate`` (rounded to 4
decimals), falls in one of five bins (:data:`DISCOUNT_BINS`), chosen so that each holds a fair
share of the competition's coupons: ``off_00_05`` [0, 5%), ``off_05_10`` [5, 10%),
``off_10_15`` [10, 15%), ``off_15_25`` [15, 25%), ``off_25_up`` [25%, 100%). ``null`` gives a
null level.

Policy (see :mod:`data_prep.sources.base`): a missing file or required column (a leading
byte-order mark is ignored), or a header that is not UTF-8 -> :class:`AdapterError`. Rows
with ``Coupon_id`` null are plain purchases without a coupon: dropped and counted as
``no_coupon`` in both modes. Rows that repeat an earlier row exactly are kept (the same
coupon received twice on one day: the competition's data has such repeats, e.g. 837 in the
stage-1 test file, and counts them as receipts), and a note says how many.
Row-level problems, raised with file and line or (``on_error="skip"``) counted:
``bad_encoding`` (not UTF-8), ``malformed_line`` (wrong field count), ``missing_id`` (empty
user or merchant), ``bad_discount`` (unparseable, rate outside (0, 1], or threshold <= 0 /
off outside (0, threshold)), ``bad_timestamp`` (``Date_received`` or ``Date`` not a valid
``yyyymmdd`` in the sane range of :data:`~data_prep.sources.base.TS_MIN` (1990 to 2039),
or ``Date`` before ``Date_received``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from data_prep import contract as C
from data_prep.schema import SAMPLE_BASE_SCHEMA
from data_prep.sources.base import (
    BLANK_LINE,
    NOT_UTF8,
    TEXT,
    TS_MAX,
    TS_MIN,
    AdapterError,
    AdapterResult,
    Check,
    OnError,
    apply_checks,
    blank_check,
    check_on_error,
    count_duplicates,
    encoding_check,
    field_count_check,
    missing_check,
    null_str,
    require_file,
    scan_text_lines,
    to_events,
)

TASK = "coupon"
NO_COUPON = "no_coupon"
USE_WINDOW_DAYS = 15
REQUIRED = ("User_id", "Merchant_id", "Coupon_id", "Discount_rate", "Date_received")
_KNOWN = (*REQUIRED, "Distance", "Date")  # the columns read (others are ignored)
#: (lower bound of the fraction off, level name), ascending.
DISCOUNT_BINS: tuple[tuple[float, str], ...] = (
    (0.0, "off_00_05"),
    (0.05, "off_05_10"),
    (0.10, "off_10_15"),
    (0.15, "off_15_25"),
    (0.25, "off_25_up"),
)
_DAY = 86_400


def discount_rate(raw: pl.Expr) -> pl.Expr:
    """The rate paid (0, 1] from ``0.9`` or ``threshold:off``; null if missing or invalid."""
    parts = raw.str.split_exact(":", 2)
    threshold = parts.struct.field("field_0").cast(pl.Float64, strict=False)
    off = parts.struct.field("field_1").cast(pl.Float64, strict=False)
    has_colon = raw.str.contains(":", literal=True)
    ok_pair = parts.struct.field("field_2").is_null() & (threshold > 0) & (off > 0)
    rate = (
        pl.when(has_colon & ok_pair)
        .then(1.0 - off / threshold)
        .when(~has_colon)
        .then(raw.cast(pl.Float64, strict=False))
    )
    return pl.when((rate > 0) & (rate <= 1)).then(rate)


def discount_level(raw: pl.Expr) -> pl.Expr:
    """The discount level name (see :data:`DISCOUNT_BINS`) of a ``Discount_rate`` string."""
    off = (1.0 - discount_rate(raw)).round(4)
    level: pl.Expr = null_str()
    for lower, name in DISCOUNT_BINS:
        level = pl.when(off >= lower).then(pl.lit(name)).otherwise(level)
    return level


def _day_ts(raw: pl.Expr) -> pl.Expr:
    """Unix seconds of a ``yyyymmdd`` day at 00:00 UTC; null when not a valid date in
    ``[TS_MIN, TS_MAX)``."""
    day = raw.str.strptime(pl.Date, "%Y%m%d", strict=False)
    ts = day.cast(pl.Int64) * _DAY
    return pl.when((raw.str.len_chars() == 8) & ts.is_between(TS_MIN, TS_MAX, closed="left")).then(
        ts
    )


def _header(file: Path, lines: pl.LazyFrame) -> list[str]:
    first = lines.head(1).collect()
    if first.height == 0:
        raise AdapterError(f"{file}: empty file, expected a header with {list(REQUIRED)}")
    if first[NOT_UTF8][0]:
        raise AdapterError(f"{file}: line 1: bad_encoding: the header is not valid UTF-8")
    columns = [c.strip() for c in str(first[TEXT][0]).split(",")]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise AdapterError(f"{file}: header lacks column(s) {missing}; found {columns}")
    repeated = sorted({c for c in columns if columns.count(c) > 1 and c in _KNOWN})
    if repeated:
        raise AdapterError(f"{file}: header repeats column(s) {repeated}")
    return columns


def _checks(parts: pl.Expr, n_fields: int, has_date: bool) -> list[Check]:
    rate_given = pl.col("Discount_rate").is_not_null()
    checks = [
        encoding_check(),
        blank_check(),
        field_count_check(parts, n_fields, ","),
        missing_check({"User_id": pl.col("User_id"), "Merchant_id": pl.col("Merchant_id")}),
        Check(NO_COUPON, pl.col("Coupon_id").is_null(), pl.lit("Coupon_id is null")),
        Check(
            "bad_discount",
            rate_given & discount_rate(pl.col("Discount_rate")).is_null(),
            pl.format(
                "Discount_rate '{}' is neither a rate in (0, 1] nor 'threshold:off'",
                pl.col("Discount_rate"),
            ),
        ),
        Check(
            "bad_timestamp",
            pl.col("_recv").is_null(),
            pl.format(
                "Date_received '{}' is not a yyyymmdd date from 1990 to 2039",
                pl.col("Date_received").fill_null("null"),
            ),
        ),
    ]
    if has_date:
        checks.append(
            Check(
                "bad_timestamp",
                pl.col("Date").is_not_null()
                & (pl.col("_used").is_null() | (pl.col("_used") < pl.col("_recv"))),
                pl.format(
                    "Date '{}' is not a yyyymmdd date (1990 to 2039) on or after "
                    "Date_received '{}'",
                    pl.col("Date"),
                    pl.col("Date_received"),
                ),
            )
        )
    return checks


def read_o2o(path: Path, *, on_error: OnError = "raise") -> AdapterResult:
    """Reads one Tianchi O2O offline CSV into coupon events (and samples when it has ``Date``).

    Args:
        path: the CSV file (plain or ``.gz``).
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` and count it.

    Returns:
        Events (group ``coupon``); samples with ``label_coupon`` when the file has ``Date``.

    Raises:
        AdapterError: structural problems, or a bad row with ``on_error="raise"``.
    """
    check_on_error(on_error)
    file = require_file(Path(path), "O2O coupon CSV")
    lines = scan_text_lines(file)
    columns = _header(file, lines)
    has_date = "Date" in columns
    parts = pl.col(TEXT).str.split_exact(",", len(columns))
    value = {
        name: parts.struct.field(f"field_{i}").str.strip_chars()
        for i, name in enumerate(columns)
        if name in _KNOWN
    }
    rows = (
        lines.slice(1)
        .with_columns(pl.when(~e.is_in(["null", ""])).then(e).alias(n) for n, e in value.items())
        .with_columns(_day_ts(pl.col("Date_received")).alias("_recv"))
        .with_columns((_day_ts(pl.col("Date")) if has_date else null_str()).alias("_used"))
    )
    skipped: Counter[str] = Counter()
    checks = _checks(parts, len(columns), has_date)
    kept = apply_checks(rows, checks, file, on_error, skipped, (BLANK_LINE, NO_COUPON))
    kept = kept.with_columns(discount_level(pl.col("Discount_rate")).alias("_level"))
    coupon = {
        "user_id": pl.col("User_id"),
        "group": pl.lit("coupon"),
        "coupon_id": pl.col("Coupon_id"),
        "shop_id": pl.col("Merchant_id"),
        "discount_level": pl.col("_level"),
    }
    receive = to_events(kept, ts=pl.col("_recv"), action=pl.lit("receive"), **coupon)
    notes = [
        "o2o: Distance is not used; discount levels by fraction off: "
        + ", ".join(name for _, name in DISCOUNT_BINS),
    ]
    repeats = count_duplicates(kept, [parts])
    if repeats:
        notes.append(
            f"o2o: {repeats} row(s) repeat an earlier row exactly (a coupon received again "
            "the same day): kept, each is a receipt (and a sample)"
        )
    if not has_date:
        notes.append(f"o2o: {file.name} has no Date column: no use events and no samples")
        return AdapterResult(receive, None, dict(skipped), notes, [file])
    used = kept.filter(pl.col("_used").is_not_null())
    use = to_events(used, ts=pl.col("_used"), action=pl.lit("use"), **coupon)
    within = (pl.col("_used") - pl.col("_recv")) <= USE_WINDOW_DAYS * _DAY
    samples = kept.select(
        *(
            coupon.get(name, pl.col("_recv") if name == C.TS else null_str())
            .cast(dtype)
            .alias(name)
            for name, dtype in SAMPLE_BASE_SCHEMA.items()
        ),
        within.fill_null(False).cast(pl.Int8).alias(C.label_col(TASK)),
    )
    notes.append(
        f"o2o: label_{TASK} = used within {USE_WINDOW_DAYS} days of receipt; coupons received "
        f"in the file's last {USE_WINDOW_DAYS} days have a right-censored label"
    )
    return AdapterResult(pl.concat([receive, use]), samples, dict(skipped), notes, [file])
