"""WhatsApp chat export (.txt) importer.

Handles the common line formats: Android `12/03/21, 10:15 - Name: text` (24h),
US `3/12/21, 10:15 AM - Name: text` (also with U+202F before AM/PM), iOS
`[12.03.21, 10:15:32] Name: text`, with 2- or 4-digit years. Lines without a date prefix
continue the previous message. System lines (encryption notice, "X added Y", group changes),
media placeholders and deleted-message stubs are skipped and counted in a warning. Whether
dates are day-first or month-first is decided once per file from the dates themselves.
The conversation is the file stem (WhatsApp exports one chat per file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..documents import SourceInfo, Utterance
from ..encoding import iter_lines
from ..errors import MalformedFileError
from . import date_order, hour24, local_timestamp, ymd

_DATE = r"(?P<a>\d{1,4})[./-](?P<b>\d{1,2})[./-](?P<c>\d{2,4})"
_TIME = r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?(?:\s*(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"
_ANDROID = re.compile(rf"{_DATE},?\s+{_TIME}\s+[-\u2013]\s(?P<rest>.*)")
_IOS = re.compile(rf"\[{_DATE},?\s+{_TIME}\]\s?(?P<rest>.*)")
# "Name: text". A name has no quotes, so "X changed the subject to "a: b"" stays a system line.
_SENDER = re.compile(r"(?P<name>[^:\"\u201c\u201d\n]{1,60}?): (?P<text>.*)", re.S)
# Direction marks iOS and Android put around names, phone numbers and system text.
_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
_PLACEHOLDER = re.compile(
    r"<[^<>]{1,40}>|(?:image|video|audio|sticker|GIF|document|contact card) omitted|.{1,80} \(file attached\)|"
    r"This message was deleted\.?|You deleted this message\.?|"
    r"Данное сообщение удалено\.?|Это сообщение удалено\.?|Вы удалили это сообщение\.?",
    re.I | re.S,
)
_EDITED = re.compile(r"\s*<(?:This message was edited|Сообщение изменено)>$")
MAX_MESSAGE = 100_000  # characters; longer runs of continuation lines are split, memory stays bounded


def match_line(line: str) -> re.Match | None:
    line = line.lstrip("\ufeff\u200e\u200f ")
    return _ANDROID.match(line) or _IOS.match(line)


def looks_like_whatsapp(first_lines: list[str]) -> bool:
    """The first non-empty line has a WhatsApp date prefix (used by detect_format)."""
    return match_line(first_lines[0]) is not None


def _file_order(path: Path) -> str:
    """Day-first or month-first for the whole file: the first date with a field > 12 decides;
    otherwise day-first for a 24h clock, month-first for AM/PM (the US export)."""
    scratch = SourceInfo(path=str(path), kind="whatsapp")
    ampm = None
    for line in iter_lines(path, scratch):
        m = match_line(line)
        if m:
            order = date_order(m["a"], m["b"])
            if order:
                return order
            if ampm is None:
                ampm = bool(m["ampm"])
    return "mdy" if ampm else "dmy"


def read_whatsapp(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    order = _file_order(path)
    conversation = path.stem
    current: Utterance | None = None
    system = messages = orphans = 0
    for line in iter_lines(path, info):
        m = match_line(line)
        if m is None:
            if current is None:
                orphans += int(bool(line.strip()))
            elif len(current.text) < MAX_MESSAGE:
                current.text += "\n" + line.translate(_MARKS)
            else:
                if current.speaker is not None:
                    yield current
                current = Utterance(line.translate(_MARKS), current.speaker, current.timestamp, conversation)
            continue
        if current is not None and current.speaker is not None:
            yield current
        current = _message(m, order, conversation)
        if current.speaker is None:
            system += 1
        else:
            messages += 1
    if current is not None and current.speaker is not None:
        yield current
    if not messages and not system:
        raise MalformedFileError(f"{path.name}: no WhatsApp messages found (lines like '12/03/21, 10:15 - Name: text')")
    if system:
        info.warnings.append(f"skipped {system} system, media or deleted-message line(s)")
    if orphans:
        info.warnings.append(f"skipped {orphans} line(s) before the first message")


def _message(m: re.Match, order: str, conversation: str) -> Utterance:
    """An utterance for a dated line; speaker None marks a system line (dropped, with its
    continuation lines)."""
    y, mo, d = ymd(m["a"], m["b"], m["c"], order)
    ts = local_timestamp(y, mo, d, hour24(int(m["h"]), m["ampm"]), int(m["mi"]), int(m["s"] or 0))
    rest = m["rest"]
    sender = _SENDER.match(rest.lstrip("\u200e"))
    if sender is None:
        return Utterance(rest, None, ts, conversation)
    text = sender["text"]
    # iOS writes system events and attachments as messages whose text starts with U+200E.
    if text.startswith("\u200e"):
        return Utterance(text, None, ts, conversation)
    text = _EDITED.sub("", text.translate(_MARKS))
    if _PLACEHOLDER.fullmatch(text.strip()):
        return Utterance(text, None, ts, conversation)
    name = sender["name"].translate(_MARKS).strip()
    return Utterance(text, name or None, ts, conversation)
