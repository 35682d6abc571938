"""What a generation hands back, for every engine (in-process llama.cpp and the
OpenAI-compatible client alike): an iterator of text pieces, and its `Timings` — time to
first token, decode rate, prompt tokens evaluated vs reused from the KV cache, and the
adapter that was active. Its own module so the engines share it without importing each
other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass


@dataclass
class Timings:
    ttft_ms: float = 0.0  # request start -> first text token
    total_ms: float = 0.0
    tokens: int = 0  # generated tokens
    tokens_per_s: float = 0.0  # decode rate after the first token
    prompt_tokens: int = 0  # tokens in the full prompt
    prompt_eval_tokens: int = 0  # of which evaluated now (the rest came from the KV cache)

    adapter: str = ""  # "<persona>/v<N>" of the LoRA that was active, "" for the bare base
    adapter_switched: bool = False  # the adapter changed for this generation (cache reset)
    snapshot_restored: bool = False  # the KV cache came from this conversation's snapshot for the adapter
    empty_retries: int = 0  # times an empty reply (end of turn as the first token) was sampled again

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def count_piece(self, started: float, first: float | None) -> float:
        """Count one streamed text piece of a generation that began at `started`
        (perf_counter); returns when the first piece came, setting ttft_ms on it."""
        if first is None:
            first = time.perf_counter()
            self.ttft_ms = (first - started) * 1000
        self.tokens += 1
        return first


class Generation:
    """An iterator of text pieces; `timings` is complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], timings: Timings):
        self._pieces = pieces
        self.timings = timings

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def text(self) -> str:
        return "".join(self._pieces)
