"""Chat-turn benchmark on the embedded defaults: ChatService vs raw llama-cpp-python.

Measures, in one run:
  - a first turn through ChatService (validation, journal, prompt building, streaming)
    vs raw `Llama.create_chat_completion` on the identical final prompt — time to first
    token and decode tokens/s, and their ratios (the service's overhead); both start
    from an empty KV cache;
  - the second turn of a conversation vs the first: with the prompt prefix kept stable,
    llama.cpp evaluates only the new tokens (prompt tokens evaluated vs the prompt's
    length), so the second turn is cheaper than the same prompt from an empty cache.

Usage: .venv/bin/python -m bench.chat [--json] [--quick]
Writes $ALTEREGO_HOME/bench/chat.json (ALTEREGO_HOME defaults to a temp dir here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, median, no_progress, run_suite, suite_main

MESSAGE = "Hi! Tell me in two sentences what you did this morning and how you felt about it."
FOLLOW = "And what about the afternoon?"


def raw_turn(llm, prompt, params: dict) -> dict:
    """One raw llama-cpp-python streamed completion of a rendered prompt
    (`personas.prompting.Rendered`), timed the way the engine times its own."""
    started = time.perf_counter()
    first = None
    tokens = 0
    if prompt.messages:
        stream, text_of = llm.create_chat_completion(messages=prompt.messages, stream=True, **params), \
            (lambda c: c["choices"][0]["delta"].get("content"))
    else:
        stream, text_of = llm.create_completion(prompt=prompt.text, stop=prompt.stop, stream=True, **params), \
            (lambda c: c["choices"][0].get("text"))
    for chunk in stream:
        if text_of(chunk):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft_ms": (first - started) * 1000, "tokens": tokens,
            "tokens_per_s": (tokens - 1) / (end - first) if tokens > 1 else 0.0,
            "prompt_tokens": max(0, llm.n_tokens - tokens)}


def _run(ws: Workspace, quick: bool) -> dict:
    runs = 1 if quick else 5
    service = ws.service("chat", max_tokens=16 if quick else 48)
    engine = service.engine
    me = service.catalog.get("me")
    params = me.generation.as_llama_kwargs()

    # The process's first turn pays one-off costs (ChromaDB import, llama.cpp's first
    # decode); measured once as a detail, kept out of the steady-state figures.
    ws.progress("chat: warm-up turn")
    cold = service.send(MESSAGE, persona="me").timings

    svc_first, svc_second, raw_first, raw_second = [], [], [], []
    for i in range(runs):
        ws.progress(f"chat: turns {i + 1}/{runs} (ChatService, then raw llama-cpp-python)")
        engine.llm.reset()  # the first turn starts from an empty KV cache
        first = service.send(MESSAGE, persona="me")
        svc_first.append(first.timings)
        second = service.send(FOLLOW, persona="me", conversation_id=first.conversation_id)
        svc_second.append(second.timings)
        # The identical final prompts, rebuilt by the service's own public prompt builder
        # (memory is empty in this scratch root, so there are no notes to add).
        prior = service.history(first.conversation_id)
        engine.llm.reset()
        raw_first.append(raw_turn(engine.llm, service.build_prompt(me, [], MESSAGE), params))
        engine.llm.reset()
        raw_second.append(raw_turn(engine.llm, service.build_prompt(me, prior[:1], FOLLOW), params))

    def med(rows, key):
        return median(r[key] for r in rows)

    figures = {
        "chat_ttft": figure(
            "chat turn: time to first token", med(svc_first, "ttft_ms"), "ms",
            "raw llama-cpp-python create_chat_completion on the identical prompt, empty KV cache",
            med(raw_first, "ttft_ms"), better="lower", label="ChatService", baseline_label="raw llama-cpp"),
        "chat_decode": figure(
            "chat turn: decode speed", med(svc_first, "tokens_per_s"), "tok/s",
            "raw llama-cpp-python create_chat_completion on the identical prompt",
            med(raw_first, "tokens_per_s"), better="higher", label="ChatService", baseline_label="raw llama-cpp"),
        "second_turn_ttft": figure(
            "second turn vs first: time to first token", med(svc_second, "ttft_ms"), "ms",
            "the conversation's first turn (ChatService, empty KV cache)", med(svc_first, "ttft_ms"),
            better="lower", label="2nd turn", baseline_label="1st turn"),
        "second_turn_prompt_eval": figure(
            "second turn: prompt tokens evaluated", med(svc_second, "prompt_eval_tokens"), "tokens",
            "the second turn's whole prompt (what an empty KV cache would evaluate)",
            med(svc_second, "prompt_tokens"), better="lower", label="evaluated", baseline_label="whole prompt"),
        "second_turn_vs_cold": figure(
            "second turn: KV reuse vs empty cache", med(svc_second, "ttft_ms"), "ms",
            "raw llama-cpp-python on the identical second-turn prompt from an empty KV cache",
            med(raw_second, "ttft_ms"), better="lower", label="KV reuse", baseline_label="cold cache"),
    }
    details = {
        "model": engine.model_path.name,
        "threads": engine.llm.n_threads,
        "runs": runs,
        "process_first_turn_ttft_ms": cold["ttft_ms"],
        "max_tokens": params["max_tokens"],
        "first_turn_prompt_tokens": med(svc_first, "prompt_tokens"),
        "raw_first_prompt_tokens": med(raw_first, "prompt_tokens"),
        "first_turn_tokens": med(svc_first, "tokens"),
        "raw_first_tokens": med(raw_first, "tokens"),
        "first_turn_engine_ttft_ms": med(svc_first, "engine_ttft_ms"),
        "second_turn_prompt_tokens": med(svc_second, "prompt_tokens"),
        "second_turn_prompt_eval_tokens": med(svc_second, "prompt_eval_tokens"),
        "raw_second_prompt_tokens": med(raw_second, "prompt_tokens"),
    }
    service.journal.close()
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("chat", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
