"""KV-cache snapshots per (conversation, persona adapter), on the real model and real
adapters: switching back to a persona restores its snapshot and evaluates only the new
tokens, the restored state decodes exactly what a cold prefill decodes (greedy), and no
snapshot ever serves another conversation or another adapter version. A prefix read in
ahead of the message (`prefill`, `ChatService.prepare`: a persona picked in the dropdown)
leaves the turn only its message, decodes like a cold prefill and never serves another
conversation."""

from __future__ import annotations

import numpy as np
import pytest

from personas.adapters import AdapterLibrary
from personas.catalog import GenerationParams
from personas.config import EngineConfig
from personas.engine import LlamaEngine
from personas.kvcache import Snapshot, SnapshotStore
from tuning.export import llama_dims, random_lora, write_gguf_lora

GREEDY = GenerationParams(temperature=0.0, max_tokens=12, repeat_penalty=1.0)


def convo(system: str, turns: list[str]) -> list[dict]:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return msgs


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    work = tmp_path_factory.mktemp("kv")
    engine = LlamaEngine(EngineConfig(n_ctx=2048))
    layers, dims = llama_dims(engine.llm.metadata)
    lib = AdapterLibrary(work / "adapters", engine.fingerprint)
    for seed, persona in enumerate(("poet", "logician")):
        gguf = write_gguf_lora(work / f"{persona}.gguf", random_lora(layers, dims, seed=seed), alpha=8)
        lib.activate(persona, lib.add_version(persona, gguf).version)
    engine.sync_adapters(lib)
    engine.library = lib
    yield engine
    with engine._lock:  # never under a background prefill still running
        engine.llm.close()


def cold(engine, prompt, adapter) -> str:
    """The same generation from an empty cache with no snapshots at all."""
    with engine._lock:
        engine._use_adapter(adapter)
        engine.llm.reset()
        engine._owner = None
    return engine.stream_chat(prompt, GREEDY, adapter=adapter).text()


def test_switching_back_restores_the_snapshot_and_decodes_like_a_cold_prefill(engine):
    long = "Tell me everything you know about rivers, lakes and the sea, in detail. " * 6
    poet_1 = convo("You are the Poet.", [long])
    engine.stream_chat(poet_1, GREEDY, adapter="poet", session=1).text()
    logic = convo("You are the Logician.", [long, "a reply", "Is that valid?"])
    gen = engine.stream_chat(logic, GREEDY, adapter="logician", session=1)
    gen.text()
    assert gen.timings.adapter_switched and not gen.timings.snapshot_restored
    poet_2 = convo("You are the Poet.", [long, "a reply", "Is that valid?", "another", "And the sea?"])
    back = engine.stream_chat(poet_2, GREEDY, adapter="poet", session=1)
    restored_text = back.text()
    assert back.timings.snapshot_restored
    # Only the tokens after the poet's last turn were evaluated, not the whole prompt.
    assert back.timings.prompt_eval_tokens < back.timings.prompt_tokens / 3
    assert restored_text == cold(engine, poet_2, "poet")


def test_a_snapshot_never_serves_another_conversation_or_adapter(engine):
    a = convo("You are the Poet.", ["Conversation A speaks of apples and orchards, and nothing else at all."])
    engine.stream_chat(a, GREEDY, adapter="poet", session="A").text()
    engine.stream_chat(convo("You are the Logician.", ["x"]), GREEDY, adapter="logician", session="A").text()
    assert ("A", "poet/v1", "poet") in engine.snapshots.keys()
    b = convo("You are the Poet.", ["Conversation B speaks of trains and stations, and nothing else at all."])
    gen = engine.stream_chat(b, GREEDY, adapter="poet", session="B")
    text = gen.text()
    assert not gen.timings.snapshot_restored  # B has no snapshot of its own; A's is not used
    assert text == cold(engine, b, "poet")
    # A new adapter version: the old version's snapshots are dropped and never restored.
    lib = engine.library
    layers, dims = llama_dims(engine.llm.metadata)
    gguf = write_gguf_lora(lib.root / "poet2.gguf", random_lora(layers, dims, seed=9), alpha=8)
    lib.activate("poet", lib.add_version("poet", gguf).version)
    engine.sync_adapters(lib)
    assert not any(k[1] == "poet/v1" for k in engine.snapshots.keys())
    gen = engine.stream_chat(a, GREEDY, adapter="poet", session="A")
    assert gen.text() == cold(engine, a, "poet") and not gen.timings.snapshot_restored


def test_the_store_is_a_bounded_lru():
    store = SnapshotStore(max_bytes=3000)
    snap = lambda n: Snapshot(tokens=np.zeros(0, dtype=np.intc), state=b"x" * n)  # noqa: E731
    store.put("a", snap(1000))
    store.put("b", snap(1000))
    assert store.get("a") is not None  # "a" is now the most recent
    store.put("c", snap(1500))  # over budget: the least recently used ("b") goes
    assert store.keys() == ["a", "c"] and store.bytes == 2500 and store.evictions == 1
    store.put("huge", snap(5000))  # larger than the budget: not kept, nothing evicted for it
    assert store.keys() == ["a", "c"]
    assert SnapshotStore(0).get("a") is None


