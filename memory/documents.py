"""The common shape every importer produces, before scenes are cut.

An importer turns one file of some export format into a stream of `Utterance`s — one chat
message, one transcript cue, one prose paragraph — plus a `SourceInfo` that accumulates
what was learned while reading (speakers seen, whether the encoding was repaired or is
damaged, warnings). Utterances are *streamed* (a generator), so a 200 MB export is read in
bounded memory; the scene chunker (`memory.scenes`) consumes the stream and cuts scenes.
Who "me" is gets decided after reading, from `--me` names or the most frequent speaker,
so importers leave `is_me` as None unless the format itself says (e.g. the Obsidian
Nexus `nexus_user` callout is always the user).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Kinds of source, as recorded on every scene (`source_kind` metadata).
CHAT_KINDS = frozenset({"obsidian_chat", "chatgpt", "telegram", "whatsapp"})
TRANSCRIPT_KINDS = frozenset({"srt", "vtt"})
PROSE_KINDS = frozenset({"text", "markdown"})
ALL_KINDS = CHAT_KINDS | TRANSCRIPT_KINDS | PROSE_KINDS


@dataclass(slots=True)
class Utterance:
    """One unit of text as the export holds it."""

    text: str
    speaker: str | None = None  # sender / speaker label; None for prose
    timestamp: float | None = None  # POSIX seconds (UTC) when known
    conversation: str | None = None  # conversation id or title within the file
    heading: str | None = None  # prose: the heading path it stands under ("A / B"); chats: their title
    is_me: bool | None = None  # set only when the format itself says so
    end_timestamp: float | None = None  # transcripts: cue end time


@dataclass
class SourceInfo:
    """What an importer learned about a file while streaming it."""

    path: str
    kind: str
    speakers: Counter = field(default_factory=Counter)  # speaker -> utterance count
    repaired: bool = False  # mojibake was found and repaired (ftfy)
    damaged: bool = False  # some text could not be recovered; readable parts imported
    warnings: list[str] = field(default_factory=list)

    def saw(self, utt: Utterance) -> None:
        if utt.speaker:
            self.speakers[utt.speaker] += 1
