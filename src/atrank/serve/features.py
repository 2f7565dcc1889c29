"""Raw events and scoring requests -> model inputs, through the preparation's own functions.

No second implementation of the features: the rows are checked and compacted by
:func:`data_prep.passes.validate.compact_query` and :func:`drop_rules` (bad rows are dropped
and counted, never an error), ids are coded with the bundle's vocabularies through
:func:`data_prep.passes.vocab.vocab_lookups` and :func:`code_expr` (an unseen id is OOV,
counted), the timeline is ordered by :func:`data_prep.passes.history.sort_timeline`, a
request's history is every event strictly before its time
(:func:`data_prep.passes.history.attach_history`), and the window of the ``max_len`` most
recent behaviours with their time buckets relative to the request comes from the training
batch builder (:class:`atrank.data.batching.BatchBuilder`).

Requests are one row per (request, candidate): ``user_id``, ``ts`` and the candidate
(``group``, default ``item``, and its id field; other fields optional, filled from the
bundle's catalogue when absent), with an optional ``request_id`` (default: one request per
``(user_id, ts)``). Candidates keep their row order within a request.

Shape glossary: R requests, N candidates (rows), T history window.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from atrank.data.batch import Batch
from atrank.data.batching import BatchBuilder
from atrank.data.store import SampleTable, Timeline
from atrank.serve.bundle import Bundle
from data_prep import contract as C
from data_prep.passes.build import coded_exprs
from data_prep.passes.history import TIMELINE_COLUMNS, attach_history, sort_timeline, user_offsets
from data_prep.passes.validate import (
    EVENTS,
    SAMPLES,
    TableInfo,
    categorical_columns,
    compact_query,
    drop_rules,
    inspect_table,
    row_check_exprs,
)
from data_prep.passes.vocab import fit_users, lookup, n_codes, vocab_lookups
from data_prep.schema import EVENT_SCHEMA

REQUEST_ID = "request_id"
REQUEST_IDX = "__request"  # dense request index, in order of first appearance
POSITION = "position"  # the candidate's position within its request
_CAND = "__candidate"  # candidate row number in the input
_BAD = "__bad_request"  # why a request row cannot be scored at all (null user or time)
_NO_USER = "\x00no user"  # stands in for a null user_id (no event can carry it)


@dataclass
class Features:
    """Model inputs of a set of requests.

    Attributes:
        history: one row per request: the request's history window (``target`` unused).
        target: coded candidate fields, ``field -> (N,)`` long.
        target_group: ``(N,)`` long group index (-1 for a candidate without a group).
        owner: ``(N,)`` long, the request (row of ``history``) of each candidate.
        candidates: one row per candidate in input order: ``request_id`` (or the dense
            request index), ``position``, ``user_id``, ``ts``, ``group``, the id field,
            ``scorable`` and ``reason`` (why a candidate cannot be scored, else null).
        stats: counts for reports: events read/kept/dropped by reason, OOV rates.
    """

    history: Batch
    target: dict[str, Tensor]
    target_group: Tensor
    owner: Tensor
    candidates: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def _with_columns(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Adds the contract columns a frame lacks (all null), so optional fields may be left out."""
    missing = [pl.lit(None, dtype).alias(col) for col, dtype in schema.items() if col not in df]
    return df.with_columns(missing) if missing else df