# -- prefill: a persona picked in the dropdown reads the conversation in before the message --
def test_a_prefilled_prefix_leaves_only_the_message_and_decodes_like_a_cold_prefill(engine):
    from personas.prompting import Rendered

    long = "Tell me everything you know about mountains, valleys and snow, in detail. " * 6
    history = convo("You are the Logician.", [long, "a reply", "Is that valid?", "It is."])
    engine.stream_chat(convo("You are the Poet.", [long]), GREEDY, adapter="poet", session="P").text()
    done = engine.prefill(Rendered("chat", messages=history), adapter="logician", session="P")
    assert done["adapter"] == "logician/v1" and done["adapter_switched"]
    assert done["evaluated_tokens"] == done["prefix_tokens"] > 100
    assert ("P", engine.adapters["poet"].label, "poet") in engine.snapshots.keys()  # the context it left is kept
    again = engine.prefill(Rendered("chat", messages=history), adapter="logician", session="P")
    assert again["evaluated_tokens"] == 0  # already there: nothing is read twice
    turn = history + [{"role": "user", "content": "And the snow?"}]
    gen = engine.stream_chat(turn, GREEDY, adapter="logician", session="P")
    text = gen.text()
    assert not gen.timings.adapter_switched
    # The turn evaluates its message (and the template's few tokens around it) only.
    assert gen.timings.prompt_eval_tokens <= engine.count_tokens("And the snow?") + 10
    assert text == cold(engine, turn, "logician")


def test_a_prefill_never_serves_another_conversation(engine):
    from personas.prompting import Rendered

    secret = convo("You are the Poet.", ["Conversation S is about a secret garden behind the old mill.", "Yes."])
    engine.prefill(Rendered("chat", messages=secret), adapter="poet", session="S")
    other = convo("You are the Poet.", ["Conversation T is about the harbour at night.", "Yes.", "Go on."])
    gen = engine.stream_chat(other, GREEDY, adapter="poet", session="T")
    text = gen.text()
    # Only the tokens both prompts start with (the system prompt, "Conversation") may be
    # reused; everything of T's own is evaluated.
    shared = 0
    for x, y in zip(engine._prefix_tokens(Rendered("chat", messages=secret)),
                    engine._prefix_tokens(Rendered("chat", messages=other))):
        if x != y:
            break
        shared += 1
    assert 0 < gen.timings.prompt_tokens - gen.timings.prompt_eval_tokens <= shared
    assert text == cold(engine, other, "poet")


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_chat_service_prepare_matches_the_next_turns_prompt(service_factory, model):
    """Both layouts (chat template, transcript): after `prepare`, a switch to the picked
    persona evaluates only its message's part of the prompt."""
    service = service_factory(model)
    conv = service.send("Tell me about the rivers of the north, in a few lines.", persona="poet").conversation_id
    service.send("And the lakes?", persona="poet", conversation_id=conv)
    cold_switch = service.send("Is the claim valid?", persona="logician", conversation_id=conv).timings
    done = service.prepare("philosopher", conv)
    assert done["evaluated_tokens"] > 0
    turn = service.send("What is a river, really?", persona="philosopher", conversation_id=conv).timings
    assert turn["prompt_eval_tokens"] < 40 < cold_switch["prompt_eval_tokens"]
    assert service.prepare("auto", conv) is None  # the router picks from the message: nothing to read ahead


def test_a_background_prefill_gives_way_to_a_turn(engine):
    import threading
    import time

    from personas.prompting import Rendered

    long = convo("You are the Poet.", [" ".join(f"river{i}" for i in range(700)), "Yes."])
    out = {}
    worker = threading.Thread(target=lambda: out.update(engine.prefill(
        Rendered("chat", messages=long), adapter="poet", session="G", yield_to_turns=True)))
    with engine._lock:  # an empty context, so its token count shows the prefill's progress
        engine.llm.reset()
        engine._owner = None
    worker.start()
    deadline = time.monotonic() + 120
    while engine.llm.n_tokens < 2 * 64 and time.monotonic() < deadline:
        time.sleep(0.01)  # the prefill is under way
    turn = convo("You are the Logician.", ["Is this valid?"])
    gen = engine.stream_chat(turn, GREEDY, adapter="logician", session="H")
    text = gen.text()
    worker.join()
    assert out["interrupted"] and 0 < out["evaluated_tokens"] < out["prefix_tokens"]
    assert text == cold(engine, turn, "logician")


def test_the_previous_persona_is_caught_up_after_a_turn(service_factory):
    """In the app, after a turn the conversation's previous persona is brought up to date
    in the background, so switching back to it evaluates only the new message."""
    service = service_factory()
    service.catch_up = True
    conv = service.send("Tell me about the rivers of the north, in a few lines.", persona="poet").conversation_id
    service.wait_for_catch_up()
    cold_switch = service.send("Is the claim valid?", persona="logician", conversation_id=conv).timings
    service.wait_for_catch_up()  # the user reads; the poet is caught up meanwhile
    back = service.send("Back to the rivers, please.", persona="poet", conversation_id=conv).timings
    service.wait_for_catch_up()
    again = service.send("And is that valid?", persona="logician", conversation_id=conv).timings
    # The new message and the template's few tokens around it; the cold switch read more.
    count = service.engine.count_tokens
    assert back["prompt_eval_tokens"] <= count("Back to the rivers, please.") + 12 < cold_switch["prompt_eval_tokens"]
    assert again["prompt_eval_tokens"] <= count("And is that valid?") + 12
    # Without it (a one-shot CLI process), a switch back re-reads what came since.
    service.wait_for_catch_up()
    service.catch_up = False
    more = service.send("More verse, in a few lines.", persona="poet", conversation_id=conv)
    late = service.send("Valid?", persona="logician", conversation_id=conv).timings
    assert late["prompt_eval_tokens"] >= count("More verse, in a few lines.") + count(more.reply)
