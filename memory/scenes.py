"""Cutting a stream of utterances into scenes: the unit that is embedded, stored and
retrieved. A scene keeps meaning together and stays within a token budget (default 200,
under the embedder's 256-token window, so no scene is silently truncated when embedded):

- chats: a run of consecutive messages of one conversation, cut where the conversation
  changes or the time gap between two messages exceeds `chat_gap_minutes`;
- transcripts: consecutive speaker turns (cues of one speaker merged), cut at long pauses;
- prose: paragraphs under the same heading; a new heading always starts a new scene.

Chat and transcript scenes are rendered as `Speaker: text` lines, so a retrieved scene
reads like the conversation it came from. Scene ids are a hash of the source and the
scene's text: re-importing an unchanged file yields the same ids (nothing is added),
and a changed file yields new ids for exactly the scenes that changed. The chunker holds
one scene in memory at a time, so it streams files of any size."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .documents import PROSE_KINDS, TRANSCRIPT_KINDS, Utterance
from .language import detect_language

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
TRANSCRIPT_GAP_S = 45.0  # a silence this long in a recording starts a new scene


def estimate_tokens(text: str) -> int:
    """Cheap upper-ish estimate of subword tokens (words and punctuation, +30% for word
    pieces). Exact tokenisation of every line would dominate import time."""
    return int(len(_TOKEN.findall(text)) * 1.3) + 1


@dataclass
class Scene:
    source: str
    source_kind: str
    position: int
    lines: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)
    me_chars: int = 0
    chars: int = 0
    timestamp: float | None = None
    conversation: str = ""
    heading: str = ""
    me_speaker: str = ""
    continues: bool = False  # cut from the scene before it by the token budget alone
    _text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            sep = "\n\n" if self.source_kind in PROSE_KINDS else "\n"
            self._text = sep.join(self.lines)
        return self._text

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.source}\x00{self.text}".encode("utf-8")).hexdigest()[:32]

    @property
    def is_me(self) -> bool:
        return self.chars > 0 and self.me_chars * 2 >= self.chars

    @property
    def speaker(self) -> str:
        return max(set(self.speakers), key=self.speakers.count) if self.speakers else ""

    def metadata(self, import_id: int) -> dict:
        # Chroma metadata values must be str/int/float/bool: no None.
        meta = {
            "source": self.source,
            "source_kind": self.source_kind,
            "speaker": self.speaker,
            "speakers": ", ".join(dict.fromkeys(self.speakers)),
            "is_me": self.is_me,
            "me_speaker": self.me_speaker,
            "position": self.position,
            "conversation": self.conversation,
            "heading": self.heading,
            "language": detect_language(self.text),
            "import_id": import_id,
            # Retrieval joins a hit with the scene before/after it only across such cuts,
            # never across a new heading, conversation or a long silence.
            "continues": self.continues,
        }
        if self.timestamp is not None:
            meta["timestamp"] = float(self.timestamp)
        return meta


def _split_long(text: str, budget: int) -> list[str]:
    """Split one over-long utterance at sentence ends (then words) into budget-sized parts."""
    if estimate_tokens(text) <= budget:
        return [text]
    parts, buf = [], ""
    for sentence in re.split(r"(?<=[.!?…])\s+", text):
        pieces = [sentence]
        if estimate_tokens(sentence) > budget:  # no sentence ends: cut by words
            words, step = sentence.split(), max(1, int(budget / 1.6))
            pieces = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
        for piece in pieces:
            candidate = f"{buf} {piece}".strip()
            if buf and estimate_tokens(candidate) > budget:
                parts.append(buf)
                buf = piece
            else:
                buf = candidate
    if buf:
        parts.append(buf)
    return parts


def cut_scenes(
    utterances: Iterable[Utterance],
    *,
    source: str,
    kind: str,
    me_names: set[str],
    budget: int = 200,
    chat_gap_s: float = 3600.0,
) -> Iterator[Scene]:
    prose = kind in PROSE_KINDS
    gap_limit = TRANSCRIPT_GAP_S if kind in TRANSCRIPT_KINDS else chat_gap_s
    position = 0
    scene: Scene | None = None
    tokens = 0
    last_ts: float | None = None
    last_speaker: str | None = None
    continues = False

    def fresh(utt: Utterance) -> Scene:
        return Scene(
            source=source, source_kind=kind, position=position, timestamp=utt.timestamp,
            conversation=utt.conversation or "", heading=utt.heading or "",
        )

    for utt in utterances:
        text = utt.text.strip()
        if not text:
            continue
        mine = utt.is_me if utt.is_me is not None else (prose or (utt.speaker or "") in me_names)
        boundary = scene is None
        if scene is not None:
            if prose:
                boundary = (utt.heading or "") != scene.heading
            else:
                boundary = (utt.conversation or "") != scene.conversation or (
                    utt.timestamp is not None and last_ts is not None and abs(utt.timestamp - last_ts) > gap_limit
                )
        for part in _split_long(text, budget):
            # Transcripts: a cue of the same speaker continues their line.
            same_turn = (
                kind in TRANSCRIPT_KINDS and scene is not None and not boundary
                and utt.speaker == last_speaker and scene.lines
            )
            line = part if prose or not utt.speaker or same_turn else f"{utt.speaker}: {part}"
            cost = estimate_tokens(line)
            if scene is not None and (boundary or tokens + cost > budget):
                yield scene
                position += 1
                scene = None
                continues = not boundary
            if scene is None:
                scene, tokens = fresh(utt), 0
                scene.continues = continues
                same_turn = False
                line = part if prose or not utt.speaker else f"{utt.speaker}: {part}"
                cost = estimate_tokens(line)
            boundary = False
            if same_turn:
                scene.lines[-1] = f"{scene.lines[-1]} {part}"
            else:
                scene.lines.append(line)
            tokens += cost
            scene.chars += len(part)
            if utt.speaker:
                scene.speakers.append(utt.speaker)
            if mine:
                scene.me_chars += len(part)
                if utt.speaker and not scene.me_speaker:
                    scene.me_speaker = utt.speaker
        if utt.timestamp is not None:
            last_ts = utt.end_timestamp if utt.end_timestamp is not None else utt.timestamp
        last_speaker = utt.speaker
    if scene is not None:
        yield scene


def my_exchanges(text: str, me_speaker: str, source_kind: str) -> list[tuple[str, str]]:
    """The user's lines in a stored chat or transcript scene, each with the turn said just
    before it ("" when the user spoke first or twice in a row): how Me is shown its own
    voice, as exchanges rather than as a list of quotes (scene lines are one turn each)."""
    if source_kind in PROSE_KINDS or not me_speaker:
        return []
    prefix = f"{me_speaker}: "
    out, before = [], ""
    for line in text.splitlines():
        if line.startswith(prefix):
            out.append((before, line[len(prefix):].strip()))
            before = ""
        elif ": " in line:
            before = line.split(": ", 1)[1].strip()
    return out


def my_lines(text: str, me_speaker: str, source_kind: str) -> list[str]:
    """The lines of a stored scene that the user wrote (for style examples)."""
    if source_kind in PROSE_KINDS:
        return [p.strip() for p in text.split("\n\n") if p.strip()]
    return [line for _, line in my_exchanges(text, me_speaker, source_kind)]
