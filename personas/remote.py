"""`OpenAIEngine`: the inference engine for a model served by an external OpenAI-compatible
server (llama.cpp's `llama-server`, vLLM with `--enable-lora`, llama-cpp-python's
`python -m llama_cpp.server`), for users whose model no longer fits in this process. It
has the surface `ChatService` and the UI use from `LlamaEngine` — `stream_chat` yielding
text with `Timings`, `count_tokens`, `sync_adapters`, `adapters`, `fingerprint` — and is
chosen by settings alone (`engine.backend = "openai"`, `engine.server_url`).

The server owns the persona adapters; each request selects one in one of two ways:
- model-name style (vLLM `--lora-modules poet=...`, a llama_cpp.server config file whose
  entries each have a `model_alias` and a `lora_path`): `/v1/models` lists a model id equal
  to the persona's name (or `alterego-<persona>`), and the request names it as `model`;
- llama-server style: `GET /lora-adapters` lists `{id, path, scale}`; an adapter belongs to
  a persona when its file stem (or, for a generic stem like `adapter.gguf`, its nearest
  folder that is not a version folder — the adapter library's own layout) is the persona's
  name, and every request carries `"lora": [{"id", "scale"}, ...]` with explicit scales
  for every adapter (0 for the others), since without the field the server applies its
  global scales.
Failures — unreachable, timed out, an HTTP error — raise `EngineUnavailableError`, one
line naming the URL and what to check; `ChatService` records it on the turn."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import httpx

from .catalog import GenerationParams
from .config import EngineConfig
from .generation import Generation, Timings
from .models import CHAT
from .prompting import Rendered
from .errors import EngineUnavailableError

log = logging.getLogger(__name__)

# The server's adapter list is re-read at most this often (sync_adapters runs every turn).
ADAPTER_REFRESH_S = 5.0
PERSONA_PREFIX = "alterego-"
# File stems that name no persona: the persona is then the nearest meaningful folder
# (adapters/<fingerprint>/<persona>/v<N>/adapter.gguf is the adapter library's layout).
GENERIC_STEMS = {"adapter", "adapter_model", "ggml-adapter-model", "lora", "model"}
VERSION_DIR = re.compile(r"^v\d+$")
TOKEN_CACHE_SIZE = 4096


@dataclass(frozen=True)
class ServerAdapter:
    """A persona's adapter as the server serves it: a model id to request, or the id of a
    llama-server LoRA to scale up for the request."""

    persona: str
    model: str = ""
    lora_id: int | None = None
    path: str = ""
    scale: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.persona}@server"


# -- mapping the server's lists to personas (pure functions, unit-tested) -------------------
def _persona_name(name: str) -> str:
    name = name.strip().lower()
    return name[len(PERSONA_PREFIX):] if name.startswith(PERSONA_PREFIX) else name


def pick_base_model(models: list[dict], configured: str = "") -> str:
    """The base model's id: the configured one (which must be served), else the first
    listed that is not an adapter (vLLM marks LoRA modules with a `parent`; ids named
    `alterego-<persona>` are ours)."""
    ids = [str(m.get("id", "")) for m in models if m.get("id")]
    if configured:
        if configured not in ids:
            raise EngineUnavailableError(
                f"The inference server does not serve model '{configured}' (setting engine.server_model); "
                f"it serves: {', '.join(ids) or 'nothing'}."
            )
        return configured
    for m in models:
        mid = str(m.get("id", ""))
        if mid and not m.get("parent") and not mid.lower().startswith(PERSONA_PREFIX):
            return mid
    raise EngineUnavailableError(
        f"The inference server lists no base model (it serves: {', '.join(ids) or 'nothing'}); "
        "set engine.server_model."
    )


def model_adapters(models: list[dict], base: str) -> dict[str, ServerAdapter]:
    """Model-name style: every served model id other than the base is a persona adapter,
    named by its id (without an `alterego-` prefix). An exact `poet` wins over `alterego-poet`."""
    out: dict[str, ServerAdapter] = {}
    for m in models:
        mid = str(m.get("id", ""))
        if not mid or mid == base or (m.get("parent") and m.get("parent") != base):
            continue
        persona = _persona_name(mid)
        if persona in out and out[persona].model.lower() == persona:
            continue
        out[persona] = ServerAdapter(persona, model=mid, path=str(m.get("root") or ""))
    return out


def _path_parts(path: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", path) if p]


def lora_persona(path: str) -> str:
    """The persona a llama-server adapter file belongs to: its stem (`poet.gguf`,
    `alterego-poet.gguf`), or for a generic stem the nearest folder that is neither generic
    nor a version folder (`.../poet/v3/adapter.gguf`)."""
    parts = _path_parts(path)
    if not parts:
        return ""
    stem = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
    for name in [stem, *reversed(parts[:-1])]:
        persona = _persona_name(name)
        if persona and persona not in GENERIC_STEMS and not VERSION_DIR.match(persona):
            return persona
    return _persona_name(stem)


def lora_adapters(entries: list[dict]) -> dict[str, ServerAdapter]:
    """llama-server style: persona -> its adapter, from `GET /lora-adapters`. A scale the
    server was started with (`--lora-scaled FILE:SCALE`) is kept; 0 (unapplied) means 1."""
    out: dict[str, ServerAdapter] = {}
    for entry in entries:
        path, lora_id = str(entry.get("path", "")), entry.get("id")
        persona = lora_persona(path)
        if not persona or not isinstance(lora_id, int):
            continue
        if persona in out:
            log.warning("two server adapters for %s (%s, %s): using the first", persona, out[persona].path, path)
            continue
        scale = float(entry.get("scale") or 0.0)
        out[persona] = ServerAdapter(persona, lora_id=lora_id, path=path, scale=scale if scale > 0 else 1.0)
    return out


def find_lora(entries: list[dict], persona: str) -> ServerAdapter | None:
    """The broader match, for adapters `lora_persona` names otherwise: the file stem or
    any folder on the adapter's path equals the persona's name."""
    wanted = {persona.lower(), PERSONA_PREFIX + persona.lower()}
    for entry in entries:
        path, lora_id = str(entry.get("path", "")), entry.get("id")
        parts = [p.lower() for p in _path_parts(path)]
        names = set(parts[:-1]) | ({parts[-1].rsplit(".", 1)[0]} if parts else set())
        if isinstance(lora_id, int) and names & wanted:
            scale = float(entry.get("scale") or 0.0)
            return ServerAdapter(persona.lower(), lora_id=lora_id, path=path, scale=scale if scale > 0 else 1.0)
    return None


def lora_field(entries: list[dict], chosen: ServerAdapter | None) -> list[dict]:
    """The per-request `lora` list: every adapter the server has, each with an explicit
    scale — the chosen one's, 0 for the rest (an empty or absent list is read differently
    by different llama-server versions)."""
    out = []
    for entry in entries:
        lora_id = entry.get("id")
        if isinstance(lora_id, int):
            on = chosen is not None and chosen.lora_id == lora_id
            out.append({"id": lora_id, "scale": chosen.scale if on else 0.0})
    return out


def estimate_tokens(text: str) -> int:
    """A conservative token count for servers without a tokenize endpoint: BPE vocabularies
    average ~4 bytes a token on English, so bytes/3 over-counts, and trimming history by
    it keeps the prompt inside the context window."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def _sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream. Every server here puts one JSON
    object on one `data:` line; comments (`: ping`) and other fields are skipped."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


