"""``prepare()``: canonical events/samples -> integer-coded training files (see README.md).

The data work lives in :mod:`data_prep.passes` (one scan per input, then integer work in
memory); this module owns the API, the skip rule and the files (``meta.json`` through
:class:`data_prep.meta.PreparedMeta`). Everything is written into
a temporary directory inside ``out_dir`` and moved into place; ``meta.json`` is written
last, so a directory with a ``meta.json`` is always complete. The whole of it, from the skip
check to the publication, holds the lock of ``out_dir`` (:mod:`data_prep.locks`), so
processes preparing the same directory at once wait for one preparation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, is_dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from data_prep import contract as c
from data_prep.errors import PrepError
from data_prep.locks import clean_stale, folder_lock, temp_dir
from data_prep.meta import Counts, GroupInfo, PreparedMeta, TimeRule, file_records, read_meta
from data_prep.passes.build import (
    EV,
    SM,
    Fitted,
    build_samples,
    build_timeline,
    fit,
    kept,
    scan,
    table_stats,
)
from data_prep.passes.report import (
    event_oov_rates,
    sample_oov_rates,
    split_counts,
    table_report,
    target_oov,
    task_meta,
)
from data_prep.passes.split import SPLIT, Cut, TimeCut, check_cut, check_given
from data_prep.passes.validate import EVENTS, SAMPLES, TableInfo, drop_rules, inspect_table
from data_prep.passes.vocab import ACTION_VOCAB, CODE

__all__ = ["PrepConfig", "PrepError", "PrepResult", "fingerprint", "prepare", "up_to_date"]

TMP_PREFIX = ".prep-tmp-"  # the temporary directories inside ``out_dir``
_log = logging.getLogger(__name__)


@dataclass
class PrepConfig:
    """Settings of the preparation (all stored in ``meta.json``); checked when built.

    Not frozen, so that it can serve as a Hydra structured config; :func:`prepare` checks it
    again, in case it was changed after construction.

    Attributes:
        val_frac: share of samples (latest in time, before test) for validation.
        test_frac: share of samples (latest in time) for test.
        time_unit_seconds: unit of the time-gap buckets (used by training at batch time).
        n_time_buckets: number of time-gap buckets.
        min_count: minimum training count for a value to get its own index.
    """

    val_frac: float = 0.1
    test_frac: float = 0.1
    time_unit_seconds: int = c.DEFAULT_TIME_UNIT_SECONDS
    n_time_buckets: int = c.DEFAULT_N_TIME_BUCKETS
    min_count: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises a :class:`PrepError` naming the first invalid key."""
        for key in ("val_frac", "test_frac"):
            v = getattr(self, key)
            if not 0.0 < v < 1.0:
                raise PrepError(f"prep config: {key} must be in (0, 1), got {v}")
        if self.val_frac + self.test_frac >= 1.0:
            raise PrepError(
                f"prep config: val_frac + test_frac must be < 1 (no training data left), got "
                f"{self.val_frac} + {self.test_frac}"
            )
        if self.n_time_buckets < 2:
            raise PrepError(f"prep config: n_time_buckets must be >= 2, got {self.n_time_buckets}")
        if self.time_unit_seconds <= 0:
            raise PrepError(
                f"prep config: time_unit_seconds must be positive, got {self.time_unit_seconds}"
            )
        if self.min_count < 1:
            raise PrepError(f"prep config: min_count must be >= 1, got {self.min_count}")


@dataclass
class PrepResult:
    """What :func:`prepare` did.

    Attributes:
        out_dir: the prepared directory.
        meta: contents of ``meta.json``.
        report: contents of ``report.json``.
        skipped: True when an up-to-date preparation was found and nothing was done.
    """

    out_dir: Path
    meta: PreparedMeta
    report: dict[str, Any]
    skipped: bool


