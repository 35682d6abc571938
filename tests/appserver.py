"""Start the real app (`alterego run`) in a subprocess on a free localhost port and wait
until it answers, for the tests that need a live server: the browser test, the
reliability suite and the install-script test. The process gets its own session (process
group) so a test can kill -9 it — and the training subprocess it may have started —
the way a crash would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import free_port, kill_group, stop_group


@dataclass
class AppProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self, timeout: float = 5.0) -> dict:
        """GET /health; returns the JSON body (also for a 503, which says what is wrong)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def kill9(self) -> None:
        """SIGKILL the whole process group: the app and any training child it started."""
        kill_group(self.proc)

    def stop(self) -> None:
        stop_group(self.proc)


def start_app(
    home: Path,
    *,
    env: dict | None = None,
    command: list[str] | None = None,
    timeout: float = 240.0,
    ready: str = "/health",
) -> AppProcess:
    """Run the app with ALTEREGO_HOME=home on a free port; return once `ready` answers
    200. Raises with the server log if it exits or does not come up in time."""
    port = free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ALTEREGO_")}
    run_env.update({"ALTEREGO_HOME": str(home), "ALTEREGO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    run_env.update(env or {})
    home.mkdir(parents=True, exist_ok=True)
    log_path = home.parent / f"app-{port}.log"
    cmd = command or [sys.executable, "-m", "webapp.cli", "run"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[1])
    app = AppProcess(proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{app.log()[-4000:]}")
        try:
            with urllib.request.urlopen(app.url + ready, timeout=5) as resp:
                if resp.status == 200:
                    return app
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    app.kill9()
    raise RuntimeError(f"the app did not answer {ready} within {timeout:.0f} s:\n{app.log()[-4000:]}")
