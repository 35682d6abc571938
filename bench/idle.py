"""Idle benchmark: what the running app costs while nobody uses it.

Starts `alterego run` (default settings, a scratch data root, the retraining job on) and,
as the baseline, a bare uvicorn serving a minimal FastAPI + Gradio Blocks app with one
textbox — the floor any Gradio app pays — side by side. Once both answer /health and
their start-up work has died down, it measures the CPU time each uses (all threads and
waited-for children, as % of one core) over the same window: first with no client, then,
when playwright and Debian's chromium are installed (the dev extras), with one headless
page open on each. Nothing is asked of either app during the windows. The details add how
often each one's event loop woke up per second with no client.

Usage: .venv/bin/python -m bench.idle [--json] [--quick]
Writes $ALTEREGO_HOME/bench/idle.json.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import Progress, Workspace, figure, no_progress, run_suite, suite_main
from bench.processes import free_port, stop_group

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
SETTLED = 10.0  # % of a core: start-up (model, embedder, page load) is over below this

# The baseline: the least a Gradio app mounted on FastAPI and served by uvicorn can be.
BARE_APP = """
import sys
import fastapi, gradio as gr, uvicorn
with gr.Blocks(title="bare") as blocks:
    gr.Textbox(label="message", elem_id="message")
blocks.queue()
app = fastapi.FastAPI()
app.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
app = gr.mount_gradio_app(app, blocks, path="")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


class Served:
    """One server subprocess in its own process group, its log in `folder`."""

    def __init__(self, name: str, cmd: list[str], env: dict, folder: Path, port: int):
        self.name, self.port = name, port
        self.log = folder / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def cpu_s(self) -> float:
        """CPU seconds so far: every thread, and children it has waited for."""
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def loop_wakeups(self) -> int:
        """Voluntary context switches of the main thread, where both servers run their
        event loop: each is one wake-up of that loop."""
        import psutil

        return psutil.Process(self.proc.pid).num_ctx_switches().voluntary

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(self.url + "health", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        stop_group(self.proc)


def cpu_percent(servers: list[Served], seconds: float) -> list[float]:
    """Each server's CPU over the same window, in % of one core."""
    before, t0 = [s.cpu_s() for s in servers], time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return [100 * (s.cpu_s() - b) / wall for s, b in zip(servers, before)]


def settle(servers: list[Served], timeout: float = 120.0) -> None:
    """Wait until every server has used under SETTLED % of a core for two seconds running."""
    calm, deadline = 0, time.monotonic() + timeout
    while calm < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the servers did not settle below {SETTLED:.0f}% of a core in {timeout:.0f} s")
        calm = calm + 1 if max(cpu_percent(servers, 1.0)) < SETTLED else 0


def page_support() -> str | None:
    """Why no page can be opened, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (dev extras)"
    return None if CHROMIUM.exists() else f"{CHROMIUM} is missing"


def _run(ws: Workspace, quick: bool) -> dict:
    window = 10.0 if quick else 60.0
    folder = ws.settings("idle").home
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTEREGO_") or k == "ALTEREGO_MODEL_CACHE"}
    env.update(PYTHONUNBUFFERED="1", GRADIO_TEMP_DIR=str(folder / "bare-uploads"))
    app_port, bare_port = free_port(), free_port()
    app_env = {**env, "ALTEREGO_HOME": str(folder / "home"), "ALTEREGO_SERVER_PORT": str(app_port)}
    ws.progress("idle: starting alterego and a bare Gradio app")
    servers = [
        Served("alterego", [sys.executable, "-m", "webapp.cli", "run"], app_env, folder, app_port),
        Served("bare", [sys.executable, "-c", BARE_APP, str(bare_port)], env, folder, bare_port),
    ]
    details: dict = {"window_s": window, "cpu_cores": os.cpu_count()}
    try:
        deadline = time.monotonic() + 240
        while not all(s.healthy() for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the servers did not answer /health within 240 s")
            time.sleep(0.5)
        settle(servers)
        ws.progress(f"idle: {window:.0f} s with no client")
        wakeups = [s.loop_wakeups() for s in servers]
        app, bare = cpu_percent(servers, window)
        details["event_loop_wakeups_per_s"] = {
            s.name: round((s.loop_wakeups() - w) / window, 1) for s, w in zip(servers, wakeups)}
        figures = {
            "idle_cpu": figure(
                "idle: app CPU with no client", app, "% of a core",
                "a bare Gradio Blocks app (one textbox) on FastAPI + uvicorn, same window", bare,
                better="lower", label="alterego run", baseline_label="bare Gradio app"),
        }
        why_not = page_support()
        if why_not:
            details["page"] = f"not measured: {why_not}"
        else:
            ws.progress(f"idle: {window:.0f} s with one headless page open on each")
            app, bare = with_pages(servers, window)
            details["page"] = "measured"
            figures["idle_cpu_page"] = figure(
                "idle: app CPU with one page open", app, "% of a core",
                "a bare Gradio Blocks app (one textbox) with one page open, same window", bare,
                better="lower", label="alterego run", baseline_label="bare Gradio app")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return {"figures": figures, "details": details}


def with_pages(servers: list[Served], window: float) -> list[float]:
    """Open one headless page on each server, let it load, and measure the window."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for s in servers:
                page = browser.new_page()
                page.goto(s.url, wait_until="load", timeout=120_000)
                page.wait_for_selector("#message", timeout=120_000)
            settle(servers)
            return cpu_percent(servers, window)
        finally:
            browser.close()


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("idle", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