def fingerprint(config: dict[str, Any], inputs: list[Path]) -> str:
    """Identity of a preparation: its configuration plus the state of its input files.

    Args:
        config: everything that shapes the output (source settings and prep config):
            JSON values, plus paths, sets and dataclasses (canonicalised).
        inputs: input files or directories (directories: every file under them).

    Returns:
        A sha256 hex digest over a canonical JSON of the config and each input file's
        resolved path, size and ``mtime_ns``.
    """
    files: list[dict[str, Any]] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise PrepError(f"input {str(p)!r} does not exist")
        paths = sorted((f for f in p.rglob("*") if f.is_file()), key=Path.as_posix)
        for f in paths if p.is_dir() else [p]:
            st = f.stat()
            files.append(
                {"path": f.resolve().as_posix(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            )
    try:
        text = json.dumps(
            {"config": config, "inputs": files},
            sort_keys=True,
            separators=(",", ":"),
            default=_canonical,
        )
    except (TypeError, ValueError) as e:
        raise PrepError(f"fingerprint: the config is not JSON-serialisable: {e}") from e
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(obj: object) -> object:
    """JSON stand-ins for common config values, independent of hashing and set order."""
    if isinstance(obj, Path):
        return obj.as_posix()
    if isinstance(obj, (set, frozenset)):
        return sorted(json.dumps(v, sort_keys=True, default=_canonical) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(f"value {obj!r} of type {type(obj).__name__}")


def prepare(
    events: pl.LazyFrame,
    samples: pl.LazyFrame,
    out_dir: Path,
    cfg: PrepConfig,
    source: dict[str, Any],
    fingerprint: str,
    force: bool = False,
    split: str = "global_time_cut",
    extra_report: dict[str, Any] | None = None,
) -> PrepResult:
    """Prepares the training files from the canonical tables (prints nothing).

    Args:
        events: canonical events (schema.EVENT_SCHEMA).
        samples: canonical samples (schema.SAMPLE_BASE_SCHEMA + label/prob columns).
        out_dir: output directory (created when missing).
        cfg: preparation settings.
        source: free description of the data source, stored in ``meta.json``.
        fingerprint: identity of this preparation (see :func:`fingerprint`).
        force: re-run even when ``out_dir`` holds an up-to-date preparation.
        split: ``"global_time_cut"`` (``cfg.val_frac``/``test_frac``) or
            ``"leave_last_out"`` (the samples' ``contract.SPLIT_COL`` decides).
        extra_report: added to ``report.json`` as is (e.g. the source's skip counts).

    Returns:
        The :class:`PrepResult`; ``skipped`` when ``out_dir`` already had a preparation with
        the same fingerprint, schema version and config, and intact files.

    Raises:
        PrepError: naming the table, file, column or row at fault, or the lock file of
            ``out_dir`` when another process held it too long.
    """
    # (``fingerprint`` shadows the module function inside here; the API names it so.)
    cfg.validate()
    out_dir = Path(out_dir)
    with folder_lock(out_dir):  # (re-entered when called by prepare_from_config)
        if not force and (done := up_to_date(out_dir, fingerprint, cfg)) is not None:
            return done
        return _prepare(events, samples, out_dir, cfg, source, fingerprint, split, extra_report)


def _prepare(
    events: pl.LazyFrame,
    samples: pl.LazyFrame,
    out_dir: Path,
    cfg: PrepConfig,
    source: dict[str, Any],
    fp: str,
    split: str,
    extra_report: dict[str, Any] | None,
) -> PrepResult:
    """The work of :func:`prepare`, under the lock of ``out_dir``."""
    if split not in c.SPLIT_METHODS:
        raise PrepError(f"split: unknown method {split!r}; known: {list(c.SPLIT_METHODS)}")
    given = split == "leave_last_out"
    ev_info = inspect_table(events, EVENTS)
    sm_info = inspect_table(samples, SAMPLES, given_split=given)
    ev_all, sm_all = scan(events, samples, ev_info, sm_info)
    stats = table_stats(
        [(events, ev_all, ev_info), (samples, sm_all, sm_info)], cfg.val_frac, cfg.test_frac
    )
    cut: Cut = check_given(stats, SM) if given else check_cut(stats, SM)
    ev, sm = kept(ev_all, ev_info), kept(sm_all, sm_info)
    del ev_all, sm_all  # the compact inputs are the largest frames held
    fitted = fit(ev, sm, cut, cfg.min_count)
    timeline, users = build_timeline(ev, fitted)
    del ev
    samples_df = build_samples(sm, sm_info, fitted, timeline, users, cut)

    report: dict[str, Any] = {
        "events": table_report(stats, EV, [r for r, _ in drop_rules(ev_info)], ev_info),
        "samples": table_report(stats, SM, [r for r, _ in drop_rules(sm_info)], sm_info),
        "splits": split_counts(samples_df, sm_info.tasks),
        "oov_rate": {
            "samples": sample_oov_rates(samples_df),
            "events": event_oov_rates(timeline.lazy(), cut, samples_df),
        },
    }
    report["target_oov"], oov_warnings = target_oov(samples_df, sm_info.tasks)
    if extra_report:
        report |= extra_report
    report["warnings"] = [*report.get("warnings", []), *oov_warnings]
    for w in report["warnings"]:
        _log.warning(w)
    meta = _meta(cfg, source, fp, cut, fitted, samples_df, users, sm_info, report)

    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir, TMP_PREFIX)  # left by killed runs (we hold the lock)
    # Invalidate an older preparation first: from here until the new meta.json lands, the
    # directory must not look finished.
    (out_dir / c.META_FILE).unlink(missing_ok=True)
    tmp = temp_dir(out_dir, TMP_PREFIX)
    try:
        _write_files(tmp, fitted, timeline, users, samples_df)
        _write_json(tmp / c.REPORT_FILE, report)
        # (hashed from the page cache, just written: ~0.1 s per 100 MB)
        meta = replace(meta, files=file_records(tmp, _expected_files()))
        _publish(tmp, out_dir, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PrepResult(out_dir, meta, report, skipped=False)


def _expected_files() -> list[str]:
    """Every file a finished preparation holds besides ``meta.json``."""
    vocab = [f"{c.VOCAB_DIR}/{f}.parquet" for f in (*c.ID_FIELDS, ACTION_VOCAB)]
    splits = [c.samples_file(s) for s in c.SPLITS]
    return [c.TIMELINE_FILE, c.USERS_FILE, c.REPORT_FILE, *splits, *vocab]


def up_to_date(out_dir: Path, fp: str, cfg: PrepConfig) -> PrepResult | None:
    """The existing preparation when it matches and is intact, else None.

    It matches with the same fingerprint, schema version and config; it is intact when every
    file has the size and sha256 that ``meta.json`` records (hashing the directory once per
    reuse: about 1 s per GB). A damaged one is logged (a warning naming the file) and
    prepared again; one without the record (prepared by an older version) is prepared again.
    """
    try:
        meta = read_meta(out_dir)
    except PrepError:
        return None  # nothing usable there: prepare afresh
    # The config is compared too, in case the caller left it out of the fingerprint.
    if meta.fingerprint != fp or meta.prep_config != asdict(cfg):
        return None
    if sorted(meta.files) != sorted(_expected_files()):
        _log.info("%s: no record of its files (an older version's): preparing it again", out_dir)
        return None  # unverifiable: cannot be trusted
    try:
        meta.check_files(out_dir, checksums=True)
        report = json.loads((out_dir / c.REPORT_FILE).read_text(encoding="utf-8"))
    except PrepError as e:
        _log.warning("%s; preparing it again", e)
        return None
    except (OSError, json.JSONDecodeError):
        return None
    return PrepResult(out_dir, meta, report, skipped=True)


def _write_files(
    tmp: Path,
    fitted: Fitted,
    timeline: pl.DataFrame,
    users: pl.DataFrame,
    samples: pl.DataFrame,
) -> None:
    """Writes the vocabularies, timeline, users and the three sample files into ``tmp``."""
    (tmp / c.VOCAB_DIR).mkdir()
    for name, vocab in fitted.vocabs.items():
        vocab.drop(CODE).write_parquet(tmp / c.VOCAB_DIR / f"{name}.parquet")
    # zstd level 1: smaller and faster to write and read than the default level here.
    opts: dict[str, Any] = {"compression": "zstd", "compression_level": 1}
    timeline.write_parquet(tmp / c.TIMELINE_FILE, **opts)
    users.write_parquet(tmp / c.USERS_FILE, **opts)
    for i, split in enumerate(c.SPLITS):
        part = samples.filter(pl.col(SPLIT) == i).drop(SPLIT)
        part.write_parquet(tmp / c.samples_file(split), **opts)


def _meta(
    cfg: PrepConfig,
    source: dict[str, Any],
    fp: str,
    cut: Cut,
    fitted: Fitted,
    samples: pl.DataFrame,
    users: pl.DataFrame,
    sm_info: TableInfo,
    report: dict[str, Any],
) -> PreparedMeta:
    """The ``meta.json`` contents (see README.md for every key)."""
    split: dict[str, Any] = {"method": "leave_last_out", "given_by": c.SPLIT_COL}
    if isinstance(cut, TimeCut):
        split = {
            "method": "global_time_cut",
            "t_val": cut.t_val,
            "t_test": cut.t_test,
            "val_frac": cfg.val_frac,
            "test_frac": cfg.test_frac,
        }
    return PreparedMeta(
        schema_version=c.SCHEMA_VERSION,
        fingerprint=fp,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=source,
        prep_config=asdict(cfg),
        split=split,
        time=TimeRule(cfg.time_unit_seconds, cfg.n_time_buckets),
        fields=c.ID_FIELDS,
        vocab_sizes={f: fitted.vocabs[f].height + c.FIRST_INDEX for f in c.ID_FIELDS},
        actions=tuple(fitted.actions),
        groups={g: GroupInfo(i, c.GROUP_FIELDS[g]) for i, g in enumerate(c.GROUPS)},
        tasks=task_meta(samples, sm_info),
        counts=Counts(users.height, report["events"]["rows_kept"], report["splits"]),
    )


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Writes JSON atomically (temporary file + rename)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(part, path)


def _publish(tmp: Path, out_dir: Path, meta: PreparedMeta) -> None:
    """Moves every prepared file from ``tmp`` into ``out_dir``, then writes ``meta.json``."""
    for entry in sorted(tmp.iterdir()):
        dest = out_dir / entry.name
        if entry.is_dir() and dest.is_dir():
            shutil.rmtree(dest)  # a directory cannot be replaced in one rename
        os.replace(entry, dest)
    meta.write(out_dir)
