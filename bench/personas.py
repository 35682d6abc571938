"""Persona benchmark on the embedded defaults: adapter hot-swap and the router.

Measures, in one run:
  - a chat turn that switches persona (and adapter) vs a turn that stays with the same
    persona (time to first token through ChatService);
  - switching adapters in the running engine (`llama_set_adapters_lora` + cache reset)
    vs reloading the model from disk;
  - decode tokens/s with an adapter vs the bare base;
  - router overhead per message: scoring with the retrieval embedding reused, and with
    its own embedding, next to the time to first token of a turn.
Adapters are random GGUF LoRAs of rank 16 on q/k/v/o (written with `tuning.export`), the
shape trained adapters have: their cost does not depend on what they learned.

Usage: .venv/bin/python bench/personas.py [--json] [--runs N]
Writes $ALTEREGO_HOME/bench/personas.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_home, write_report  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()

    home = bench_home()
    from personas.catalog import GenerationParams
    from personas.engine import LlamaEngine
    from tuning.export import llama_dims, random_lora, write_gguf_lora
    from webapp.chat import ChatService
    from webapp.settings import load_settings

    settings = load_settings()
    service = ChatService(settings)
    engine = service.engine
    layers, dims = llama_dims(engine.llm.metadata)
    for seed, persona in enumerate(["poet", "logician"]):
        gguf = write_gguf_lora(home / f"{persona}.gguf", random_lora(layers, dims, rank=16, scale=0.02, seed=seed), alpha=16)
        service.adapters.activate(persona, service.adapters.add_version(persona, gguf).version)
    service.refresh_adapters()
    fixed = GenerationParams(temperature=0.0, max_tokens=32, repeat_penalty=1.0)
    for name in ("poet", "logician"):
        service.catalog._personas[name] = dataclasses.replace(service.catalog.get(name), generation=fixed)

    # 1. Turn with a persona switch vs without (same conversation, growing history).
    conv = service.new_conversation()
    same, switched = [], []
    service.send("Hello there, let us talk about rivers.", persona="poet", conversation_id=conv)
    for i in range(args.runs):
        same.append(service.send(f"Another line about rivers, number {i}.", persona="poet", conversation_id=conv).timings)
        switched.append(service.send(f"Is claim {i} about rivers valid?", persona="logician", conversation_id=conv).timings)
        service.send(f"Back to verse, {i}.", persona="poet", conversation_id=conv)

    # 2. Adapter switch vs model reload.
    switch_s = []
    with engine._lock:
        for i in range(args.runs * 10):
            t = time.perf_counter()
            engine._use_adapter("poet" if i % 2 else "logician")
            switch_s.append(time.perf_counter() - t)
    reload_s = []
    for _ in range(3):
        t = time.perf_counter()
        other = LlamaEngine(settings.engine)
        reload_s.append(time.perf_counter() - t)
        del other

    # 3. Decode speed with vs without an adapter.
    prompt = [{"role": "user", "content": "Describe a long walk along the river at dawn."}]
    long = GenerationParams(temperature=0.0, max_tokens=96, repeat_penalty=1.0)
    with_adapter, without = [], []
    for _ in range(args.runs):
        g = engine.stream_chat(prompt, long, adapter="poet")
        g.text()
        with_adapter.append(g.timings.tokens_per_s)
        g = engine.stream_chat(prompt, long, adapter=None)
        g.text()
        without.append(g.timings.tokens_per_s)

    # 4. Router overhead per message.
    messages = ["Write me a poem about the sea", "Is this syllogism valid?", "what did I do on Sunday?",
                "What is a good life?", "ok", "Prove that there are infinitely many primes"]
    router = service.router
    router.bank()
    embed_s, route_reuse_s, route_own_s = [], [], []
    for _ in range(args.runs):
        for m in messages:
            t = time.perf_counter()
            vec = service.memory.embedder.encode_one(m)
            embed_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            router.route(m, current="me", embedding=vec)
            route_reuse_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            router.route(m, current="me")
            route_own_s.append(time.perf_counter() - t)

    ttft_same = statistics.median(t["ttft_ms"] for t in same)
    ttft_switch = statistics.median(t["ttft_ms"] for t in switched)
    report = {
        "turn_same_persona_ttft_ms": round(ttft_same, 2),
        "turn_persona_switch_ttft_ms": round(ttft_switch, 2),
        "ttft_ratio_switch_vs_same": round(ttft_switch / ttft_same, 3),
        "turn_same_prompt_eval_tokens": statistics.median(t["prompt_eval_tokens"] for t in same),
        "turn_switch_prompt_eval_tokens": statistics.median(t["prompt_eval_tokens"] for t in switched),
        "adapter_switch_ms": median_ms(switch_s),
        "model_reload_ms": median_ms(reload_s),
        "reload_vs_switch_ratio": round(statistics.median(reload_s) / statistics.median(switch_s), 1),
        "decode_tokens_per_s_with_adapter": round(statistics.median(with_adapter), 1),
        "decode_tokens_per_s_base": round(statistics.median(without), 1),
        "decode_ratio_adapter_vs_base": round(statistics.median(with_adapter) / statistics.median(without), 3),
        "router_ms_reusing_embedding": median_ms(route_reuse_s),
        "router_ms_with_own_embedding": median_ms(route_own_s),
        "embed_one_message_ms": median_ms(embed_s),
        "router_share_of_ttft": round(statistics.median(route_reuse_s) * 1000 / ttft_same, 4),
        "runs": args.runs,
    }
    write_report(home, "personas", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
