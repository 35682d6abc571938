"""Persona benchmark on the embedded defaults: adapter hot-swap and the router.

Measures, in one run:
  - a chat turn that switches persona (and adapter) vs a turn that stays with the same
    persona (time to first token through ChatService, same conversation);
  - switching adapters in the running engine (`llama_set_adapters_lora` + cache reset)
    vs reloading the model from disk;
  - decode tokens/s with an adapter vs the bare base;
  - router cost per message (scoring with the retrieval embedding reused) next to the
    time to first token of a turn.
Adapters are random GGUF LoRAs of rank 16 on q/k/v/o (written with `tuning.export`), the
shape trained adapters have: their cost does not depend on what they learned.

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
    engine = service.engine
    home = service.settings.home
    layers, dims = llama_dims(engine.llm.metadata)
    for seed, persona in enumerate(["poet", "logician"]):
        gguf = write_gguf_lora(home / f"{persona}.gguf", random_lora(layers, dims, rank=16, scale=0.02, seed=seed), alpha=16)
        service.adapters.activate(persona, service.adapters.add_version(persona, gguf).version)
    service.refresh_adapters()

    # 1. Turn with a persona switch vs without (same conversation, growing history).
    conv = service.new_conversation()
    same, switched = [], []
    ws.progress("personas: warm-up turn")
    service.send("Hello there, let us talk about rivers.", persona="poet", conversation_id=conv)
    for i in range(runs):
        ws.progress(f"personas: same-persona and switching turns {i + 1}/{runs}")
        same.append(service.send(f"Another line about rivers, number {i}.", persona="poet", conversation_id=conv).timings)
        switched.append(service.send(f"Is claim {i} about rivers valid?", persona="logician", conversation_id=conv).timings)
        service.send(f"Back to verse, {i}.", persona="poet", conversation_id=conv)

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

    ttft_same = median(t["ttft_ms"] for t in same)
    figures = {
        "persona_switch_ttft": figure(
            "persona switch turn vs same-persona turn: time to first token", median(t["ttft_ms"] for t in switched), "ms",
            "a turn that stays with the same persona (and adapter), same conversation", ttft_same,
            better="lower", label="switch", baseline_label="same persona"),
        "adapter_switch": figure(
            "adapter switch vs model reload", median(switch_s) * 1000, "ms",
            "reloading the GGUF model from disk (a new llama.cpp context)", median(reload_s) * 1000,
            better="lower", label="adapter switch", baseline_label="model reload"),
        "adapter_decode": figure(
            "decode speed with a LoRA adapter vs the bare base", median(with_adapter), "tok/s",
            "the same generation without an adapter", median(without), better="higher",
            label="with adapter", baseline_label="base"),
        "router_share_of_ttft": figure(
            "router cost vs a turn's time to first token", median(route_reuse_s) * 1000, "ms",
            "time to first token of a same-persona turn", ttft_same, better="lower",
            label="router", baseline_label="turn TTFT"),
    }
    details = {
        "runs": runs,
        "turn_same_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in same),
        "turn_switch_prompt_eval_tokens": median(t["prompt_eval_tokens"] for t in switched),
        "router_ms_with_own_embedding": round(median(route_own_s) * 1000, 3),
        "embed_one_message_ms": round(median(embed_s) * 1000, 3),
        "model_load_ms_at_start": round(engine.load_ms, 1),
    }
    service.journal.close()
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("personas", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
