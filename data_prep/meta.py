"""``meta.json``, typed: what a prepared-data directory holds, read in one place.

Preparation writes it (:meth:`PreparedMeta.write`, last, so a directory with a ``meta.json``
is complete); training, evaluation and serving read it (:func:`read_meta`). This module
imports neither polars nor torch, so every side can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep import contract as c
from data_prep.errors import PrepError

_CHUNK = 1 << 20  # bytes hashed per read


@dataclass(frozen=True)
class GroupInfo:
    """A behaviour group of the prepared data.

    Attributes:
        index: the group index used in the coded files (position in ``contract.GROUPS``).
        fields: the fields of the group's objects; the first is the id field.
    """

    index: int
    fields: tuple[str, ...]


@dataclass(frozen=True)
class TaskInfo:
    """A label the prepared samples carry.

    Attributes:
        target_groups: the groups whose samples carry at least one label of the task.
        has_prob: whether the true probability behind the label is known (simulated data).
        label_col: the label column.
        prob_col: the probability column, or None.
    """

    target_groups: tuple[str, ...]
    has_prob: bool
    label_col: str
    prob_col: str | None = None


@dataclass(frozen=True)
class TimeRule:
    """The time-gap buckets (log2 of the gap in ``unit_seconds``), applied at batch time."""

    unit_seconds: int
    n_buckets: int


@dataclass(frozen=True)
class Counts:
    """Sizes of the prepared data.

    Attributes:
        users: rows of the user index (every user with a behaviour or a sample).
        events: behaviours kept in the timeline.
        splits: per split, ``rows`` and per task ``labelled``/``positives``.
    """

    users: int
    events: int
    splits: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileRecord:
    """A prepared file as it was written, to recognise it later.

    Attributes:
        size: bytes.
        sha256: hex digest of the contents (sha256: the fastest strong hash of ``hashlib``
            on CPUs with SHA extensions: 0.9 GB/s here, blake2b 0.45 GB/s).
    """

    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        """The record of a file as it is now."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return cls(size=path.stat().st_size, sha256=h.hexdigest())