# -- the engine ---------------------------------------------------------------------------
class OpenAIEngine:
    def __init__(self, config: EngineConfig):
        config.validate()
        self.config = config
        self.server_url = config.server_url.strip().rstrip("/")
        # llama-server's /lora-adapters, /tokenize, /props and llama-cpp-python's /extras
        # live beside the OpenAI API, not under /v1.
        self.root_url = self.server_url[: -len("/v1")] if self.server_url.endswith("/v1") else self.server_url
        timeout = config.request_timeout_s
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        # A dead host must not hold a turn for the whole read timeout just to connect.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), headers=headers)
        self._lock = threading.Lock()
        self.adapters: dict[str, ServerAdapter] = {}
        self.adapter_errors: dict[str, str] = {}  # the server owns its adapters; none are rejected here
        self._loras: list[dict] = []
        self._models: list[dict] = []
        self._refreshed = 0.0
        self._tokenize: tuple[str, str] | None = None  # (endpoint kind, url) once known
        self._token_cache: OrderedDict[str, int] = OrderedDict()
        self._last_request: tuple[str, int | None] | None = None
        self.architecture = ""

        started = time.perf_counter()
        self.model = ""
        self._refresh()  # an unreachable server fails here, before any turn is written
        self.load_ms = (time.perf_counter() - started) * 1000
        # Adapters are stored per base model; a served model gets its own key, so the
        # in-process model's adapter library is never mistaken for the server's.
        digest = hashlib.sha256(f"{self.server_url}\n{self.model}".encode()).hexdigest()[:12]
        self.fingerprint = f"openai-{digest}"
        self.model_path = PurePosixPath(self.model)  # the server's name for it, not a local file
        self.n_ctx = self._server_n_ctx() or config.n_ctx
        log.info("using %s at %s (%d persona adapters)", self.model, self.server_url, len(self.adapters))

    def close(self) -> None:
        self._client.close()

    # -- errors ---------------------------------------------------------------------------
    def _unavailable(self, exc: httpx.HTTPError) -> EngineUnavailableError:
        url = self.server_url
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return EngineUnavailableError(
                f"Cannot reach the inference server at {url} ({exc or type(exc).__name__}). "
                "Check that it is running and that engine.server_url is right."
            )
        if isinstance(exc, httpx.TimeoutException):
            return EngineUnavailableError(
                f"The inference server at {url} did not answer within {self.config.request_timeout_s:g} s. "
                "Check that it is not stuck or overloaded, or raise engine.request_timeout_s."
            )
        return EngineUnavailableError(
            f"The connection to the inference server at {url} broke off ({type(exc).__name__}: {exc}). "
            "Check that it is still running."
        )

    def _http_error(self, resp: httpx.Response, what: str) -> EngineUnavailableError:
        try:
            body = resp.json()
            detail = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
        except ValueError:
            detail = resp.text
        detail = str(detail).strip()[:300]
        if resp.status_code in (401, 403):
            hint = "check engine.api_key"
        elif resp.status_code == 404:
            hint = "check that engine.server_url is the OpenAI API base, e.g. http://127.0.0.1:8080/v1"
        else:
            hint = "see the server's log"
        return EngineUnavailableError(
            f"The inference server at {self.server_url} answered HTTP {resp.status_code} to {what}"
            f"{': ' + detail if detail else ''} ({hint})."
        )

    def _get(self, url: str, what: str, optional: bool = False):
        """GET a JSON document; with `optional`, an endpoint the server lacks gives None."""
        try:
            resp = self._client.get(url)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        if optional and resp.status_code in (404, 405, 501):
            return None
        if resp.status_code >= 400:
            raise self._http_error(resp, what)
        try:
            return resp.json()
        except ValueError:
            if optional:
                return None
            raise EngineUnavailableError(
                f"The inference server at {self.server_url} answered {what} with something that is not JSON; "
                "check that engine.server_url points at an OpenAI-compatible API."
            ) from None

    # -- models and adapters ----------------------------------------------------------------
    def _refresh(self) -> None:
        listing = self._get(self.server_url + "/models", "GET /models")
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            raise EngineUnavailableError(
                f"{self.server_url}/models is not an OpenAI model list; check engine.server_url."
            )
        base = pick_base_model(models, self.config.server_model.strip())
        loras = self._get(self.root_url + "/lora-adapters", "GET /lora-adapters", optional=True)
        loras = [e for e in loras if isinstance(e, dict)] if isinstance(loras, list) else []
        adapters = {**model_adapters(models, base), **lora_adapters(loras)}
        with self._lock:
            if self.model and base != self.model:
                log.warning("the server's base model is now %s (was %s)", base, self.model)
            self.model, self._loras, self.adapters = base, loras, adapters
            self._refreshed = time.monotonic()
        self._models = models

    def _server_n_ctx(self) -> int:
        """The server's context window where it says: vLLM's `max_model_len` in the model
        list, llama-server's `/props`; 0 when unknown (llama_cpp.server)."""
        for m in self._models:
            if m.get("id") == self.model and isinstance(m.get("max_model_len"), int):
                return m["max_model_len"]
        try:
            props = self._get(self.root_url + "/props", "GET /props", optional=True)
        except EngineUnavailableError:
            return 0
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else 0

    def sync_adapters(self, library=None) -> dict[str, str]:
        """Re-read the server's adapters (at most every ADAPTER_REFRESH_S). The local
        adapter library is ignored: the server owns what it serves. A server that is down
        keeps the last list — the turn's own request then says what is wrong."""
        if time.monotonic() - self._refreshed >= ADAPTER_REFRESH_S:
            try:
                self._refresh()
            except EngineUnavailableError as exc:
                log.warning("server adapters not refreshed: %s", exc)
                self._refreshed = time.monotonic()
        return {p: a.label for p, a in self.adapters.items()}

    def adapter_for(self, persona: str | None) -> ServerAdapter | None:
        if not persona:
            return None
        with self._lock:
            found = self.adapters.get(persona.strip().lower())
            loras = self._loras
        return found or find_lora(loras, persona.strip())

    # -- tokens -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the server's tokenizer (llama_cpp.server's /extras/tokenize,
        llama-server's and vLLM's /tokenize), cached by text since the same history is
        counted every turn; a server without one gets a conservative estimate."""
        if not text:
            return 0
        with self._lock:
            if text in self._token_cache:
                self._token_cache.move_to_end(text)
                return self._token_cache[text]
        count = self._server_count(text)
        if count is None:
            return estimate_tokens(text)
        with self._lock:
            self._token_cache[text] = count
            if len(self._token_cache) > TOKEN_CACHE_SIZE:
                self._token_cache.popitem(last=False)
        return count

    def _server_count(self, text: str) -> int | None:
        # The model of the last chat request: llama_cpp.server reloads its weights to switch
        # models, and every alias of one base shares the tokenizer.
        model = (self._last_request or (self.model, None))[0]
        bodies = {
            "extras": {"input": text, "model": model},
            "tokenize": {"content": text, "prompt": text, "model": model, "add_special": False,
                         "add_special_tokens": False},
        }
        candidates = [self._tokenize] if self._tokenize else [
            ("extras", self.root_url + "/extras/tokenize"), ("tokenize", self.root_url + "/tokenize")
        ]
        for kind, url in candidates:
            try:
                resp = self._client.post(url, json=bodies[kind])
            except httpx.HTTPError as exc:
                raise self._unavailable(exc) from None
            if resp.status_code in (401, 403):
                raise self._http_error(resp, f"POST {url[len(self.root_url):]}")
            try:
                data = resp.json() if resp.status_code < 400 else None
            except ValueError:
                data = None
            count = None
            if isinstance(data, dict):
                if isinstance(data.get("tokens"), list):
                    count = len(data["tokens"])
                elif isinstance(data.get("count"), int):
                    count = data["count"]
            if count is not None:
                self._tokenize = (kind, url)
                return count
        if self._tokenize is None:
            log.info("%s has no tokenize endpoint: estimating token counts", self.server_url)
            self._tokenize = ("estimate", "")
        return None

    # -- generation -------------------------------------------------------------------------
    # The server applies its model's chat template: prompts are role messages.
    chat_format = CHAT

    def stream_chat(
        self, messages: list[dict] | Rendered, params: GenerationParams, adapter: str | None = None, session=None
    ) -> Generation:
        """Stream a reply; `adapter` names the persona whose server-side adapter to use
        (None, or a persona the server has no adapter for = the bare base model).
        `session` is accepted for the engine interface; the server keeps its own cache."""
        timings = Timings()
        stop: list[str] = []
        if isinstance(messages, Rendered):
            messages, stop = messages.messages, messages.stop
        return Generation(self._run(messages, params, timings, adapter, stop), timings)

    def prefill(self, prefix: Rendered, adapter: str | None = None, session=None, *,
                yield_to_turns: bool = False) -> dict:
        """The engine interface's look-ahead (`LlamaEngine.prefill`): nothing to do here,
        since the server keeps its own prompt cache and an OpenAI-compatible API has no
        way to fill it without generating."""
        return {"adapter": "", "adapter_switched": False, "snapshot_restored": False,
                "prefix_tokens": 0, "evaluated_tokens": 0, "interrupted": False, "ms": 0.0}

    def request_body(self, messages: list[dict], params: GenerationParams, chosen: ServerAdapter | None,
                     stop: list[str] | None = None) -> dict:
        gen = params.as_llama_kwargs()
        body = {
            "model": chosen.model if chosen and chosen.model else self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": gen["temperature"],
            "top_p": gen["top_p"],
            "max_tokens": gen["max_tokens"],
            # Not OpenAI's, but llama.cpp's and vLLM's; each server ignores what it lacks.
            "top_k": gen["top_k"],
            "repeat_penalty": gen["repeat_penalty"],
            "repetition_penalty": gen["repeat_penalty"],
        }
        if stop:
            body["stop"] = stop
        if self._loras:
            body["lora"] = lora_field(self._loras, chosen if chosen and chosen.lora_id is not None else None)
        return body

    def _run(
        self, messages: list[dict], params: GenerationParams, timings: Timings, adapter: str | None,
        stop: list[str] | None = None,
    ) -> Iterator[str]:
        chosen = self.adapter_for(adapter)
        body = self.request_body(messages, params, chosen, stop)
        key = (body["model"], chosen.lora_id if chosen else None)
        timings.adapter = chosen.label if chosen else ""
        timings.adapter_switched = self._last_request is not None and key != self._last_request
        self._last_request = key
        usage: dict = {}
        server_timings: dict = {}
        started = time.perf_counter()
        first = None
        try:
            with self._client.stream("POST", self.server_url + "/chat/completions", json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._http_error(resp, "POST /chat/completions")
                for data in _sse_data(resp.iter_lines()):
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise EngineUnavailableError(
                            f"The inference server at {self.server_url} sent a reply that is not JSON: {data[:200]}"
                        ) from None
                    if chunk.get("error"):
                        err = chunk["error"]
                        raise EngineUnavailableError(
                            f"The inference server at {self.server_url} failed: "
                            f"{err.get('message', err) if isinstance(err, dict) else err}"
                        )
                    usage = chunk.get("usage") or usage
                    server_timings = chunk.get("timings") or server_timings
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if not piece:
                            continue
                        first = timings.count_piece(started, first)
                        yield piece
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        finally:
            end = time.perf_counter()
            timings.total_ms = (end - started) * 1000
        # What the server reports wins over what was counted here: a streamed chunk may
        # hold more than one token.
        if isinstance(usage.get("completion_tokens"), int):
            timings.tokens = usage["completion_tokens"]
        elif isinstance(server_timings.get("predicted_n"), int):
            timings.tokens = server_timings["predicted_n"]
        if first is not None and timings.tokens > 1:
            timings.tokens_per_s = (timings.tokens - 1) / max(end - first, 1e-9)
        self._prompt_figures(timings, messages, usage, server_timings)

    def _prompt_figures(self, timings: Timings, messages: list[dict], usage: dict, server_timings: dict) -> None:
        """prompt_tokens / prompt_eval_tokens from the usage the server sent (vLLM and
        llama-server send it; llama_cpp.server streams none); otherwise the prompt is
        counted here (cached counts, plus the template's few tokens a message) and taken
        as evaluated in full, since what the server's cache saved is not known."""
        if isinstance(usage.get("prompt_tokens"), int):
            timings.prompt_tokens = usage["prompt_tokens"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if isinstance(server_timings.get("prompt_n"), int):
                timings.prompt_eval_tokens = server_timings["prompt_n"]
            else:
                timings.prompt_eval_tokens = timings.prompt_tokens - (cached if isinstance(cached, int) else 0)
            return
        if isinstance(server_timings.get("prompt_n"), int):
            timings.prompt_eval_tokens = server_timings["prompt_n"]
            timings.prompt_tokens = timings.prompt_eval_tokens + int(server_timings.get("cache_n") or 0)
            return
        try:
            timings.prompt_tokens = sum(self.count_tokens(str(m.get("content") or "")) + 4 for m in messages)
        except EngineUnavailableError:
            timings.prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) + 4 for m in messages)
        timings.prompt_eval_tokens = timings.prompt_tokens
