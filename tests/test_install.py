"""The shared install script — the one `make run`, `make test` and the Dockerfile run —
in a fresh virtualenv, as the image's build stage runs it (no dev extras, not editable),
yields an app that starts and answers its health check, through `/health` and through the
`alterego health` command that the image's HEALTHCHECK runs.

Slow (a full pip install, ~2-3 min with the llama-cpp-python wheel already built by
the README's own install, which CI has done before this test runs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.appserver import start_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_install_script_in_a_fresh_venv_yields_a_healthy_app(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALTEREGO_", "VIRTUAL_ENV"))}
    env.update(VENV=str(venv), EXTRAS="", EDITABLE="0")
    out = subprocess.run(["bash", "scripts/install.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ok: llama-cpp-python 0.3.36" in out.stdout

    # The installed app is the wheel in the venv, not this checkout (no editable install).
    where = subprocess.run([str(venv / "bin/python"), "-c", "import webapp; print(webapp.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where

    home = tmp_path / "home"
    app = start_app(home, command=[str(venv / "bin/alterego"), "run"], env={"ALTEREGO_TUNING_SCHEDULER": "false"})
    try:
        health = app.health()
        assert health["status"] == "ok" and health["model"]["loaded"] and health["store"]["reachable"]
        probe = subprocess.run([str(venv / "bin/alterego"), "health"], capture_output=True, text=True, timeout=60,
                               env={**env, "ALTEREGO_HOME": str(home), "ALTEREGO_SERVER_PORT": str(app.port)})
        assert probe.returncode == 0 and '"status": "ok"' in probe.stdout.replace('":"', '": "')
    finally:
        app.stop()
    # Stopped: the same probe now fails, as Docker's HEALTHCHECK would.
    probe = subprocess.run([str(venv / "bin/alterego"), "health", "--port", str(app.port), "--timeout", "3"],
                           capture_output=True, text=True, timeout=60, env={**env, "ALTEREGO_HOME": str(home)})
    assert probe.returncode == 1 and "no answer" in probe.stderr
