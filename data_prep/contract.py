"""The one column-name contract between preparation (``data_prep``) and training (``atrank``).

Two layers:

* **Canonical input** (what every source maps into: the simulator and the real-data
  adapters of ``data_prep.sources``). Two tables, both with raw ids as strings:

  - ``events``: the behaviours that form user histories, one row per behaviour.
  - ``samples``: the prediction targets, one row per (user, moment, target object), with one
    nullable label column per task (``label_<task>``) and, when the source knows it, the true
    probability behind the label (``prob_<task>``).

* **Prepared output** (what ``atrank-prep`` writes and ``atrank-train`` reads): integer-coded
  parquet files plus ``meta.json``. Every user's timeline is stored once; each sample points
  into it with ``hist_end`` (no copy of the history per sample).

Index conventions for every coded id field and for actions: ``0`` = absent/padding,
``1`` = out of vocabulary (seen only outside the training split), ``2..`` = known values.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# --- canonical input columns -------------------------------------------------------------
USER = "user_id"
TS = "ts"  # unix seconds, Int64
GROUP = "group"  # behaviour group (object type) of the row: see GROUPS
ACTION = "action"  # behaviour type, e.g. "click", "cart", "purchase", "receive", "use"

ITEM = "item_id"
CATEGORY = "category_id"
BRAND = "brand_id"
SHOP = "shop_id"
COUPON = "coupon_id"
DISCOUNT = "discount_level"

#: Every coded object field, in a fixed order. ``shop_id`` is shared by items and coupons,
#: so the model can relate a coupon to the shop's items.
ID_FIELDS: tuple[str, ...] = (ITEM, CATEGORY, BRAND, SHOP, COUPON, DISCOUNT)

#: Behaviour groups and the fields of their objects. The group index is the position here.
GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    "item": (ITEM, CATEGORY, BRAND, SHOP),
    "coupon": (COUPON, SHOP, DISCOUNT),
}
GROUPS: tuple[str, ...] = tuple(GROUP_FIELDS)

#: Canonical dtype of each events column, by polars type name (``data_prep.schema`` builds the
#: polars schema from it; this module imports no polars, so every side can read it).
EVENT_DTYPES: dict[str, str] = {
    USER: "String",
    TS: "Int64",
    GROUP: "String",
    ACTION: "String",
    **dict.fromkeys(ID_FIELDS, "String"),
}

#: Canonical dtype of each base samples column (labels and probabilities come on top).
SAMPLE_BASE_DTYPES: dict[str, str] = {
    USER: "String",
    TS: "Int64",
    GROUP: "String",  # the target's group
    **dict.fromkeys(ID_FIELDS, "String"),
}

#: Optional samples column: the split a source assigns to each row (Int8 index into
#: :data:`SPLITS`: 0 train, 1 val, 2 test). Read only with the ``leave_last_out`` split
#: method (per-user splits, e.g. the next-item protocol); ignored by the global time cut.
SPLIT_COL = "split"

#: Split methods of the preparation: one global time cut over the samples, or the split
#: the source assigns per row (:data:`SPLIT_COL`), e.g. each user's last positive = test.
SPLIT_METHODS: tuple[str, ...] = ("global_time_cut", "leave_last_out")

LABEL_PREFIX = "label_"
PROB_PREFIX = "prob_"


def label_col(task: str) -> str:
    """Column holding a task's 0/1 label (null where the task does not apply)."""
    return f"{LABEL_PREFIX}{task}"


def prob_col(task: str) -> str:
    """Column holding the true probability behind a task's label (simulated data only)."""
    return f"{PROB_PREFIX}{task}"


def tasks_in(columns: list[str]) -> list[str]:
    """Task names found in a samples table's columns, in column order."""
    return [c[len(LABEL_PREFIX) :] for c in columns if c.startswith(LABEL_PREFIX)]


# --- prepared output ---------------------------------------------------------------------
META_FILE = "meta.json"
REPORT_FILE = "report.json"
TIMELINE_FILE = "timeline.parquet"
USERS_FILE = "users.parquet"
VOCAB_DIR = "vocab"
SPLITS: tuple[str, ...] = ("train", "val", "test")


def samples_file(split: str) -> str:
    """File name of one split's prepared samples."""
    return f"samples_{split}.parquet"


USER_IDX = "user_idx"  # Int32, dense index over all users (not a model feature)
GROUP_IDX = "group_idx"  # Int8, position in GROUPS
ACTION_IDX = "action_idx"  # Int32, 0 pad, 1 OOV, 2.. actions
HIST_START = "hist_start"  # Int64, first timeline row of the sample's user
HIST_END = "hist_end"  # Int64, one past the last timeline row with ts < sample ts
USER_START = "start"  # users.parquet: first timeline row of the user
USER_END = "end"  # users.parquet: one past the user's last timeline row

PAD_INDEX = 0
OOV_INDEX = 1
FIRST_INDEX = 2

# Time-gap buckets (ATRank): bucket = how many of the thresholds 2, 4, ..., 2**(n-1) the gap
# (in whole units, plus one) reaches, so same-unit = 0 and the last bucket is n - 1.
DEFAULT_TIME_UNIT_SECONDS = 86_400
DEFAULT_N_TIME_BUCKETS = 13


def time_bucket_thresholds(n_buckets: int = DEFAULT_N_TIME_BUCKETS) -> list[int]:
    """Thresholds of the log2 time-gap buckets.

    Args:
        n_buckets: number of buckets (13 in ATRank).

    Returns:
        ``[2, 4, ..., 2**(n_buckets-1)]``; a gap ``g`` (whole units) falls in bucket
        ``sum(g + 1 >= t for t in thresholds)``.
    """
    if n_buckets < 2:
        raise ValueError(f"time.n_buckets must be >= 2, got {n_buckets}")
    return [2**k for k in range(1, n_buckets)]
