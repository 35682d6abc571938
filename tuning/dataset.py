"""Harvesting a persona's training data into chat-format JSONL.

Sources, per persona:
- `me`, from scene memory: every line the user wrote becomes a target, in one of three
  frames — a `reply` (prompt: the other side's turns just before it), an `opener` (a
  chat's first message, a monologue's start, a note's first paragraph; prompt: the
  conversation's title or the note's heading, else its date) or a `passage` (a long run
  of the user's lines cut into passages, or a note's later paragraphs; prompt: the
  passage before). Lines with letters lost at import (U+FFFD) are left out and counted;
- every persona, from the journal: replies the user approved (target = the reply) or
  edited (target = the edited text), with the conversation before them as the prompt.
  Every verdict is also written as a preference row (👍/👎: KTO-style labels, an edit: a
  DPO-style chosen/rejected pair), split like the pairs (`split_verdicts`): training
  verdicts feed the KTO preference stage, held-out ones the gate's preference accuracy;
- built-in role personas: their `examples.jsonl`.

Pairs are deduplicated, empty, damaged and oversized ones dropped (each reason counted),
and split deterministically:
the held-out set is the *newest* slice (by timestamp, then position), so evaluation asks
"does it speak like me now". Each line is laid out by `personas.prompting.pair_record` in
the base model's chat format, exactly as the app will prompt it: `{"prompt": [system,
user…], "completion": [assistant]}` for a chat-template model, `{"prompt": "<transcript
ending in the persona's label>", "completion": " reply"}` for a base model — trl's
prompt-completion formats, which put the loss on the completion only. `dataset.json`
records counts, tokens, the chat format, pairs per source, source kind and frame, what
was dropped and why, and a few examples of each frame."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from memory.documents import CHAT_KINDS, PROSE_KINDS, TRANSCRIPT_KINDS
from memory.journal import Journal, Turn
from memory.scenes import estimate_tokens
from personas.catalog import Persona
from personas.models import CHAT
from personas.prompting import pair_record

CONTEXT_TOKENS = 200  # prompt context budget per pair
MAX_PAIR_TOKENS = 768  # pairs larger than this are dropped (they would be truncated in training)
MIN_HELDOUT = 1
EXAMPLES_PER_FRAME = 10  # kept in dataset.json; the CLI shows --show N of them


@dataclass
class Pair:
    prompt: list[dict]
    completion: str
    source: str
    order: tuple = (0.0, "", 0)  # (timestamp, source, position): newest last
    frame: str = "reply"  # reply | opener | passage (see pairs_from_scenes)
    kind: str = ""  # the source's kind: whatsapp, markdown, … or journal, examples
    turn_id: int | None = None  # the journal turn it came from (approved / edited replies)

    def record(self, persona: Persona, chat_format: str = CHAT) -> dict:
        return {**pair_record(persona, self.prompt, self.completion, chat_format), "source": self.source}

    @property
    def tokens(self) -> int:
        return sum(estimate_tokens(m["content"]) for m in self.prompt) + estimate_tokens(self.completion)


@dataclass
class DatasetSummary:
    persona: str
    train: int = 0
    heldout: int = 0
    preferences: int = 0
    train_verdicts: int = 0  # verdicts the preference stage (KTO) may learn from
    heldout_verdicts: int = 0  # verdicts the gate's preference accuracy is measured on
    tokens: int = 0
    chat_format: str = CHAT
    sources: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # pairs per source kind
    frames: dict[str, int] = field(default_factory=dict)  # pairs per frame
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[dict]] = field(default_factory=dict)  # frame -> a few {context, completion}
    path: str = ""

    def as_dict(self) -> dict:
        return {
            "persona": self.persona, "pairs": self.train + self.heldout, "train": self.train,
            "heldout": self.heldout, "preferences": self.preferences, "train_verdicts": self.train_verdicts,
            "heldout_verdicts": self.heldout_verdicts,
            "tokens": self.tokens,
            "chat_format": self.chat_format, "sources": self.sources, "kinds": self.kinds,
            "frames": self.frames, "dropped": self.dropped, "examples": self.examples, "path": self.path,
        }


# -- from scene memory ---------------------------------------------------------------------
DAMAGED = "\ufffd"  # U+FFFD: letters the import could not recover (`memory.encoding`)
PASSAGE_TOKENS = 160  # a run of the user's lines longer than this is cut into passages


def _split_lines(text: str, speakers: list[str]) -> list[tuple[str, str]]:
    """A stored chat/transcript scene back into (speaker, text) turns; lines that don't
    start with a known speaker continue the previous turn (multi-line messages)."""
    turns: list[tuple[str, str]] = []
    prefixes = sorted((f"{s}: " for s in speakers if s), key=len, reverse=True)
    for line in text.split("\n"):
        who = next((p for p in prefixes if line.startswith(p)), None)
        if who:
            turns.append((who[:-2], line[len(who):]))
        elif turns:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]}\n{line}")
    return turns


def _context(lines: list[str], budget: int) -> str:
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = estimate_tokens(line)
        if kept and used + cost > budget:
            break
        kept.insert(0, line)
        used += cost
    return "\n".join(kept)


def _passages(lines: list[str], budget: int = PASSAGE_TOKENS) -> list[str]:
    """The user's consecutive lines grouped into passages of about `budget` tokens (a
    single longer line stays whole; the scene cutter already split giant messages)."""
    out: list[list[str]] = []
    used = 0
    for line in lines:
        cost = estimate_tokens(line)
        if not out or used + cost > budget:
            out.append([])
            used = 0
        out[-1].append(line)
        used += cost
    return ["\n".join(group) for group in out]


def opener_context(title: str, timestamp: float, note: bool = False) -> str:
    """What an opener is written in reply to: the conversation's title (or the note's
    heading), else its date, else just the fact that something new starts."""
    what = "New note" if note else "New conversation"
    if title:
        return f"Write about: {title}" if note else f"({what}: {title})"
    if timestamp:
        return f"({what}, {datetime.fromtimestamp(timestamp, timezone.utc):%Y-%m-%d})"
    return f"({what})"


def pairs_from_scenes(scenes: Iterable[tuple[str, dict]], system: str, budget: int = CONTEXT_TOKENS,
                      dropped: Counter | None = None) -> Iterator[Pair]:
    """Pairs from (text, metadata) scenes, which must come ordered by source and position.
    Every line the user wrote lands in one pair, in one of three frames:
    - `reply`: the other side's turns just before it are the prompt;
    - `opener`: nothing before it in the conversation (the first message of a chat, a
      monologue, a note's first paragraph): the title, else the date, is the prompt;
    - `passage`: a long run of the user's lines is cut into passages, each prompted by
      the one before it (and a note's later paragraphs by the paragraph before).
    Lines with letters the import could not recover are left out and counted in `dropped`."""
    dropped = dropped if dropped is not None else Counter()
    key = None
    others: list[str] = []  # the other side's turns since the user last spoke
    mine: list[str] = []
    meta_of_run: dict = {}
    stamp = (0.0, "", 0)
    prose_prev: tuple[str, str] | None = None  # (heading, passage)

    def pair(context: str, completion: str, frame: str, meta: dict, order: tuple) -> Pair:
        prompt = [{"role": "system", "content": system}, {"role": "user", "content": context}]
        return Pair(prompt, completion, f"memory:{meta.get('source', '')}", order, frame,
                    meta.get("source_kind", ""))

    def flush() -> Iterator[Pair]:
        if not mine:
            return
        passages = _passages(mine)
        if others:
            first = (_context(others, budget), "reply")
        else:
            first = (opener_context(meta_of_run.get("heading", ""), float(meta_of_run.get("timestamp", 0.0))), "opener")
        yield pair(first[0], passages[0], first[1], meta_of_run, stamp)
        for before, passage in zip(passages, passages[1:]):
            yield pair(_context(before.split("\n"), budget), passage, "passage", meta_of_run, stamp)

    for text, meta in scenes:
        kind, source = meta.get("source_kind", ""), meta.get("source", "")
        scene_key = (source, meta.get("conversation", ""))
        stamp_here = (float(meta.get("timestamp", 0.0)), source, int(meta.get("position", 0)))
        if kind in PROSE_KINDS:
            heading = meta.get("heading", "")
            for passage in (p.strip() for p in text.split("\n\n")):
                if not passage:
                    continue
                if DAMAGED in passage:
                    dropped["damaged"] += 1
                    continue
                if prose_prev and prose_prev[0] == heading and prose_prev[1]:
                    yield pair(_context([prose_prev[1]], budget), passage, "passage", meta, stamp_here)
                else:
                    context = opener_context(heading, float(meta.get("timestamp", 0.0)), note=True)
                    yield pair(context, passage, "opener", meta, stamp_here)
                prose_prev = (heading, passage)
            continue
        if kind not in CHAT_KINDS and kind not in TRANSCRIPT_KINDS:
            continue
        if scene_key != key:  # a new conversation: context does not carry over
            yield from flush()
            key, others, mine = scene_key, [], []
        me = meta.get("me_speaker", "")
        speakers = [s.strip() for s in meta.get("speakers", "").split(",") if s.strip()]
        for speaker, line in _split_lines(text, speakers):
            if me and speaker == me:
                if DAMAGED in line:
                    dropped["damaged"] += 1
                    continue
                if not mine:
                    meta_of_run = meta
                mine.append(line)
                stamp = stamp_here
            else:
                if mine:
                    yield from flush()
                    others, mine = [], []
                others.append(line if len(speakers) <= 2 else f"{speaker}: {line}")
    yield from flush()


def scenes_in_order(store, kinds: set[str]) -> list[tuple[str, dict]]:
    """All stored scenes of the given kinds as (text, metadata), ordered by source and position."""
    rows: list[tuple[str, dict]] = []
    offset, page = 0, 5000
    while True:
        got = store.collection.get(
            where={"source_kind": {"$in": sorted(kinds)}}, include=["documents", "metadatas"],
            limit=page, offset=offset,
        )
        rows += list(zip(got["documents"], got["metadatas"]))
        if len(got["ids"]) < page:
            break
        offset += page
    return sorted(rows, key=lambda r: (r[1].get("source", ""), r[1].get("conversation", ""), r[1].get("position", 0)))


# -- from the journal and built-in examples ---------------------------------------------------
def _conversation_prompt(journal: Journal, turn: Turn, system: str, budget: int) -> list[dict]:
    earlier = [t for t in journal.turns(turn.conversation_id) if t.id < turn.id and t.status == "ok"]
    history: list[dict] = []
    used = estimate_tokens(turn.user_text)
    for t in reversed(earlier):
        reply = t.edited_text if t.feedback == "edited" and t.edited_text else t.reply
        cost = estimate_tokens(t.user_text) + estimate_tokens(reply)
        if used + cost > budget:
            break
        history = [{"role": "user", "content": t.user_text}, {"role": "assistant", "content": reply}] + history
        used += cost
    return [{"role": "system", "content": system}, *history, {"role": "user", "content": turn.user_text}]


def pairs_from_journal(journal: Journal, persona: Persona, budget: int = CONTEXT_TOKENS) -> tuple[list[Pair], list[dict]]:
    pairs, preferences = [], []
    for turn in journal.turns_with_feedback(persona.name):
        prompt = _conversation_prompt(journal, turn, persona.system_prompt, budget)
        order = (0.0, turn.feedback_at or turn.created_at, turn.id)
        if turn.feedback == "approved":
            pairs.append(Pair(prompt, turn.reply, "journal:approved", order, kind="journal", turn_id=turn.id))
            preferences.append({"type": "kto", "prompt": prompt, "completion": turn.reply,
                                "label": True, "turn_id": turn.id})
        elif turn.feedback == "edited" and turn.edited_text:
            pairs.append(Pair(prompt, turn.edited_text, "journal:edited", order, kind="journal", turn_id=turn.id))
            preferences.append({"type": "dpo", "prompt": prompt, "chosen": turn.edited_text,
                                "rejected": turn.reply, "turn_id": turn.id})
        elif turn.feedback == "rejected":
            preferences.append({"type": "kto", "prompt": prompt, "completion": turn.reply,
                                "label": False, "turn_id": turn.id})
    return pairs, preferences


def pairs_from_examples(persona: Persona) -> list[Pair]:
    path = persona.examples_path
    if path is None:
        return []
    pairs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        *context, answer = messages
        if answer.get("role") != "assistant":
            continue
        prompt = [{"role": "system", "content": persona.system_prompt}, *context]
        pairs.append(Pair(prompt, answer["content"], f"builtin:{persona.name}/examples.jsonl", (0.0, "", i),
                          kind="examples"))
    return pairs


# -- the whole harvest -----------------------------------------------------------------------
def clean(pairs: Iterable[Pair], max_tokens: int = MAX_PAIR_TOKENS) -> tuple[list[Pair], Counter]:
    dropped: Counter = Counter()
    seen: set[str] = set()
    out = []
    for pair in pairs:
        if not pair.completion.strip() or not pair.prompt[-1]["content"].strip():
            dropped["empty"] += 1
            continue
        if DAMAGED in pair.completion:  # not the user's spelling: letters lost at import
            dropped["damaged"] += 1
            continue
        if pair.tokens > max_tokens:
            dropped["oversized"] += 1
            continue
        digest = hashlib.sha256(json.dumps([pair.prompt[1:], pair.completion], ensure_ascii=False).encode()).hexdigest()
        if digest in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(digest)
        out.append(pair)
    return out, dropped


def split(pairs: list[Pair], heldout_fraction: float = 0.1) -> tuple[list[Pair], list[Pair]]:
    """Deterministic split: the newest slice is held out."""
    ordered = sorted(pairs, key=lambda p: p.order)
    if len(ordered) < 2:
        return ordered, []
    n = max(MIN_HELDOUT, math.ceil(len(ordered) * heldout_fraction))
    return ordered[:-n], ordered[-n:]


def _examples(pairs: list[Pair], per_frame: int = EXAMPLES_PER_FRAME) -> dict[str, list[dict]]:
    """A few pairs of each frame, spread over the data (not just its first source)."""
    out: dict[str, list[dict]] = {}
    for frame in dict.fromkeys(p.frame for p in pairs):
        of_frame = [p for p in pairs if p.frame == frame]
        step = max(1, len(of_frame) // per_frame)
        out[frame] = [{"context": p.prompt[-1]["content"], "completion": p.completion, "source": p.source}
                      for p in of_frame[::step][:per_frame]]
    return out


def _verdict_row(persona: Persona, pref: dict, chat_format: str) -> dict:
    if pref["type"] == "dpo":
        chosen = pair_record(persona, pref["prompt"], pref["chosen"], chat_format)
        rejected = pair_record(persona, pref["prompt"], pref["rejected"], chat_format)
        return {"type": "dpo", "prompt": chosen["prompt"], "chosen": chosen["completion"],
                "rejected": rejected["completion"], "turn_id": pref["turn_id"]}
    record = pair_record(persona, pref["prompt"], pref["completion"], chat_format)
    return {"type": "kto", **record, "label": pref["label"], "turn_id": pref["turn_id"]}


def split_verdicts(persona: Persona, preferences: list[dict], heldout: list[Pair], chat_format: str,
                   heldout_fraction: float) -> tuple[list[dict], list[dict]]:
    """(training verdicts, held-out verdicts), laid out like training rows. An approval or
    edit goes where its pair went (the candidate never trained on a held-out one, nor
    learns a preference from one it is evaluated on); rejections, which have no pair, are
    split by time like pairs: the newest slice is held out."""
    held = {p.turn_id for p in heldout if p.turn_id is not None}
    rejections = sorted((p for p in preferences if p["type"] == "kto" and not p["label"]), key=lambda p: p["turn_id"])
    n = math.ceil(len(rejections) * heldout_fraction) if rejections else 0
    held |= {p["turn_id"] for p in rejections[len(rejections) - n:]}
    train, test = [], []
    for pref in preferences:
        (test if pref["turn_id"] in held else train).append(_verdict_row(persona, pref, chat_format))
    return train, test


def harvest(
    persona: Persona,
    out_dir: Path,
    *,
    journal: Journal,
    store=None,
    heldout_fraction: float = 0.1,
    max_tokens: int = MAX_PAIR_TOKENS,
    chat_format: str = CHAT,
    context_tokens: int = CONTEXT_TOKENS,
) -> DatasetSummary:
    """Write train.jsonl, heldout.jsonl, preferences.jsonl and dataset.json into out_dir,
    the pairs laid out in `chat_format` (the base model's, see `personas.models`)."""
    candidates: list[Pair] = []
    damaged: Counter = Counter()
    if persona.name == "me" and store is not None and store.count():
        kinds = set(CHAT_KINDS) | set(TRANSCRIPT_KINDS) | set(PROSE_KINDS)
        candidates += pairs_from_scenes(scenes_in_order(store, kinds), persona.system_prompt,
                                        budget=context_tokens, dropped=damaged)
    candidates += pairs_from_examples(persona)
    journal_pairs, preferences = pairs_from_journal(journal, persona, budget=max_tokens // 2)
    candidates += journal_pairs
    pairs, dropped = clean(candidates, max_tokens)
    dropped.update(damaged)
    train, heldout = split(pairs, heldout_fraction)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_verdicts, verdicts = split_verdicts(persona, preferences, heldout, chat_format, heldout_fraction)
    for name, rows in (("train.jsonl", [p.record(persona, chat_format) for p in train]),
                       ("heldout.jsonl", [p.record(persona, chat_format) for p in heldout]),
                       ("preferences.jsonl", preferences),
                       ("train_verdicts.jsonl", train_verdicts),
                       ("heldout_verdicts.jsonl", verdicts)):
        with open(out_dir / name, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = DatasetSummary(
        persona=persona.name, train=len(train), heldout=len(heldout), preferences=len(preferences),
        train_verdicts=len(train_verdicts), heldout_verdicts=len(verdicts),
        tokens=sum(p.tokens for p in pairs), chat_format=chat_format, sources=dict(Counter(p.source for p in pairs)),
        kinds=dict(Counter(p.kind for p in pairs)), frames=dict(Counter(p.frame for p in pairs)),
        dropped=dict(dropped), examples=_examples(pairs), path=str(out_dir),
    )
    (out_dir / "dataset.json").write_text(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return summary
