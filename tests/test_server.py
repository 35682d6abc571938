"""The HTTP server for real: `/health` on the same uvicorn server as the UI, the exposure
policy (loopback by default; elsewhere only with a login or an explicit, warned override),
and Gradio auth from settings — checked with real HTTP requests and gradio_client."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import subprocess
import urllib.error
import urllib.request

import pytest
from gradio_client import Client

from bench.processes import free_port
from tests.conftest import ALTEREGO, cli_env
from webapp.errors import SettingsError
from webapp.server import exposure_auth, is_loopback, parse_auth, serve
from webapp.settings import ServerConfig


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def running(settings, service, monkeypatch):
    """The real server in this process (uvicorn thread) over the shared test engine."""
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # build_server sets it; restore after
    settings.server.port = free_port()
    started = []

    def start(**server_settings):
        for key, value in server_settings.items():
            setattr(settings.server, key, value)
        server, _ = serve(settings, block=False, service=service)
        started.append(server)
        return f"http://127.0.0.1:{settings.server.port}"

    start.servers = started
    yield start
    for server in started:
        server.should_exit = True
    service.scheduler.shutdown()


def test_health_reports_model_store_and_scheduler(running, service):
    url = running()
    status, body = _get(url + "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["model"]["loaded"] and body["model"]["name"].endswith(".gguf")
    assert body["store"] == {"reachable": True, "mode": "embedded", "scenes": 0, "error": None}
    assert body["scheduler"]["enabled"] and body["scheduler"]["running"] and body["scheduler"]["next_check"]
    # The UI is served by the same server.
    with urllib.request.urlopen(url + "/", timeout=10) as resp:
        assert resp.status == 200 and b"alterego" in resp.read()


def test_auth_from_settings_guards_the_ui_but_not_health(running):
    url = running(auth="alice:s3cret:with-colon")
    assert _get(url + "/health")[0] == 200
    with pytest.raises(Exception):
        Client(url, verbose=False)  # no login: the API is closed
    client = Client(url, auth=("alice", "s3cret:with-colon"), verbose=False)
    chat, _, status = client.predict("Say hi in three words.", "me", [], api_name="/respond")
    assert chat[-1]["role"] == "assistant" and "Me" in status


async def _queue_loops_at_rest(timeout: float = 10.0) -> dict[str, list[str]]:
    """Run in the server's event loop: once no job is queued or running, what each of the
    Gradio queue's two background loops awaits (its chain of coroutines, then the future),
    as soon as both wait on an event, or as they are after `timeout`."""
    loops = {}
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if name.endswith((".start_processing", ".start_progress_updates")):
            loops[name.rsplit(".", 1)[1]] = task.get_coro()

    def chain(coro) -> list[str]:
        out = []
        while hasattr(coro, "cr_await"):
            out.append(coro.__qualname__)
            coro = coro.cr_await
        return out + [type(coro).__name__]

    queue = loops["start_processing"].cr_frame.f_locals["self"]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        waits = {name: chain(coro) for name, coro in loops.items()}
        if not len(queue) and not any(queue.active_jobs) and all("Event.wait" in c for c in waits.values()):
            break
        await asyncio.sleep(0.01)
    return waits


def test_idle_queue_waits_for_work_instead_of_polling(running):
    """Gradio's queue looks for work every millisecond and for progress every 10 ms even
    when nothing is queued: ~1,100 wake-ups a second, nearly all of an idle app's CPU. The
    served app's queue sleeps on an event until a request or a finished job wakes it: a
    turn served from idle streams as before, and afterwards both loops are back waiting
    on their events, not on a sleep."""
    url = running()
    client = Client(url, verbose=False)
    job = client.submit("Say hi in three words.", "poet", [], api_name="/respond")
    partials = list(job)
    chat, _, status = job.outputs()[-1]
    assert len(partials) >= 2 and chat[-1]["role"] == "assistant" and "**Poet** answered" in status

    loop = running.servers[-1].servers[0].get_loop()
    waits = asyncio.run_coroutine_threadsafe(_queue_loops_at_rest(), loop).result(timeout=30)
    assert set(waits) == {"start_processing", "start_progress_updates"}
    for name, chain in waits.items():
        assert "Event.wait" in chain and "sleep" not in chain, (name, chain)


def test_quiet_queue_follows_the_pinned_gradio():
    """QuietQueue replaces these two Gradio 6.31.0 loops (its dispatch step is a copy): a
    Gradio upgrade that changes either must be read and QuietQueue updated to match, and
    only then the fingerprints here."""
    from gradio.queueing import Queue

    fingerprints = {f.__name__: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16]
                    for f in (Queue.start_processing, Queue.start_progress_updates)}
    assert fingerprints == {"start_processing": "d65be5a5cbed97d7", "start_progress_updates": "7cbbec1cf932324c"}


def test_loopback_detection():
    assert all(is_loopback(h) for h in ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
    assert not any(is_loopback(h) for h in ["0.0.0.0", "::", "192.168.1.20", "example.org", ""])


def test_exposure_policy(tmp_path, capsys):
    assert exposure_auth(ServerConfig()) is None
    with pytest.raises(SettingsError, match="Refusing to serve on 0.0.0.0 without a login"):
        exposure_auth(ServerConfig(host="0.0.0.0"))
    assert exposure_auth(ServerConfig(host="0.0.0.0", auth="a:b, c:d")) == [("a", "b"), ("c", "d")]
    secrets = tmp_path / "logins"
    secrets.write_text("# users\nbob:pw one\n\n")
    assert exposure_auth(ServerConfig(host="192.168.1.5", auth_file=str(secrets))) == [("bob", "pw one")]
    assert exposure_auth(ServerConfig(host="0.0.0.0", allow_unauthenticated=True)) is None
    assert "WARNING: serving on 0.0.0.0 without a login" in capsys.readouterr().err


@pytest.mark.parametrize("auth, message", [("alice", "user:password"), (":pw", "user:password"), ("bob:", "user:password")])
def test_malformed_logins_are_errors(auth, message):
    with pytest.raises(SettingsError, match=message):
        parse_auth(ServerConfig(auth=auth))
    with pytest.raises(SettingsError, match="cannot read"):
        parse_auth(ServerConfig(auth_file="/nonexistent/alterego-logins"))


def test_cli_refuses_a_public_bind_without_login(home):
    out = subprocess.run([*ALTEREGO, "run", "--host", "0.0.0.0", "--port", str(free_port())],
                         env=cli_env(home), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Refusing to serve on 0.0.0.0 without a login" in out.stderr
    assert not (home / "journal.sqlite3").exists()  # refused before anything was opened
