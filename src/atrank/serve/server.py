"""``atrank-serve``: a LitServe HTTP server scoring a user's candidates with a bundle.

Endpoints:

* ``POST /score``: one user's recent events and candidates in, per-task scores out.
* ``GET /health``: LitServe's own: 200 ``ok`` once every worker has loaded the model.
* ``GET /info``: the bundle (:meth:`atrank.serve.bundle.Bundle.info`: tasks, model settings,
  fingerprint, ...) and the server's limits. LitServe's own info moves to ``/litserve/info``.

The request and response bodies, and the errors, are described in
:mod:`atrank.serve.schema`.

Batching: requests of several clients waiting together (up to ``max_batch_size``, for at
most ``batch_timeout`` seconds) go through one featurizer and model call, each its own
``request_id``. Bodies are validated in the HTTP process (a FastAPI dependency), before a
request is queued: LitServe's batched loop answers every request of a batch with the error
of any one of them, so a bad request must never reach a batch.
"""

# No ``from __future__ import annotations`` here: LitServe and FastAPI read the annotation of
# ``decode_request``'s argument at runtime to find the body parser (a FastAPI dependency).

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import polars as pl
import torch
from fastapi import Depends

from atrank.config import ServeConfig
from atrank.runtime import set_threads
from atrank.serve.bundle import load_bundle
from atrank.serve.features import REQUEST_ID
from atrank.serve.predictor import SCORE_PREFIX, Predictor
from atrank.serve.schema import Limits, ScoreRequest, max_body_bytes, read_score_request
from data_prep import contract as C
from data_prep.schema import EVENT_SCHEMA

SCORE_PATH = "/score"
INFO_PATH = "/info"
LITSERVE_INFO_PATH = "/litserve/info"


