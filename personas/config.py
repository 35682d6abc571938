"""Configuration of the inference engine: which GGUF base model to load and how, or which
OpenAI-compatible server to talk to instead. `model` names an embedded model
(`smollm2-135m`, the default, or `gemma3-270m`; see `personas.models`) or the path of any
GGUF file. Composed into `webapp.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EngineConfigError

# "llama": llama-cpp-python in this process; "openai": an OpenAI-compatible server
# (llama.cpp's llama-server, vLLM, llama-cpp-python's own server), see personas.remote.
BACKENDS = ("llama", "openai")


@dataclass
class EngineConfig:
    backend: str = "llama"
    # An embedded model's name (`smollm2-135m`, `gemma3-270m`) or a GGUF path; "" = the
    # default (`smollm2-135m`), or `model_path` when that older setting is set.
    model: str = ""
    model_path: str = ""  # the older setting: a GGUF path (`model` wins when both are set)
    n_ctx: int = 4096
    # Threads for decode; 0 = all cores. Prompt processing uses the same count.
    n_threads: int = 0
    n_batch: int = 256
    # Layers offloaded to a GPU (a CUDA build of llama-cpp-python, e.g. the GPU image):
    # 0 = CPU only, -1 = all.
    n_gpu_layers: int = 0
    seed: int = 0
    # Largest user message accepted, in characters; longer ones are refused with a clear
    # error rather than silently cut (a 1 MB paste is almost always a mistake).
    max_message_chars: int = 8000
    # Tokens kept free for the reply when trimming history to fit n_ctx.
    reply_reserve_tokens: int = 512
    # Memory for KV-cache snapshots per (conversation, persona adapter), so switching back
    # to a persona pays only for the new tokens (personas.kvcache); 0 turns them off. A
    # snapshot of a 1,000-token conversation is ~25 MB (SmolLM2) to ~40 MB (Gemma 3 270M).
    kv_snapshot_mb: int = 512

    # -- backend = "openai" ------------------------------------------------------------
    # Base URL of the server's OpenAI API, e.g. http://127.0.0.1:8080/v1.
    server_url: str = ""
    # The base model's id on the server; "" = the first model /v1/models lists that is
    # not a persona adapter.
    server_model: str = ""
    api_key: str = ""  # sent as "Authorization: Bearer ..." when set
    # Longest wait for the server's answer, and between two pieces of a streamed reply
    # (connecting waits at most 10 s of it: a dead host should fail the turn quickly).
    request_timeout_s: float = 120.0

    @property
    def model_spec(self) -> str:
        """What to load: `model`, else `model_path`, else "" (the default embedded model)."""
        return (self.model or "").strip() or (self.model_path or "").strip()

    def validate(self) -> None:
        """Refuse a configuration no engine can be built from, naming the setting."""
        backend = (self.backend or "").strip().lower()
        if backend not in BACKENDS:
            raise EngineConfigError(
                f"Unknown engine backend '{self.backend}' (setting engine.backend). "
                f"Valid backends: {', '.join(BACKENDS)}"
            )
        if backend == "openai":
            url = self.server_url.strip()
            if not url:
                raise EngineConfigError(
                    "engine.backend = \"openai\" needs engine.server_url, the server's OpenAI API "
                    "base URL (e.g. http://127.0.0.1:8080/v1)."
                )
            if not url.startswith(("http://", "https://")):
                raise EngineConfigError(
                    f"engine.server_url must start with http:// or https:// (got '{self.server_url}')."
                )
        if self.request_timeout_s <= 0:
            raise EngineConfigError("engine.request_timeout_s must be a positive number of seconds.")


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
