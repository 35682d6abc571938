"""How a turn is laid out for the model, in one place for serving, training and evaluation.

A `Script` says what a turn holds, independent of any model: the persona (its label,
instructions and description, a few static example exchanges in its voice), the
conversation so far, the new message, this turn's notes from memory and, for Me, the
user's own voice from memory: their past exchanges (what was said, what they answered)
and lines of their notes (style). `render` lays it out in the model's chat format
(`personas.models.chat_format`):

- CHAT (instruction-tuned models with a chat template): role messages — the persona's
  system prompt, the earlier turns as typed, Me's past exchanges as earlier turns, then
  the new message with this turn's notes before it. The engine applies the GGUF's template.
- TRANSCRIPT (base models, no template): one text — the persona's intro (description), a
  few example exchanges in its voice, then the conversation as `User: …` / `<Label>: …` lines;
  this turn's notes, style lines and Me's past exchanges sit just before the new message,
  and the text ends with the persona's label so the model writes its line.
Generation stops at the next speaker label, and at any line of a person from this turn's
notes (`Rendered.stop`). Me's notes are worded to it as its own memory ("you"), never as
"the user's" writing, which made small models comment on the user instead of answering.

Both layouts keep everything that changes per turn (notes, style) *after* the history,
and render the history identically turn after turn, so llama.cpp reuses its KV cache and
a follow-up pays only for its new tokens. Training pairs and held-out evaluation are
rendered by the same functions (`pair_record`), so an adapter is trained in exactly the
format it is served in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .models import CHAT, TRANSCRIPT

USER_LABEL = "User"
EXAMPLE_EXCHANGES = 2  # example exchanges from a role persona's examples.jsonl in a transcript
# Base models imitate what they see: a header that lists the user's lines makes them copy,
# so a few short ones are enough.
MAX_STYLE_LINES = 4


@dataclass
class Script:
    """What one turn (or one training pair) holds, before it is laid out for a model."""

    label: str  # the persona's speaker label ("Me", "Poet")
    system: str  # instructions, for chat models
    description: str  # who the persona is, for base models
    message: str  # the new user message (or a training pair's context)
    history: list[tuple[str, str]] = field(default_factory=list)  # (user, reply), oldest first
    examples: list[tuple[str, str]] = field(default_factory=list)  # static exchanges in the persona's voice
    notes: list[str] = field(default_factory=list)  # this turn's notes from memory
    style: list[str] = field(default_factory=list)  # lines the user wrote (Me), this turn
    # The user's own past exchanges (what was said, what the user answered), this turn (Me).
    exchanges: list[tuple[str, str]] = field(default_factory=list)
    own_voice: bool = False  # the persona is the user (Me): notes are its own memory
    # Names of the people in this turn's notes: a reply stops where it would start a line
    # of theirs (small models went on to write the whole remembered scene).
    speakers: list[str] = field(default_factory=list)


@dataclass
class Rendered:
    """A prompt ready for the engine: role `messages` (CHAT) or `text` + `stop` (TRANSCRIPT)."""

    format: str
    messages: list[dict] = field(default_factory=list)
    text: str = ""
    stop: list[str] = field(default_factory=list)  # either layout: where the reply ends


def script_for(persona, message: str, history: list[tuple[str, str]] | None = None,
               notes: list[str] | None = None, style: list[str] | None = None,
               exchanges: list[tuple[str, str]] | None = None, speakers: list[str] | None = None) -> Script:
    """A Script for `persona` (a `personas.catalog.Persona`)."""
    return Script(
        label=persona.display_name, system=persona.system_prompt, description=persona.intro,
        message=message, history=list(history or []), examples=persona_examples(persona),
        notes=list(notes or []), style=list(style or []), exchanges=list(exchanges or []),
        own_voice=persona.name == "me", speakers=list(speakers or []),
    )


def persona_examples(persona, n: int = EXAMPLE_EXCHANGES) -> list[tuple[str, str]]:
    """The first `n` single-turn exchanges of a persona's examples.jsonl (static, so the
    transcript's header never changes between turns)."""
    path = getattr(persona, "examples_path", None)
    out: list[tuple[str, str]] = []
    if path is None:
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if len(out) >= n:
            break
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            continue
        if len(messages) == 2 and messages[0].get("role") == "user" and messages[1].get("role") == "assistant":
            out.append((messages[0]["content"], messages[1]["content"]))
    return out


# -- chat (template) layout --------------------------------------------------------------
def notes_block(script: Script) -> str:
    """The new message with this turn's notes before it (chat layout). Notes go in the
    last message, never the system prompt, so the cached prefix stays valid. For Me they
    are its own memory, in the second person: worded as "the user's writing", they made
    small models talk about "the user" instead of as them."""
    if not script.notes and not script.style:
        return script.message
    parts = []
    if script.notes:
        head = ("From your own past chats and notes (what you remember; don't repeat it):" if script.own_voice
                else "Notes from the user's own past writing (use them if they help):")
        parts += [head, *script.notes]
    if script.style:
        parts.append("Lines you wrote before:" if script.own_voice else "How the user writes, in their own words:")
        parts += [f"- {line}" for line in script.style]
    # Me gets the message as typed, under a rule: labelled "Message:", small models
    # echoed the label and the message back as their reply.
    parts.append(f"———\n{script.message}" if script.own_voice else f"Message: {script.message}")
    return "\n\n".join(parts)


