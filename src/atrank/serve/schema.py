"""The JSON body of ``POST /score`` (:mod:`atrank.serve.server`): models, limits, messages.

Request body, a JSON object (a key not listed here is refused)::

    {
      "user_id": "u42",                   string: the user scored
      "ts": 1700000000,                   integer unix seconds >= 0: the moment scored
      "events": [                         the user's recent behaviours ([] for none)
        {"ts": 1699990000, "group": "item", "action": "click", "item_id": "i7",
         "category_id": "c1", "brand_id": "b2", "shop_id": "s3"},
        {"ts": 1699995000, "group": "coupon", "action": "receive", "coupon_id": "k9"}
      ],
      "candidates": [                     what to score, in this order (at least one)
        {"item_id": "i8"},
        {"group": "coupon", "coupon_id": "k9", "discount_level": "3"}
      ],
      "tasks": ["click", "coupon"]        optional: the tasks to answer (default: all)
    }

An event or candidate has a ``group`` (``item``, the default, or ``coupon``), the id field of
its group (``item_id`` / ``coupon_id``, required) and optionally the group's other fields
(item: ``category_id``, ``brand_id``, ``shop_id``; coupon: ``shop_id``, ``discount_level``);
a candidate's absent fields come from the bundle's catalogue. All ids are strings; an id the
bundle never saw is allowed (out of vocabulary, as in training). An event has an ``action``
and its ``ts`` (same rule as the request's); only events strictly before the request's ``ts``
form the history, and of those the bundle's ``max_len`` most recent.

Response (200)::

    {
      "scores": [{"click": 0.12, "purchase": 0.03, "coupon": null}, ...],
      "scorable": [true, ...],
      "reason": [null, ...],
      "stats": {"candidates": 2, "unscorable": 0, "unknown_candidates": 0,
                "events": 2, "history": 2, "batch": 3}
    }

``scores`` has one object per candidate in request order, one key per task asked; ``null``
where the task does not score the candidate's group or the candidate cannot be scored
(``scorable`` false, ``reason`` says why, e.g. ``unknown_candidate_and_no_history``).
``stats``: unknown (out-of-vocabulary) candidates, events sent, events in the history
window, and how many requests shared the model call.

Errors: ``{"detail": "<field>: <problem>"}``, e.g. ``candidates[3].item_id: expected a
string, got 7``: 400 when the body is not JSON, 422 when a field is missing, of the wrong
type or value (a NaN or negative ``ts``, an unknown task, ...), 413 when it carries more
events or candidates than the server's limits (or its body is larger than
:func:`max_body_bytes`).

Validation happens in the HTTP process (:func:`read_score_request`, a FastAPI dependency),
before a request is queued for a worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from data_prep import contract as C

MAX_TS = 253_402_300_799  # 9999-12-31T23:59:59Z: larger is no unix time (and overflows)
_SHOWN_ERRORS = 3  # the first few validation errors go into one message

Ts = Annotated[int, Field(ge=0, le=MAX_TS)]


class _Strict(BaseModel):
    """No coercion (``"5"`` is no integer, ``5`` no string) and no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Object(_Strict):
    """An object of a group: its id field required, only fields of its group."""

    group: Literal["item", "coupon"] = "item"
    item_id: str | None = None
    category_id: str | None = None
    brand_id: str | None = None
    shop_id: str | None = None
    coupon_id: str | None = None
    discount_level: str | None = None

    @model_validator(mode="after")
    def _fields_of_its_group(self) -> _Object:
        fields = C.GROUP_FIELDS[self.group]
        if getattr(self, fields[0]) is None:
            raise PydanticCustomError(
                "group_id", "required in group {group}", {"field": fields[0], "group": self.group}
            )
        for f in C.ID_FIELDS:
            if f not in fields and getattr(self, f) is not None:
                raise PydanticCustomError(
                    "group_field", "not a field of group {group}", {"field": f, "group": self.group}
                )
        return self


