"""Chat-turn benchmark on the embedded defaults: ChatService vs raw llama-cpp-python.

Measures, in one run:
  - a first turn through ChatService (journal, prompt building, streaming) vs raw
    `Llama.create_chat_completion` on the identical final prompt — time to first token,
    decode tokens/s, and their ratios (the service's overhead);
  - the second turn of a conversation vs the first: with the prompt prefix kept stable,
    llama.cpp evaluates only the new tokens, so the second turn's TTFT should scale with
    its new tokens, not with the whole conversation.
Both sides start from an empty KV cache for the first-turn comparison.

Usage: .venv/bin/python bench/chat.py [--json] [--runs N]
Writes $ALTEREGO_HOME/bench/chat.json (ALTEREGO_HOME defaults to a temp dir here).
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

MESSAGE = "Hi! Tell me in two sentences what you did this morning and how you felt about it."
FOLLOW = "And what about the afternoon?"


def raw_turn(llm, messages, params) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llm.create_chat_completion(messages=messages, stream=True, **params):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_ms": (first - started) * 1000, "tokens": tokens,
            "tokens_per_s": (tokens - 1) / (end - first) if tokens > 1 else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    home = bench_home()
    from personas.catalog import GenerationParams
    from webapp.chat import ChatService
    from webapp.settings import load_settings

    service = ChatService(load_settings())
    engine = service.engine
    me = service.catalog.get("me")
    # Greedy with a fixed length, so both sides decode the same number of tokens.
    params = GenerationParams(temperature=0.0, max_tokens=48, repeat_penalty=1.0)
    service.catalog._personas["me"] = dataclasses.replace(me, generation=params)

    sent: list[list[dict]] = []
    original = engine.stream_chat

    def recording(messages, p, adapter=None):
        sent.append(messages)
        return original(messages, p, adapter=adapter)

    engine.stream_chat = recording
    svc_first, svc_second, raw_first = [], [], []
    for _ in range(args.runs):
        engine.llm.reset()
        first = service.send(MESSAGE, persona="me")
        svc_first.append(first.timings)
        second = service.send(FOLLOW, persona="me", conversation_id=first.conversation_id)
        svc_second.append(second.timings)
        engine.llm.reset()
        raw_first.append(raw_turn(engine.llm, sent[-2], params.as_llama_kwargs()))

    med = lambda rows, key: round(statistics.median(r[key] for r in rows), 2)  # noqa: E731
    report = {
        "model": engine.model_path.name,
        "threads": engine.llm.n_threads,
        "first_turn_prompt_tokens": med(svc_first, "prompt_tokens"),
        "service_ttft_ms": med(svc_first, "ttft_ms"),
        "raw_ttft_ms": med(raw_first, "ttft_ms"),
        "ttft_ratio_service_vs_raw": round(med(svc_first, "ttft_ms") / med(raw_first, "ttft_ms"), 3),
        "service_tokens_per_s": med(svc_first, "tokens_per_s"),
        "raw_tokens_per_s": med(raw_first, "tokens_per_s"),
        "decode_ratio_service_vs_raw": round(med(svc_first, "tokens_per_s") / med(raw_first, "tokens_per_s"), 3),
        "second_turn_prompt_tokens": med(svc_second, "prompt_tokens"),
        "second_turn_prompt_eval_tokens": med(svc_second, "prompt_eval_tokens"),
        "second_turn_ttft_ms": med(svc_second, "ttft_ms"),
        "ttft_ratio_second_vs_first": round(med(svc_second, "ttft_ms") / med(svc_first, "ttft_ms"), 3),
        "runs": args.runs,
    }
    write_report(home, "chat", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
