"""A straightforward pandas implementation of the preparation, as the benchmark's yardstick.

Not part of the product: it exists so that ``bench.run`` can compare ``data_prep.prepare``
(polars) with what one would write in pandas. It performs the same steps on the simulator's
canonical parquet and writes the same files (``timeline``, ``users``, ``samples_<split>``,
``vocab/<field>``, a small ``meta.json``), but skips the data-quality report and the
OOV-rate statistics of ``report.json``, so it does slightly less work than the product.

Steps: read -> drop unusable rows -> global time cut by sample quantiles ("higher") ->
train-only vocabularies (count desc, value asc; 0 pad, 1 OOV) -> code -> timeline sorted by
(user, ts, ...) -> per-sample ``hist_end`` with ``merge_asof`` (last event strictly before,
per user) -> parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep import contract as C

_CARRIED_BY = {f: [g for g, fs in C.GROUP_FIELDS.items() if f in fs] for f in C.ID_FIELDS}


def _clean(df: pd.DataFrame, needs_action: bool) -> pd.DataFrame:
    """Drops the rows the contract skips and nulls the fields a row's group does not carry."""
    required = [C.USER, C.TS, C.GROUP] + ([C.ACTION] if needs_action else [])
    df = df.dropna(subset=required)
    df = df[df[C.GROUP].isin(C.GROUPS)]
    for group, fields in C.GROUP_FIELDS.items():
        df = df[~((df[C.GROUP] == group) & df[fields[0]].isna())]
    for f, groups in _CARRIED_BY.items():
        df.loc[~df[C.GROUP].isin(groups), f] = None
    return df.reset_index(drop=True)


def _vocab(values: pd.Series, min_count: int) -> pd.DataFrame:
    """``value, index, count``: values by count descending then value ascending, from 2."""
    counts = values.dropna().value_counts()
    df = pd.DataFrame({"value": counts.index.astype(str), "count": counts.to_numpy()})
    df = df[df["count"] >= min_count].sort_values(["count", "value"], ascending=[False, True])
    df["index"] = np.arange(C.FIRST_INDEX, C.FIRST_INDEX + len(df), dtype=np.int32)
    return df.reset_index(drop=True)[["value", "index", "count"]]


def _code(col: pd.Series, vocab: pd.DataFrame) -> np.ndarray:
    """Vocabulary index of each value: 0 for null, 1 for unknown."""
    pos = pd.Index(vocab["value"]).get_indexer(col)
    out = np.where(pos >= 0, pos + C.FIRST_INDEX, C.OOV_INDEX).astype(np.int32)
    out[col.isna().to_numpy()] = C.PAD_INDEX
    return out


