"""Server subprocesses that run in a process group of their own (`start_new_session`),
so that stopping one also stops any child it started (a training run): a free localhost
port to start one on, and a stop that asks first (SIGTERM) and forces (SIGKILL) when
asking does not do. The idle benchmark starts servers this way, and so do the tests'
live app servers (`tests/appserver.py`): tests may import bench, bench never imports
tests, so the one copy lives here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A localhost port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_group(proc: subprocess.Popen, wait: float = 30.0) -> None:
    """SIGKILL the process's whole group (the way a crash would end it) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=wait)


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process's group and wait up to `grace` seconds for it to shut down
    cleanly; past that, or when the group is gone, SIGKILL it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        kill_group(proc)
