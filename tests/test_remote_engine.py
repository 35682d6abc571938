"""The OpenAI-compatible backend against a real server: llama-cpp-python's own
`python -m llama_cpp.server` on 127.0.0.1, serving the embedded base model as "smollm2"
and the same base with a real GGUF LoRA as "poet" (model-name adapter selection). Settings
alone switch ChatService to it; the persona's adapter is picked per request and answers
exactly like the in-process engine with that LoRA; a server that dies mid-session gives a
clear error and loses no turn; when it is back, chatting works again. llama.cpp's own
llama-server (adapter selection by `/lora-adapters` ids) is not available here, so only
its mapping is tested."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.processes import free_port, kill_group
from personas.catalog import GenerationParams
from personas.config import EngineConfig
from personas.engine import create_engine
from personas.errors import EngineConfigError, EngineUnavailableError, UnknownPersonaError
from personas.remote import (
    OpenAIEngine, ServerAdapter, find_lora, lora_adapters, lora_field, lora_persona, model_adapters, pick_base_model,
)
from webapp.errors import USER_ERRORS

API_KEY = "test-key"
GREEDY = GenerationParams(temperature=0.0, max_tokens=16)
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]
SHORT_POET = """name: poet
display_name: Poet
description: A short, deterministic poet for tests.
system_prompt: You are the Poet. Answer in two short lines.
generation:
  temperature: 0.0
  max_tokens: 16
"""


class LlamaCppServer:
    """`python -m llama_cpp.server --config_file ...` in its own process group."""

    def __init__(self, config: Path, port: int, log: Path):
        self.config, self.port, self.log_path = config, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--config_file", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.config.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                request = urllib.request.Request(self.url + "/models", headers={"Authorization": f"Bearer {API_KEY}"})
                with urllib.request.urlopen(request, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"llama_cpp.server did not answer in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, the way a crash or an OOM kill ends it."""
        if self.proc and self.proc.poll() is None:
            kill_group(self.proc)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, engine) -> Path:
    from tuning.export import llama_dims, random_lora, write_gguf_lora

    layers, dims = llama_dims(engine.llm.metadata)
    path = tmp_path_factory.mktemp("server_lora") / "poet.gguf"
    return write_gguf_lora(path, random_lora(layers, dims, rank=8, scale=0.08, seed=0), alpha=16)


@pytest.fixture(scope="module")
def server(tmp_path_factory, lora_file):
    from personas.models import embedded_chat_model

    work = tmp_path_factory.mktemp("llama_server")
    base = str(embedded_chat_model())
    common = {"model": base, "n_ctx": 2048, "n_batch": 256, "n_threads": 1, "n_threads_batch": 1, "verbose": False}
    port = free_port()
    config = work / "config.json"
    config.write_text(json.dumps({
        # interrupt_requests off: otherwise a request that arrives while a reply streams
        # (another user's turn) silently cuts that reply short.
        "host": "127.0.0.1", "port": port, "api_key": API_KEY, "interrupt_requests": False,
        "models": [
            {**common, "model_alias": "smollm2"},
            {**common, "model_alias": "poet", "lora_path": str(lora_file)},
        ],
    }))
    srv = LlamaCppServer(config, port, work / "server.log")
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def remote_settings(home, monkeypatch, server):
    """Settings that point the app at the server — environment variables only."""
    from webapp.settings import load_settings

    monkeypatch.setenv("ALTEREGO_ENGINE_BACKEND", "openai")
    monkeypatch.setenv("ALTEREGO_ENGINE_SERVER_URL", server.url)
    monkeypatch.setenv("ALTEREGO_ENGINE_API_KEY", API_KEY)
    (home / "personas" / "poet").mkdir(parents=True)
    (home / "personas" / "poet" / "persona.yaml").write_text(SHORT_POET)
    return load_settings()


@pytest.fixture
def remote_service(remote_settings, embedder):
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.chat import ChatService

    journal = Journal(remote_settings.journal_path)
    memory = SceneMemory(remote_settings.memory, remote_settings.home, journal, embedder=embedder)
    svc = ChatService(remote_settings, journal=journal, memory=memory)  # no engine given: settings pick it
    yield svc
    svc.journal.close()


