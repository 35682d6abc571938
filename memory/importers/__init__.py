"""Importers: one file of a supported export format in, a stream of `Utterance`s out.

`detect_format` sniffs a file's content (not only its extension) and names its kind;
`open_source` returns the file's `SourceInfo` together with a generator of utterances that
reads the file lazily and in bounded memory, so any file size works. The format modules
(`text`, `obsidian`, `chatgpt`, `telegram`, `whatsapp`, `transcripts`) are imported on first
use. Every problem a user's file can cause surfaces as a `MemoryUserError` subclass that
names the file: `UnsupportedFormatError` (empty, binary, unknown type) or
`MalformedFileError` (broken content). Small helpers the format modules share live here.
"""

from __future__ import annotations

import importlib
import io
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..documents import ALL_KINDS, SourceInfo, Utterance
from ..encoding import WIDE, iter_lines, repair_text, sniff_encoding
from ..errors import MalformedFileError, MemoryUserError, UnsupportedFormatError

SUPPORTED_FORMATS: dict[str, str] = {
    "whatsapp": "WhatsApp chat export (.txt)",
    "telegram": "Telegram Desktop export (result.json)",
    "chatgpt": "ChatGPT export (conversations.json)",
    "obsidian_chat": "Obsidian AI chat note from Nexus AI Chat Importer (.md)",
    "markdown": "Markdown notes (.md, .markdown)",
    "text": "plain text (.txt)",
    "srt": "SubRip subtitles or transcript (.srt)",
    "vtt": "WebVTT subtitles or transcript (.vtt)",
}
assert set(SUPPORTED_FORMATS) == ALL_KINDS

# kind -> (module, reader function); each reader is `read(path, info) -> Iterator[Utterance]`.
_READERS = {
    "text": ("text", "read_text"), "markdown": ("text", "read_markdown"),
    "obsidian_chat": ("obsidian", "read_obsidian"), "chatgpt": ("chatgpt", "read_chatgpt"),
    "telegram": ("telegram", "read_telegram"), "whatsapp": ("whatsapp", "read_whatsapp"),
    "srt": ("transcripts", "read_srt"), "vtt": ("transcripts", "read_vtt"),
}
SNIFF_BYTES = 8 * 1024
NEXUS_LINES = 2000  # the first turn of a Nexus note comes after a ~15-line header
_NEXUS = re.compile(r"^\s*>\s*\[!nexus_(?:user|agent)\]")


def supported_text() -> str:
    return "Supported formats: " + "; ".join(SUPPORTED_FORMATS.values()) + "."


def detect_format(path: Path) -> str:
    """The kind of `path` (one of memory.documents.ALL_KINDS), from its extension and content."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".txt", ".md", ".markdown", ".json", ".srt", ".vtt"):
        raise UnsupportedFormatError(f"{path.name}: cannot import '{ext or 'no extension'}' files. {supported_text()}")
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
            whole = not fh.read(1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise UnsupportedFormatError(f"{path.name}: not a readable file ({exc.strerror})") from exc
    if not head:
        raise UnsupportedFormatError(f"{path.name} is empty: there is nothing to import.")
    codec, bom = sniff_encoding(head)
    if codec not in WIDE and b"\0" in head:
        raise UnsupportedFormatError(f"{path.name} is a binary file, not text. {supported_text()}")
    sample = head[bom:].decode(codec or "utf-8", errors="replace")
    if not whole:  # the last line of the sample may be cut off
        sample = sample.rsplit("\n", 1)[0]
    if whole and not sample.strip():
        raise UnsupportedFormatError(f"{path.name} is empty (only blank lines): there is nothing to import.")
    if codec is None and sum(c == "\ufffd" or (c < " " and c not in "\t\r\n\f") for c in sample) > 0.3 * len(sample):
        raise UnsupportedFormatError(f"{path.name} is a binary file, not text. {supported_text()}")
    if ext == ".json":
        return _sniff_json(path)
    if ext == ".srt":
        return "srt"
    if ext == ".vtt":
        return "vtt"
    if ext == ".txt":
        from .whatsapp import looks_like_whatsapp

        lines = [repair_text(line).text for line in sample.splitlines() if line.strip()][:3]
        return "whatsapp" if lines and looks_like_whatsapp(lines) else "text"
    # Markdown: a Nexus callout makes it a chat note. The note's header before the first turn
    # can outgrow the sniffed bytes, so look at the first lines instead.
    scratch = SourceInfo(path=str(path), kind="markdown")
    if any(_NEXUS.match(line) for line in itertools.islice(iter_lines(path, scratch, repair=False), NEXUS_LINES)):
        return "obsidian_chat"
    return "markdown"


def open_source(path: Path, kind: str | None = None) -> tuple[SourceInfo, Iterator[Utterance]]:
    """The file's SourceInfo (filled in while the iterator is consumed) and its utterances."""
    path = Path(path)
    if kind is None:
        kind = detect_format(path)
    elif kind not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"{path.name}: unknown format '{kind}'. {supported_text()}")
    info = SourceInfo(path=str(path), kind=kind)
    module, function = _READERS[kind]
    reader = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return info, _guarded(path, kind, info, reader(path, info))