def prepare_pandas(
    raw: Path, out: Path, val_frac: float = 0.1, test_frac: float = 0.1, min_count: int = 1
) -> dict[str, int]:
    """Prepares ``raw/{events,samples}/*.parquet`` into ``out`` with pandas.

    Args:
        raw: folder of the canonical tables (as the simulator writes them).
        out: output folder (created).
        val_frac: share of the latest samples for validation.
        test_frac: share of the latest samples for test.
        min_count: minimum training count of a vocabulary value.

    Returns:
        Row counts: ``{"events", "samples", "users"}``.
    """
    ev = _clean(pd.read_parquet(raw / "events"), needs_action=True)
    sm = pd.read_parquet(raw / "samples")
    tasks = C.tasks_in(list(sm.columns))
    sm = _clean(sm, needs_action=False)
    sm = sm[sm[[C.label_col(t) for t in tasks]].notna().any(axis=1)].reset_index(drop=True)

    ts = sm[C.TS].to_numpy()
    t_val = int(np.quantile(ts, 1.0 - val_frac - test_frac, method="higher"))
    t_test = int(np.quantile(ts, 1.0 - test_frac, method="higher"))
    split = np.where(ts < t_val, 0, np.where(ts < t_test, 1, 2))

    train_ev, train_sm = ev[ev[C.TS] < t_val], sm[split == 0]
    vocabs = {
        f: _vocab(pd.concat([train_ev[f], train_sm[f]], ignore_index=True), min_count)
        for f in C.ID_FIELDS
    }
    actions = _vocab(train_ev[C.ACTION], min_count)
    users = pd.Index(np.sort(pd.unique(pd.concat([ev[C.USER], sm[C.USER]]).to_numpy())))
    group_idx = {g: i for i, g in enumerate(C.GROUPS)}

    tl = pd.DataFrame(
        {
            C.USER_IDX: users.get_indexer(ev[C.USER]).astype(np.int32),
            C.TS: ev[C.TS].to_numpy(np.int64),
            C.GROUP_IDX: ev[C.GROUP].map(group_idx).to_numpy(np.int8),
            C.ACTION_IDX: _code(ev[C.ACTION], actions),
            **{f: _code(ev[f], vocabs[f]) for f in C.ID_FIELDS},
        }
    )
    del ev, train_ev
    tl = tl.sort_values(list(tl.columns), kind="stable", ignore_index=True)
    uidx = tl[C.USER_IDX].to_numpy()
    everyone = np.arange(len(users))
    starts = np.searchsorted(uidx, everyone, side="left")
    ends = np.searchsorted(uidx, everyone, side="right")

    s = pd.DataFrame(
        {
            C.USER_IDX: users.get_indexer(sm[C.USER]).astype(np.int32),
            C.TS: ts.astype(np.int64),
            C.GROUP_IDX: sm[C.GROUP].map(group_idx).to_numpy(np.int8),
            **{f: _code(sm[f], vocabs[f]) for f in C.ID_FIELDS},
        }
    )
    s[C.HIST_START] = starts[s[C.USER_IDX].to_numpy()].astype(np.int64)
    for t in tasks:
        s[C.label_col(t)] = sm[C.label_col(t)].astype("Int8")
        if C.prob_col(t) in sm.columns:
            s[C.prob_col(t)] = sm[C.prob_col(t)].astype("Float32")
    s["_split"] = split
    s["_row"] = np.arange(len(s))
    # hist_end: one past the user's last timeline row with ts strictly before the sample.
    right = pd.DataFrame(
        {C.TS: tl[C.TS].to_numpy(), C.USER_IDX: uidx, "_tl_row": np.arange(len(tl))}
    ).sort_values(C.TS, kind="stable")
    left = s[[C.TS, C.USER_IDX, "_row"]].sort_values(C.TS, kind="stable")
    asof = pd.merge_asof(
        left, right, on=C.TS, by=C.USER_IDX, allow_exact_matches=False, direction="backward"
    ).sort_values("_row")
    last = asof["_tl_row"].to_numpy()
    s[C.HIST_END] = np.where(np.isnan(last), s[C.HIST_START], np.nan_to_num(last) + 1).astype(
        np.int64
    )
    del right, left, asof

    out.mkdir(parents=True, exist_ok=True)
    (out / C.VOCAB_DIR).mkdir(exist_ok=True)
    tl.to_parquet(out / C.TIMELINE_FILE, index=False)
    pd.DataFrame(
        {
            C.USER_IDX: everyone.astype(np.int32),
            C.USER: users,
            C.USER_START: starts,
            C.USER_END: ends,
        }
    ).to_parquet(out / C.USERS_FILE, index=False)
    order = [C.TS, C.USER_IDX, C.GROUP_IDX, *C.ID_FIELDS, C.HIST_START, C.HIST_END]
    for i, name in enumerate(C.SPLITS):
        part = s[s["_split"] == i].drop(columns=["_split", "_row"])
        part.sort_values(order, kind="stable").to_parquet(out / C.samples_file(name), index=False)
    for f, v in {**vocabs, "action": actions}.items():
        v.to_parquet(out / C.VOCAB_DIR / f"{f}.parquet", index=False)
    counts = {"events": len(tl), "samples": len(s), "users": len(users)}
    meta = {"split": {"t_val": t_val, "t_test": t_test}, "counts": counts}
    (out / "meta.json").write_text(json.dumps(meta))
    return counts