class Featurizer:
    """Codes events and requests with a bundle's vocabularies (see the module docstring).

    Args:
        bundle: the loaded bundle (vocabularies, catalogue, time rule, history window).
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.vocabs = {col: v.select("value", "index") for col, v in bundle.vocabs.items()}
        users = bundle.users
        self.user_index = dict(
            zip(users[C.USER].to_list(), users[C.USER_IDX].to_list(), strict=True)
        )

    def requests(self, requests: pl.DataFrame) -> pl.DataFrame:
        """Checks and completes the request rows: dense request index, position, catalogue.

        Raises:
            ValueError: naming the column at fault (missing ``user_id``/``ts``, a
                ``request_id`` with several users or times).
        """
        for col in (C.USER, C.TS):
            if col not in requests.columns:
                raise ValueError(f"requests: column {col!r} is missing")
        keys = [REQUEST_ID] if REQUEST_ID in requests.columns else [C.USER, C.TS]
        if REQUEST_ID in requests.columns:
            per = requests.group_by(REQUEST_ID).agg(
                pl.col(C.USER).n_unique(), pl.col(C.TS).n_unique()
            )
            bad = per.filter((pl.col(C.USER) > 1) | (pl.col(C.TS) > 1))
            if bad.height:
                raise ValueError(
                    f"requests: request_id {bad[REQUEST_ID][0]!r} has several user_id or ts values"
                )
        row = pl.int_range(pl.len(), dtype=pl.Int64)
        lf = _with_columns(requests, EVENT_SCHEMA).lazy()
        lf = (
            lf.with_columns(
                row.alias(_CAND),
                pl.col(C.GROUP).fill_null("item")
                if C.GROUP not in requests.columns
                else pl.col(C.GROUP),
            )
            # requests numbered in order of first appearance
            .with_columns(
                (pl.col(_CAND).min().over(keys).rank("dense") - 1).cast(pl.Int64).alias(REQUEST_IDX)
            )
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over(REQUEST_IDX).alias(POSITION))
            # A row without a user or a time is written, flagged, never scored: it gets a user
            # no event can have and the earliest time, so it has no history.
            .with_columns(
                pl.when(pl.col(C.USER).is_null())
                .then(pl.lit("null_user_id"))
                .when(pl.col(C.TS).is_null())
                .then(pl.lit("null_ts"))
                .alias(_BAD),
                pl.col(C.USER).cast(pl.String).fill_null(_NO_USER),
                pl.col(C.TS).fill_null(0),
            )
        )
        return self._from_catalogue(lf.drop(C.ACTION)).sort(_CAND).collect()

    def _from_catalogue(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        """Fills a candidate's absent fields from the catalogue (given values win)."""
        for group, cat in self.bundle.catalogue.items():
            key, rest = cat.columns[0], cat.columns[1:]
            known = cat.lazy().rename({f: f"__cat_{f}" for f in rest})
            in_group = pl.col(C.GROUP) == group
            lf = (
                lf.with_columns(pl.col(key).cast(pl.String))
                .join(known, on=key, how="left")
                .with_columns(
                    pl.when(in_group & pl.col(f).is_null())
                    .then(pl.col(f"__cat_{f}"))
                    .otherwise(pl.col(f).cast(pl.String))
                    .alias(f)
                    for f in rest
                )
                .drop([f"__cat_{f}" for f in rest])
            )
        return lf

    def __call__(self, events: pl.DataFrame, requests: pl.DataFrame) -> Features:
        """The model inputs of ``requests``, their histories read from ``events``.

        Args:
            events: canonical events (``contract`` columns; optional fields may be absent),
                any users (only the requests' users are read).
            requests: one row per (request, candidate), see the module docstring.

        Returns:
            The :class:`Features`.
        """
        req = self.requests(requests)
        users = req.get_column(C.USER).cast(pl.String).unique().implode()
        ev_lf = (
            _with_columns(events, EVENT_SCHEMA)
            .lazy()
            .filter(pl.col(C.USER).cast(pl.String).is_in(users))
            .select(list(EVENT_SCHEMA))
        )
        ev_info = inspect_table(ev_lf, EVENTS)
        cand_lf = req.lazy().select(C.USER, C.TS, C.GROUP, *C.ID_FIELDS)
        cand_info = TableInfo(SAMPLES, dict(cand_lf.collect_schema()))
        cols = dict.fromkeys([*categorical_columns(EVENTS), *categorical_columns(SAMPLES)])
        cats = {col: pl.Categories.random() for col in cols}
        ev_all, cand = pl.collect_all(
            [compact_query(ev_lf, ev_info, cats), compact_query(cand_lf, cand_info, cats)]
        )
        ev, dropped = _kept(ev_all, ev_info)
        lookups = vocab_lookups(self.vocabs, [ev, cand])
        dense = fit_users([ev.lazy(), cand.lazy()]).collect()
        lookups[C.USER] = lookup(dense, C.USER_IDX, n_codes([ev, cand], C.USER), -1)
        coded_ev, coded = pl.collect_all(
            [
                ev.lazy().select(coded_exprs(lookups, with_action=True)).select(TIMELINE_COLUMNS),
                cand.lazy()
                .select(coded_exprs(lookups, with_action=False))
                .with_columns(req.get_column(REQUEST_IDX)),
            ]
        )
        timeline = sort_timeline(coded_ev)
        offsets = user_offsets(dense.select(C.USER_IDX, C.USER), timeline.lazy())
        per_request = (
            coded.lazy()
            .select(C.USER_IDX, C.TS, REQUEST_IDX)
            .unique(REQUEST_IDX, keep="first", maintain_order=True)
        )
        hist = attach_history(per_request, offsets, timeline.lazy()).sort(REQUEST_IDX).collect()
        history = self._history_batch(timeline, hist, dense)
        target = {f: torch.tensor(coded[f].to_numpy(), dtype=torch.long) for f in C.ID_FIELDS}
        group = torch.tensor(cand[C.GROUP_IDX].to_numpy(), dtype=torch.long)
        owner = torch.tensor(req[REQUEST_IDX].to_numpy(), dtype=torch.long)
        candidates, stats = self._report(req, cand, coded, hist, ev_all, ev, dropped)
        return Features(history, target, group, owner, candidates, stats)

    def _history_batch(
        self, timeline: pl.DataFrame, hist: pl.DataFrame, dense: pl.DataFrame
    ) -> Batch:
        """One batch row per request: its history window, as training builds it."""
        R = hist.height  # noqa: N806 (shape names)
        zeros = torch.zeros(R, dtype=torch.int32)
        # the training user index (read by encoders with user vectors; 0 for a new user)
        names = dense[C.USER].to_list()  # by dense user_idx
        train_user = [self.user_index.get(names[i], 0) for i in hist[C.USER_IDX].to_list()]
        samples = SampleTable(
            user=torch.tensor(train_user, dtype=torch.long),
            ts=torch.tensor(hist[C.TS].to_numpy()),
            group=zeros.to(torch.int8),
            fields={f: zeros for f in C.ID_FIELDS},
            hist_start=torch.tensor(hist[C.HIST_START].to_numpy()),
            hist_end=torch.tensor(hist[C.HIST_END].to_numpy()),
            labels={},
            prob={},
        )
        time = self.bundle.time
        builder = BatchBuilder(
            Timeline.from_frame(timeline), self.bundle.max_len, time.unit_seconds, time.n_buckets
        )
        return builder(samples, torch.arange(R))

    def _report(
        self,
        req: pl.DataFrame,
        cand: pl.DataFrame,
        coded: pl.DataFrame,
        hist: pl.DataFrame,
        ev_all: pl.DataFrame,
        ev: pl.DataFrame,
        dropped: dict[str, int],
    ) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The candidates' table with their flags, and the counts."""
        n_hist = (hist[C.HIST_END] - hist[C.HIST_START]).to_numpy()
        group = cand[C.GROUP_IDX].to_numpy()
        ids = np.zeros(len(group), dtype=np.int64)
        for i, (_, fields) in enumerate(C.GROUP_FIELDS.items()):
            ids = np.where(group == i, coded[fields[0]].to_numpy(), ids)
        no_history = n_hist[req[REQUEST_IDX].to_numpy()] == 0
        reason = np.full(len(group), None, dtype=object)
        reason[(ids == C.OOV_INDEX) & no_history] = "unknown_candidate_and_no_history"
        reason[ids == C.PAD_INDEX] = "no_candidate_id"
        reason[group < 0] = "unknown_group"
        bad = req.get_column(_BAD).to_numpy()
        reason = np.where(bad != None, bad, reason)  # noqa: E711 (elementwise)
        key = REQUEST_ID if REQUEST_ID in req.columns else REQUEST_IDX
        null_user = req.get_column(C.USER) == _NO_USER
        table = req.select(
            key,
            POSITION,
            pl.when(null_user).then(None).otherwise(pl.col(C.USER)).alias(C.USER),
            pl.when(pl.col(_BAD) == "null_ts").then(None).otherwise(pl.col(C.TS)).alias(C.TS),
            C.GROUP,
            *C.ID_FIELDS,
        ).with_columns(
            pl.Series("reason", reason.tolist(), dtype=pl.String),
            pl.Series("scorable", [r is None for r in reason], dtype=pl.Boolean),
        )
        unscorable = collections.Counter(r for r in reason if r is not None)
        stats = {
            "requests": hist.height,
            "candidates": req.height,
            "unscorable": sum(unscorable.values()),
            "unscorable_by_reason": dict(unscorable),
            "candidates_oov": int((ids == C.OOV_INDEX).sum()),
            "events_read": ev_all.height,
            "events_kept": ev.height,
            "events_dropped_by_reason": dropped,
            "requests_without_history": int((n_hist == 0).sum()),
        }
        return table, stats


def _kept(compact: pl.DataFrame, info: TableInfo) -> tuple[pl.DataFrame, dict[str, int]]:
    """The usable rows of compact events and how many were dropped, by reason.

    Scoring never fails on a row: a row that breaks a hard check of the preparation (which
    would stop ``atrank-prep``) is dropped and counted under that check, like the rows that
    break the skip-and-count rules.
    """
    reasons: list[tuple[str, pl.Expr]] = [
        (f"bad_{chk.column}", pl.col(f"__bad{i}")) for i, chk in enumerate(row_check_exprs(info))
    ]
    reasons += drop_rules(info)
    first = pl.lit(None, pl.String)
    for reason, bad in reversed(reasons):
        first = pl.when(bad.fill_null(False)).then(pl.lit(reason)).otherwise(first)
    marked = compact.with_columns(first.alias("__reason"))
    counts = {str(r): int(n) for r, n in marked["__reason"].drop_nulls().value_counts().rows()}
    return marked.filter(pl.col("__reason").is_null()).drop("__reason"), counts
