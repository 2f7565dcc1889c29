"""MovieLens ratings: the 100K, 1M and RecBole atomic-file layouts, detected from ``path``.

Layouts (``path`` is the folder, or one of its rating files):

* ``100k``: ``u.data`` (tab separated ``user item rating ts``) and ``u.item`` (pipe separated,
  ``id|title|date|video date|url`` then 19 genre flags in the order of :data:`GENRES_100K`);
* ``1m``: ``ratings.dat`` (``user::item::rating::ts``) and ``movies.dat``
  (``id::title::Genre1|Genre2``);
* ``recbole``: ``<name>.inter`` and ``<name>.item``, tab separated with a typed header
  (``user_id:token``, ``item_id:token``, ``rating:float``, ``timestamp:float``; genres in
  ``class:token_seq`` or ``genre:token_seq``, space separated).

Mapping: group ``item``; action ``rate``, or with ``split_rating=True`` ``rate_high`` for
ratings >= :data:`HIGH_RATING` (4 of 5) and ``rate_low`` below; ``item_id`` as given;
``category_id`` = the item's first genre (genre ``unknown`` -> null); no brand or shop.
Movie files of the original sets are Latin-1: they are decoded as UTF-8 when valid, else
Latin-1 (only ids and genres are used).

Policy (see :mod:`data_prep.sources.base`): no rating file, two layouts in one folder, or a
RecBole header without ``user_id``/``item_id``/``rating``/``timestamp`` (or not UTF-8) ->
:class:`AdapterError`. A missing movie file gives null categories and a note. Row-level
problems in the rating file, raised with file and line or counted with ``on_error="skip"``:
``bad_encoding`` (not UTF-8), ``malformed_line`` (wrong field count), ``missing_id``,
``bad_rating`` (not a number), ``bad_timestamp`` (not integral unix seconds in the sane range
of :data:`~data_prep.sources.base.TS_MIN`); exact duplicate rating lines (``duplicate_row``,
the same four values as an earlier line) are dropped and counted in both modes, with a note.
In the movie file, a wrong field count or an empty id is ``meta_malformed_line``, a repeated
id ``meta_duplicate_id`` (first kept).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import polars as pl

from data_prep.sources.base import (
    NOT_UTF8,
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
    field_count_check,
    missing_check,
    parse_ts,
    scan_text_lines,
    to_events,
    ts_check,
)

Layout = Literal["auto", "100k", "1m", "recbole"]
HIGH_RATING = 4.0
GENRES_100K: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_RATING_COLS = ("user_id", "item_id", "rating", "timestamp")


def _layout_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    found: dict[str, tuple[Path, Path]] = {}
    if (folder / "u.data").is_file():
        found["100k"] = (folder / "u.data", folder / "u.item")
    if (folder / "ratings.dat").is_file():
        found["1m"] = (folder / "ratings.dat", folder / "movies.dat")
    inters = sorted(folder.glob("*.inter"))
    if len(inters) > 1:
        raise AdapterError(f"{folder}: several *.inter files: {[p.name for p in inters]}")
    if inters:
        found["recbole"] = (inters[0], inters[0].with_suffix(".item"))
    return found


def _detect(path: Path, layout: Layout) -> tuple[str, Path, Path]:
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise AdapterError(f"{path}: MovieLens folder not found")
    found = _layout_files(folder)
    if path.is_file():
        found = {k: v for k, v in found.items() if v[0] == path}
    if layout != "auto":
        found = {k: v for k, v in found.items() if k == layout}
    if len(found) != 1:
        problem = "no" if not found else f"several ({sorted(found)})"
        raise AdapterError(
            f"{path}: {problem} MovieLens rating file(s) for layout {layout!r}; expected "
            "u.data (100k), ratings.dat (1m) or <name>.inter (recbole)"
        )
    name, (ratings, movies) = next(iter(found.items()))
    return name, ratings, movies


def _recbole_header(file: Path, lines: pl.LazyFrame) -> list[str]:
    first = lines.head(1).collect()
    if first.height and first[NOT_UTF8][0]:
        raise AdapterError(f"{file}: line 1: bad_encoding: the header is not valid UTF-8")
    header = str(first[TEXT][0]) if first.height else ""
    return [c.split(":")[0].strip() for c in header.split("\t")]


def _ratings(layout: str, file: Path, on_error: OnError, skipped: Counter[str]) -> pl.LazyFrame:
    sep = {"100k": "\t", "1m": "::", "recbole": "\t"}[layout]
    names: list[str] = list(_RATING_COLS)
    lines = scan_text_lines(file)
    if layout == "recbole":
        names = _recbole_header(file, lines)
        missing = [c for c in _RATING_COLS if c not in names]
        if missing:
            raise AdapterError(f"{file}: header lacks column(s) {missing}; found {names}")
        lines = lines.slice(1)
    parts = pl.col(TEXT).str.split_exact(sep, len(names))
    rows = lines.with_columns(
        parts.struct.field(f"field_{names.index(c)}").str.strip_chars().alias(c)
        for c in _RATING_COLS
    )
    rating = pl.col("rating").cast(pl.Float64, strict=False)
    checks = [
        encoding_check(),
        blank_check(),
        field_count_check(parts, len(names), sep),
        missing_check({"user_id": pl.col("user_id"), "item_id": pl.col("item_id")}),
        Check("bad_rating", rating.is_null(), pl.format("rating '{}'", pl.col("rating"))),
        ts_check(pl.col("timestamp")),
        duplicate_check([pl.col(c) for c in _RATING_COLS]),
    ]
    kept = apply_checks(rows, checks, file, on_error, skipped)
    return kept.with_columns(rating.alias("rating"), parse_ts(pl.col("timestamp")).alias("ts"))


def _movies(layout: str, file: Path, on_error: OnError, skipped: Counter[str]) -> pl.LazyFrame:
    """Item id and first genre per movie (``meta_*`` reasons in ``skipped``)."""
    lines = scan_text_lines(file, fallback_encoding="latin-1")  # (the original files)
    if layout == "100k":
        n = 5 + len(GENRES_100K)
        parts = pl.col(TEXT).str.split(pl.lit("|"))
        flags = pl.concat_list(
            pl.when(parts.list.get(5 + i, null_on_oob=True) == "1").then(pl.lit(g))
            for i, g in enumerate(GENRES_100K)
        )
        bad = parts.list.len() != n
        genre = flags.list.drop_nulls().list.first()
    elif layout == "1m":
        n, parts = 3, pl.col(TEXT).str.split(pl.lit("::"))
        bad = parts.list.len() != n
        genre = parts.list.last().str.split("|").list.first()
    else:
        names = _recbole_header(file, lines)
        col = next((c for c in ("class", "genre") if c in names), None)
        if "item_id" not in names or col is None:
            raise AdapterError(f"{file}: header lacks item_id or class/genre; found {names}")
        lines, n = lines.slice(1), len(names)
        parts = pl.col(TEXT).str.split(pl.lit("\t"))
        bad = parts.list.len() != n
        genre = parts.list.get(names.index(col), null_on_oob=True).str.extract(r"^\s*(\S+)")
        parts = parts.list.gather([names.index("item_id")], null_on_oob=True)
    item = parts.list.first().str.strip_chars()
    checks = [
        blank_check(),
        Check(
            "meta_malformed_line",
            bad | (item == ""),
            pl.format(f"expected {n} fields with an item id, got '{{}}'", pl.col(TEXT)),
        ),
        Check(
            "meta_duplicate_id",
            item.is_first_distinct().not_(),
            pl.format("item '{}' listed again", item),
        ),
    ]
    rows = lines.with_columns(item.alias("item_id"), genre.alias("category_id"))
    kept = apply_checks(rows, checks, file, on_error, skipped)
    category = pl.when(pl.col("category_id") != "unknown").then(pl.col("category_id"))
    return kept.select("item_id", category.alias("category_id"))


def read_movielens(
    path: Path,
    *,
    layout: Layout = "auto",
    split_rating: bool = False,
    on_error: OnError = "raise",
) -> AdapterResult:
    """Reads MovieLens ratings (and movie genres) into canonical events.

    Args:
        path: the folder (or its rating file).
        layout: ``"auto"`` detects it from the files present.
        split_rating: actions ``rate_high``/``rate_low`` instead of ``rate``.
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` and count it.

    Returns:
        Events (group ``item``); no samples.

    Raises:
        AdapterError: structural problems, or a bad row with ``on_error="raise"``.
    """
    check_on_error(on_error)
    name, ratings_file, movies_file = _detect(Path(path), layout)
    skipped: Counter[str] = Counter()
    rows = _ratings(name, ratings_file, on_error, skipped)
    notes = [
        f"movielens: layout {name}, category = first genre",
        *duplicate_notes("movielens", skipped),
    ]
    inputs = [ratings_file]
    if movies_file.is_file():
        movies = _movies(name, movies_file, on_error, skipped)
        rows = rows.join(movies, on="item_id", how="left", maintain_order="left")
        inputs.append(movies_file)
    else:
        rows = rows.with_columns(pl.lit(None, pl.String).alias("category_id"))
        notes.append(f"movielens: no {movies_file.name}: category is null")
    if split_rating:
        high = pl.col("rating") >= HIGH_RATING
        action = pl.when(high).then(pl.lit("rate_high")).otherwise(pl.lit("rate_low"))
    else:
        action = pl.lit("rate")
    events = to_events(
        rows,
        user_id=pl.col("user_id"),
        ts=pl.col("ts"),
        group=pl.lit("item"),
        action=action,
        item_id=pl.col("item_id"),
        category_id=pl.col("category_id"),
    )
    return AdapterResult(events, None, dict(skipped), notes, inputs)