class ScoreAPI(ls.LitAPI):
    """The LitAPI: one :class:`~atrank.serve.predictor.Predictor` per worker, batched calls.

    Args:
        bundle: the bundle directory.
        tasks: the bundle's tasks (the default answer).
        max_batch_size: requests scored in one model call, at most.
        batch_timeout: seconds a request waits for others to fill a batch.
        threads: torch threads per worker; None = a share of the free cores.
        workers: worker processes (for the thread share).
    """

    def __init__(
        self,
        bundle: Path,
        tasks: tuple[str, ...],
        max_batch_size: int,
        batch_timeout: float,
        threads: int | None,
        workers: int,
    ) -> None:
        with warnings.catch_warnings():  # max_batch_size 1 (no batching) is a valid choice
            warnings.filterwarnings("ignore", "The LitServer has both batch and unbatch")
            super().__init__(
                max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=SCORE_PATH
            )
        self.bundle_dir = bundle
        self.tasks = tasks
        self.threads = threads
        self.workers = workers

    def setup(self, device: str) -> None:
        """Loads the bundle's model once per worker process."""
        set_threads(self.threads, num_workers=0, procs_per_node=self.workers)
        self.predictor = Predictor(self.bundle_dir, device=device)

    def decode_request(
        self, request: Annotated[ScoreRequest, Depends(read_score_request)]
    ) -> ScoreRequest:
        """The request, already validated in the HTTP process."""
        return request

    def batch(self, inputs: list[ScoreRequest]) -> list[ScoreRequest]:
        """Several clients' requests, scored together by :meth:`predict`."""
        return list(inputs)

    def predict(
        self, x: ScoreRequest | list[ScoreRequest]
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """The answers of one request (``max_batch_size`` 1) or of a batch, in order."""
        if isinstance(x, ScoreRequest):
            return self.score([x])[0]
        return self.score(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One answer per request, in batch order."""
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        """The answer is already the JSON body."""
        return output

    def score(self, requests: list[ScoreRequest]) -> list[dict[str, Any]]:
        """Scores requests, one featurizer and model call per round of distinct users.

        The featurizer reads a user's history from the events by ``user_id``, so two requests
        of one user, each with its own events, must not share a call: the k-th request of
        each user goes to round k (nearly always there is one round).
        """
        out: list[dict[str, Any]] = [{} for _ in requests]
        for members in _rounds(requests):
            answers = self._score_together([requests[i] for i in members])
            for i, answer in zip(members, answers, strict=True):
                out[i] = answer
        return out

    def _score_together(self, requests: list[ScoreRequest]) -> Iterator[dict[str, Any]]:
        """Answers of requests of distinct users, through one featurizer and model call."""
        predictor = self.predictor
        features = predictor.featurizer(_events_frame(requests), _candidates_frame(requests))
        table = predictor.table(features, predictor.logits(features))
        p = {t: table[f"{SCORE_PREFIX}{t}"].to_list() for t in self.tasks}
        scorable = table["scorable"].to_list()
        reason = table["reason"].to_list()
        window = features.history.hist_mask.sum(dim=1).tolist()  # (R,)
        owner = features.owner.tolist()  # (N,): the history row of each candidate
        oov = torch.zeros_like(features.target_group, dtype=torch.bool)
        for g, fields in enumerate(C.GROUP_FIELDS.values()):
            oov |= (features.target_group == g) & (features.target[fields[0]] == C.OOV_INDEX)
        unknown = oov.tolist()
        start = 0
        for r in requests:
            end = start + len(r.candidates)
            tasks = r.tasks or self.tasks
            yield {
                "scores": [{t: p[t][j] for t in tasks} for j in range(start, end)],
                "scorable": scorable[start:end],
                "reason": reason[start:end],
                "stats": {
                    "candidates": end - start,
                    "unscorable": end - start - sum(scorable[start:end]),
                    "unknown_candidates": sum(unknown[start:end]),
                    "events": len(r.events),
                    "history": int(window[owner[start]]),
                    "batch": len(requests),
                },
            }
            start = end


def _events_frame(requests: list[ScoreRequest]) -> pl.DataFrame:
    """The canonical events of requests of distinct users."""
    rows = [(r.user_id, e) for r in requests for e in r.events]
    cols: dict[str, list[Any]] = {C.USER: [u for u, _ in rows]}
    for col in EVENT_SCHEMA:
        if col != C.USER:
            cols[col] = [getattr(e, col) for _, e in rows]
    return pl.DataFrame(cols, schema=EVENT_SCHEMA)


def _candidates_frame(requests: list[ScoreRequest]) -> pl.DataFrame:
    """The featurizer's request rows: one per candidate, request ``i`` named ``"i"``."""
    rows = [(str(i), r, c) for i, r in enumerate(requests) for c in r.candidates]
    cols: dict[str, list[Any]] = {
        REQUEST_ID: [i for i, _, _ in rows],
        C.USER: [r.user_id for _, r, _ in rows],
        C.TS: [r.ts for _, r, _ in rows],
    }
    for col in (C.GROUP, *C.ID_FIELDS):
        cols[col] = [getattr(c, col) for _, _, c in rows]
    schema: dict[str, pl.DataType] = {REQUEST_ID: pl.String()}
    schema |= {col: EVENT_SCHEMA[col] for col in cols if col != REQUEST_ID}
    return pl.DataFrame(cols, schema=schema)


def _rounds(requests: list[ScoreRequest]) -> list[list[int]]:
    """Request indices grouped so that no group holds two requests of one user."""
    seen: dict[str, int] = {}
    rounds: list[list[int]] = []
    for i, r in enumerate(requests):
        k = seen.get(r.user_id, 0)
        seen[r.user_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    return rounds


def build_server(settings: ServeConfig) -> ls.LitServer:
    """The LitServer of ``settings`` (not started: call its ``run``).

    Raises:
        BundleError: when the bundle cannot be read (checked here, before any worker starts).
    """
    bundle = load_bundle(Path(settings.bundle))
    tasks = tuple(bundle.tasks)
    api = ScoreAPI(
        Path(settings.bundle),
        tasks,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout,
        threads=settings.threads,
        workers=settings.workers,
    )
    server = ls.LitServer(
        api,
        accelerator="cpu" if settings.device == "cpu" else "cuda",
        devices=1,
        workers_per_device=settings.workers,
        info_path=LITSERVE_INFO_PATH,
    )
    limits = Limits(
        tasks,
        settings.max_events,
        settings.max_candidates,
        max_body_bytes(settings.max_events, settings.max_candidates),
    )
    server.app.state.score_limits = limits
    info = {
        **bundle.info(),
        "server": {
            "max_batch_size": settings.max_batch_size,
            "batch_timeout": settings.batch_timeout,
            "workers": settings.workers,
            "max_events": settings.max_events,
            "max_candidates": settings.max_candidates,
            "max_body_bytes": limits.max_body_bytes,
            "device": settings.device,
        },
    }

    async def get_info() -> dict[str, Any]:
        return info

    server.app.add_api_route(INFO_PATH, get_info, methods=["GET"])
    return server
