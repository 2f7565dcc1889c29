"""Amazon per-user sequences (S3-Rec layout): ``user item item ...`` in time order, no times.

Format (e.g. ``Beauty.txt`` of the S3-Rec paper's data): one line per user, the user id then
the user's items in time order, separated by whitespace. An optional
``<name>_item2attributes.json`` maps item id -> list of attribute ids. ``path`` is the
sequence file, or a folder holding exactly one ``*.txt`` (and at most one
``*item2attributes.json``, used when ``attributes`` is not given).

Attribute layout, checked on the real ``Beauty_item2attributes.json``: S3-Rec's preprocessing
writes the item's brand first (when the brand is frequent enough), then every category of
every category path except the root (``cates[1:]``). So the FIRST attribute is usually the
brand, not the category: of 443 distinct first attributes, 435 never occur anywhere else in
a list (brands), while the 8 others (e.g. ``17``, ``4``, ``1``) also occur later (top
categories of brand-less items). The default ``attribute_order="brand_first"`` therefore:

* marks as category every attribute that occurs at a position >= 1 in some item's list;
* ``brand_id`` = the first attribute when it is not a category, else null;
* ``category_id`` = the LAST attribute when it is a category (the finest level of the last
  path, as in the ATRank preprocessing of the raw dumps), else null (brand-only items).

``attribute_order="category_first"`` takes the first attribute as category and the second,
if any, as brand (for files written in that order).

Times: none in this format. ``ts`` = the position in the user's sequence (0, 1, 2, ...), so
order is kept and every history is strictly earlier; a note says that time-gap buckets then
carry no information (all gaps are under a day).

Events: group ``item``, action ``review`` (as :mod:`~data_prep.sources.amazon_reviews`: a
review in a 5-core set stands for a purchase).

Policy (see :mod:`data_prep.sources.base`): a missing file, a folder without one ``*.txt``,
or an attribute file that is not a UTF-8 JSON object of lists -> :class:`AdapterError`. A line
with a user but no item is ``malformed_line``, a line that is not UTF-8 ``bad_encoding``
(raised with file and line, or counted with ``on_error="skip"``); blank lines
(``blank_line``) and exact repeats of an earlier line (``duplicate_row``, the same user and
items: one user's sequence read twice) are dropped and counted in both modes. Items without
attributes keep null category and brand; a note counts the attribute items lacking either.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

import polars as pl

from data_prep.sources.base import (
    LINE,
    TEXT,
    AdapterError,
    AdapterResult,
    Check,
    OnError,
    apply_checks,
    blank_check,
    check_on_error,
    duplicate_check,
    duplicate_notes,
    encoding_check,
    require_file,
    scan_text_lines,
    to_events,
)

AttributeOrder = Literal["brand_first", "category_first"]
ACTION = "review"


def _find(path: Path, attributes: Path | None) -> tuple[Path, Path | None]:
    if path.is_file():
        return path, attributes
    if not path.is_dir():
        raise AdapterError(f"{path}: Amazon sequence file or folder not found")
    seqs = sorted(path.glob("*.txt"))
    if len(seqs) != 1:
        names = [p.name for p in seqs]
        raise AdapterError(f"{path}: expected exactly one *.txt sequence file, found {names}")
    if attributes is None:
        found = sorted(path.glob("*item2attributes.json"))
        if len(found) > 1:
            names = [p.name for p in found]
            raise AdapterError(f"{path}: several *item2attributes.json files: {names}")
        attributes = found[0] if found else None
    return seqs[0], attributes


def read_item_attributes(file: Path, order: AttributeOrder = "brand_first") -> pl.DataFrame:
    """Reads an ``item2attributes`` JSON object into item, category and brand ids.

    Args:
        file: the JSON file (one object: item id -> list of attribute ids).
        order: ``"brand_first"`` (S3-Rec layout, see the module docstring) or
            ``"category_first"``.

    Returns:
        Columns ``item_id``, ``category_id``, ``brand_id`` (String, nullable).

    Raises:
        AdapterError: when the file is not a JSON object of lists.
    """
    data = require_file(file, "item2attributes JSON").read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AdapterError(f"{file}: line {line}: bad_encoding: not valid UTF-8") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdapterError(f"{file}: line {e.lineno}: malformed_json: {e.msg}") from None
    except (RecursionError, ValueError) as e:  # nested too deep, a number too long
        raise AdapterError(f"{file}: malformed_json: {str(e)[:80]}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise AdapterError(f"{file}: expected a JSON object of item id -> list of attribute ids")
    attrs = pl.DataFrame(
        {"item_id": list(raw), "attrs": [[str(a) for a in v] for v in raw.values()]},
        schema={"item_id": pl.String, "attrs": pl.List(pl.String)},
    )
    first, second, last = (pl.col("attrs").list.get(i, null_on_oob=True) for i in (0, 1, -1))
    if order == "category_first":
        return attrs.select("item_id", first.alias("category_id"), second.alias("brand_id"))
    if order != "brand_first":
        raise AdapterError(f"attribute_order must be brand_first or category_first, got {order!r}")
    later = attrs.select(pl.col("attrs").list.slice(1).explode().drop_nulls().unique())
    categories = later.to_series().implode()
    return attrs.select(
        "item_id",
        pl.when(last.is_in(categories)).then(last).alias("category_id"),
        pl.when(~first.is_in(categories)).then(first).alias("brand_id"),
    )


def read_amazon_seq(
    path: Path,
    *,
    attributes: Path | None = None,
    attribute_order: AttributeOrder = "brand_first",
    on_error: OnError = "raise",
) -> AdapterResult:
    """Reads per-user item sequences (and item attributes) into canonical events.

    Args:
        path: the sequence file, or a folder holding it (and its attribute file).
        attributes: the ``item2attributes`` JSON; None = the one beside a folder ``path``.
        attribute_order: how attribute lists are laid out (see the module docstring).
        on_error: ``"raise"`` on the first bad line, or ``"skip"`` and count it.

    Returns:
        Events (group ``item``, ``ts`` = position in the sequence); no samples.

    Raises:
        AdapterError: structural problems, or a bad line with ``on_error="raise"``.
    """
    check_on_error(on_error)
    seq_file, attr_file = _find(Path(path), attributes)
    tokens = pl.col(TEXT).str.extract_all(r"\S+")
    lines = scan_text_lines(seq_file).with_columns(tokens.alias("_tokens"))
    checks = [
        encoding_check(),
        blank_check(),
        Check(
            "malformed_line",
            pl.col("_tokens").list.len() < 2,
            pl.format("expected 'user item [item ...]', got '{}'", pl.col(TEXT)),
        ),
        duplicate_check([pl.col("_tokens")]),
    ]
    skipped: Counter[str] = Counter()
    kept = apply_checks(lines, checks, seq_file, on_error, skipped)
    items = pl.col("_tokens").list.slice(1)
    rows = kept.select(
        LINE,
        pl.col("_tokens").list.first().alias("user_id"),
        items.alias("item_id"),
        pl.int_ranges(0, items.list.len(), dtype=pl.Int64).alias("ts"),
    ).explode("item_id", "ts")
    notes = [
        "amazon_seq: no timestamps: ts = position in the user's sequence (0, 1, 2, ...); "
        "time-gap buckets carry no information",
        *duplicate_notes("amazon_seq", skipped),
    ]
    inputs = [seq_file]
    if attr_file is not None:
        attrs = read_item_attributes(attr_file, attribute_order)
        rows = rows.join(attrs.lazy(), on="item_id", how="left", maintain_order="left")
        inputs.append(attr_file)
        n_cat, n_brand = attrs.select(pl.col("category_id", "brand_id").null_count()).row(0)
        notes.append(
            f"amazon_seq: attributes from {attr_file.name} ({attribute_order}) for "
            f"{attrs.height} items: {n_cat} without category, {n_brand} without brand"
        )
    else:
        rows = rows.with_columns(
            pl.lit(None, pl.String).alias("category_id"), pl.lit(None, pl.String).alias("brand_id")
        )
        notes.append("amazon_seq: no item2attributes file: category and brand are null")
    events = to_events(
        rows,
        user_id=pl.col("user_id"),
        ts=pl.col("ts"),
        group=pl.lit("item"),
        action=pl.lit(ACTION),
        item_id=pl.col("item_id"),
        category_id=pl.col("category_id"),
        brand_id=pl.col("brand_id"),
    )
    return AdapterResult(events, None, dict(skipped), notes, inputs)