@dataclass(frozen=True)
class PreparedMeta:
    """The contents of ``meta.json`` (see ``data_prep/README.md`` for every key).

    Attributes:
        schema_version: version of the prepared layout (``contract.SCHEMA_VERSION``).
        fingerprint: identity of the preparation (configuration plus input files).
        created: UTC time of writing, ISO 8601.
        source: free description of the data source (name, options, inputs, skip counts).
        prep_config: the preparation settings.
        split: how the samples were split (``method`` and its parameters).
        time: the time-bucket rule.
        fields: every coded field, in contract order.
        vocab_sizes: rows of each field's table (padding and OOV included).
        actions: action names by index (``<pad>``, ``<oov>``, then the known actions).
        groups: ``group -> GroupInfo``.
        tasks: ``label name -> TaskInfo``.
        counts: sizes.
        files: every other file of the directory (relative POSIX path, ``report.json``
            included) -> :class:`FileRecord`; empty in directories prepared before it was
            recorded (then nothing can be verified).
    """

    schema_version: int
    fingerprint: str
    created: str
    source: dict[str, Any]
    prep_config: dict[str, Any]
    split: dict[str, Any]
    time: TimeRule
    fields: tuple[str, ...]
    vocab_sizes: dict[str, int]
    actions: tuple[str, ...]
    groups: dict[str, GroupInfo]
    tasks: dict[str, TaskInfo]
    counts: Counts
    files: dict[str, FileRecord] = field(default_factory=dict)

    @property
    def n_actions(self) -> int:
        """Rows of the action table (padding and OOV included)."""
        return len(self.actions)

    @property
    def group_fields(self) -> dict[str, tuple[str, ...]]:
        """``group -> fields``, ordered by group index (the order the model's groups take)."""
        order = sorted(self.groups, key=lambda g: self.groups[g].index)
        return {g: self.groups[g].fields for g in order}

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``meta.json``."""
        return {
            "schema_version": self.schema_version,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "prep_config": self.prep_config,
            "split": self.split,
            "time": {"unit_seconds": self.time.unit_seconds, "n_buckets": self.time.n_buckets},
            "fields": list(self.fields),
            "vocab_sizes": dict(self.vocab_sizes),
            "actions": list(self.actions),
            "n_actions": self.n_actions,
            "groups": {
                g: {"index": i.index, "fields": list(i.fields)} for g, i in self.groups.items()
            },
            "tasks": {
                t: {
                    "target_groups": list(i.target_groups),
                    "has_prob": i.has_prob,
                    "label_col": i.label_col,
                    "prob_col": i.prob_col,
                }
                for t, i in self.tasks.items()
            },
            "counts": {
                "users": self.counts.users,
                "events": self.counts.events,
                "splits": self.counts.splits,
            },
            "files": {n: {"size": r.size, "sha256": r.sha256} for n, r in self.files.items()},
        }

    @classmethod
    def from_json(cls, obj: object, where: str = c.META_FILE) -> PreparedMeta:
        """Parses a ``meta.json`` object.

        Args:
            obj: the decoded JSON.
            where: the file, for messages.

        Raises:
            PrepError: naming the file and the key that is missing or malformed, or the schema
                version when it is not this code's.
        """
        d = _obj(obj, where, "")
        version = d.get("schema_version")
        if version != c.SCHEMA_VERSION:
            raise PrepError(
                f"{where}: prepared with schema version {version}, this code reads "
                f"{c.SCHEMA_VERSION}: re-run atrank-prep"
            )
        try:
            time = _obj(d["time"], where, "time")
            counts = _obj(d["counts"], where, "counts")
            groups = _obj(d["groups"], where, "groups")
            tasks = _obj(d["tasks"], where, "tasks")
            return cls(
                schema_version=int(version),
                fingerprint=str(d["fingerprint"]),
                created=str(d.get("created", "")),
                source=_obj(d.get("source", {}), where, "source"),
                prep_config=_obj(d.get("prep_config", {}), where, "prep_config"),
                split=_obj(d.get("split", {}), where, "split"),
                time=TimeRule(int(time["unit_seconds"]), int(time["n_buckets"])),
                fields=tuple(str(f) for f in d["fields"]),
                vocab_sizes={
                    str(k): int(v) for k, v in _obj(d["vocab_sizes"], where, "vocab_sizes").items()
                },
                actions=tuple(str(a) for a in d["actions"]),
                groups={
                    str(g): GroupInfo(int(i["index"]), tuple(str(f) for f in i["fields"]))
                    for g, i in groups.items()
                },
                tasks={
                    str(t): TaskInfo(
                        target_groups=tuple(str(g) for g in i["target_groups"]),
                        has_prob=bool(i["has_prob"]),
                        label_col=str(i["label_col"]),
                        prob_col=None if i.get("prob_col") is None else str(i["prob_col"]),
                    )
                    for t, i in tasks.items()
                },
                counts=Counts(
                    users=int(counts["users"]),
                    events=int(counts["events"]),
                    splits=_obj(counts.get("splits", {}), where, "counts.splits"),
                ),
                files={
                    str(n): FileRecord(int(r["size"]), str(r["sha256"]))
                    for n, r in _obj(d.get("files", {}), where, "files").items()
                },
            )
        except KeyError as e:
            raise PrepError(
                f"{where}: corrupt, key {e.args[0]!r} missing: re-run atrank-prep"
            ) from None
        except (TypeError, ValueError, AttributeError) as e:
            raise PrepError(f"{where}: corrupt ({e}): re-run atrank-prep") from None

    def check_files(self, out_dir: Path, checksums: bool = False) -> None:
        """Checks that the directory's files are the ones this preparation wrote.

        Sizes cost one ``stat`` per file (done on every read); ``checksums`` also hashes
        every file (done once per reuse of a preparation, see ``pipeline.up_to_date``).

        Args:
            out_dir: the prepared directory.
            checksums: compare the sha256 of every file too.

        Raises:
            PrepError: naming the first missing, resized or altered file and how to repair it.
        """
        for name, rec in self.files.items():
            path = Path(out_dir) / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise damaged(out_dir, name, self, "missing") from None
            if size != rec.size:
                why = f"{size} bytes where {c.META_FILE} records {rec.size}"
                raise damaged(out_dir, name, self, why)
            if checksums and FileRecord.of(path).sha256 != rec.sha256:
                why = f"its contents differ from the sha256 in {c.META_FILE}"
                raise damaged(out_dir, name, self, why)

    def write(self, out_dir: Path) -> Path:
        """Writes ``out_dir/meta.json`` atomically (temporary file, then rename).

        Returns:
            The path written.
        """
        path = Path(out_dir) / c.META_FILE
        part = path.with_name(path.name + ".part")
        part.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(part, path)
        return path


def file_records(out_dir: Path, names: Iterable[str]) -> dict[str, FileRecord]:
    """The :class:`FileRecord` of each named file of ``out_dir``, by name."""
    return {n: FileRecord.of(Path(out_dir) / n) for n in names}


def damaged(root: Path, name: str, meta: PreparedMeta | None, why: str) -> PrepError:
    """The error for a damaged prepared file: names it and the command that repairs it.

    Args:
        root: the prepared directory.
        name: the file, relative to ``root``.
        meta: the directory's metadata (for the dataset's name), when readable.
        why: what is wrong with the file.
    """
    dataset = meta.source.get("name") if meta is not None else None
    settings = f"dataset={dataset} <its other settings> " if dataset else "<its settings> "
    return PrepError(
        f"{Path(root) / name}: damaged or from another preparation ({why}); repair it with "
        f"`atrank-prep {settings}out_dir={root} force=true`, or delete {root} if it is a "
        "cache folder (the next run prepares it again)"
    )


def _obj(value: object, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        name = f"key {key!r}" if key else "the file"
        raise PrepError(f"{where}: corrupt ({name} is not a JSON object): re-run atrank-prep")
    return value


def read_meta(out_dir: Path) -> PreparedMeta:
    """Reads a prepared directory's ``meta.json``.

    Args:
        out_dir: the prepared directory.

    Returns:
        The typed metadata.

    Raises:
        PrepError: naming the file when it is missing, unreadable, corrupt, or written with
            another schema version.
    """
    path = Path(out_dir) / c.META_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PrepError(f"{path}: not found: run atrank-prep first") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrepError(f"{path}: unreadable or corrupt ({e}): re-run atrank-prep") from e
    return PreparedMeta.from_json(obj, str(path))
