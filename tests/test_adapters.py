"""Persona adapters on the real model: a real GGUF LoRA (written with `gguf`) changes
the output; hot-swap A→B→A equals a fresh engine with that adapter; corrupt and
mismatched files are survived; the library's versions, active pointer and rollback."""

import json

import pytest

from personas.adapters import AdapterError, AdapterLibrary
from personas.catalog import GenerationParams
from personas.config import EngineConfig
from personas.engine import LlamaEngine
from tuning.export import llama_dims, random_lora, write_gguf_lora

GREEDY = GenerationParams(temperature=0.0, max_tokens=24)
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture
def library(tmp_path, engine):
    layers, dims = llama_dims(engine.llm.metadata)
    lib = AdapterLibrary(tmp_path / "adapters", engine.fingerprint)
    for seed, persona in enumerate(["poet", "logician"]):
        gguf = write_gguf_lora(tmp_path / f"{persona}.gguf", random_lora(layers, dims, rank=8, scale=0.08, seed=seed), alpha=16)
        version = lib.add_version(persona, gguf, {"data": {"pairs": 0}, "eval": {"candidate_loss": 1.0}})
        lib.activate(persona, version.version)
    return lib


@pytest.fixture
def fresh_engine():
    eng = LlamaEngine(EngineConfig())
    yield eng


def test_adapter_changes_output_and_swap_is_consistent(engine, library):
    engine.sync_adapters(library)
    assert set(engine.adapters) == {"poet", "logician"}
    base = engine.stream_chat(PROMPT, GREEDY).text()
    poet = engine.stream_chat(PROMPT, GREEDY, adapter="poet").text()
    logician = engine.stream_chat(PROMPT, GREEDY, adapter="logician").text()
    gen = engine.stream_chat(PROMPT, GREEDY, adapter="poet")
    poet_again = gen.text()
    assert poet != base and logician != poet
    assert poet_again == poet  # A -> B -> A: the stale KV cache of B was not reused
    assert gen.timings.adapter == "poet/v1" and gen.timings.adapter_switched
    assert engine.stream_chat(PROMPT, GREEDY).text() == base  # back to the bare base


def test_swap_equals_a_fresh_engine_with_that_adapter(engine, library, fresh_engine):
    engine.sync_adapters(library)
    engine.stream_chat(PROMPT, GREEDY, adapter="logician").text()
    swapped = engine.stream_chat(PROMPT, GREEDY, adapter="poet").text()
    fresh_engine.sync_adapters(library)
    assert fresh_engine.stream_chat(PROMPT, GREEDY, adapter="poet").text() == swapped


def test_same_adapter_keeps_the_cache(engine, library):
    engine.sync_adapters(library)
    engine.stream_chat(PROMPT, GREEDY, adapter="poet").text()
    follow = PROMPT + [{"role": "assistant", "content": "waves"}, {"role": "user", "content": "more"}]
    gen = engine.stream_chat(follow, GREEDY, adapter="poet")
    gen.text()
    assert not gen.timings.adapter_switched
    assert gen.timings.prompt_eval_tokens < gen.timings.prompt_tokens / 2


