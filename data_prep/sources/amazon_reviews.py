"""Raw Amazon review dumps: a reviews file and a metadata file, JSON lines, plain or gzipped.

Format (McAuley's Amazon product data, e.g. ``reviews_Electronics_5.json.gz`` and
``meta_Electronics.json.gz``): the reviews file has one JSON object per line with
``reviewerID``, ``asin`` and ``unixReviewTime`` (other fields ignored); the metadata file has
one object per line with ``asin``, ``categories`` (a list of category paths) and ``brand``.
The old metadata dumps are Python literals (``{'asin': ...}``, single quotes): those lines are
read with ``ast.literal_eval``, never ``eval`` (see :mod:`~data_prep.sources.jsonlines`).

``path`` is a folder holding both (the metadata file's name starts with ``meta``, the reviews
file is the other ``*.json``/``*.json.gz``), or give ``reviews=`` and ``meta=`` directly.
Without a metadata file, category and brand are null and a note says so.

Mapping: group ``item``, action ``review`` (a purchase-like positive); ``user_id`` =
``reviewerID``, ``item_id`` = ``asin``, ``ts`` = ``unixReviewTime``; ``category_id`` = the
LAST element of the LAST category path (as the ATRank/DIN preprocessing), ``brand_id`` =
``brand`` (empty -> null); items absent from the metadata keep null category and brand.

Policy (see :mod:`data_prep.sources.base`): a missing file, or a folder without exactly one
reviews file -> :class:`AdapterError`. Row-level problems, raised with file and line or
counted with ``on_error="skip"``: in reviews ``bad_encoding`` (not UTF-8),
``malformed_line`` (not a JSON object, or a field of the wrong type), ``missing_id`` (no
``reviewerID``/``asin``), ``bad_timestamp``; in metadata ``meta_bad_encoding``,
``meta_malformed_line``, ``meta_missing_id`` (no ``asin``) and ``meta_duplicate_id`` (a
repeated ``asin``: the first line is kept). Blank lines are dropped and counted
(``blank_line``, ``meta_blank_line``) in both modes, and so are repeated reviews
(``duplicate_row``: the same ``reviewerID``, ``asin`` and ``unixReviewTime`` as an earlier
line), with a note.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from data_prep.sources.base import (
    BLANK_LINE,
    AdapterError,
    AdapterResult,
    Check,
    OnError,
    apply_checks,
    check_on_error,
    duplicate_check,
    duplicate_notes,
    encoding_check,
    missing_check,
    parse_ts,
    require_file,
    to_events,
    ts_check,
)
from data_prep.sources.jsonlines import BAD, BLANK, NESTED_STRINGS, read_json_lines

REVIEW_FIELDS: dict[str, pl.DataType] = {
    "reviewerID": pl.String(),
    "asin": pl.String(),
    "unixReviewTime": pl.String(),
}
META_FIELDS: dict[str, pl.DataType] = {
    "asin": pl.String(),
    "categories": NESTED_STRINGS,
    "brand": pl.String(),
}
ACTION = "review"


def _json_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.json"), *folder.glob("*.json.gz")])


def find_amazon_files(
    path: Path | None, reviews: Path | None, meta: Path | None
) -> tuple[Path, Path | None]:
    """The reviews and metadata files, from ``path`` (a folder) or the explicit options."""
    if path is not None and Path(path).is_file() and reviews is None:
        reviews = Path(path)
    elif path is not None and reviews is None:
        folder = Path(path)
        if not folder.is_dir():
            raise AdapterError(f"{folder}: Amazon review folder not found")
        files = _json_files(folder)
        metas = [f for f in files if f.name.startswith("meta")]
        others = [f for f in files if not f.name.startswith("meta")]
        if len(others) != 1 or len(metas) > 1:
            raise AdapterError(
                f"{folder}: expected one reviews file and at most one meta*.json[.gz], found "
                f"{[f.name for f in files]}; or pass reviews= and meta="
            )
        reviews, meta = others[0], meta if meta is not None else (metas[0] if metas else None)
    if reviews is None:
        raise AdapterError("amazon_reviews: give path (a folder) or reviews=")
    require_file(Path(reviews), "Amazon reviews file")
    if meta is not None:
        require_file(Path(meta), "Amazon metadata file")
    return Path(reviews), None if meta is None else Path(meta)


def _read_reviews(file: Path, on_error: OnError, skipped: Counter[str]) -> pl.LazyFrame:
    rows = read_json_lines(file, REVIEW_FIELDS).lazy()
    checks = [
        encoding_check(quote=False),
        Check(BLANK_LINE, pl.col(BLANK), pl.lit("blank line")),
        Check("malformed_line", pl.col(BAD).is_not_null(), pl.col(BAD)),
        missing_check({"reviewerID": pl.col("reviewerID"), "asin": pl.col("asin")}),
        ts_check(pl.col("unixReviewTime"), "unixReviewTime"),
        duplicate_check([pl.col(name) for name in REVIEW_FIELDS]),
    ]
    return apply_checks(rows, checks, file, on_error, skipped)


def read_amazon_meta(file: Path, on_error: OnError, skipped: Counter[str]) -> pl.LazyFrame:
    """Reads a metadata file into ``item_id``, ``category_id``, ``brand_id`` (one row per asin).

    Args:
        file: the metadata file (JSON or Python-literal lines, plain or gzipped).
        on_error: ``"raise"`` or ``"skip"``.
        skipped: counter updated with the ``meta_*`` reasons.

    Returns:
        The item attributes.
    """
    rows = read_json_lines(file, META_FIELDS, python_literals=True).lazy()
    asin = pl.col("asin").str.strip_chars()
    checks = [
        encoding_check("meta_bad_encoding", quote=False),
        Check("meta_" + BLANK_LINE, pl.col(BLANK), pl.lit("blank line")),
        Check("meta_malformed_line", pl.col(BAD).is_not_null(), pl.col(BAD)),
        Check("meta_missing_id", asin.is_null() | (asin == ""), pl.lit("missing asin")),
        Check(
            "meta_duplicate_id",
            ~asin.is_first_distinct(),
            pl.format("asin '{}' listed again", asin),
        ),
    ]
    kept = apply_checks(rows, checks, file, on_error, skipped, ("meta_" + BLANK_LINE,))
    last_path = pl.col("categories").list.drop_nulls().list.last()
    category = last_path.list.drop_nulls().list.last().str.strip_chars()
    brand = pl.col("brand").str.strip_chars()
    return kept.select(
        pl.col("asin").alias("item_id"),
        pl.when(category != "").then(category).alias("category_id"),
        pl.when(brand != "").then(brand).alias("brand_id"),
    )


def read_amazon_reviews(
    path: Path | None = None,
    *,
    reviews: Path | None = None,
    meta: Path | None = None,
    on_error: OnError = "raise",
) -> AdapterResult:
    """Reads an Amazon reviews dump (and its metadata) into canonical events.

    Args:
        path: a folder holding the reviews file and the ``meta*`` file (or the reviews file).
        reviews: the reviews file (overrides the one found in ``path``).
        meta: the metadata file (overrides the one found in ``path``).
        on_error: ``"raise"`` on the first bad line, or ``"skip"`` and count it.

    Returns:
        Events (group ``item``, action ``review``); no samples.

    Raises:
        AdapterError: structural problems, or a bad line with ``on_error="raise"``.
    """
    check_on_error(on_error)
    reviews_file, meta_file = find_amazon_files(path, reviews, meta)
    skipped: Counter[str] = Counter()
    rows = _read_reviews(reviews_file, on_error, skipped)
    notes = [
        "amazon_reviews: category = last element of the last category path",
        *duplicate_notes("amazon_reviews", skipped),
    ]
    inputs = [reviews_file]
    if meta_file is not None:
        items = read_amazon_meta(meta_file, on_error, skipped)
        rows = rows.join(
            items, left_on="asin", right_on="item_id", how="left", maintain_order="left"
        )
        inputs.append(meta_file)
    else:
        rows = rows.with_columns(
            pl.lit(None, pl.String).alias("category_id"), pl.lit(None, pl.String).alias("brand_id")
        )
        notes.append("amazon_reviews: no metadata file: category and brand are null")
    events = to_events(
        rows,
        user_id=pl.col("reviewerID"),
        ts=parse_ts(pl.col("unixReviewTime")),
        group=pl.lit("item"),
        action=pl.lit(ACTION),
        item_id=pl.col("asin"),
        category_id=pl.col("category_id"),
        brand_id=pl.col("brand_id"),
    )
    return AdapterResult(events, None, dict(skipped), notes, inputs)
