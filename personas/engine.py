"""The in-process inference engine: llama-cpp-python over one GGUF base model, loaded
once and shared by every persona. It streams chat completions and measures each one
(time to first token, decode tokens, tokens/s, prompt tokens actually evaluated).

One `Llama` context is not thread-safe and holds one KV cache, so generations are
serialised by a lock. llama-cpp-python keeps the tokens of the previous prompt and only
evaluates the part of a new prompt after the longest common prefix; callers keep that
prefix stable (same system prompt, same rendered history) so a follow-up turn pays only
for its new tokens — `Timings.prompt_eval_tokens` shows whether that happened.

Persona adapters (GGUF LoRA) are loaded once each with `llama_adapter_lora_init` and
switched per generation with `llama_set_adapters_lora` — no model reload. The KV cache
built under one adapter is wrong under another, so a switch resets the cached tokens;
but before the context moves to another (conversation, adapter, persona) it is saved as a
snapshot (`personas.kvcache`), and switching back restores it, so only the tokens since
that persona's last turn are evaluated. `prefill` reads a coming turn's known start (the
persona and the conversation so far) in ahead of the message — the UI does it when a
persona is picked — so even a first switch then pays only for the message. A corrupt or mismatched adapter file is rejected
at load (`adapter_errors` says why) and its persona answers prompt-only.

`create_engine` picks the engine the settings ask for: this one, or `remote.OpenAIEngine`
for a model served by an external OpenAI-compatible server (`engine.backend = "openai"`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .adapters import AdapterError, AdapterLibrary, AdapterVersion
from .catalog import GenerationParams
from .config import EngineConfig
from .errors import ModelNotFoundError
from .generation import Generation, Timings
from .kvcache import SnapshotStore, capture, restore
from .models import TRANSCRIPT, chat_format, fingerprint, resolve_chat_model
from .prompting import Rendered

if TYPE_CHECKING:
    from .remote import OpenAIEngine

log = logging.getLogger(__name__)

# How often an empty reply is sampled again before it is returned as it is.
EMPTY_REPLY_RETRIES = 2
# Tokens per step of a background prefill, which checks between steps whether a turn is
# waiting for the engine: small enough to give way within tens of milliseconds.
PREFILL_CHUNK = 64


@dataclass
class LoadedAdapter:
    persona: str
    version: int
    path: Path
    handle: object  # llama_adapter_lora pointer
    scale: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.persona}/v{self.version}"


def check_adapter_file(path: Path, architecture: str) -> None:
    """Reject what llama.cpp would choke on before handing it over: not a GGUF, not a
    LoRA adapter, or a LoRA for another architecture."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise AdapterError(f"{path.name} is not a GGUF file")
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        fields = {
            k: reader.fields[k].contents() for k in ("general.type", "adapter.type", "general.architecture")
            if k in reader.fields
        }
    except AdapterError:
        raise
    except Exception as exc:  # noqa: BLE001 — any parse failure means a corrupt file
        raise AdapterError(f"{path.name} is corrupt ({type(exc).__name__}: {exc})") from None
    if fields.get("general.type") != "adapter" or fields.get("adapter.type") != "lora":
        raise AdapterError(f"{path.name} is not a LoRA adapter (general.type={fields.get('general.type')!r})")
    if architecture and fields.get("general.architecture") not in (None, architecture):
        raise AdapterError(
            f"{path.name} is for a {fields.get('general.architecture')} model, the base is {architecture}"
        )


class LlamaEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_path: Path = resolve_chat_model(config.model_spec)
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
                n_gpu_layers=config.n_gpu_layers,
                n_threads=threads,
                n_threads_batch=threads,
                seed=config.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(f"Cannot load model {self.model_path}: {exc}") from None
        self.load_ms = (time.perf_counter() - started) * 1000
        log.info("loaded %s in %.0f ms", self.model_path.name, self.load_ms)
        self.architecture = str(self.llm.metadata.get("general.architecture", ""))
        # CHAT (the GGUF's template) or TRANSCRIPT (a base model): how ChatService lays out
        # prompts for this model (personas.prompting).
        self.chat_format = chat_format(self.model_path)
        self.adapters: dict[str, LoadedAdapter] = {}
        self.adapter_errors: dict[str, str] = {}
        self._current_adapter: LoadedAdapter | None = None
        self.snapshots = SnapshotStore(config.kv_snapshot_mb * 2**20)
        # (session, adapter label) whose tokens the context holds; None when unknown.
        self._owner: tuple | None = None
        self._formatter = None  # the GGUF's chat template without the generation prompt (prefill)
        self._turns_waiting = 0  # turns blocked on the lock: a background prefill gives way to them
        self._waiting_lock = threading.Lock()

    # -- adapters -------------------------------------------------------------------------
    def load_adapter(self, version: AdapterVersion, scale: float = 1.0) -> LoadedAdapter:
        """Load one GGUF LoRA for `version.persona` (replacing its previous version)."""
        import llama_cpp

        check_adapter_file(version.gguf, self.architecture)
        started = time.perf_counter()
        handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(version.gguf).encode())
        if not handle:
            raise AdapterError(f"{version.gguf} does not fit the base model {self.model_path.name}")
        loaded = LoadedAdapter(version.persona, version.version, version.gguf, handle, scale)
        with self._lock:
            self.adapters[version.persona] = loaded
            self.adapter_errors.pop(version.persona, None)
        log.info("adapter %s loaded in %.1f ms", loaded.label, (time.perf_counter() - started) * 1000)
        return loaded

    def sync_adapters(self, library: AdapterLibrary) -> dict[str, str]:
        """Make the loaded adapters match the library's active versions: load new or
        promoted ones, drop those no longer active. A bad file is recorded in
        `adapter_errors` and its persona answers prompt-only. Returns persona -> label."""
        active = library.all_active() if library.fingerprint == self.fingerprint else {}
        for persona in list(self.adapters):
            if persona not in active:
                with self._lock:
                    self.adapters.pop(persona, None)
        for persona, version in active.items():
            loaded = self.adapters.get(persona)
            if loaded and loaded.version == version.version:
                continue
            try:
                self.load_adapter(version)
            except AdapterError as exc:
                log.warning("adapter for %s rejected: %s", persona, exc)
                with self._lock:
                    self.adapters.pop(persona, None)
                    self.adapter_errors[persona] = str(exc)
        with self._lock:  # snapshots made under an adapter version no longer loaded are useless
            self.snapshots.drop_where(lambda key: not self._label_loaded(key[1]))
        return {p: a.label for p, a in self.adapters.items()}

    def _label_loaded(self, label: str) -> bool:
        return not label or any(a.label == label for a in self.adapters.values())

    def _use_adapter(self, persona: str | None) -> bool:
        """Set the persona's adapter (or none) on the context; called under the lock.
        Returns whether it changed, in which case the KV cache was invalidated."""
        import ctypes

        import llama_cpp

        wanted = self.adapters.get(persona) if persona else None
        if wanted is self._current_adapter:
            return False
        ctx = self.llm._ctx.ctx
        if wanted is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(wanted.handle)
            scales = (ctypes.c_float * 1)(wanted.scale)
            rc = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self._current_adapter = wanted
        self.llm.reset()  # tokens cached under the old adapter must not be reused
        return True

    def _enter(self, persona: str | None, session) -> tuple[bool, bool]:
        """Make the context hold `session`'s tokens under `persona`'s adapter; called under
        the lock. The context being left is kept as a snapshot; the target's snapshot, if
        any, is restored. Returns (adapter switched, snapshot restored)."""
        wanted = self.adapters.get(persona) if persona else None
        # The persona is part of the key: prompt-only personas share the bare base ("")
        # but not their prompt, and each keeps its own conversation state.
        key = (session, wanted.label if wanted else "", persona or "") if session is not None else None
        if key is not None and key == self._owner and wanted is self._current_adapter:
            return False, False
        if self._owner is not None and self.llm.n_tokens and self.snapshots.max_bytes \
                and self._label_loaded(self._owner[1]):
            self.snapshots.put(self._owner, capture(self.llm))
        switched = self._use_adapter(persona)
        restored = False
        if key is not None:
            snap = self.snapshots.get(key)
            if snap is not None:
                restore(self.llm, snap)
                restored = True
        self._owner = key
        return switched, restored

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream_chat(
        self, prompt: list[dict] | Rendered, params: GenerationParams, adapter: str | None = None, session=None
    ) -> Generation:
        """Stream a reply to role messages (through the model's chat template) or to a
        rendered prompt (`personas.prompting.Rendered`: a transcript is continued as plain
        text and stops at its speaker labels); `adapter` names the persona whose LoRA to
        apply (None or a persona without a loaded adapter = the bare base model). `session`
        (the conversation) keys the KV snapshots; None = no snapshot is kept or used."""
        timings = Timings()
        return Generation(self._run(prompt, params, timings, adapter, session), timings)

    def prefill(self, prefix: Rendered, adapter: str | None = None, session=None, *,
                yield_to_turns: bool = False) -> dict:
        """Evaluate the start of a coming turn's prompt (`prompting.render_prefix`: the
        persona's start and the conversation so far) under the adapter of persona
        `adapter`, ahead of the message: the UI calls it when a persona is picked, while
        the user types, so the turn finds the conversation in the KV cache and pays only
        for its message. Tokens
        already cached (the same key's snapshot, a common prefix) are not evaluated again;
        the context being left is kept as a snapshot, as a turn would keep it.
        `yield_to_turns` (background catch-up): evaluate in small chunks and stop as soon
        as a turn waits for the engine; what was read so far stays cached."""
        with self._lock:
            switched, restored = self._enter(adapter, session)
            started = time.perf_counter()
            tokens = self._prefix_tokens(prefix)
            cached = _common_prefix(list(self.llm._input_ids), tokens)
            self.llm.n_tokens = cached  # eval() drops the cache cells after it first
            step = PREFILL_CHUNK if yield_to_turns else max(1, len(tokens))
            done = cached
            while done < len(tokens) and not (yield_to_turns and self._turns_waiting):
                self.llm.eval(tokens[done:done + step])
                done = self.llm.n_tokens
            return {
                "adapter": self._current_adapter.label if self._current_adapter else "",
                "adapter_switched": switched, "snapshot_restored": restored,
                "prefix_tokens": len(tokens), "evaluated_tokens": done - cached,
                "interrupted": done < len(tokens),
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }

    def _prefix_tokens(self, prefix: Rendered) -> list[int]:
        """The tokens llama-cpp-python would start the whole prompt with: the chat template
        without the generation prompt (a chat model), or the text after the BOS (a
        transcript) — tokenised as `create_chat_completion`/`create_completion` do."""
        if prefix.format == TRANSCRIPT:
            bos = [self.llm.token_bos()] if self.llm._model.add_bos_token() else []
            return bos + self.llm.tokenize(prefix.text.encode("utf-8"), add_bos=False, special=True)
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            model = self.llm._model
            self._formatter = Jinja2ChatFormatter(
                template=self.llm.metadata["tokenizer.chat_template"],
                eos_token=model.token_get_text(self.llm.token_eos()),
                bos_token=model.token_get_text(self.llm.token_bos()),
                add_generation_prompt=False,
            )
        text = self._formatter(messages=prefix.messages).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _start(self, prompt: list[dict] | Rendered, params: GenerationParams):
        """The llama-cpp-python stream and how to take text out of its chunks."""
        kwargs = params.as_llama_kwargs()
        if isinstance(prompt, Rendered) and prompt.format == TRANSCRIPT:
            stream = self.llm.create_completion(prompt=prompt.text, stop=prompt.stop or None, stream=True, **kwargs)
            return stream, lambda chunk: chunk["choices"][0].get("text")
        messages, stop = (prompt.messages, prompt.stop or None) if isinstance(prompt, Rendered) else (prompt, None)
        stream = self.llm.create_chat_completion(messages=messages, stop=stop, stream=True, **kwargs)
        return stream, lambda chunk: chunk["choices"][0]["delta"].get("content")

    def _run(self, prompt: list[dict] | Rendered, params: GenerationParams, timings: Timings, adapter: str | None,
             session=None) -> Iterator[str]:
        with self._waiting_lock:
            self._turns_waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._turns_waiting -= 1
        try:
            yield from self._generate(prompt, params, timings, adapter, session)
        finally:
            self._lock.release()

    def _generate(self, prompt: list[dict] | Rendered, params: GenerationParams, timings: Timings,
                  adapter: str | None, session) -> Iterator[str]:
        """One generation; called under the lock."""
        timings.adapter_switched, timings.snapshot_restored = self._enter(adapter, session)
        timings.adapter = self._current_adapter.label if self._current_adapter else ""
        cached_before = list(self.llm._input_ids)  # tokens already in the KV cache
        started = time.perf_counter()
        first = None
        spoke = False
        try:
            while True:
                stream, text_of = self._start(prompt, params)
                try:
                    for chunk in stream:
                        piece = text_of(chunk)
                        if not piece:
                            continue
                        first = timings.count_piece(started, first)
                        spoke = spoke or bool(piece.strip())
                        yield piece
                finally:
                    # Closing the inner stream early (the UI's stop, a client gone)
                    # still leaves the lock released and the timings honest.
                    stream.close()
                # A sampled end-of-turn (EOS or the next speaker's label) as the very
                # first token leaves the user with an empty reply; a fine-tuned persona
                # that learned short answers does that about one time in ten. The
                # prompt is cached, so sampling again costs a token, not a prefill.
                if spoke or timings.empty_retries >= EMPTY_REPLY_RETRIES:
                    break
                timings.empty_retries += 1
        finally:
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


# What ChatService holds: either engine has the same chat surface.
Engine = Union["LlamaEngine", "OpenAIEngine"]


def create_engine(config: EngineConfig) -> Engine:
    """The engine `config.backend` names: llama-cpp-python in this process, or a client of
    an OpenAI-compatible server. Bad settings raise `EngineConfigError`."""
    config.validate()
    if config.backend.strip().lower() == "openai":
        from .remote import OpenAIEngine  # httpx client; only when it is asked for

        return OpenAIEngine(config)
    return LlamaEngine(config)
