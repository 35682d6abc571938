"""Rolling back imports that a dead process left half-done, and telling them apart from
imports that are still running in another alterego process.

An import holds an exclusive `flock` on `<data root>/locks/import-<id>.lock` for as long
as it runs. The kernel drops that lock when its process dies — kill -9 included — so a
journal row still `running` whose lock can be taken belongs to a dead process: its
scenes are deleted and the row is marked `interrupted`. A row whose lock is held belongs
to a live import (the CLI importing beside the running app, or this very process) and is
left alone. A pid check could not tell a restarted container's app (same pid) from the
dead one; the lock can. Recovery runs whenever the scene store is opened, so scenes of a
killed import are never searched or retrieved, not only after the next import."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from .journal import Journal

log = logging.getLogger(__name__)


def lock_path(journal: Journal, import_id: int) -> Path:
    return journal.path.parent / "locks" / f"import-{import_id}.lock"


class ImportLock:
    """Held by the process running import `import_id`, from start to finish."""

    def __init__(self, journal: Journal, import_id: int):
        self.path = lock_path(journal, import_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        # Blocking: a recovery in another process may hold it for a moment (it found the
        # row in the instant between begin_import and here); the caller then sees the
        # row is no longer running and starts a fresh one (`still_running`).
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.still_running = import_id in journal.running_imports()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def claim(path: Path) -> int | None:
    """Take the exclusive `flock` on `path` (created if missing) without waiting: the fd
    that now holds it (until closed), or None when another open file description holds
    it, i.e. its owner is alive. Benchmarks' scratch roots use it too (bench.common)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _owner_alive(journal: Journal, import_id: int) -> tuple[bool, int | None]:
    """(alive, fd): alive when another open file description holds the lock; otherwise
    the lock is now ours, on fd, until the caller closes it."""
    path = lock_path(journal, import_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = claim(path)
    return fd is None, fd


def rollback_dead_imports(journal: Journal, store) -> list[int]:
    """Delete the scenes of every import whose process died mid-way and mark it
    `interrupted`; returns their ids. Imports running in live processes are untouched."""
    rolled = []
    for import_id in journal.running_imports():
        alive, fd = _owner_alive(journal, import_id)
        if alive:
            continue
        try:
            # Re-read under the lock: it may have finished between the listing and now.
            if import_id in journal.running_imports():
                removed = store.delete_where({"import_id": import_id})
                journal.finish_import(import_id, "interrupted", error="interrupted; rolled back")
                log.warning("rolled back interrupted import %s (%s scenes)", import_id, removed)
                rolled.append(import_id)
            lock_path(journal, import_id).unlink(missing_ok=True)
        finally:
            os.close(fd)
    return rolled
