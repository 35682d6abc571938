"""Plain text and Markdown importers: prose the user wrote (diaries, notes, letters).

Plain text: paragraphs separated by blank lines, one utterance each, no speaker.
Markdown: the same, plus headings (`#`..`######`) tracked into `heading` as a path
("Trip / Day 2") since a new heading starts a new scene; a YAML front-matter block at the
top is dropped, and so are horizontal rules, whole-line HTML comments and lines that only
embed an image or note. Fenced code blocks stay one paragraph and their `#` lines are not
headings. Paragraphs longer than MAX_PARAGRAPH characters are split at line ends so memory
stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..documents import SourceInfo, Utterance
from ..encoding import iter_lines

MAX_PARAGRAPH = 20_000
FRONT_MATTER_LINES = 500  # an unclosed `---` at the top is a rule, not front matter
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
# A line that only embeds an image or a note (`![[photo.jpg]]`, `![](a.png)`) has no words.
_EMBED = re.compile(r"^\s*!\[\[[^\]]*\]\]\s*$|^\s*!\[[^\]]*\]\([^)]*\)\s*$")


def read_text(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    yield from _paragraphs(iter_lines(path, info), markdown=False)


def read_markdown(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    yield from _paragraphs(_skip_front_matter(iter_lines(path, info)), markdown=True)


def _skip_front_matter(lines: Iterator[str]) -> Iterator[str]:
    first = next(lines, None)
    if first is None:
        return
    if first.strip() != "---":
        yield first
        yield from lines
        return
    held = [first]
    for line in lines:
        if line.strip() in ("---", "..."):
            break  # front matter closed: drop it
        held.append(line)
        if len(held) > FRONT_MATTER_LINES:
            yield from held  # never closed: it was ordinary text after all
            break
    else:
        yield from held
    yield from lines


def _paragraphs(lines: Iterable[str], *, markdown: bool) -> Iterator[Utterance]:
    levels: dict[int, str] = {}  # heading level -> title
    heading: str | None = None
    para: list[str] = []
    size = 0
    fence: str | None = None
    for line in lines:
        if markdown and fence is None:
            if _EMBED.match(line):
                continue
            h = _HEADING.match(line)
            if h or _RULE.match(line) or _COMMENT.match(line):
                if para:
                    yield Utterance("\n".join(para), heading=heading)
                    para, size = [], 0
                if h:
                    level = len(h.group(1))
                    levels = {k: v for k, v in levels.items() if k < level}
                    if (h.group(2) or "").strip():
                        levels[level] = h.group(2).strip()
                    heading = " / ".join(levels[k] for k in sorted(levels)) or None
                continue
        if markdown and (f := _FENCE.match(line)):
            fence = None if fence == f.group(1) else (fence or f.group(1))
        if not line.strip() and fence is None:
            if para:
                yield Utterance("\n".join(para), heading=heading)
                para, size = [], 0
            continue
        para.append(line.rstrip())
        size += len(line)
        if size > MAX_PARAGRAPH:
            yield Utterance("\n".join(para), heading=heading)
            para, size = [], 0
    if para:
        yield Utterance("\n".join(para), heading=heading)