def test_settings_alone_switch_chat_to_the_server(remote_service, server):
    update = remote_service.send("The sea at night", persona="poet")
    assert isinstance(remote_service.engine, OpenAIEngine) and remote_service.engine.server_url == server.url
    assert update.reply and update.adapter == "poet@server"
    [turn] = remote_service.history(update.conversation_id)
    assert turn.status == "ok" and turn.reply == update.reply and turn.adapter == "poet@server"
    assert turn.ttft_ms > 0 and turn.total_ms >= turn.ttft_ms and 0 < turn.tokens <= 16
    assert turn.prompt_tokens > 0  # llama_cpp.server streams no usage: counted with its tokenizer
    follow = remote_service.send("and the morning?", persona="poet", conversation_id=update.conversation_id)
    assert [t.status for t in remote_service.history(update.conversation_id)] == ["ok", "ok"] and follow.reply


def test_persona_adapter_is_selected_by_model_name_and_matches_in_process(server, engine, lora_file, tmp_path):
    from personas.adapters import AdapterLibrary

    remote = create_engine(EngineConfig(backend="openai", server_url=server.url, api_key=API_KEY))
    assert remote.model == "smollm2"  # the first listed model that is not a persona adapter
    assert remote.sync_adapters(None) == {"poet": "poet@server"}
    assert remote.fingerprint.startswith("openai-") and remote.fingerprint != engine.fingerprint
    assert remote.request_body(PROMPT, GREEDY, remote.adapter_for("poet"))["model"] == "poet"
    assert remote.request_body(PROMPT, GREEDY, remote.adapter_for("logician"))["model"] == "smollm2"
    # A rendered prompt's stops (speakers of the turn's notes) reach the server too.
    assert "stop" not in remote.request_body(PROMPT, GREEDY, None)
    assert remote.request_body(PROMPT, GREEDY, None, ["\nAnna:"])["stop"] == ["\nAnna:"]

    base = remote.stream_chat(PROMPT, GREEDY).text()
    gen = remote.stream_chat(PROMPT, GREEDY, adapter="poet")
    poet = gen.text()
    assert poet != base and gen.timings.adapter == "poet@server" and gen.timings.adapter_switched

    # The same GGUF LoRA in the in-process engine: greedy output is the same text.
    library = AdapterLibrary(tmp_path / "adapters", engine.fingerprint)
    library.activate("poet", library.add_version("poet", lora_file).version)
    engine.sync_adapters(library)
    try:
        assert engine.stream_chat(PROMPT, GREEDY, adapter="poet").text() == poet
        assert engine.stream_chat(PROMPT, GREEDY).text() == base
    finally:
        engine.sync_adapters(AdapterLibrary(tmp_path / "none", engine.fingerprint))  # unload for other tests

    # History trimming counts with the server's tokenizer, not an estimate.
    text = "Salt, light and the slow birds over the harbour at dusk."
    assert remote.count_tokens(text) == engine.count_tokens(text)
    remote.close()


def test_unknown_persona_is_refused_before_anything_is_stored(remote_service):
    with pytest.raises(UnknownPersonaError, match="Valid personas"):
        remote_service.send("hello", persona="nobody")
    assert remote_service.conversations() == []


def test_server_killed_mid_session_then_back(remote_service, server):
    first = remote_service.send("The sea at night", persona="poet")
    conversation = first.conversation_id
    server.kill()
    try:
        with pytest.raises(EngineUnavailableError) as err:
            remote_service.send("and the morning?", persona="poet", conversation_id=conversation)
        message = str(err.value)
        assert isinstance(err.value, USER_ERRORS)
        assert server.url in message and "Check that it is running" in message
        # The dead server is noticed while the prompt is measured (its tokenizer), before
        # the turn is written: the journal keeps the earlier turn, untouched.
        turns = remote_service.history(conversation)
        assert [t.status for t in turns] == ["ok"] and turns[0].reply == first.reply
    finally:
        server.start()
    again = remote_service.send("and the morning?", persona="poet", conversation_id=conversation)
    assert again.reply and again.adapter == "poet@server"
    assert [t.status for t in remote_service.history(conversation)] == ["ok", "ok"]


def test_unreachable_server_fails_before_the_turn_is_written(home, monkeypatch, embedder):
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.chat import ChatService
    from webapp.settings import load_settings

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    monkeypatch.setenv("ALTEREGO_ENGINE_BACKEND", "openai")
    monkeypatch.setenv("ALTEREGO_ENGINE_SERVER_URL", url)
    settings = load_settings()
    journal = Journal(settings.journal_path)
    memory = SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
    svc = ChatService(settings, journal=journal, memory=memory)
    with pytest.raises(EngineUnavailableError, match=f"Cannot reach the inference server at {url}.*engine.server_url"):
        svc.send("hello")
    assert svc.conversations() == []
    journal.close()


