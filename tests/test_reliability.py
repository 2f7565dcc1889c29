"""Caches shared by several processes, and prepared data that is damaged (issue 11, 3 and 4)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from atrank.data.store import SampleTable, Timeline, read_prepared
from data_prep import contract as C
from data_prep.errors import PrepError
from data_prep.locks import folder_lock, lock_path
from data_prep.meta import read_meta
from data_prep.pipeline import TMP_PREFIX, PrepConfig, PrepResult
from data_prep.run import prepare_from_config
from data_prep.sources.sim import SIMULATED

TINY = {"name": "sim", "n_users": 300, "events_per_user": 40, "n_items": 300}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}

# Each process signals it is ready, then waits for "go": the preparations start together.
_PREPARE = """
import json, sys, time
from pathlib import Path
from data_prep.pipeline import PrepConfig
from data_prep.run import prepare_from_config
cache, ready, go = map(Path, sys.argv[1:4])
ready.touch()
while not go.exists():
    time.sleep(0.002)
r = prepare_from_config(json.loads(sys.argv[4]), PrepConfig(), cache_dir=cache)
print(json.dumps({"out_dir": str(r.out_dir), "skipped": r.skipped}))
"""

# Makes a temporary folder owned by this process, prints it, then lives for argv[3] s.
_OWN_TEMP = """
import sys, time
from data_prep.locks import temp_dir
print(temp_dir(sys.argv[1], sys.argv[2]), flush=True)
time.sleep(float(sys.argv[3]))
"""

# Holds a folder's lock, says so, then keeps it for argv[2] s.
_HOLD_LOCK = """
import sys, time
from data_prep.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _prep(cache: Path, **kw: Any) -> PrepResult:
    return prepare_from_config(dict(TINY), PrepConfig(), cache_dir=cache, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> PrepResult:
    """The tiny dataset prepared once, alone."""
    return _prep(tmp_path_factory.mktemp("reference"))


def _temp_of(parent: Path, prefix: str, live_s: float) -> tuple[Path, subprocess.Popen[str]]:
    """A temporary folder made by another process, which lives for ``live_s`` seconds."""
    cmd = [sys.executable, "-c", _OWN_TEMP, str(parent), prefix, str(live_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    return Path(proc.stdout.readline().strip()), proc


def _dead_temp(parent: Path, prefix: str) -> Path:
    folder, proc = _temp_of(parent, prefix, 0)
    proc.wait(timeout=30)
    (folder / "part-00000.parquet").write_bytes(b"half")
    return folder


def _prepare_together(cache: Path, n: int) -> list[dict[str, Any]]:
    """Runs ``n`` processes that call ``prepare_from_config`` at the same moment."""
    go = cache.with_name(cache.name + ".go")
    ready = [cache.with_name(f"{cache.name}.ready{i}") for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(cache), str(r), str(go), json.dumps(TINY)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_preparations_started_together_wait_for_one(tmp_path: Path, reference: PrepResult) -> None:
    """Two processes on a fresh cache, many times: one prepares, the other reuses it."""
    for trial in range(8):
        cache = tmp_path / f"cache{trial}"
        results = _prepare_together(cache, 2)
        assert sorted(r["skipped"] for r in results) == [False, True], (trial, results)
        out_dir = Path(results[0]["out_dir"])
        assert all(Path(r["out_dir"]) == out_dir for r in results)
        # Byte-identical to a preparation made alone (meta.json records every file's sha256).
        meta = read_meta(out_dir)
        assert meta.files == reference.meta.files and meta.files
        meta.check_files(out_dir, checksums=True)
        raw = [p for p in (cache / "raw").iterdir() if p.is_dir()]  # simulated once, in place
        assert len(raw) == 1 and (raw[0] / SIMULATED).exists(), raw
        left = [*(cache / "raw").iterdir(), *out_dir.iterdir()]
        assert not [p for p in left if "tmp" in p.name], left


def test_a_lock_held_too_long_names_the_lock_file(tmp_path: Path) -> None:
    target = tmp_path / "prepared" / "sim-x"
    cmd = [sys.executable, "-c", _HOLD_LOCK, str(target), "30"]
    holder = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(PrepError) as err, folder_lock(target, timeout=0.2):
            pass
        assert str(lock_path(target)) in str(err.value)
        assert "another process" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(target), folder_lock(target, timeout=0.2):
        pass  # free once its holder is gone (even killed), and re-entrant in one process


def test_truncated_file_is_named_on_read_and_prepared_again_on_reuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _prep(tmp_path)
    damaged = first.out_dir / C.samples_file("train")
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepError) as err:
        read_prepared(first.out_dir, ["click"])
    assert str(damaged) in str(err.value)
    assert f"out_dir={first.out_dir} force=true" in str(err.value)
    # Reusing the cache notices it, says so and prepares it again, identically.
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        again = _prep(tmp_path)
    assert not again.skipped and again.out_dir == first.out_dir
    assert str(damaged) in caplog.text
    assert again.meta.files == first.meta.files
    assert _prep(tmp_path).skipped
    read_prepared(first.out_dir, ["click"])


def test_same_size_corruption_is_found_when_the_cache_is_reused(tmp_path: Path) -> None:
    first = _prep(tmp_path)
    path = first.out_dir / C.TIMELINE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # zeros, as after a power loss
    path.write_bytes(bytes(data))
    with pytest.raises(PrepError, match="sha256"):
        read_meta(first.out_dir).check_files(first.out_dir, checksums=True)
    again = _prep(tmp_path)
    assert not again.skipped and path.read_bytes() != bytes(data)


def test_timeline_of_another_preparation_is_named(tmp_path: Path) -> None:
    mine = _prep(tmp_path)
    other = prepare_from_config({**TINY, "seed": 1}, PrepConfig(), cache_dir=tmp_path)
    assert other.out_dir != mine.out_dir
    timeline = mine.out_dir / C.TIMELINE_FILE
    shutil.copyfile(other.out_dir / C.TIMELINE_FILE, timeline)
    with pytest.raises(PrepError) as err:
        read_prepared(mine.out_dir, ["click"])
    assert str(timeline) in str(err.value) and "force=true" in str(err.value)
    # Without meta.json's file record too: the rows and the histories are checked.
    with pytest.raises(PrepError, match="rows where meta.json counts"):
        Timeline.read(timeline, mine.meta)
    short = other.meta.counts.events // 2
    train = mine.out_dir / C.samples_file("train")
    with pytest.raises(PrepError, match=f"of a {short}-row timeline") as err:
        SampleTable.read(train, ["click"], mine.meta, n_timeline=short)
    assert str(train) in str(err.value)


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path: Path) -> None:
    first = _prep(tmp_path)
    out = first.out_dir
    dead = _dead_temp(out, TMP_PREFIX)
    live, proc = _temp_of(out, TMP_PREFIX, 60)
    old, fresh = out / f"{TMP_PREFIX}abc123", out / f"{TMP_PREFIX}def456"  # owner unknown
    old.mkdir()
    fresh.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    # The simulator's raw folder: a dead run's temporary folder, and one of an older version
    # that simulated in place and was interrupted (no marker).
    raw = Path(first.meta.source["raw_dir"])
    shutil.rmtree(raw)
    raw_dead = _dead_temp(raw.parent, f".{raw.name}.tmp-")
    raw_live, raw_proc = _temp_of(raw.parent, f".{raw.name}.tmp-", 60)
    (raw / "events").mkdir(parents=True)
    (raw / "events" / "part-00000.parquet").write_bytes(b"half")
    try:
        again = _prep(tmp_path, force=True)
        assert not again.skipped and again.meta.files == first.meta.files
        assert not dead.exists() and not old.exists()
        assert live.is_dir() and fresh.is_dir()
        assert not raw_dead.exists() and raw_live.is_dir() and (raw / SIMULATED).exists()
    finally:
        for p in (proc, raw_proc):
            p.kill()
            p.wait()
