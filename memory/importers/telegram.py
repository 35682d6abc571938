"""Telegram Desktop JSON export (`result.json`) importer.

Two shapes: one chat (`{"name", "id", "messages": [...]}`) or the full account export,
with chats under `chats.list[*]` (and `left_chats.list[*]`). The file is read as a stream
of ijson parse events and each message object is built on its own, so neither a huge
export nor one huge chat is ever held in memory. Service messages (joins, pins, calls) are
skipped; `from` is null for deleted accounts; `text` is a string or a list mixing strings
and entity objects (`{"type": "bold", "text": …}`) whose texts are concatenated. The
conversation is the chat's name, else its id.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import ijson
from ijson.common import ObjectBuilder

from ..documents import SourceInfo, Utterance
from ..encoding import Decoded, repair_text
from ..errors import MalformedFileError
from . import open_json

# ijson prefixes: a single-chat export has its chat at the root, a full export in lists.
_CHATS = ("chats.list.item", "left_chats.list.item")
_MESSAGES = {"messages.item", *(f"{c}.messages.item" for c in _CHATS)}
_NAMES = {"name", *(f"{c}.name" for c in _CHATS)}
_IDS = {"id", *(f"{c}.id" for c in _CHATS)}
_LISTS = {"messages", "chats.list", "left_chats.list"}
DELETED = "Deleted Account"


def read_telegram(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    chat: dict[str, object] = {}
    conversation: str | None = None
    found = False
    service = 0
    with open_json(path) as fh:
        events = ijson.parse(fh, use_float=True)
        for prefix, event, value in events:
            if event == "start_map" and prefix in _CHATS:
                chat, conversation = {}, None
            elif prefix in _NAMES and event == "string":
                chat["name"], conversation = value, None
            elif prefix in _IDS and event in ("string", "number"):
                chat["id"], conversation = value, None
            elif prefix in _LISTS and event == "start_array":
                found = True
            elif prefix in _MESSAGES and event == "start_map":
                conversation = conversation or _conversation(chat, path)
                utt = _message(_build(events, prefix), conversation)
                if utt is None:
                    service += 1
                else:
                    _repair(utt, info)
                    yield utt
    if not found:
        raise MalformedFileError(f"{path.name}: not a Telegram export (no \"messages\" found)")
    if service:
        info.warnings.append(f"skipped {service} service or empty message(s)")


def _build(events: Iterator[tuple[str, str, object]], prefix: str) -> object:
    """The JSON object starting at the current start_map, built from the following events."""
    builder = ObjectBuilder()
    builder.event("start_map", None)
    for p, event, value in events:
        builder.event(event, value)
        if p == prefix and event == "end_map":
            break
    return builder.value


def _conversation(chat: dict, path: Path) -> str:
    name = chat.get("name")
    if isinstance(name, str) and name.strip():
        return repair_text(name).text
    return str(chat["id"]) if chat.get("id") is not None else path.stem


def _message(msg: object, conversation: str) -> Utterance | None:
    if not isinstance(msg, dict) or msg.get("type", "message") != "message":
        return None
    text = _text(msg.get("text"))
    if not text.strip():
        return None  # photos, stickers, polls without a caption
    sender = msg.get("from")
    sender = sender if isinstance(sender, str) and sender.strip() else DELETED
    return Utterance(text, sender, _timestamp(msg), conversation)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = (p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else None for p in value)
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _timestamp(msg: dict) -> float | None:
    unix = msg.get("date_unixtime")
    try:
        if isinstance(unix, (str, int, float)) and not isinstance(unix, bool):
            return float(int(unix))
    except (ValueError, OverflowError):
        pass
    date = msg.get("date")
    if isinstance(date, str):
        try:
            return datetime.fromisoformat(date).timestamp()  # local time, as the export writes it
        except (ValueError, OverflowError, OSError):
            pass
    return None


def _repair(utt: Utterance, info: SourceInfo) -> None:
    text, name = repair_text(utt.text), _repair_name(utt.speaker)
    utt.text, utt.speaker = text.text, name.text
    info.repaired |= text.repaired or name.repaired
    info.damaged |= text.damaged or name.damaged


@lru_cache(maxsize=1024)
def _repair_name(name: str) -> Decoded:
    return repair_text(name)  # a chat has few senders; repair each name once