def chat_messages(script: Script) -> list[dict]:
    """System prompt, the conversation, this turn's exchanges in the user's voice (Me: as
    earlier turns, the way a chat model best picks up a voice), then the message."""
    messages = [{"role": "system", "content": script.system}]
    for user, reply in [*script.history, *script.exchanges]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": notes_block(script)})
    return messages


# -- transcript (base model) layout --------------------------------------------------------
def _line(label: str, text: str) -> str:
    return f"{label}: {text.strip()}"


def transcript_header(script: Script) -> str:
    """Who the persona is and how it answers (static: the same every turn). Kept free of
    anything else in English, since a base model answers in the language its context is
    in: a persona without an intro and examples (Me) gets no header at all."""
    lines = []
    if script.description.strip():
        lines.append(f"{script.label} — {script.description.strip()}")
    for user, reply in script.examples:
        lines += [_line(USER_LABEL, user), _line(script.label, reply)]
    return "\n".join(lines) + "\n\n" if lines else ""


def transcript_history(script: Script) -> str:
    return "".join(f"{_line(USER_LABEL, u)}\n{_line(script.label, r)}\n" for u, r in script.history)


def transcript_turn(script: Script) -> str:
    """The part that is new each turn: notes, style lines, the user's own past exchanges
    (as transcript lines under the persona's label: a base model continues what it sees),
    the message, the opened reply."""
    parts = []
    if script.notes:
        parts.append(f"(From {script.label}'s own past writing:\n" + "\n".join(script.notes) + ")\n")
    if script.style:
        shown = script.style[:MAX_STYLE_LINES]
        parts.append(f"(Lines {script.label} wrote before: " + " / ".join(s.strip() for s in shown) + ")\n")
    parts += [f"{_line(USER_LABEL, u)}\n{_line(script.label, r)}\n" for u, r in script.exchanges]
    parts.append(f"{_line(USER_LABEL, script.message)}\n{script.label}:")
    return "".join(parts)


def speaker_stops(script: Script) -> list[str]:
    return [f"\n{name}:" for name in script.speakers if name not in (USER_LABEL, script.label)]


def transcript_stop(script: Script) -> list[str]:
    return [f"\n{USER_LABEL}:", f"\n{script.label}:", "\n(From ", *speaker_stops(script)]


def transcript_text(script: Script) -> str:
    return transcript_header(script) + transcript_history(script) + transcript_turn(script)


def render_prefix(script: Script, fmt: str) -> Rendered:
    """The part of a turn's prompt that is known before the message is: the persona's
    start and the conversation so far (no notes, no message). Every turn's prompt begins
    with it, so evaluating it ahead (`engine.prefill`, when a persona is picked) leaves
    only the new message for the turn itself."""
    if fmt == TRANSCRIPT:
        return Rendered(TRANSCRIPT, text=transcript_header(script) + transcript_history(script))
    if fmt != CHAT:
        raise ValueError(f"unknown chat format {fmt!r}")
    return Rendered(CHAT, messages=chat_messages(script)[:-1])


def render(script: Script, fmt: str) -> Rendered:
    if fmt == TRANSCRIPT:
        return Rendered(TRANSCRIPT, text=transcript_text(script), stop=transcript_stop(script))
    if fmt != CHAT:
        raise ValueError(f"unknown chat format {fmt!r}")
    return Rendered(CHAT, messages=chat_messages(script), stop=speaker_stops(script))


# -- training pairs -----------------------------------------------------------------------------
def script_from_messages(persona, messages: list[dict]) -> Script:
    """A Script from a chat-format prompt ([system?, (user, assistant)*, user]) — how the
    dataset harvest records a pair's context."""
    body = [m for m in messages if m.get("role") != "system"]
    if not body or body[-1].get("role") != "user":
        raise ValueError("a prompt must end with the user's message")
    history, pending = [], None
    for m in body[:-1]:
        if m["role"] == "user":
            pending = m["content"] if pending is None else f"{pending}\n{m['content']}"
        elif m["role"] == "assistant":
            history.append((pending or "", m["content"]))
            pending = None
    message = body[-1]["content"] if pending is None else f"{pending}\n{body[-1]['content']}"
    return script_for(persona, message, history)


def pair_record(persona, messages: list[dict], completion: str, fmt: str) -> dict:
    """One training/evaluation row in the model's format: trl's conversational
    prompt-completion for CHAT, plain text prompt + completion for TRANSCRIPT (the
    completion starts with the space after the label, as the model generates it)."""
    if fmt == TRANSCRIPT:
        script = script_from_messages(persona, messages)
        return {"prompt": transcript_text(script), "completion": " " + completion.strip()}
    return {"prompt": messages, "completion": [{"role": "assistant", "content": completion}]}