def _guarded(path: Path, kind: str, info: SourceInfo, utterances: Iterator[Utterance]) -> Iterator[Utterance]:
    """Skip empty utterances, count speakers, and turn parse errors into MalformedFileError."""
    import ijson

    try:
        for utt in utterances:
            utt.text = utt.text.strip()
            if not utt.text:
                continue
            info.saw(utt)
            yield utt
    except MemoryUserError:
        raise
    except ijson.JSONError as exc:
        raise MalformedFileError(f"{path.name}: broken JSON, not a readable {SUPPORTED_FORMATS[kind]} ({json_error(exc)})") from exc
    except (ValueError, RecursionError) as exc:  # UnicodeError included
        raise MalformedFileError(f"{path.name}: cannot read this {SUPPORTED_FORMATS[kind]} ({exc})") from exc


def _sniff_json(path: Path) -> str:
    """chatgpt (a list of conversations with "mapping") or telegram (an object with
    "messages", or a full export with "chats"), from the first parse events only."""
    import ijson

    root = None
    try:
        with open_json(path) as fh:
            for prefix, event, value in ijson.parse(fh):
                if prefix == "":
                    if event == "start_array":
                        root = "list"
                    elif event == "start_map":
                        root = "map"
                    elif event == "map_key" and value in ("messages", "chats", "left_chats"):
                        return "telegram"
                    elif event == "end_array":
                        return "chatgpt"  # an empty conversations.json
                    elif event != "map_key":
                        break
                elif root == "list" and prefix == "item":
                    if event == "map_key" and value == "mapping":
                        return "chatgpt"
                    if event != "map_key" and event != "start_map":
                        break  # the first item is over (or not an object) and had no "mapping"
    except ijson.JSONError as exc:
        raise MalformedFileError(f"{path.name}: broken JSON ({json_error(exc)}). {supported_text()}") from exc
    raise UnsupportedFormatError(
        f"{path.name}: JSON, but neither a ChatGPT conversations.json nor a Telegram result.json. {supported_text()}"
    )


# -- helpers shared by the format modules ---------------------------------------------------
class _Utf8Reader:
    """ijson parses UTF-8 bytes; this re-encodes a UTF-16/32 text stream on the fly."""

    def __init__(self, text: io.TextIOBase):
        self._text = text

    def read(self, size: int = -1) -> bytes:
        return self._text.read(size if size and size > 0 else -1).encode("utf-8", errors="replace")


@contextmanager
def open_json(path: Path):
    """A binary reader for ijson: UTF-8 BOM skipped, UTF-16/32 exports transcoded."""
    with open(path, "rb") as fh:
        codec, bom = sniff_encoding(fh.read(SNIFF_BYTES))
        fh.seek(bom)
        if codec in WIDE:
            yield _Utf8Reader(io.TextIOWrapper(fh, encoding=codec, errors="replace"))
        else:
            yield fh


def json_error(exc: Exception) -> str:
    """yajl's messages are multi-line bytes with a caret drawing; keep the first line."""
    msg = exc.args[0] if exc.args else str(exc)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", errors="replace")
    return (str(msg).strip().splitlines() or ["unexpected end of file"])[0]


def local_timestamp(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float | None:
    """POSIX seconds for a wall-clock time written without a zone. Exports (WhatsApp, Obsidian
    notes) write the phone's local time; the machine importing them is taken to share that
    zone, so the time shows back as written. None for impossible dates."""
    if year < 100:
        year += 2000
    try:
        return datetime(year, month, day, hour, minute, second).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def hour24(hour: int, ampm: str | None) -> int:
    """12-hour clock to 24-hour: 12 AM is 0, 12 PM is 12."""
    if not ampm:
        return hour
    pm = ampm.strip().lower().startswith("p")
    return (hour % 12) + (12 if pm else 0)


def date_order(first: str, second: str) -> str | None:
    """The date order ("ymd", "dmy" or "mdy") one date's fields prove, else None."""
    if len(first) == 4:
        return "ymd"
    if int(first) > 12:
        return "dmy"
    if int(second) > 12:
        return "mdy"
    return None


def ymd(a: str, b: str, c: str, order: str) -> tuple[int, int, int]:
    """(year, month, day) from three date fields in the given order."""
    if order == "ymd":
        return int(a), int(b), int(c)
    if order == "mdy":
        return int(c), int(a), int(b)
    return int(c), int(b), int(a)
