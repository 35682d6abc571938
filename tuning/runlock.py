"""One training run per data root, across processes. The web app's retraining job,
`alterego scheduler` and `alterego train` may all run beside each other on the same
data; each would otherwise start its own run, and two trainings on 2 cores starve the
chat and each other. A run holds an exclusive `flock` on `<data root>/locks/training.lock`
for its whole lifetime (harvest, training subprocess, export, evaluation, promotion),
as imports do (`memory.recovery`). The kernel drops the lock when its holder dies,
kill -9 included, so a journal row still 'running' while nobody holds the lock was cut
off — unlike a pid check, this cannot be fooled by a reused pid after a restart."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import TrainingBusyError


def lock_path(home: Path) -> Path:
    return Path(home) / "locks" / "training.lock"


class TrainingLock:
    """`with TrainingLock(home):` — held for a run's lifetime; raises TrainingBusyError
    at once (never waits) when another run holds it."""

    def __init__(self, home: Path):
        self.path = lock_path(home)
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> "TrainingLock":
        if not self.acquire():
            raise TrainingBusyError(
                "Another training run is in progress on this data (in the app, `alterego scheduler` or "
                "`alterego train`); wait for it to finish or cancel it in the Tuning tab."
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def training_in_progress(home: Path) -> bool:
    """Whether some process (this one included) holds the training lock now."""
    probe = TrainingLock(home)
    if probe.acquire():
        probe.release()
        return False
    return True
