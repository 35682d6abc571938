"""`ChatService`: the plain-Python turn pipeline that the Gradio UI and the CLI both call.

A turn is: validate the message → retrieve the scenes that matter from memory → pick
the persona (the dropdown's choice, or in Auto mode the router's, reusing the retrieval
embedding) → journal the user's message (before generation can fail) → build the prompt
→ stream the reply from the engine under the persona's LoRA adapter, if it has one →
journal the reply with its timings, sources, adapter and routing reason. Promoted
adapters are picked up on the next turn without a restart. The prompt is laid out (by
`personas.prompting`, in the model's chat format: chat template or, for a base model, a
transcript) so that llama.cpp can reuse its KV cache between turns: the persona first,
then the conversation's earlier turns rendered exactly as before (as typed, without their
retrieved notes), then the new message with this turn's notes from memory. Only when the
history no longer fits the context window are the oldest turns dropped (and the prefix
changes). A persona switch needs the conversation read again under the new persona:
`prepare` does that when a persona is picked, before the message, and in the app the
previous persona is caught up in the background after each turn, so a switch costs the
reply little. Background work on memory (line vectors after an upgrade) waits while a
turn or a requested prefill runs. If memory is unavailable, the turn goes on without it
and says so. The base model can be switched at run time (`use_model`); adapters follow
its fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from memory.errors import StoreUnavailableError
from memory.journal import Journal, Turn
from memory.scenes import my_exchanges
from memory.service import Retrieval, SceneMemory
from personas.adapters import AdapterLibrary
from personas.catalog import Persona, PersonaCatalog
from personas.engine import Engine, create_engine
from personas.errors import EngineConfigError, ModelNotFoundError
from personas.models import CHAT, embedded_info, fingerprint, resolve_chat_model
from personas.prompting import Rendered, render, render_prefix, script_for
from personas.router import AUTO, PromptRouter, RouteDecision

from . import modelchoice
from .errors import ChatInputError
from .settings import Settings, save_setting

log = logging.getLogger(__name__)


@dataclass
class TurnUpdate:
    """One step of a streaming turn: the reply so far, and when `done`, the final figures."""

    turn_id: int
    conversation_id: int
    persona: str
    reply: str
    done: bool = False
    timings: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    memory_error: str | None = None
    route: RouteDecision | None = None  # set in Auto mode
    adapter: str = ""  # "<persona>/v<N>" of the LoRA used, "" = prompt-only
    model: str = ""  # the base model's file name (set on the final update)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "reply": self.reply,
            "persona": self.persona,
            "turn_id": self.turn_id,
            "conversation_id": self.conversation_id,
            "timings": self.timings,
            "sources": self.sources,
            "memory_error": self.memory_error,
            "adapter": self.adapter,
            "route": self.route.as_dict() if self.route else None,
        }


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        journal: Journal | None = None,
        catalog: PersonaCatalog | None = None,
        memory: SceneMemory | None = None,
    ):
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog or PersonaCatalog.load(settings.home / "personas")
        self.journal = journal or Journal(settings.journal_path)
        # Turns left pending were cut off mid-reply by a crash: say so instead of leaving
        # them pending forever (the user's message itself is kept).
        self.journal.interrupt_pending_turns()
        self.memory = memory or SceneMemory(settings.memory, settings.home, self.journal)
        self._engine = engine
        self._router: PromptRouter | None = None
        self._library: AdapterLibrary | None = None
        self._scheduler = None
        self._engine_error: str | None = None
        # Background catch-up of the previous persona after a turn (`_start_catch_up`):
        # switched on by the app server; a one-shot CLI process would exit under it.
        self.catch_up = False
        self._catch_up: threading.Thread | None = None
        self._catch_up_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        # Loaded on first use, so listing personas or conversations never waits for it.
        if self._engine is None:
            self._engine = create_engine(self.settings.engine)
            self._engine.sync_adapters(self.adapters)
        return self._engine

    @property
    def adapters(self) -> AdapterLibrary:
        """The adapter library of the configured base model (no model load needed)."""
        if self._library is None:
            fp = self._engine.fingerprint if self._engine else fingerprint(resolve_chat_model(self.settings.engine.model_spec))
            self._library = AdapterLibrary(self.settings.adapters_path, fp)
        return self._library

    def refresh_adapters(self) -> dict[str, str]:
        """Load newly promoted (or drop deactivated) adapters into the running engine."""
        return self.engine.sync_adapters(self.adapters)

    @property
    def router(self) -> PromptRouter:
        if self._router is None:
            self._router = PromptRouter(self.catalog, self.memory.embedder, self.settings.router)
            self._router.set_overrides(self.journal.overrides())
        return self._router

    # -- the base model ---------------------------------------------------------------
    def models(self) -> dict:
        """The embedded models and the configured one (see `webapp.modelchoice`)."""
        return modelchoice.overview(self.settings.engine.model_spec, self.settings.adapters_path)

    def use_model(self, spec: str, *, persist: bool = True) -> dict:
        """Switch the base model to an embedded name or a GGUF path. A loaded engine is
        replaced by one on the new model (a model that fails to load changes nothing);
        with `persist` the choice is written to config.toml. Returns the model's row,
        the personas that answer prompt-only on it (no adapter trained for this base) and
        any note for the user."""
        spec = (spec or "").strip()
        if self.settings.engine.backend.strip().lower() != "llama":
            raise EngineConfigError(
                "The model is chosen on the inference server when engine.backend = \"openai\"; "
                "switching here applies to the in-process engine only."
            )
        info = embedded_info(spec)
        looks_like_path = os.sep in spec or spec.endswith(".gguf")
        name = info.name if info else str(Path(spec).expanduser().resolve()) if looks_like_path else spec
        row = modelchoice.describe(name, self.settings.adapters_path)
        if not row["available"]:
            raise ModelNotFoundError(row["error"])
        config = dataclasses.replace(self.settings.engine, model=name)
        if self._engine is not None:
            self._engine = create_engine(config)  # a turn in flight keeps the engine it started with
        self.settings.engine = config
        self._library = None  # adapters are per base-model fingerprint
        if self._engine is not None:
            self._engine.sync_adapters(self.adapters)
        if self._scheduler is not None:  # retraining now targets the new base
            self._scheduler.deps.library, self._scheduler.deps.model_path = self.adapters, name
        notes = []
        if persist:
            path = save_setting(self.settings.home, "engine", "model", name)
            notes.append(f"saved to {path}")
            if os.environ.get("ALTEREGO_ENGINE_MODEL", "").strip() not in ("", name):
                notes.append("ALTEREGO_ENGINE_MODEL is set in the environment and wins over config.toml at the next start")
        return {"model": row, "prompt_only": modelchoice.prompt_only_personas(self.catalog.names(), row),
                "notes": notes}

    def import_advice(self, summary: dict) -> str | None:
        """Advice after an import (mostly non-English texts on an English-only model)."""
        return modelchoice.import_advice(summary, self.settings.engine.model_spec)

    # -- approval loop ------------------------------------------------------------------
    def approve(self, turn_id: int, edit: str | None = None) -> Turn:
        """Approve a reply as sounding like its persona; with `edit`, the edited text is
        what it should have said (and becomes the training target)."""
        if edit is not None:
            edit = self.validate(edit)
            turn = self.journal.get_turn(turn_id)
            if turn is not None and edit == turn.reply.strip():
                edit = None  # an edit that changes nothing is a plain approval
        return self.journal.set_feedback(turn_id, "edited" if edit else "approved", edit)

    def reject(self, turn_id: int) -> Turn:
        return self.journal.set_feedback(turn_id, "rejected")

    def store_for(self, persona: str):
        """The scene store a persona's training data comes from: only `me` learns from
        the user's imported texts; role personas learn from their examples and approvals."""
        return self.memory.store if persona == "me" else None

    def training_data(self, persona: str) -> dict:
        """Harvest `persona`'s training data as the next run would (into a fresh folder
        under runs/) and return its summary: pairs per source kind and frame, drops and
        their reasons, examples (`tuning.dataset`)."""
        from tuning.dataset import harvest
        from tuning.pipeline import base_chat_format, new_run_dir

        chosen = self.catalog.get(persona)
        tuning = self.settings.tuning
        return harvest(chosen, new_run_dir(self.settings.home, f"dataset-{chosen.name}"), journal=self.journal,
                       store=self.store_for(chosen.name), heldout_fraction=tuning.heldout_fraction,
                       max_tokens=tuning.max_length, context_tokens=tuning.context_tokens,
                       chat_format=base_chat_format(tuning, self.settings.engine.model_spec)).as_dict()

    @property
    def scheduler(self):
        """The background retraining job (created on first use; `start()` runs it)."""
        if self._scheduler is None:
            from tuning.scheduler import Deps, RetrainScheduler

            self._scheduler = RetrainScheduler(Deps(
                home=self.settings.home, config=self.settings.tuning, catalog=self.catalog, journal=self.journal,
                library=self.adapters, store_for=self.store_for,
                model_path=self.settings.engine.model_spec,
                on_promoted=lambda p: self.refresh_adapters() if self._engine is not None else None,
            ))
        return self._scheduler

    def warm_up_model(self) -> None:
        """Load the model now, recording a failure for /health instead of raising it
        later on the first visitor's turn."""
        try:
            self.engine
        except Exception as exc:
            self._engine_error = str(exc)
            raise

    def warm_up(self) -> None:
        """Load the model, the scene store, the embedder and the router's exemplars (UI
        start-up), so the first visitor's turn does not pay for them (opening ChromaDB
        alone is ~2 s)."""
        self.engine
        try:
            self.memory.store
        except StoreUnavailableError as exc:  # a Chroma server that is down: turns say so
            log.warning("scene store not available at start: %s", exc)
        self.router.bank()

    def health(self) -> dict:
        """What /health reports: status "ok" (can chat with memory), "degraded" (can chat,
        memory unreachable) or "down" (no model); the model, the store and the
        retraining job. Cheap: it loads nothing and waits at most a few seconds."""
        engine = self._engine
        model = {"loaded": engine is not None, "backend": type(engine).__name__ if engine else None,
                 "name": engine.model_path.name if engine is not None and hasattr(engine, "model_path") else None,
                 "adapters": sorted(engine.adapters) if engine is not None else [],
                 "error": self._engine_error}
        store = self.memory.health()
        sched = self._scheduler
        scheduler = {
            "enabled": self.settings.tuning.scheduler,
            "running": bool(sched and sched.running),
            "next_check": sched.next_run().isoformat() if sched and sched.next_run() else None,
            "active_run": (sched.current or {}).get("persona") if sched else None,
        }
        status = "down" if engine is None else "ok" if store["reachable"] else "degraded"
        return {"status": status, "model": model, "store": store, "scheduler": scheduler}

    def route(self, message: str, conversation_id: int | None = None, embedding=None) -> RouteDecision:
        """Auto mode's choice for a message, staying with the conversation's persona when unsure."""
        current = None
        if conversation_id is not None:
            turns = self.journal.turns(conversation_id)
            current = turns[-1].persona if turns else None
        return self.router.route(message, current=current, embedding=embedding)

    # -- queries ------------------------------------------------------------------------
    def personas(self) -> list[Persona]:
        return self.catalog.all()

    def new_conversation(self) -> int:
        return self.journal.create_conversation()

    def conversations(self):
        return self.journal.list_conversations(self.settings.server.conversation_list)

    def history(self, conversation_id: int) -> list[Turn]:
        return self.journal.turns(conversation_id)

    # -- the turn -----------------------------------------------------------------------
    def validate(self, message: str) -> str:
        text = (message or "").strip()
        if not text:
            raise ChatInputError("The message is empty: type something to send.")
        limit = self.settings.engine.max_message_chars
        if len(text) > limit:
            raise ChatInputError(
                f"The message is {len(text):,} characters; the limit is {limit:,} "
                "(setting engine.max_message_chars). To give alterego a long text, import it "
                "as a file instead of pasting it."
            )
        return text

    def stream_turn(
        self, message: str, persona: str = "me", conversation_id: int | None = None
    ) -> Iterator[TurnUpdate]:
        """Run one turn, yielding the growing reply. Raises typed user errors before
        anything is stored for bad input; once the message is journaled, a failure in
        generation is recorded on the turn (status `error`) and re-raised. Background
        work on memory (making line vectors after an upgrade) waits while it runs."""
        with self.memory.turn():
            yield from self._turn(message, persona, conversation_id)

    def _turn(self, message: str, persona: str, conversation_id: int | None) -> Iterator[TurnUpdate]:
        started = time.perf_counter()
        text = self.validate(message)
        auto = (persona or "").strip().lower() == AUTO
        chosen = None if auto else self.catalog.get(persona)
        engine = self.engine  # a missing model fails here, before the turn is written
        engine.sync_adapters(self.adapters)  # a newly promoted adapter is used from this turn on
        conversation_id, prior = self._prior(conversation_id)
        t_retrieve = time.perf_counter()
        retrieval = self.memory.retrieve(text, recent=[t.user_text for t in prior[-1:]])
        t_route = time.perf_counter()
        decision = self._decide(text, chosen, conversation_id, retrieval)
        t_routed = time.perf_counter()
        if chosen is None:
            chosen = self.catalog.get(decision.persona)
        # A message too long for the context window is refused here, before anything
        # (not even an empty conversation) is written.
        messages = self.build_prompt(chosen, prior, text, retrieval)
        if conversation_id is None:
            conversation_id = self.journal.create_conversation()
        turn_id = self.journal.start_turn(conversation_id, text, chosen.name, decision.reason if auto else "")
        route = decision if auto else None

        reply = ""
        first_piece = None
        sources = [h.as_dict() for h in retrieval.hits]
        try:
            generation = engine.stream_chat(messages, chosen.generation, adapter=chosen.name, session=conversation_id)
            for piece in generation:
                first_piece = first_piece or time.perf_counter()
                reply += piece
                yield TurnUpdate(turn_id, conversation_id, chosen.name, reply.lstrip(), sources=sources,
                                 memory_error=retrieval.error, route=route, adapter=generation.timings.adapter)
        except BaseException as exc:
            # GeneratorExit (client went away) keeps what was said so far as well.
            self.journal.finish_turn(
                turn_id, reply, status="error", error=f"{type(exc).__name__}: {exc}", sources=sources
            )
            raise
        # ttft_ms/total_ms are what the user waits for: from the message to the first token,
        # retrieval and routing included; engine_ttft_ms is the model's part alone.
        end = time.perf_counter()
        timings = generation.timings.as_dict()
        timings.update(
            engine_ttft_ms=timings["ttft_ms"],
            ttft_ms=round(((first_piece or end) - started) * 1000, 2),
            total_ms=round((end - started) * 1000, 2),
            retrieval_ms=round((t_route - t_retrieve) * 1000, 2),
            route_ms=round((t_routed - t_route) * 1000, 2),
        )
        reply = reply.strip()
        self.journal.finish_turn(turn_id, reply, timings=timings, sources=sources)
        self._start_catch_up(conversation_id, chosen.name, prior)
        yield TurnUpdate(turn_id, conversation_id, chosen.name, reply, done=True, timings=timings,
                         sources=sources, memory_error=retrieval.error, route=route,
                         adapter=timings.get("adapter", ""), model=engine.model_path.name)

    def _decide(self, text: str, chosen: Persona | None, conversation_id: int | None, retrieval: Retrieval) -> RouteDecision:
        """Route in Auto mode. With a persona chosen by hand, still ask the router (when it
        is loaded — the UI warms it up; a one-shot CLI turn doesn't pay for it): where it
        would have picked another, the choice is an override it learns from."""
        if chosen is not None and self._router is None:
            return RouteDecision(chosen.name, {}, "")
        try:
            decision = self.route(text, conversation_id, embedding=retrieval.query_embedding)
        except Exception as exc:  # noqa: BLE001 — routing must never cost the user their turn
            log.warning("router unavailable: %s", exc)
            fallback = chosen.name if chosen else "me"
            return RouteDecision(fallback, {}, f"router unavailable ({exc}); answering as {fallback}")
        if chosen is not None and decision.persona != chosen.name:
            self.journal.record_override(text, chosen.name, decision.persona)
            self.router.add_override(text, chosen.name)
        return decision

    def send(self, message: str, persona: str = "me", conversation_id: int | None = None) -> TurnUpdate:
        """One whole turn, not streamed (CLI, scripts)."""
        last = None
        for last in self.stream_turn(message, persona, conversation_id):
            pass
        assert last is not None and last.done
        return last

    # -- prompt -------------------------------------------------------------------------
    def build_prompt(
        self, persona: Persona, prior: list[Turn], text: str, retrieval: Retrieval | None = None
    ) -> Rendered:
        """The turn laid out in the model's chat format (`personas.prompting`): the
        persona first, the earlier turns as typed, then this turn's notes and message.
        Oldest turns are dropped, whole, when the history does not fit the context."""
        notes, style, exchanges = memory_notes(retrieval, persona)
        speakers = sorted({name.strip() for hit in (retrieval.hits if retrieval else [])
                           for name in hit.meta.get("speakers", "").split(",") if name.strip()})
        script = script_for(persona, text, [], notes, style, exchanges, speakers)
        fmt = self.engine.chat_format
        used = self._prompt_tokens(render(script, fmt))
        budget = self._history_budget()
        if used > budget:
            raise ChatInputError(
                f"The message needs about {used} tokens but the model's context allows {budget} "
                "before the reply; shorten it or raise engine.n_ctx."
            )
        script.history = self._fit_history(prior, used)
        return render(script, fmt)

    def prepare(self, persona: str, conversation_id: int | None = None, *, yield_to_turns: bool = False) -> dict | None:
        """Evaluate a persona's start and the conversation so far ahead of the next
        message (`engine.prefill`): the UI calls it when a persona is picked in the
        dropdown, so the turn that follows — a switch to that persona — pays only for its
        message, as a turn that stays with a persona does. Auto mode has nothing to prepare
        (the router picks the persona from the message). Returns the engine's figures, or
        None when there was nothing to do."""
        if (persona or "").strip().lower() == AUTO:
            return None
        chosen = self.catalog.get(persona)
        engine = self.engine
        engine.sync_adapters(self.adapters)
        conversation_id, prior = self._prior(conversation_id)
        script = script_for(chosen, "")
        fmt = engine.chat_format
        # The turn will keep the same history unless its own notes and message push the
        # oldest turns out; then it reuses what matches and evaluates the rest itself.
        script.history = self._fit_history(prior, self._prompt_tokens(render(script, fmt)))
        # A prefill the user asked for (a persona picked) is the next turn's head start:
        # background work on memory waits for it, as for a turn; a catch-up does not hold it.
        with contextlib.nullcontext() if yield_to_turns else self.memory.turn():
            return engine.prefill(render_prefix(script, fmt), adapter=chosen.name, session=conversation_id,
                                  yield_to_turns=yield_to_turns)

    def _start_catch_up(self, conversation_id: int, persona: str, prior: list[Turn]) -> None:
        """After a turn, bring the conversation's previous persona up to date in the
        background (its KV snapshot stops at its own last turn), so that switching back to
        it — Auto mode's router does it without warning — pays only for the new message.
        It runs while the user reads and types, and gives way to any turn that wants the
        engine. Only with KV snapshots on: without them a context left is thrown away."""
        if not self.catch_up or not getattr(getattr(self._engine, "snapshots", None), "max_bytes", 0):
            return
        other = next((t.persona for t in reversed(prior) if t.persona != persona), None)
        if other is None or not self._catch_up_lock.acquire(blocking=False):
            return  # one persona in this conversation, or a catch-up is still running

        def run():
            try:
                self.prepare(other, conversation_id, yield_to_turns=True)
            except Exception as exc:  # noqa: BLE001 — a look-ahead must never surface as an error
                log.info("catch-up of %s skipped: %s", other, exc)
            finally:
                self._catch_up_lock.release()

        self._catch_up = threading.Thread(target=run, name="alterego-catch-up", daemon=True)
        self._catch_up.start()

    def wait_for_catch_up(self, timeout: float | None = None) -> None:
        """Wait until a background catch-up (if any) is done — what a user's reading time
        gives it; benchmarks and tests use it."""
        thread = self._catch_up
        if thread is not None:
            thread.join(timeout)

    def _prior(self, conversation_id: int | None) -> tuple[int | None, list[Turn]]:
        """The conversation (None when it is gone, or never was: the message starts a new
        one) and its completed turns."""
        if conversation_id is not None and self.journal.get_conversation(conversation_id) is None:
            return None, []
        return conversation_id, ([t for t in self.journal.turns(conversation_id) if t.status == "ok"]
                                 if conversation_id else [])

    def _history_budget(self) -> int:
        return self.settings.engine.n_ctx - self.settings.engine.reply_reserve_tokens

    def _prompt_tokens(self, rendered: Rendered) -> int:
        # Role/template overhead is a few tokens a message; a transcript is plain text.
        count = self.engine.count_tokens
        if rendered.format == CHAT:
            return sum(count(m["content"]) + 8 for m in rendered.messages)
        return count(rendered.text) + 2

    def _fit_history(self, prior: list[Turn], used: int) -> list[tuple[str, str]]:
        """The newest turns that fit the context after `used` tokens; whole (user, reply)
        pairs are dropped from the start."""
        count, budget = self.engine.count_tokens, self._history_budget()
        kept: list[tuple[str, str]] = []
        for turn in reversed(prior):
            pair_cost = count(turn.user_text) + count(turn.reply) + 16
            if used + pair_cost > budget:
                break
            used += pair_cost
            kept.insert(0, (turn.user_text, turn.reply))
        return kept


