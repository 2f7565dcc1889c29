"""The model bundle: one directory with everything scoring needs, and nothing else.

Layout (``BUNDLE_VERSION`` 1)::

    bundle.json        version, model config, data shape, tasks, time rule, history window,
                       preparation fingerprint, training metrics, file checksums
    weights.pt         the model's state dict (plain tensors, read with weights_only=True)
    vocab/<col>.parquet   value -> index of every coded field and of the actions
    users.parquet      user_id -> user index (read only by encoders with user vectors)
    catalogue/item.parquet, catalogue/coupon.parquet
                       each known object's fields as seen in the prepared data (the most
                       frequent value), so a request may name a candidate by its id alone
    model.onnx         (atrank-export onnx=true) the scoring graph, for ONNX Runtime

Loading a bundle needs neither Hydra nor Lightning: :func:`load_bundle`, then
:meth:`Bundle.build_model`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from atrank.model import ATRankModel, DataShape, ModelConfig, build_model
from data_prep import contract as C
from data_prep.meta import TimeRule

BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
USERS_FILE = "users.parquet"
VOCAB_DIR = "vocab"
CATALOGUE_DIR = "catalogue"
#: The value a catalogue stores for a field that was out of vocabulary in the prepared data:
#: no vocabulary holds it, so it codes to OOV again.
OOV_VALUE = "<oov>"


class BundleError(ValueError):
    """A bundle cannot be written or read; the message names the file and the fault."""


@dataclass(frozen=True)
class BundleTask:
    """A task the bundle scores.

    Attributes:
        target: the group of the objects it scores (``item`` | ``coupon``).
        label: the data's label it learned.
    """

    target: str
    label: str


@dataclass
class Bundle:
    """A loaded bundle (see the module docstring).

    Attributes:
        root: the bundle directory.
        config: the model's settings.
        shape: the data shape the model was built for.
        tasks: ``task -> BundleTask``, in the model's head order.
        time: the time-bucket rule.
        max_len: the history window.
        fingerprint: the preparation fingerprint of the training data.
        metrics: the training run's ``metrics.json`` (empty when it was not found).
        vocabs: column -> ``value``/``index`` frame (id fields and ``action``).
        users: ``user_id``/``user_idx`` frame.
        catalogue: group -> frame of each known object's fields (raw strings).
    """

    root: Path
    config: ModelConfig
    shape: DataShape
    tasks: dict[str, BundleTask]
    time: TimeRule
    max_len: int
    fingerprint: str
    metrics: dict[str, float]
    vocabs: dict[str, pl.DataFrame]
    users: pl.DataFrame
    catalogue: dict[str, pl.DataFrame] = field(default_factory=dict)

    def build_model(self) -> ATRankModel:
        """The trained model, in eval mode, its weights loaded without unpickling code."""
        task_groups = {name: t.target for name, t in self.tasks.items()}
        model = build_model(self.config, self.shape, task_groups)
        path = self.root / WEIGHTS_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise BundleError(f"{path}: cannot load the weights ({e})") from None
        return model.eval()

    def info(self) -> dict[str, Any]:
        """What the bundle holds, for ``GET /info`` and logs."""
        return {
            "bundle_version": BUNDLE_VERSION,
            "fingerprint": self.fingerprint,
            "tasks": {n: asdict(t) for n, t in self.tasks.items()},
            "model": asdict(self.config),
            "max_len": self.max_len,
            "time": asdict(self.time),
            "vocab_sizes": dict(self.shape.vocab_sizes),
            "catalogue": {g: f.height for g, f in self.catalogue.items()},
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> dict[str, dict[str, Any]]:
    """Size and checksum of every file of a bundle but ``bundle.json``."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != BUNDLE_FILE:
            out[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    return out


def write_bundle(
    out: Path,
    state_dict: dict[str, torch.Tensor],
    config: ModelConfig,
    shape: DataShape,
    tasks: dict[str, BundleTask],
    time: TimeRule,
    max_len: int,
    fingerprint: str,
    prepared: Path,
    metrics: dict[str, float] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Writes a bundle directory (replacing one that is there).

    Args:
        out: the bundle directory.
        state_dict: the plain model's weights.
        config: the model's settings.
        shape: the data shape.
        tasks: the tasks scored.
        time: the time-bucket rule.
        max_len: the history window.
        fingerprint: the preparation fingerprint.
        prepared: the prepared-data directory (vocabularies, users, catalogue source).
        metrics: the training metrics to keep.
        extra: writes more files into the bundle's folder before their checksums are taken
            (e.g. ``model.onnx``).

    Returns:
        The bundle directory.
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / VOCAB_DIR).mkdir(parents=True)
    torch.save(
        {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp / WEIGHTS_FILE
    )
    for col in (*C.ID_FIELDS, C.ACTION):
        src = prepared / C.VOCAB_DIR / f"{col}.parquet"
        pl.read_parquet(src).select("value", "index").write_parquet(tmp / VOCAB_DIR / src.name)
    pl.read_parquet(prepared / C.USERS_FILE).select(C.USER, C.USER_IDX).write_parquet(
        tmp / USERS_FILE
    )
    (tmp / CATALOGUE_DIR).mkdir()
    for group, frame in catalogue_from_prepared(prepared).items():
        frame.write_parquet(tmp / CATALOGUE_DIR / f"{group}.parquet")
    if extra is not None:
        extra(tmp)
    doc = {
        "bundle_version": BUNDLE_VERSION,
        "schema_version": C.SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "model": asdict(config),
        "shape": {
            "vocab_sizes": shape.vocab_sizes,
            "group_fields": {g: list(f) for g, f in shape.group_fields.items()},
            "n_actions": shape.n_actions,
            "n_time_buckets": shape.n_time_buckets,
            "n_users": shape.n_users,
        },
        "tasks": {n: asdict(t) for n, t in tasks.items()},
        "time": asdict(time),
        "max_len": max_len,
        "metrics": dict(metrics or {}),
        "files": _files(tmp),
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def catalogue_from_prepared(prepared: Path) -> dict[str, pl.DataFrame]:
    """Each known object's fields, decoded to raw strings, from the prepared data.

    An object's field takes its most frequent coded value over the timeline and the
    training samples (ties: the smaller index); a field that was OOV there is stored as
    :data:`OOV_VALUE`, one that was absent as null.

    Returns:
        Group -> frame with the group's fields (the id first), one row per known id.
    """
    rows = pl.concat(
        [
            pl.scan_parquet(prepared / C.TIMELINE_FILE).select(C.GROUP_IDX, *C.ID_FIELDS),
            pl.scan_parquet(prepared / C.samples_file("train")).select(C.GROUP_IDX, *C.ID_FIELDS),
        ]
    )
    vocabs = {f: pl.read_parquet(prepared / C.VOCAB_DIR / f"{f}.parquet") for f in C.ID_FIELDS}
    out: dict[str, pl.DataFrame] = {}
    for g_idx, (group, fields) in enumerate(C.GROUP_FIELDS.items()):
        key, rest = fields[0], fields[1:]
        mine = rows.filter((pl.col(C.GROUP_IDX) == g_idx) & (pl.col(key) >= C.FIRST_INDEX))
        lazy = mine.select(key).unique()
        for f in rest:
            mode = (
                mine.group_by(key, f)
                .len()
                .sort([key, "len", f], descending=[False, True, False])
                .group_by(key, maintain_order=True)
                .first()
                .select(key, f)
            )
            lazy = lazy.join(mode, on=key, how="left")
        frame = lazy.collect().sort(key)
        decoded = [_decode(frame[f], vocabs[f]).alias(f) for f in fields]
        out[group] = pl.DataFrame(decoded)
    return out


def _decode(codes: pl.Series, vocab: pl.DataFrame) -> pl.Series:
    """Coded values back to raw strings (PAD -> null, OOV -> :data:`OOV_VALUE`)."""
    table = dict(zip(vocab["index"].to_list(), vocab["value"].to_list(), strict=True))
    table[C.OOV_INDEX] = OOV_VALUE
    return pl.Series([table.get(int(v)) if v is not None else None for v in codes], dtype=pl.String)


def load_bundle(root: Path) -> Bundle:
    """Reads a bundle directory.

    Raises:
        BundleError: naming the file when it is missing, corrupt, written by another bundle
            or schema version, or its files do not match their recorded sizes.
    """
    root = Path(root)
    path = root / BUNDLE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not found: is {root} a bundle (atrank-export)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable or corrupt ({e}): export it again") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{path}: corrupt (not a JSON object): export it again")
    version = doc.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: written with bundle version {version}, this code reads "
            f"{BUNDLE_VERSION}: export it again with this version (atrank-export)"
        )
    if doc.get("schema_version") != C.SCHEMA_VERSION:
        raise BundleError(
            f"{path}: its data has schema version {doc.get('schema_version')}, this code "
            f"reads {C.SCHEMA_VERSION}: prepare, train and export again"
        )
    try:
        for rel, rec in doc["files"].items():
            f = root / rel
            if not f.is_file() or f.stat().st_size != rec["size"]:
                raise BundleError(f"{f}: missing or not the size recorded in {path}")
        shape = doc["shape"]
        return Bundle(
            root=root,
            config=ModelConfig(**doc["model"]),
            shape=DataShape(
                vocab_sizes={k: int(v) for k, v in shape["vocab_sizes"].items()},
                group_fields={g: tuple(f) for g, f in shape["group_fields"].items()},
                n_actions=int(shape["n_actions"]),
                n_time_buckets=int(shape["n_time_buckets"]),
                n_users=int(shape["n_users"]),
            ),
            tasks={n: BundleTask(**t) for n, t in doc["tasks"].items()},
            time=TimeRule(**doc["time"]),
            max_len=int(doc["max_len"]),
            fingerprint=str(doc["fingerprint"]),
            metrics={k: float(v) for k, v in doc.get("metrics", {}).items()},
            vocabs={
                col: pl.read_parquet(root / VOCAB_DIR / f"{col}.parquet")
                for col in (*C.ID_FIELDS, C.ACTION)
            },
            users=pl.read_parquet(root / USERS_FILE),
            catalogue={
                p.stem: pl.read_parquet(p) for p in sorted((root / CATALOGUE_DIR).glob("*.parquet"))
            },
        )
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, OSError, pl.exceptions.PolarsError) as e:
        raise BundleError(f"{path}: corrupt ({type(e).__name__}: {e}): export it again") from None
