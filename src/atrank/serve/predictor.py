"""Scoring with a bundle: raw events and requests in, one probability per task out.

A request's history is encoded once (ATRank's self-attention does not depend on the
candidate) and every candidate of the request, for every task, is scored against that one
encoding (:meth:`atrank.model.ATRankModel.score`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from atrank.serve.bundle import Bundle, load_bundle
from atrank.serve.features import Features, Featurizer
from data_prep import contract as C

SCORE_PREFIX = "p_"
LOGIT_PREFIX = "logit_"


class Predictor:
    """Scores requests with a bundle's model (no Hydra, no Lightning).

    Args:
        bundle: a loaded bundle, or its directory.
        device: where the model runs.
    """

    def __init__(self, bundle: Bundle | Path | str, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        self.device = torch.device(device)
        self.model = self.bundle.build_model().to(self.device)
        self.featurizer = Featurizer(self.bundle)
        groups = list(C.GROUPS)
        self.task_group = {n: groups.index(t.target) for n, t in self.bundle.tasks.items()}

    @torch.no_grad()
    def logits(self, features: Features) -> dict[str, Tensor]:
        """``task -> (N,)`` logits of every candidate (meaningful on the task's group)."""
        history = features.history.to(self.device)
        memory, mask = self.model.encode_history(history)  # (R, T', d): once per request
        target = {f: t.to(self.device) for f, t in features.target.items()}
        out = self.model.score(memory, mask, target, features.owner.to(self.device))
        return {task: v.float().cpu() for task, v in out.logits.items()}

    def score(
        self, events: pl.DataFrame, requests: pl.DataFrame, with_logits: bool = False
    ) -> tuple[pl.DataFrame, dict[str, Any]]:
        """Scores every candidate of ``requests`` (see :mod:`atrank.serve.features`).

        Returns:
            ``(scores, stats)``: one row per candidate in input order with ``p_<task>`` (null
            where the task does not score the candidate's group, or the candidate cannot be
            scored: ``scorable`` false and ``reason``), optionally ``logit_<task>``; and the
            feature counts.
        """
        features = self.featurizer(events, requests)
        return self.table(features, self.logits(features), with_logits), features.stats

    def table(
        self, features: Features, logits: dict[str, Tensor], with_logits: bool = False
    ) -> pl.DataFrame:
        """The candidates' table with a probability (and a logit) per task."""
        scorable = torch.from_numpy(features.candidates["scorable"].to_numpy())
        cols: list[pl.Series] = []
        for task, v in logits.items():
            ok = (features.target_group == self.task_group[task]) & scorable
            p = torch.sigmoid(v)
            cols.append(_masked(f"{SCORE_PREFIX}{task}", p, ok))
            if with_logits:
                cols.append(_masked(f"{LOGIT_PREFIX}{task}", v, ok))
        return features.candidates.with_columns(cols)


def _masked(name: str, values: Tensor, ok: Tensor) -> pl.Series:
    s = pl.Series(name, values.numpy().astype("float64"))
    return pl.select(pl.when(pl.Series(ok.numpy())).then(s).otherwise(None).alias(name)).to_series()