class Event(_Object):
    """A behaviour of the request's user (see the module docstring)."""

    ts: Ts
    action: str


class Candidate(_Object):
    """An object to score (see the module docstring)."""


class ScoreRequest(_Strict):
    """The body of ``POST /score`` (see the module docstring)."""

    user_id: str
    ts: Ts
    events: list[Event]
    candidates: list[Candidate] = Field(min_length=1)
    tasks: list[str] | None = Field(default=None, min_length=1)


@dataclass(frozen=True)
class Limits:
    """What ``POST /score`` accepts; kept in the app's state for :func:`read_score_request`.

    Attributes:
        tasks: the bundle's tasks.
        max_events: events one request may carry.
        max_candidates: candidates one request may carry.
        max_body_bytes: the largest body read.
    """

    tasks: tuple[str, ...]
    max_events: int
    max_candidates: int
    max_body_bytes: int


def max_body_bytes(max_events: int, max_candidates: int) -> int:
    """The largest body read: 1 KiB per allowed event or candidate, and 64 KiB."""
    return (max_events + max_candidates) * 1024 + 65_536


def _where(loc: tuple[int | str, ...]) -> str:
    """``("candidates", 3, "item_id")`` -> ``candidates[3].item_id``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _problem(err: ErrorDetails) -> str:
    """A short message for one pydantic error, with the value at fault."""
    ctx = err.get("ctx", {})
    kind = err["type"]
    text = {
        "missing": "missing",
        "extra_forbidden": "unknown field",
        "string_type": "expected a string",
        "int_type": "expected an integer",
        "list_type": "expected a list",
        "model_type": "expected an object",
        "dict_type": "expected an object",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "literal_error": f"expected {ctx.get('expected')}",
        "too_short": "must not be empty",
    }.get(kind, err["msg"])
    value = err.get("input")
    if kind not in ("missing", "extra_forbidden") and not isinstance(value, dict | list):
        shown = repr(value)
        text += f", got {shown[:40]}{'...' if len(shown) > 40 else ''}"
    return text


def validation_message(error: ValidationError) -> str:
    """Every error of a validation (the first few) as ``field: problem``, ``; ``-joined."""
    parts = []
    for err in error.errors():
        loc = tuple(err["loc"])
        field = err.get("ctx", {}).get("field")
        parts.append(f"{_where((*loc, field) if field else loc)}: {_problem(err)}")
    more = len(parts) - _SHOWN_ERRORS
    return "; ".join(parts[:_SHOWN_ERRORS]) + (f"; and {more} more" if more > 0 else "")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body: {declared} bytes, more than this server's {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body: more than this server's {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_request(doc: Any, limits: Limits) -> ScoreRequest:
    """Validates a parsed JSON body.

    Raises:
        HTTPException: 413 naming ``events`` or ``candidates`` when there are more than the
            limits; 422 naming the field at fault otherwise.
    """
    if isinstance(doc, dict):
        for key, most in (("events", limits.max_events), ("candidates", limits.max_candidates)):
            n = len(doc[key]) if isinstance(doc.get(key), list) else 0
            if n > most:
                raise HTTPException(413, f"{key}: {n} {key}, more than this server's {most}")
    try:
        req = ScoreRequest.model_validate(doc)
    except ValidationError as e:
        raise HTTPException(422, validation_message(e)) from None
    for i, task in enumerate(req.tasks or ()):
        if task not in limits.tasks:
            known = ", ".join(limits.tasks)
            raise HTTPException(422, f"tasks[{i}]: unknown task {task!r} (known: {known})")
    return req


async def read_score_request(request: Request) -> ScoreRequest:
    """FastAPI dependency of ``POST /score``: the body, parsed and validated.

    Raises:
        HTTPException: 400 when the body is not JSON, else as :func:`check_request`.
    """
    limits: Limits = request.app.state.score_limits
    body = await _read_body(request, limits.max_body_bytes)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPException(400, f"body: not valid JSON ({type(e).__name__}: {e})") from None
    return check_request(doc, limits)
