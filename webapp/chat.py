"""`ChatService`: the plain-Python turn pipeline that the Gradio UI and the CLI both call.

A turn is: validate the message → resolve the persona → journal the user's message
(before anything can fail) → build the prompt → stream the reply from the engine →
journal the reply with its timings. The prompt is laid out so that llama.cpp can reuse
its KV cache between turns: the persona's system prompt first, then the conversation's
earlier turns rendered exactly as before, then the new message. Only when the history no
longer fits the context window are the oldest turns dropped (and the prefix changes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from memory.journal import Journal, Turn
from personas.catalog import Persona, PersonaCatalog
from personas.engine import LlamaEngine

from .errors import ChatInputError
from .settings import Settings

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

    def as_dict(self) -> dict:
        return {
            "reply": self.reply,
            "persona": self.persona,
            "turn_id": self.turn_id,
            "conversation_id": self.conversation_id,
            "timings": self.timings,
        }


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: LlamaEngine | None = None,
        journal: Journal | None = None,
        catalog: PersonaCatalog | None = None,
    ):
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog or PersonaCatalog.load(settings.home / "personas")
        self.journal = journal or Journal(settings.journal_path)
        self._engine = engine

    @property
    def engine(self) -> LlamaEngine:
        # Loaded on first use, so listing personas or conversations never waits for it.
        if self._engine is None:
            self._engine = LlamaEngine(self.settings.engine)
        return self._engine

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
        generation is recorded on the turn (status `error`) and re-raised."""
        text = self.validate(message)
        chosen = self.catalog.get(persona)
        engine = self.engine  # a missing model fails here, before the turn is written
        if conversation_id is None or self.journal.get_conversation(conversation_id) is None:
            conversation_id = self.journal.create_conversation()
        prior = [t for t in self.journal.turns(conversation_id) if t.status == "ok"]
        turn_id = self.journal.start_turn(conversation_id, text, chosen.name)

        reply = ""
        try:
            messages = self.build_prompt(chosen, prior, text)
            generation = engine.stream_chat(messages, chosen.generation)
            for piece in generation:
                reply += piece
                yield TurnUpdate(turn_id, conversation_id, chosen.name, reply)
        except BaseException as exc:
            # GeneratorExit (client went away) keeps what was said so far as well.
            self.journal.finish_turn(turn_id, reply, status="error", error=f"{type(exc).__name__}: {exc}")
            raise
        timings = generation.timings.as_dict()
        reply = reply.strip()
        self.journal.finish_turn(turn_id, reply, timings=timings)
        yield TurnUpdate(turn_id, conversation_id, chosen.name, reply, done=True, timings=timings)

    def send(self, message: str, persona: str = "me", conversation_id: int | None = None) -> TurnUpdate:
        """One whole turn, not streamed (CLI, scripts)."""
        last = None
        for last in self.stream_turn(message, persona, conversation_id):
            pass
        assert last is not None and last.done
        return last

    # -- prompt -------------------------------------------------------------------------
    def build_prompt(self, persona: Persona, prior: list[Turn], text: str) -> list[dict]:
        system = {"role": "system", "content": persona.system_prompt}
        history: list[dict] = []
        for turn in prior:
            history += [{"role": "user", "content": turn.user_text}, {"role": "assistant", "content": turn.reply}]
        current = {"role": "user", "content": text}

        budget = self.settings.engine.n_ctx - self.settings.engine.reply_reserve_tokens
        cost = lambda m: self.engine.count_tokens(m["content"]) + 8  # noqa: E731 (role/template overhead)
        used = cost(system) + cost(current)
        if used > budget:
            raise ChatInputError(
                f"The message needs about {used} tokens but the model's context allows {budget} "
                "before the reply; shorten it or raise engine.n_ctx."
            )
        # Keep the newest turns that fit; drop whole (user, assistant) pairs from the start.
        kept: list[dict] = []
        for i in range(len(history) - 2, -1, -2):
            pair_cost = cost(history[i]) + cost(history[i + 1])
            if used + pair_cost > budget:
                break
            used += pair_cost
            kept = history[i : i + 2] + kept
        return [system, *kept, current]