def test_wrong_api_key_and_silent_server_give_clear_errors(server):
    wrong_key = r"HTTP 401 to GET /models: Invalid API key \(check engine.api_key\)"
    with pytest.raises(EngineUnavailableError, match=wrong_key):
        create_engine(EngineConfig(backend="openai", server_url=server.url, api_key="wrong"))
    # A server that accepts the connection and never answers: the timeout, not a hang.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(EngineUnavailableError, match=r"did not answer within 1 s.*engine.request_timeout_s"):
            create_engine(EngineConfig(backend="openai", server_url=url, request_timeout_s=1))


def test_backend_settings_are_validated(home, monkeypatch):
    from webapp.chat import ChatService
    from webapp.settings import load_settings

    monkeypatch.setenv("ALTEREGO_ENGINE_BACKEND", "gpu")
    with pytest.raises(EngineConfigError, match="Unknown engine backend 'gpu'.*Valid backends: llama, openai") as err:
        ChatService(load_settings()).engine
    assert isinstance(err.value, USER_ERRORS)
    monkeypatch.setenv("ALTEREGO_ENGINE_BACKEND", "openai")
    with pytest.raises(EngineConfigError, match="needs engine.server_url"):
        create_engine(load_settings().engine)
    monkeypatch.setenv("ALTEREGO_ENGINE_SERVER_URL", "127.0.0.1:8080/v1")
    with pytest.raises(EngineConfigError, match="must start with http"):
        create_engine(load_settings().engine)


# -- llama-server style (no llama-server binary here: the mapping only) --------------------
LORAS = [
    {"id": 0, "path": "/srv/loras/poet.gguf", "scale": 0.0},
    {"id": 1, "path": "/home/u/.local/share/alterego/adapters/SmolLM2-abc/logician/v3/adapter.gguf", "scale": 0.0},
    {"id": 2, "path": "alterego-me.gguf", "scale": 0.6},
    {"id": 3, "path": "/srv/philosopher/custom-name.gguf", "scale": 0.0},
]


def test_llama_server_adapters_map_to_personas_by_file_or_folder():
    assert lora_persona("/srv/loras/poet.gguf") == "poet"
    assert lora_persona("/data/adapters/fp/logician/v3/adapter.gguf") == "logician"  # the library's layout
    assert lora_persona("C:\\loras\\Alterego-Me.gguf") == "me"
    adapters = lora_adapters(LORAS)
    assert {p: a.lora_id for p, a in adapters.items()} == {"poet": 0, "logician": 1, "me": 2, "custom-name": 3}
    assert adapters["me"].scale == 0.6 and adapters["poet"].scale == 1.0  # unapplied (0) means full strength
    # A folder on the path that names the persona also selects it.
    assert find_lora(LORAS, "philosopher").lora_id == 3 and find_lora(LORAS, "nobody") is None


def test_llama_server_request_scales_every_adapter_explicitly():
    chosen = lora_adapters(LORAS)["logician"]
    assert lora_field(LORAS, chosen) == [
        {"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}, {"id": 2, "scale": 0.0}, {"id": 3, "scale": 0.0}
    ]
    # The bare base: every adapter off, not the server's global scales.
    assert all(e["scale"] == 0.0 for e in lora_field(LORAS, None))


def test_model_listing_base_and_adapters_vllm_style():
    models = [
        {"id": "Qwen/Qwen2.5-7B-Instruct", "parent": None, "max_model_len": 32768},
        {"id": "poet", "parent": "Qwen/Qwen2.5-7B-Instruct", "root": "/adapters/poet"},
        {"id": "alterego-me", "parent": "Qwen/Qwen2.5-7B-Instruct", "root": "/adapters/me"},
    ]
    base = pick_base_model(models)
    assert base == "Qwen/Qwen2.5-7B-Instruct"
    assert model_adapters(models, base) == {
        "poet": ServerAdapter("poet", model="poet", path="/adapters/poet"),
        "me": ServerAdapter("me", model="alterego-me", path="/adapters/me"),
    }
    assert pick_base_model([{"id": "alterego-poet"}, {"id": "base"}]) == "base"
    with pytest.raises(EngineUnavailableError, match="does not serve model 'other'.*engine.server_model"):
        pick_base_model(models, "other")
