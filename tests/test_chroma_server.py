"""Scene memory on a real Chroma *server* (`chroma run` from the chromadb package, on
127.0.0.1), selected by the `memory.chroma_url` setting alone: import and retrieval work;
when the server goes away mid-session the chat goes on without memory and says why, the
Memory tab's calls fail with a clear error, /health reports "degraded"; when the server
is back — the same data, or a fresh server — memory reconnects without a restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.processes import free_port
from memory.errors import StoreUnavailableError
from tests.conftest import FIXTURES

CHROMA = Path(sys.executable).with_name("chroma")


class ChromaServer:
    def __init__(self, path: Path, port: int):
        self.path, self.port, self.proc = path, port, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ChromaServer":
        assert CHROMA.exists(), f"the chromadb package's CLI is missing at {CHROMA}"
        self.proc = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/v2/heartbeat", timeout=2):
                    return self
            except OSError:
                assert self.proc.poll() is None, "chroma run exited"
                time.sleep(0.2)
        raise RuntimeError("chroma run did not come up within 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def chroma(tmp_path):
    server = ChromaServer(tmp_path / "chroma-server", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def served(settings, engine, embedder, chroma):
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.chat import ChatService

    settings.memory.chroma_url = chroma.url
    journal = Journal(settings.journal_path)
    memory = SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
    svc = ChatService(settings, engine=engine, journal=journal, memory=memory)
    yield svc
    journal.close()


QUESTION = "What did I say about the hiking trip and the weather?"


def test_server_mode_survives_the_server_going_away(served, chroma, settings):
    summary = served.memory.import_paths([FIXTURES / "import" / "whatsapp_android.txt", FIXTURES / "import" / "notes.md"])
    scenes = summary.as_dict()["scenes_added"]
    assert scenes > 0 and not summary.as_dict()["errors"]
    assert not (settings.home / "chroma").exists(), "server mode must not create the embedded store"
    assert served.health()["store"] == {"reachable": True, "mode": "server", "scenes": scenes, "error": None}

    first = served.send(QUESTION, persona="me")
    assert first.sources and first.memory_error is None

    chroma.stop()  # the server goes away mid-session
    second = served.send(QUESTION, persona="me", conversation_id=first.conversation_id)
    assert second.reply and second.sources == []
    assert second.memory_error and chroma.url in second.memory_error and "Chroma server" in second.memory_error
    with pytest.raises(StoreUnavailableError, match="Chroma server"):
        served.memory.search("hiking")
    with pytest.raises(StoreUnavailableError):
        served.memory.sources()
    health = served.health()
    assert health["status"] == "degraded" and health["store"]["reachable"] is False and health["store"]["error"]
    assert [t.status for t in served.history(first.conversation_id)] == ["ok", "ok"]  # the journal is whole

    chroma.start()  # back, same data: reconnects without a restart
    third = served.send(QUESTION, persona="me", conversation_id=first.conversation_id)
    assert third.sources and third.memory_error is None
    assert served.health()["store"]["scenes"] == scenes

    chroma.stop()  # replaced by a fresh, empty server on the same address
    shutil.rmtree(chroma.path)
    chroma.start()
    fourth = served.send("Anything new?", persona="me", conversation_id=first.conversation_id)
    assert fourth.memory_error is None and fourth.sources == []
    assert served.health()["store"] == {"reachable": True, "mode": "server", "scenes": 0, "error": None}


def test_server_down_at_start_is_a_clear_error_not_a_crash(settings, engine, embedder):
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.chat import ChatService

    settings.memory.chroma_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    journal = Journal(settings.journal_path)
    svc = ChatService(settings, engine=engine, journal=journal,
                      memory=SceneMemory(settings.memory, settings.home, journal, embedder=embedder))
    turn = svc.send("Hello there, how are you?", persona="me")
    assert turn.reply and "memory unavailable" in (turn.memory_error or "")
    assert svc.health()["status"] == "degraded"
    with pytest.raises(StoreUnavailableError, match="Cannot open the scene store"):
        svc.memory.import_paths([FIXTURES / "import" / "notes.md"])
    journal.close()
