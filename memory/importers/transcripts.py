"""Transcript importers: SubRip (.srt) and WebVTT (.vtt), e.g. from Whisper or a meeting tool.

A cue is a timing line (`00:00:01,000 --> 00:00:04,000`; VTT also `00:01.000 --> 00:04.000`
with cue settings after it) and the text lines up to the next blank line; SRT index lines,
VTT cue ids, the WEBVTT header and NOTE/STYLE/REGION blocks are not text. Speakers come
from a VTT voice tag (`<v Name>…</v>`) or a label at the start of the text
(`SPEAKER_00: …`, `John: …`); a cue without one keeps the previous speaker. Other tags
(`<i>`, `{\\an8}`) are removed. The file has no absolute date, so `timestamp` and
`end_timestamp` hold the cue's start and end offsets in seconds. The conversation is the
file stem: one recording per file.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

from ..documents import SourceInfo, Utterance
from ..encoding import iter_lines
from ..errors import MalformedFileError

_CLOCK = r"(?:\d{1,3}:)?\d{1,2}:\d{2}(?:[.,]\d{1,3})?"
_TIMING = re.compile(rf"^\s*(?P<start>{_CLOCK})\s*-->\s*(?P<end>{_CLOCK})(?:\s.*)?$")
_VOICE = re.compile(r"<v(?:\.[\w.-]+)?\s+([^>]+)>")
_TAGS = re.compile(r"</?[^<>\s][^<>]*>|\{\\[^{}]*\}")
# "SPEAKER_00: text", "[John]: text", "Anna Petrova: text" (1-3 capitalised words).
_LABEL = re.compile(
    r"^\s*\[?(?P<name>SPEAKER[_ ]?\d+|Speaker\s?\d+|[^\W\d_][\w'’.-]*(?: [^\W\d_][\w'’.-]*){0,2})\]?\s*:\s+(?P<text>\S.*)$"
)
MAX_CUE_LINES = 200  # a "cue" without blank lines after it is broken; keep memory bounded


def read_srt(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    yield from _read(path, info, vtt=False)


def read_vtt(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    yield from _read(path, info, vtt=True)


def _read(path: Path, info: SourceInfo, *, vtt: bool) -> Iterator[Utterance]:
    speaker: str | None = None  # carried from cue to cue
    cues = 0
    for start, end, lines in _cues(iter_lines(path, info)):
        cues += 1
        for name, text in _segments(lines):
            speaker = name or speaker
            yield Utterance(text, speaker, start, path.stem, end_timestamp=end)
    if not cues:
        example = "00:00:01.000 --> 00:00:04.000" if vtt else "00:00:01,000 --> 00:00:04,000"
        raise MalformedFileError(f"{path.name}: no subtitle cues found (timing lines like '{example}')")


def _cues(lines: Iterator[str]) -> Iterator[tuple[float, float, list[str]]]:
    """(start, end, text lines). Lines outside a cue (SRT indexes, VTT cue ids, the header,
    NOTE/STYLE/REGION blocks) are dropped: only a timing line opens a cue."""
    cue: tuple[float, float, list[str]] | None = None
    for line in lines:
        text = line.strip().lstrip("\ufeff")
        timing = _TIMING.match(text)
        if timing:
            if cue:
                yield cue
            cue = (_seconds(timing["start"]), _seconds(timing["end"]), [])
        elif not text:
            if cue:
                yield cue
            cue = None
        elif cue is not None:
            cue[2].append(text)
            if len(cue[2]) >= MAX_CUE_LINES:
                yield cue
                cue = (cue[0], cue[1], [])
    if cue:
        yield cue


def _seconds(clock: str) -> float:
    parts = clock.replace(",", ".").split(":")
    seconds = float(parts[-1])
    for i, part in enumerate(reversed(parts[:-1])):
        seconds += int(part) * 60 ** (i + 1)
    return seconds


def _segments(lines: list[str]) -> Iterator[tuple[str | None, str]]:
    """(speaker or None, text) runs of a cue's lines; a new label starts a new run."""
    name: str | None = None
    run: list[str] = []
    for line in lines:
        voice = _VOICE.search(line)  # SRT converted from VTT keeps them too
        label = None
        if voice:
            label = voice.group(1).strip()
        text = html.unescape(_TAGS.sub("", line)).strip()
        m = _LABEL.match(text)
        if m and (m["name"][0].isupper() or m["name"].upper().startswith("SPEAKER")):
            label, text = m["name"], m["text"]
        if label and label != name and run:
            yield name, " ".join(run)
            run = []
        name = label or name
        if text:
            run.append(text)
    if run:
        yield name, " ".join(run)
