"""Folders that several processes share: one lock per folder, private temporary folders.

Two runs started together on one cache (two jobs, or every rank of a ``torchrun``) must
not both write a folder: each writer holds :func:`folder_lock` (a ``filelock`` lock file
``<folder>.lock`` beside the folder) from "is it done?" to "published", so the others wait
and then find the work done. The lock is the operating system's (``flock``): it is released
when its process dies, so a crash never leaves a lock behind that blocks later runs.

Work in progress goes into a temporary folder named after its owner
(``<prefix><host>-<pid>-<random>``). Under the folder's lock no other process of this code
writes there, so any such folder is left over by a killed run; :func:`clean_stale` still
removes one only when its owner is known to be dead, or nothing in it changed for
:data:`STALE_AFTER_S`, so it never deletes a live process's work.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from data_prep.errors import PrepError

__all__ = ["LOCK_TIMEOUT_S", "STALE_AFTER_S", "clean_stale", "folder_lock", "temp_dir"]

LOCK_TIMEOUT_S = 6 * 3600.0  # longer than any preparation we run; a dead holder frees it at once
STALE_AFTER_S = 24 * 3600.0  # a temporary folder untouched this long belongs to no live writer

_log = logging.getLogger(__name__)
_held: set[tuple[Path, int, int]] = set()  # (lock file, pid, thread) held now: re-entry
_HOST = socket.gethostname().replace("-", "_")  # "-" separates the name's parts


def lock_path(folder: Path) -> Path:
    """The lock file of ``folder``: ``<folder>.lock``, beside it."""
    folder = Path(folder).resolve()  # (one lock whatever the path's spelling)
    return folder.with_name(folder.name + ".lock")


@contextmanager
def folder_lock(folder: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Holds the lock of ``folder`` (waiting for another process that holds it).

    Re-entrant within a thread: a function holding it may call another that takes it too.

    Args:
        folder: the folder about to be checked and written.
        timeout: seconds to wait for another holder.

    Yields:
        The lock file.

    Raises:
        PrepError: naming the lock file when another process held it for ``timeout`` s.
    """
    path = lock_path(folder)
    key = (path, os.getpid(), threading.get_ident())  # (pid: a forked child holds nothing)
    if key in _held:  # a caller up the stack holds it (a second descriptor would block)
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log.info("waiting for %s: another process is preparing %s", path, folder)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise PrepError(
                f"{path}: another process has been preparing {folder} for more than "
                f"{timeout:.0f} s (it holds this lock until it exits); wait for it or stop it"
            ) from None
    _held.add(key)
    try:
        yield path
    finally:
        _held.discard(key)
        lock.release()


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new, private temporary folder in ``parent``, named after its owner.

    Args:
        parent: where it is made (created when missing).
        prefix: the name's start, shared by every temporary folder of the same purpose.

    Returns:
        ``parent/<prefix><host>-<pid>-<random>``.
    """
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_HOST}-{os.getpid()}-", dir=parent))


def clean_stale(parent: Path, prefix: str, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Removes the temporary folders ``parent/<prefix>*`` that no live process writes.

    Call it holding the lock of the folder they were made for.

    Args:
        parent: where the temporary folders are.
        prefix: their name's start (as given to :func:`temp_dir`).
        stale_after_s: a folder whose newest entry is older than this is stale whatever
            its name says (its owner's pid may have been reused, or it ran elsewhere).

    Returns:
        The folders removed.
    """
    if not Path(parent).is_dir():
        return []
    removed = []
    for entry in sorted(Path(parent).glob(f"{prefix}*")):
        if entry.is_dir() and _stale(entry, prefix, stale_after_s):
            shutil.rmtree(entry, ignore_errors=True)
            _log.info("removed %s, left by an interrupted run", entry)
            removed.append(entry)
    return removed


def _stale(folder: Path, prefix: str, stale_after_s: float) -> bool:
    """Whether ``folder``'s owner is dead, or nothing in it changed for ``stale_after_s``."""
    host, _, rest = folder.name[len(prefix) :].partition("-")
    pid = rest.partition("-")[0]
    here = host == _HOST and pid.isdigit()
    # Ours from an earlier failed call (we hold the lock), or its owner is dead.
    if here and (int(pid) == os.getpid() or not _alive(int(pid))):
        return True
    return time.time() - _newest_mtime(folder) > stale_after_s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _newest_mtime(folder: Path) -> float:
    """The latest modification time of ``folder`` or anything under it."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue  # removed meanwhile
    return newest
