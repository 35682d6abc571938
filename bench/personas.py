"""Persona benchmark on the embedded defaults: adapter hot-swap and the router.

Measures, in one run:
  - chat turns that switch persona (and adapter) vs a turn that stays with the same
    persona (time to first token through ChatService, same conversation): the first switch
    to a persona in a conversation, and a switch back to one already used there (its KV
    snapshot restored, and brought up to date in the background after the turn before,
    while the user reads — waited for here) — also next to the same switch-back turns
    without snapshots (and so without catch-up);
  - switching adapters in the running engine (`llama_set_adapters_lora` + cache reset)
    vs reloading the model from disk;
  - the same switches made the UI's way, the persona picked in the dropdown before the
    message is typed (`ChatService.prepare` reads the conversation into the model under
    it then), vs a same-persona turn; how long the preparing takes is a detail;
  - decode tokens/s with an adapter vs the bare base;
  - router cost per message (scoring with the retrieval embedding reused) next to the
    time to first token of a turn;
  - reading a prompt (the first switch's 315 tokens, the bare base) and decoding with the
    default model as served (Q8_0, re-encoded) vs as shipped (Q4_1): why it is re-encoded.
Adapters are random GGUF LoRAs of rank 16 on q/k/v/o (written with `tuning.export`):
their cost does not depend on what they learned, but on their shape, and trained adapters
are now larger (rank 32, MLP too: `tuning.config`), so these figures are a lower bound.

Usage: .venv/bin/python -m bench.personas [--json] [--quick]
Writes $ALTEREGO_HOME/bench/personas.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, median, no_progress, run_suite, suite_main

ROUTED = ["Write me a poem about the sea", "Is this syllogism valid?", "what did I do on Sunday?",
          "What is a good life?", "ok", "Prove that there are infinitely many primes"]


def _run(ws: Workspace, quick: bool) -> dict:
    from personas.catalog import GenerationParams
    from personas.engine import LlamaEngine
    from tuning.export import llama_dims, random_lora, write_gguf_lora

    runs = 1 if quick else 6
    service = ws.service("personas", max_tokens=16 if quick else 32)
    service.catch_up = True  # as the app server runs it
    engine = service.engine
    home = service.settings.home
    layers, dims = llama_dims(engine.llm.metadata)
    for seed, persona in enumerate(["poet", "logician"]):
        gguf = write_gguf_lora(home / f"{persona}.gguf", random_lora(layers, dims, rank=16, scale=0.02, seed=seed), alpha=16)
        service.adapters.activate(persona, service.adapters.add_version(persona, gguf).version)
    service.refresh_adapters()

    # 1. Turns that switch persona (and adapter) vs turns that stay, same conversation:
    # the first switch to a persona in a conversation (a full prefill under its adapter),
    # and a switch back to one already used there (its KV snapshot restored), the latter
    # also with snapshots turned off — how every switch was served before them.
    def send(text: str, persona: str, conv: int) -> dict:
        """A turn, then the user's reading and typing time — during which the previous
        persona of the conversation is caught up in the background (`ChatService`), as
        in the app; it is waited for here rather than slept through."""
        timings = service.send(text, persona=persona, conversation_id=conv).timings
        service.wait_for_catch_up(timeout=60)
        return timings

    def conversation_turns(i: int) -> tuple[dict, dict, list[dict]]:
        conv = service.new_conversation()
        for j in range(3):  # some history, so a re-prefill has something to re-read
            send(f"Tell me about rivers and the sea, part {j} of run {i}, in a few lines.", "poet", conv)
        same = send(f"Another line about rivers, number {i}.", "poet", conv)
        first = send(f"Is claim {i} about rivers valid?", "logician", conv)
        back = [send(f"Back to verse, {i}.", "poet", conv), send(f"And is that valid, {i}?", "logician", conv)]
        return same, first, back

    # The same switches made the UI's way: the persona is picked in the dropdown first,
    # which reads the conversation into the model under it (`ChatService.prepare`) while
    # the user types; the turn then pays only for its message.
    def prepared_turns(i: int) -> tuple[dict, list[dict], list[dict]]:
        conv = service.new_conversation()
        for j in range(3):
            send(f"Tell me about lakes and the sky, part {j} of run {i}, in a few lines.", "poet", conv)
        same = send(f"Another line about lakes, number {i}.", "poet", conv)
        prepares, turns = [], []
        for persona, text in (("logician", f"Is claim {i} about lakes valid?"), ("poet", f"Back to verse, {i}."),
                              ("logician", f"And is that valid, {i}?")):
            prepares.append(service.prepare(persona, conv))
            turns.append(send(text, persona, conv))
        return same, prepares, turns

    same, first_switch, switch_back, switch_back_cold = [], [], [], []
    prepared_same, prepares, prepared = [], [], []
    ws.progress("personas: warm-up turn")
    service.send("Hello there, let us talk about rivers.", persona="poet")
    for i in range(runs):
        ws.progress(f"personas: same-persona, first-switch and switch-back turns {i + 1}/{runs}")
        s_, f_, b_ = conversation_turns(i)
        same.append(s_)
        first_switch.append(f_)
        switch_back += b_
        ws.progress(f"personas: switches prepared by a dropdown pick {i + 1}/{runs}")
        s_, p_, t_ = prepared_turns(i)
        prepared_same.append(s_)
        prepares += p_
        prepared += t_
    budget = engine.snapshots.max_bytes
    engine.snapshots.max_bytes = 0  # as before snapshots: every switch re-reads the conversation
    try:
        for i in range(runs):
            ws.progress(f"personas: switch-back turns without KV snapshots {i + 1}/{runs}")
            switch_back_cold += conversation_turns(runs + i)[2]
    finally:
        engine.snapshots.max_bytes = budget

    # 2. Adapter switch vs model reload. The switch is timed at the engine's own switch
    # point (under its lock, as a turn does it): it is microseconds, far below what a
    # whole turn's timing could resolve.
    ws.progress("personas: adapter switches vs model reloads")
    switch_s = []
    with engine._lock:
        for i in range(runs * 20):
            t = time.perf_counter()
            engine._use_adapter("poet" if i % 2 else "logician")
            switch_s.append(time.perf_counter() - t)
    reload_s = []
    for _ in range(1 if quick else 3):
        t = time.perf_counter()
        other = LlamaEngine(ws.base.engine)
        reload_s.append(time.perf_counter() - t)
        other.llm.close()

    # 3. Decode speed with vs without an adapter.
    ws.progress("personas: decode with and without an adapter")
    prompt = [{"role": "user", "content": "Describe a long walk along the river at dawn."}]
    long = GenerationParams(temperature=0.0, max_tokens=24 if quick else 96, repeat_penalty=1.0)
    with_adapter, without = [], []
    for _ in range(runs):
        g = engine.stream_chat(prompt, long, adapter="poet")
        g.text()
        with_adapter.append(g.timings.tokens_per_s)
        g = engine.stream_chat(prompt, long, adapter=None)
        g.text()
        without.append(g.timings.tokens_per_s)

    # 4. Router cost per message, reusing the retrieval embedding as a turn does.
    ws.progress("personas: router")
    router = service.router
    router.bank()
    embed_s, route_reuse_s, route_own_s = [], [], []
    for _ in range(runs):
        for m in ROUTED:
            t = time.perf_counter()
            vec = service.memory.embedder.encode_one(m)
            embed_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            router.route(m, current="me", embedding=vec)
            route_reuse_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            router.route(m, current="me")
            route_own_s.append(time.perf_counter() - t)

    # 5. The served encoding of the base vs the shipped one (`personas.models`).
    ws.progress("personas: prompt reading, served vs shipped encoding")
    encoding = _encoding_speeds(engine, prompt_tokens=int(median(t["prompt_eval_tokens"] for t in first_switch)),
                                runs=1 if quick else 3)

    ttft_same = median(t["ttft_ms"] for t in same)
    figures = {
        "persona_switch_back_ttft": figure(
            "switch back to a persona already used in the conversation vs same-persona turn: TTFT",
            median(t["ttft_ms"] for t in switch_back), "ms",
            "a turn that stays with the same persona (and adapter), same conversation", ttft_same,
            better="lower", label="switch back", baseline_label="same persona"),
        "persona_switch_back_vs_before": figure(
            "switch back with KV snapshots vs without (every switch re-reads the conversation): TTFT",
            median(t["ttft_ms"] for t in switch_back), "ms", "the same switch-back turns with snapshots turned off",
            median(t["ttft_ms"] for t in switch_back_cold), better="lower", label="snapshots", baseline_label="no snapshots"),
        "persona_first_switch_ttft": figure(
            "first switch to a persona in the conversation vs same-persona turn: TTFT",
            median(t["ttft_ms"] for t in first_switch), "ms",
            "a turn that stays with the same persona (and adapter), same conversation", ttft_same,
            better="lower", label="first switch", baseline_label="same persona"),
        "persona_switch_prepared_ttft": figure(
            "switch to a persona picked in the dropdown first (conversation prepared under it while the user types) "
            "vs same-persona turn: TTFT",
            median(t["ttft_ms"] for t in prepared), "ms",
            "a turn that stays with the same persona (and adapter), same conversation",
            median(t["ttft_ms"] for t in prepared_same),
            better="lower", label="prepared switch", baseline_label="same persona"),
        "adapter_switch": figure(
            "adapter switch vs model reload", median(switch_s) * 1000, "ms",
            "reloading the GGUF model from disk (a new llama.cpp context)", median(reload_s) * 1000,
            better="lower", label="adapter switch", baseline_label="model reload"),
        "adapter_decode": figure(
            "decode speed with a LoRA adapter vs the bare base", median(with_adapter), "tok/s",
            "the same generation without an adapter", median(without), better="higher",
            label="with adapter", baseline_label="base"),
        **({"served_encoding_prompt_reading": figure(
            f"reading a {encoding['prompt_tokens']}-token prompt with the base as served ({encoding['served']}) "
            f"vs as shipped ({encoding['shipped']})", encoding["served_ms"], "ms",
            "the same tokens with the shipped file, same threads", encoding["shipped_ms"], better="lower",
            label="served", baseline_label="shipped")} if encoding else {}),
        "router_share_of_ttft": figure(
            "router cost vs a turn's time to first token", median(route_reuse_s) * 1000, "ms",
            "time to first token of a same-persona turn", ttft_same, better="lower",
            label="router", baseline_label="turn TTFT"),
    }
    details = {
        "runs": runs,
        "turn_same_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in same),
        "turn_first_switch_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in first_switch),
        "turn_switch_back_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in switch_back),
        "turn_switch_back_without_snapshots_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in switch_back_cold),
        "turn_prepared_switch_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in prepared),
        "prepare_ms": median(p["ms"] for p in prepares),
        "prepare_ms_first_switch": median(p["ms"] for p in prepares[::3]),
        "prepare_evaluated_tokens": median(p["evaluated_tokens"] for p in prepares),
        "snapshots_restored": sum(bool(t.get("snapshot_restored")) for t in switch_back),
        "snapshot_store": {"bytes": engine.snapshots.bytes, "entries": len(engine.snapshots),
                           "evictions": engine.snapshots.evictions},
        "router_ms_with_own_embedding": round(median(route_own_s) * 1000, 3),
        "embed_one_message_ms": round(median(embed_s) * 1000, 3),
        "model_load_ms_at_start": round(engine.load_ms, 1),
        "served_vs_shipped_encoding": encoding,
    }
    service.journal.close()
    return {"figures": figures, "details": details}


def _encoding_speeds(engine, prompt_tokens: int, runs: int) -> dict:
    """Prompt reading (ms for `prompt_tokens` tokens, from an empty cache, no adapter) and
    decode tokens/s of the engine's base as served vs the file it was re-encoded from,
    loaded with the same settings; {} when the served file is the shipped one."""
    from llama_cpp import Llama

    from personas.models import weights_file

    shipped_path = weights_file(engine.model_path)
    if shipped_path == engine.model_path:
        return {}
    text = " ".join(f"Tell me about rivers and the sea, part {i}, in a few lines." for i in range(40))
    cfg = engine.config
    with engine._lock:
        engine._use_adapter(None)
        engine._owner = None  # the context's tokens are read over below: no snapshot of them
        shipped = Llama(model_path=str(shipped_path), n_ctx=cfg.n_ctx, n_batch=cfg.n_batch,
                        n_threads=engine.llm.n_threads, n_threads_batch=engine.llm.n_threads, verbose=False)
        try:
            out = {}
            for name, llm in (("served", engine.llm), ("shipped", shipped)):
                tokens = llm.tokenize(text.encode())[:prompt_tokens]
                read, rate = [], []
                for _ in range(runs):
                    llm.reset()
                    started = time.perf_counter()
                    llm.eval(tokens)
                    read.append(time.perf_counter() - started)
                    first, n = None, 0  # decode on from the prompt just read (it stays cached)
                    for chunk in llm.create_completion(tokens, max_tokens=33, temperature=0.0, stream=True):
                        n += 1
                        first = first or time.perf_counter()
                    rate.append((n - 1) / (time.perf_counter() - first) if n > 1 else 0.0)
                llm.reset()
                out[f"{name}_ms"] = round(median(read) * 1000, 1)
                out[f"{name}_decode_tokens_per_s"] = round(median(rate), 1)
        finally:
            shipped.close()
    return {"served": engine.model_path.name, "shipped": shipped_path.name, "prompt_tokens": len(tokens), **out}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("personas", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
