"""The in-process inference engine: llama-cpp-python over one GGUF base model, loaded
once and shared by every persona. It streams chat completions and measures each one
(time to first token, decode tokens, tokens/s, prompt tokens actually evaluated).

One `Llama` context is not thread-safe and holds one KV cache, so generations are
serialised by a lock. llama-cpp-python keeps the tokens of the previous prompt and only
evaluates the part of a new prompt after the longest common prefix; callers keep that
prefix stable (same system prompt, same rendered history) so a follow-up turn pays only
for its new tokens — `Timings.prompt_eval_tokens` shows whether that happened."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .catalog import GenerationParams
from .config import EngineConfig
from .errors import ModelNotFoundError
from .models import fingerprint, resolve_chat_model

log = logging.getLogger(__name__)


@dataclass
class Timings:
    ttft_ms: float = 0.0  # request start -> first text token
    total_ms: float = 0.0
    tokens: int = 0  # generated tokens
    tokens_per_s: float = 0.0  # decode rate after the first token
    prompt_tokens: int = 0  # tokens in the full prompt
    prompt_eval_tokens: int = 0  # of which evaluated now (the rest came from the KV cache)

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


class Generation:
    """An iterator of text pieces; `timings` is complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], timings: Timings):
        self._pieces = pieces
        self.timings = timings

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def text(self) -> str:
        return "".join(self._pieces)


class LlamaEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_path: Path = resolve_chat_model(config.model_path)
        self.fingerprint = fingerprint(self.model_path)
        self._lock = threading.Lock()
        threads = config.n_threads or os.cpu_count() or 1
        from llama_cpp import Llama  # heavy import, only when a model is really loaded

        started = time.perf_counter()
        try:
            self.llm = Llama(
                model_path=str(self.model_path),
                n_ctx=config.n_ctx,
                n_batch=config.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                seed=config.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(f"Cannot load model {self.model_path}: {exc}") from None
        self.load_ms = (time.perf_counter() - started) * 1000
        log.info("loaded %s in %.0f ms", self.model_path.name, self.load_ms)

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream_chat(self, messages: list[dict], params: GenerationParams) -> Generation:
        timings = Timings()
        return Generation(self._run(messages, params, timings), timings)

    def _run(self, messages: list[dict], params: GenerationParams, timings: Timings) -> Iterator[str]:
        with self._lock:
            cached_before = list(self.llm._input_ids)  # tokens already in the KV cache
            started = time.perf_counter()
            first = None
            stream = self.llm.create_chat_completion(
                messages=messages, stream=True, **params.as_llama_kwargs()
            )
            try:
                for chunk in stream:
                    piece = chunk["choices"][0]["delta"].get("content")
                    if not piece:
                        continue
                    if first is None:
                        first = time.perf_counter()
                        timings.ttft_ms = (first - started) * 1000
                    timings.tokens += 1
                    yield piece
            finally:
                # Closing the inner stream early (the UI's stop, a client gone) still
                # leaves the lock released and the timings honest.
                stream.close()
                end = time.perf_counter()
                timings.total_ms = (end - started) * 1000
                if first is not None and timings.tokens > 1:
                    timings.tokens_per_s = (timings.tokens - 1) / max(end - first, 1e-9)
                timings.prompt_tokens = max(0, self.llm.n_tokens - timings.tokens)
                timings.prompt_eval_tokens = max(
                    0, timings.prompt_tokens - _common_prefix(cached_before, list(self.llm._input_ids))
                )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
