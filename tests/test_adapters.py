"""Real-data adapters: the shared real samples, and small broken files written by hand."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from data_prep import contract as C
from data_prep.schema import EVENT_SCHEMA, SAMPLE_BASE_SCHEMA
from data_prep.sources import ADAPTERS, AdapterError, AdapterResult
from data_prep.sources.o2o import discount_level

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real data samples not found at {SHARED} (../shared/data)"
)


def events_of(result: AdapterResult) -> pl.DataFrame:
    """Collects the events and checks the canonical contract every adapter must meet."""
    df = result.events.collect()
    assert dict(df.schema) == EVENT_SCHEMA
    assert list(df.columns) == list(EVENT_SCHEMA)
    required = df.select(C.USER, C.TS, C.GROUP, C.ACTION)
    assert sum(required.null_count().row(0)) == 0
    return df


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def raises_at(
    adapter: str, path: Path, line: int, reason: str, name: Path | None = None, **kw: object
) -> str:
    """Calls an adapter, expecting an AdapterError naming the file, line and reason.

    ``name`` is the file the error must name, when it is not ``path`` itself.
    """
    with pytest.raises(AdapterError) as info:
        ADAPTERS[adapter](path, **kw)
    msg = str(info.value)
    named = (name or path).name
    assert named in msg and f"line {line}:" in msg and reason in msg, msg
    return msg


# --- real samples -------------------------------------------------------------------------
@needs_shared
def test_taobao_real_sample() -> None:
    folder = SHARED / "taobao_userbehavior"
    counts = {"users_114.csv": 10_000, "users_43.csv": 4_321, "slice_2h.csv": 110_300}
    for name, n in counts.items():
        assert events_of(ADAPTERS["taobao"](folder / name)).height == n
    result = ADAPTERS["taobao"](folder)
    df = events_of(result)
    assert df.height == sum(counts.values()) and result.skipped == {}
    assert sorted(p.name for p in result.inputs) == sorted(counts)
    assert set(df[C.ACTION]) == {"click", "cart", "fav", "purchase"}
    assert df[C.CATEGORY].null_count() == 0 and df[C.BRAND].null_count() == df.height
    first = df.filter(pl.col(C.USER) == "1").sort(C.TS).row(0, named=True)
    assert (first[C.ITEM], first[C.CATEGORY], first[C.TS]) == ("2268318", "2520377", 1511544070)


@needs_shared
def test_amazon_seq_real_sample() -> None:
    result = ADAPTERS["amazon_seq"](SHARED / "amazon_beauty")
    df = events_of(result)
    assert df.height == 198_502 and result.skipped == {}
    assert df[C.USER].n_unique() == 22_363 and df[C.ITEM].n_unique() == 12_101
    # ts = position in the sequence: 0..n-1 per user, in file order.
    per_user = df.group_by(C.USER).agg(pl.col(C.TS).sort(), pl.len().alias("n"))
    assert all(ts == list(range(n)) for _, ts, n in per_user.iter_rows())
    assert df.filter(pl.col(C.USER) == "2")[C.ITEM].to_list() == [
        "6",
        "7",
        "8",
        "9",
        "10",
        "4",
        "11",
    ]
    assert any("time-gap buckets carry no information" in n for n in result.notes)
    # Brand-first layout: item 1148 = [24, 1, 25, 26] -> brand 24, category 26; 4 = [1, 2, 3].
    items = df.unique(C.ITEM).select(C.ITEM, C.CATEGORY, C.BRAND)
    assert items.filter(pl.col(C.ITEM) == "1148").row(0) == ("1148", "26", "24")
    assert items.filter(pl.col(C.ITEM) == "4").row(0) == ("4", "3", None)
    assert items[C.CATEGORY].null_count() == 0 and items[C.BRAND].null_count() > 0


@needs_shared
def test_o2o_real_sample() -> None:
    file = SHARED / "tianchi_o2o" / "ccf_offline_stage1_test_revised.csv"
    result = ADAPTERS["o2o"](file)
    df = events_of(result)
    # 113,640 rows, none without a coupon or otherwise skipped in this file.
    assert df.height == 113_640 - sum(result.skipped.values()) and result.skipped == {}
    # its exact repeats (one coupon received twice the same day) are kept, and counted
    assert any("837 row(s) repeat an earlier row exactly" in n for n in result.notes)
    assert result.samples is None and any("no Date column" in n for n in result.notes)
    assert set(df[C.ACTION]) == {"receive"} and set(df[C.GROUP]) == {"coupon"}
    assert df[C.COUPON].null_count() == 0 and df[C.ITEM].null_count() == df.height
    assert set(df[C.DISCOUNT]) <= {"off_00_05", "off_05_10", "off_10_15", "off_15_25", "off_25_up"}
    july = (1_467_331_200, 1_469_923_200)  # 2016-07-01 .. 2016-07-31, 00:00 UTC
    assert df[C.TS].min() == july[0] and df[C.TS].max() == july[1]
    first = df.row(0, named=True)  # 4129537,450,9983,30:5,1,20160712
    assert (first[C.USER], first[C.SHOP], first[C.COUPON]) == ("4129537", "450", "9983")
    assert (first[C.DISCOUNT], first[C.TS]) == ("off_15_25", 1_468_281_600)


@needs_shared
def test_movielens_real_sample() -> None:
    result = ADAPTERS["movielens"](SHARED / "movielens_100k", split_rating=True)
    df = events_of(result)
    assert df.height == 100_000 and result.skipped == {}
    assert df[C.USER].n_unique() == 943 and df[C.ITEM].n_unique() == 1_682
    assert df[C.ACTION].value_counts().height == 2 and set(df[C.ACTION]) == {
        "rate_high",
        "rate_low",
    }
    toy_story = df.filter(pl.col(C.ITEM) == "1")[C.CATEGORY].unique().to_list()
    assert toy_story == ["Animation"]
    assert df.filter(pl.col(C.USER) == "196").sort(C.TS)[C.TS][0] == 881_250_949
    assert [p.name for p in result.inputs] == ["ml-100k.inter", "ml-100k.item"]


# --- taobao: broken files -------------------------------------------------------------------
TAOBAO_GOOD = ["1,10,100,pv,1511544070", "1,11,100,buy,1511544071", "2,12,101,cart,1511544072"]
TAOBAO_BAD = [
    ("malformed_line", "3,13,102,pv", "3,13,102,pv"),
    ("missing_id", "3,,102,pv,1511544073", "missing item_id"),
    ("unknown_behavior", "3,13,102,click,1511544073", "behavior 'click'"),
    ("bad_timestamp", "3,13,102,fav,15115440xx", "'15115440xx'"),
    ("bad_timestamp", "3,13,102,fav,-5", "'-5'"),
    ("bad_timestamp", "3,13,102,fav,99999999999", "'99999999999'"),
]


@pytest.mark.parametrize(("reason", "bad", "shown"), TAOBAO_BAD)
def test_taobao_bad_row_raises_then_skips(
    tmp_path: Path, reason: str, bad: str, shown: str
) -> None:
    lines = [TAOBAO_GOOD[0], TAOBAO_GOOD[1], bad, TAOBAO_GOOD[2]]
    file = write(tmp_path / "ub.csv", "\n".join(lines) + "\n")
    assert shown in raises_at("taobao", file, 3, reason)
    result = ADAPTERS["taobao"](file, on_error="skip")
    df = events_of(result)
    assert result.skipped == {reason: 1}
    assert df[C.ITEM].to_list() == ["10", "11", "12"]
    assert df[C.ACTION].to_list() == ["click", "purchase", "cart"]


def test_taobao_counts_every_reason_and_blank_lines(tmp_path: Path) -> None:
    bad = [b for _, b, _ in TAOBAO_BAD]
    file = write(tmp_path / "ub.csv", "\n".join([TAOBAO_GOOD[0], "", *bad, *TAOBAO_GOOD[1:]]))
    result = ADAPTERS["taobao"](file, on_error="skip")
    assert result.skipped == {
        "blank_line": 1,
        "malformed_line": 1,
        "missing_id": 1,
        "unknown_behavior": 1,
        "bad_timestamp": 3,
    }
    assert events_of(result).height == 3
    raises_at("taobao", file, 3, "malformed_line")  # the blank line 2 is not an error


def test_taobao_options_and_structure(tmp_path: Path) -> None:
    file = write(tmp_path / "ub.csv", "\n".join(TAOBAO_GOOD) + "\n")
    raises_at("taobao", file, 3, "bad_timestamp", ts_max=1511544072)
    with gzip.open(tmp_path / "more.csv.gz", "wt") as f:
        f.write("9,90,900,fav,1511544099\n")
    assert events_of(ADAPTERS["taobao"](tmp_path)).height == 4
    with pytest.raises(AdapterError, match=r"empty: folder holds no file matching \['\*\.csv'"):
        ADAPTERS["taobao"](_empty_dir(tmp_path))
    with pytest.raises(AdapterError, match="not found"):
        ADAPTERS["taobao"](tmp_path / "absent.csv")
    with pytest.raises(AdapterError, match="on_error"):
        ADAPTERS["taobao"](file, on_error="ignore")


def _empty_dir(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


# --- o2o -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "level"),
    [
        ("0.9", "off_10_15"),
        ("30:5", "off_15_25"),
        ("200:20", "off_10_15"),
        ("20:1", "off_05_10"),
        ("0.95", "off_05_10"),
        ("50:1", "off_00_05"),
        ("20:5", "off_25_up"),
        ("1", "off_00_05"),
        (None, None),  # the literal ``null`` is read as null before parsing
        ("0", None),
        ("5:10", None),
        ("a:b", None),
        ("30:5:1", None),
    ],
)
def test_discount_level_table(raw: str | None, level: str | None) -> None:
    got = pl.select(discount_level(pl.lit(raw, pl.String))).item()
    assert got == level


O2O_HEADER = "User_id,Merchant_id,Coupon_id,Discount_rate,Distance,Date_received,Date\n"


def test_o2o_train_format_events_and_labels(tmp_path: Path) -> None:
    rows = [
        "1,7,100,30:5,1,20160101,20160110",  # used after 9 days -> 1
        "1,7,null,null,1,null,20160105",  # plain purchase: no_coupon
        "2,8,101,0.9,null,20160101,null",  # never used -> 0
        "3,8,101,0.9,null,20160101,20160117",  # 16 days -> 0
        "4,8,102,null,null,20160101,20160116",  # 15 days -> 1, no discount given
    ]
    file = write(tmp_path / "ccf_offline_stage1_train.csv", O2O_HEADER + "\n".join(rows) + "\n")
    result = ADAPTERS["o2o"](file)  # no_coupon is policy, not an error
    assert result.skipped == {"no_coupon": 1}
    df = events_of(result).sort(C.ACTION, C.USER)
    assert df[C.ACTION].to_list() == ["receive"] * 4 + ["use"] * 3
    assert df.filter(pl.col(C.ACTION) == "use")[C.USER].to_list() == ["1", "3", "4"]
    assert df[C.DISCOUNT].to_list()[:4] == ["off_15_25", "off_10_15", "off_10_15", None]
    assert result.samples is not None
    samples = result.samples.collect().sort(C.USER)
    assert list(samples.columns) == [*SAMPLE_BASE_SCHEMA, "label_coupon"]
    assert samples.schema["label_coupon"] == pl.Int8
    assert samples["label_coupon"].to_list() == [1, 0, 0, 1]
    assert samples[C.TS].to_list() == [1_451_606_400] * 4


@pytest.mark.parametrize(
    ("bad", "reason", "shown"),
    [
        ("5,9,103,30:5,1,2016010", "malformed_line", "expected 7 fields"),
        ("5,,103,30:5,1,20160101,null", "missing_id", "missing Merchant_id"),
        ("5,9,103,abc,1,20160101,null", "bad_discount", "'abc'"),
        ("5,9,103,30:5,1,20161301,null", "bad_timestamp", "'20161301'"),
        ("5,9,103,30:5,1,20160105,20160101", "bad_timestamp", "on or after"),
    ],
)
def test_o2o_bad_row(tmp_path: Path, bad: str, reason: str, shown: str) -> None:
    good = ["1,7,100,30:5,1,20160101,20160110", "2,8,101,0.9,null,20160101,null"]
    file = write(tmp_path / "o2o.csv", O2O_HEADER + "\n".join([good[0], bad, good[1]]) + "\n")
    assert shown in raises_at("o2o", file, 3, reason)
    result = ADAPTERS["o2o"](file, on_error="skip")
    assert result.skipped == {reason: 1}
    assert events_of(result).filter(pl.col(C.ACTION) == "receive")[C.USER].to_list() == ["1", "2"]


def test_o2o_missing_column(tmp_path: Path) -> None:
    file = write(tmp_path / "o2o.csv", "User_id,Merchant_id,Coupon_id,Discount_rate\n1,2,3,0.9\n")
    with pytest.raises(AdapterError, match="o2o.csv: header lacks column.*Date_received"):
        ADAPTERS["o2o"](file)


# --- movielens -----------------------------------------------------------------------------
def _flags(*genres: int) -> str:
    flags = ["1" if i in genres else "0" for i in range(19)]
    return "|01-Jan-1995||http://x|" + "|".join(flags)


def test_movielens_100k_layout(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t30\t4\t881250951\n")
    # Latin-1 title; genres: 10 = Animation+Comedy, 20 = unknown, 30 = Drama.
    text = f"10|Mis\xe9rables{_flags(3, 5)}\n20|B{_flags(0)}\n30|C{_flags(8)}\n"
    (tmp_path / "u.item").write_bytes(text.encode("latin-1"))
    df = events_of(ADAPTERS["movielens"](tmp_path))
    assert df.select(C.ITEM, C.CATEGORY, C.ACTION).rows() == [
        ("10", "Animation", "rate"),
        ("20", None, "rate"),
        ("30", "Drama", "rate"),
    ]
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n1\t20\t3\n2\t30\t4\t881250951\n")
    raises_at("movielens", tmp_path, 2, "malformed_line")
    result = ADAPTERS["movielens"](tmp_path, on_error="skip")
    assert result.skipped == {"malformed_line": 1}
    assert events_of(result)[C.ITEM].to_list() == ["10", "30"]


def test_movielens_1m_layout_and_bad_values(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::2::978300761\n")
    write(tmp_path / "movies.dat", "10::Toy Story (1995)::Animation|Comedy\n20::X::Drama\n")
    df = events_of(ADAPTERS["movielens"](tmp_path, split_rating=True))
    assert df.select(C.ITEM, C.CATEGORY, C.ACTION).rows() == [
        ("10", "Animation", "rate_high"),
        ("20", "Drama", "rate_low"),
    ]
    write(tmp_path / "ratings.dat", "1::10::five::978300760\n1::20::2::97830076x\n")
    raises_at("movielens", tmp_path, 1, "bad_rating")
    # every line skipped: the file is refused, with the counts (not "no usable rows" later)
    with pytest.raises(AdapterError, match=r"ratings.dat: no usable line: all 2 data lines"):
        ADAPTERS["movielens"](tmp_path, on_error="skip")


def test_movielens_recbole_header_and_layout_errors(tmp_path: Path) -> None:
    write(tmp_path / "x.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    with pytest.raises(AdapterError, match="x.inter: header lacks.*timestamp"):
        ADAPTERS["movielens"](tmp_path)
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n")
    with pytest.raises(AdapterError, match="several"):
        ADAPTERS["movielens"](tmp_path)
    result = ADAPTERS["movielens"](tmp_path, layout="100k")
    assert events_of(result)[C.CATEGORY].to_list() == [None]
    assert any("no u.item" in n for n in result.notes)
    with pytest.raises(AdapterError, match="no MovieLens"):
        ADAPTERS["movielens"](_empty_dir(tmp_path))


# --- amazon sequences ----------------------------------------------------------------------
def test_amazon_seq_hand_made(tmp_path: Path) -> None:
    write(tmp_path / "Toy.txt", "u1 a b c\n\nu2  b\tc\nu3\nu4 a\n")
    write(tmp_path / "Toy_item2attributes.json", '{"a": [9, 1, 2], "b": [1], "c": [8, 1]}')
    raises_at("amazon_seq", tmp_path, 4, "malformed_line")
    result = ADAPTERS["amazon_seq"](tmp_path, on_error="skip")
    assert result.skipped == {"blank_line": 1, "malformed_line": 1}
    df = events_of(result)
    expected = [("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u2", "b", 0), ("u2", "c", 1)]
    assert df.select(C.USER, C.ITEM, C.TS).rows() == [*expected, ("u4", "a", 0)]
    # Categories are the attributes seen after position 0 (1, 2): a -> brand 9, category 2.
    assert df.select(C.ITEM, C.CATEGORY, C.BRAND).unique().sort(C.ITEM).rows() == [
        ("a", "2", "9"),
        ("b", "1", None),
        ("c", "1", "8"),
    ]
    flipped = ADAPTERS["amazon_seq"](
        tmp_path, attribute_order="category_first", on_error="skip"
    ).events.collect()
    assert flipped.filter(pl.col(C.ITEM) == "a").select(C.CATEGORY, C.BRAND).row(0) == ("9", "1")
    write(tmp_path / "Toy_item2attributes.json", '{"a": [9, 1, 2], ')
    with pytest.raises(AdapterError, match="Toy_item2attributes.json: line 1"):
        ADAPTERS["amazon_seq"](tmp_path, on_error="skip")


# --- amazon review dumps -------------------------------------------------------------------
REVIEWS = [
    '{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1300000000, "overall": 5.0}',
    '{"reviewerID": "U1", "asin": "A2", "unixReviewTime": 1300000100, "reviewText": "x"}',
    '{"reviewerID": "U2", "asin": "A3", "unixReviewTime": 1300000200}',
]
META = [
    # Python literal (old dumps), with a double-quoted string and nested dicts.
    "{'asin': 'A1', 'categories': [['Electronics', 'Camera'], ['Electronics', 'Lenses', "
    "\"Kid's Lenses\"]], 'brand': 'Canon', 'related': {'also_bought': ['A2']}}",
    '{"asin": "A2", "categories": [["Electronics", "TV & Video"]], "brand": ""}',
]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_reviews_json_and_literals(tmp_path: Path, gz: bool) -> None:
    def put(name: str, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        if gz:
            with gzip.open(tmp_path / f"{name}.gz", "wt") as f:
                f.write(text)
        else:
            write(tmp_path / name, text)

    put("reviews_Toy_5.json", REVIEWS)
    put("meta_Toy.json", META)
    result = ADAPTERS["amazon_reviews"](tmp_path)
    df = events_of(result)
    assert df.select(C.USER, C.ITEM, C.TS, C.CATEGORY, C.BRAND, C.ACTION).rows() == [
        ("U1", "A1", 1300000000, "Kid's Lenses", "Canon", "review"),
        ("U1", "A2", 1300000100, "TV & Video", None, "review"),
        ("U2", "A3", 1300000200, None, None, "review"),
    ]
    assert len(result.inputs) == 2 and result.skipped == {}


@pytest.mark.parametrize(
    ("bad", "reason", "shown"),
    [
        ('{"reviewerID": "U3", "asin": ', "malformed_line", "not valid JSON"),
        ('{"reviewerID": "U3", "asin": ["A1"], "unixReviewTime": 1}', "malformed_line", "asin"),
        ('{"asin": "A4", "unixReviewTime": 1300000300}', "missing_id", "missing reviewerID"),
        ('{"reviewerID": "U3", "asin": "A4", "unixReviewTime": "soon"}', "bad_timestamp", "soon"),
    ],
)
def test_amazon_reviews_bad_line(tmp_path: Path, bad: str, reason: str, shown: str) -> None:
    reviews = write(tmp_path / "r.json", "\n".join([REVIEWS[0], "", bad, *REVIEWS[1:]]) + "\n")
    assert shown in raises_at("amazon_reviews", reviews, 3, reason)
    result = ADAPTERS["amazon_reviews"](reviews, on_error="skip")
    assert result.skipped == {"blank_line": 1, reason: 1}
    assert events_of(result)[C.ITEM].to_list() == ["A1", "A2", "A3"]


def test_amazon_meta_never_evaluates_code(tmp_path: Path) -> None:
    reviews = write(tmp_path / "r.json", "\n".join(REVIEWS) + "\n")
    marker = tmp_path / "pwned"
    evil = f"{{'asin': 'A3', 'brand': open({str(marker)!r}, 'w').write('x')}}"
    meta = write(tmp_path / "meta.json", "\n".join([*META, evil, META[1]]) + "\n")
    msg = raises_at("amazon_reviews", reviews, 3, "meta_malformed_line", meta=meta, name=meta)
    assert "not a plain Python literal" in msg and not marker.exists()
    result = ADAPTERS["amazon_reviews"](reviews, meta=meta, on_error="skip")
    assert result.skipped == {"meta_malformed_line": 1, "meta_duplicate_id": 1}
    assert events_of(result)[C.CATEGORY].to_list() == ["Kid's Lenses", "TV & Video", None]
    assert not marker.exists()


def test_amazon_reviews_structure(tmp_path: Path) -> None:
    write(tmp_path / "a.json", REVIEWS[0])
    write(tmp_path / "b.json", REVIEWS[1])
    with pytest.raises(AdapterError, match="expected one reviews file"):
        ADAPTERS["amazon_reviews"](tmp_path)
    with pytest.raises(AdapterError, match="metadata file not found"):
        ADAPTERS["amazon_reviews"](reviews=tmp_path / "a.json", meta=tmp_path / "meta.json")
    result = ADAPTERS["amazon_reviews"](reviews=tmp_path / "a.json")
    assert any("no metadata" in n for n in result.notes)


def test_adapters_do_not_import_torch() -> None:
    code = "import sys, data_prep.sources; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