@pytest.mark.parametrize(
    "content, message",
    [
        (b"GGUF" + b"\0" * 64, "corrupt"),
        (b"not a gguf at all", "not a GGUF"),
    ],
)
def test_corrupt_adapter_is_survived(engine, library, tmp_path, content, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    v = library.add_version("philosopher", bad)
    library.activate("philosopher", v.version)
    loaded = engine.sync_adapters(library)
    assert "philosopher" not in loaded and message in engine.adapter_errors["philosopher"]
    # the persona answers prompt-only, the others keep their adapters
    assert engine.stream_chat(PROMPT, GREEDY, adapter="philosopher").text()
    gen = engine.stream_chat(PROMPT, GREEDY, adapter="poet")
    gen.text()
    assert gen.timings.adapter == "poet/v1"


def test_mismatched_adapter_is_rejected(engine, library, tmp_path):
    layers, _ = llama_dims(engine.llm.metadata)
    wrong = write_gguf_lora(tmp_path / "wrong.gguf", random_lora(layers, {"attn_q": (100, 100)}, rank=4), alpha=8)
    v = library.add_version("philosopher", wrong)
    library.activate("philosopher", v.version)
    engine.sync_adapters(library)
    assert "does not fit" in engine.adapter_errors["philosopher"]
    other_arch = tmp_path / "gemma.gguf"
    write_gguf_lora(other_arch, random_lora(1, {"attn_q": (4, 4)}, rank=2), alpha=2, architecture="gemma")
    with pytest.raises(AdapterError, match="for a gemma model"):
        engine.load_adapter(library.add_version("me", other_arch))


def test_library_versions_activation_and_rollback(library, tmp_path, engine):
    layers, dims = llama_dims(engine.llm.metadata)
    v2 = library.add_version("poet", write_gguf_lora(tmp_path / "p2.gguf", random_lora(layers, dims, seed=9), alpha=16))
    assert v2.version == 2 and library.active("poet").version == 1  # added, not yet active
    library.activate("poet", 2)
    assert library.active("poet").version == 2
    engine.sync_adapters(library)
    assert engine.adapters["poet"].version == 2  # a promoted version is hot-loaded
    assert library.rollback("poet").version == 1
    assert engine.sync_adapters(library)["poet"] == "poet/v1"
    rows = library.listing()
    assert {(r["persona"], r["version"], r["active"]) for r in rows} >= {("poet", 1, True), ("poet", 2, False)}
    assert json.loads((library.persona_dir("poet") / "v1" / "meta.json").read_text())["eval"]["candidate_loss"] == 1.0
    with pytest.raises(AdapterError):
        library.rollback("logician")  # only one version


def test_other_base_fingerprint_means_prompt_only(engine, library, tmp_path):
    other = AdapterLibrary(library.root, "some-other-base-123")
    assert engine.sync_adapters(other) == {}
    engine.sync_adapters(library)  # leave the shared engine as other tests expect


def _install(lib: AdapterLibrary, engine, tmp_path, persona: str, seed: int) -> int:
    layers, dims = llama_dims(engine.llm.metadata)
    gguf = write_gguf_lora(tmp_path / f"{persona}-{seed}.gguf", random_lora(layers, dims, scale=0.08, seed=seed), alpha=16)
    version = lib.add_version(persona, gguf)
    lib.activate(persona, version.version)
    return version.version


def test_chat_turns_use_and_hot_load_adapters(service, engine, tmp_path):
    lib = service.adapters
    assert lib.fingerprint == engine.fingerprint and lib.root == service.settings.adapters_path
    _install(lib, engine, tmp_path, "poet", seed=1)
    first = service.send("Compose a haiku about my cat", persona="auto")
    assert (first.persona, first.adapter) == ("poet", "poet/v1")
    assert service.journal.get_turn(first.turn_id).adapter == "poet/v1"
    # a newly promoted version is used on the next turn, without a restart
    _install(lib, engine, tmp_path, "poet", seed=2)
    second = service.send("another haiku, about rain", persona="poet", conversation_id=first.conversation_id)
    assert second.adapter == "poet/v2"
    # personas without an adapter answer prompt-only
    assert service.send("hello", persona="me").adapter == ""


def test_cli_auto_mode_with_adapters(tmp_path, engine):
    import subprocess

    from conftest import ALTEREGO, ROOT, cli_env

    lib = AdapterLibrary(tmp_path / "adapters", engine.fingerprint)
    _install(lib, engine, tmp_path, "poet", seed=1)
    _install(lib, engine, tmp_path, "logician", seed=2)
    run = lambda *a: subprocess.run([*ALTEREGO, *a], cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)  # noqa: E731
    rows = json.loads(run("adapters", "--json").stdout)
    assert {(r["persona"], r["version"], r["active"]) for r in rows} == {("poet", 1, True), ("logician", 1, True)}
    assert all(r["base_fingerprint"] == engine.fingerprint for r in rows)
    for message, persona in [("Compose a haiku about my cat", "poet"),
                             ("Prove that the square root of 2 is irrational", "logician")]:
        proc = run("chat", "--json", "--persona", "auto", message)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["persona"] == persona and out["adapter"] == f"{persona}/v1" and out["route"]["reason"]
