"""What a run report is made of: sections of figures and tables.

Every analysis (curves and calibration, segments, attention, the run record) returns
:class:`Section` objects; the writers put the same sections into the run folder (PNG files and
one self-contained ``report.html``) and into Weights & Biases (images and tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """A table: column names and rows of plain values (str, int, float, None)."""

    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    """One part of the report.

    Attributes:
        key: a short, file-name-safe key (``test/click/curves``, ``attention``); PNG files are
            named ``<key with / as _>_<figure name>.png`` and W&B keys are ``<key>/<name>``.
        title: the heading shown in ``report.html``.
        figures: name -> matplotlib ``Figure`` (closed by the writers after saving).
        tables: name -> :class:`Table`.
        notes: sentences shown under the heading (e.g. why a figure was skipped).
    """

    key: str
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