MAX_EXCHANGES = 4  # the user's own past exchanges shown to Me in one turn


def memory_notes(retrieval: Retrieval | None, persona: Persona) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """This turn's notes from memory (each scene with its kind and date) and, for Me, the
    user's own voice: up to MAX_EXCHANGES of their past chat lines with the line each
    answered (a chat scene that gives them is not repeated as a note), and lines of their
    notes as style. Me is shown its voice as exchanges because, listed as quotes under
    "how the user writes", small models commented on the list or copied it (issue 16:
    `alterego bench --only voice`)."""
    if retrieval is None or not retrieval.hits:
        return [], [], []
    own = persona.name == "me"
    notes: list[str] = []
    exchanges: list[tuple[str, str]] = []
    for hit in retrieval.hits:
        kind = hit.meta.get("source_kind", "")
        mine = [e for e in my_exchanges(hit.text, hit.meta.get("me_speaker", ""), kind) if e[0]] if own else []
        if mine and len(exchanges) < MAX_EXCHANGES:
            exchanges += mine[:MAX_EXCHANGES - len(exchanges)]
            continue
        label = ", ".join(x for x in (kind, _date(hit.meta.get("timestamp"))) if x)
        notes.append(f"[{label}]\n{hit.text}")
    shown = {line for _, line in exchanges}
    style = [line for line in retrieval.style_lines if line not in shown] if own else []
    return notes, style, exchanges


def _date(timestamp: float | None) -> str:
    # Transcripts store seconds from the start of the recording, not a date.
    if timestamp is None or timestamp < 1e8:
        return ""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
