"""Obsidian chat notes written by the "Nexus AI Chat Importer" plugin.

Each turn opens with a callout line, `>[!nexus_user] **User** - 15.06.2025 at 6:21` or
`>[!nexus_agent] **Assistant** - 07/24/2025 at 4:29 PM`; its text follows on lines
prefixed `> ` (exactly that prefix is stripped; a bare `>` is an empty line of the turn) and
it ends with `<!-- UID: … -->` — or, as in any Markdown callout, at the first line that
is not quoted. Everything else in the note (front matter, `# Title`, links like
`[[57_title]]`, `---` rules) belongs to no turn. User turns are the user's own words
(is_me=True); agent turns are not. The conversation is the front-matter `conversation_id`,
else its title/alias, else the note's file stem. The chat's title (front-matter `title` or
`aliases`, else the `# Title:` line) becomes every turn's `heading`: sources show it, and
the dataset uses it as the context of the chat's opening message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..documents import SourceInfo, Utterance
from ..encoding import iter_lines
from ..errors import MalformedFileError
from . import date_order, hour24, local_timestamp, ymd

_CALLOUT = re.compile(r"^\s*>\s*\[!nexus_(user|agent)\][+-]?\s*(.*)$")
_WHEN = re.compile(
    r"(?P<a>\d{1,4})(?P<sep>[./-])(?P<b>\d{1,2})[./-](?P<c>\d{1,4})"
    r"(?:,?\s*(?:at\s+)?(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp]\.?\s?[Mm]\.?)?)?"
)
_FRONT = re.compile(r"^(conversation_id|id|title|aliases)\s*:\s*(.*)$")
_TITLE = re.compile(r"^#\s+Title:\s*(.+?)\s*$")
SPEAKERS = {"user": ("User", True), "agent": ("Assistant", False)}
MAX_TURN = 100_000  # characters


def read_obsidian(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    lines = iter_lines(path, info)
    conversation, title = path.stem, ""
    first = next(lines, None)
    if first is not None and first.strip() == "---":
        found = _front_matter(lines)
        conversation = next((found[k] for k in ("conversation_id", "id", "title", "aliases") if k in found), conversation)
        title = found.get("title") or found.get("aliases") or ""
        first = None
    order: list[str | None] = [None]  # the file's date order once a date proves it
    turn: Utterance | None = None
    body: list[str] = []
    size = turns = 0
    for line in _chain(first, lines):
        if turn is not None:
            if line.startswith(">") and not _CALLOUT.match(line):
                body.append(line[2:] if line.startswith("> ") else line[1:])
                size += len(line)
                if size > MAX_TURN:  # keep memory bounded: a giant turn goes out in parts
                    yield Utterance("\n".join(body), turn.speaker, turn.timestamp, conversation, title or None,
                                    is_me=turn.is_me)
                    body, size = [], 0
                continue
            turn.text = "\n".join(body)
            yield turn
            turn, body, size = None, [], 0
        m = _CALLOUT.match(line)
        if m:
            speaker, mine = SPEAKERS[m.group(1)]
            turn = Utterance("", speaker, _when(m.group(2), order), conversation, title or None, is_me=mine)
            turns += 1
        elif not title and not turns and (t := _TITLE.match(line)):
            title = t.group(1)
    if turn is not None:
        turn.text = "\n".join(body)
        yield turn
    if not turns:
        raise MalformedFileError(f"{path.name}: no chat turns found (callouts like '>[!nexus_user] **User** - …')")


def _chain(first: str | None, lines: Iterator[str]) -> Iterator[str]:
    if first is not None:
        yield first
    yield from lines


def _front_matter(lines: Iterator[str]) -> dict[str, str]:
    """Consume the YAML block; its conversation id, title and aliases, as found."""
    found: dict[str, str] = {}
    for count, line in enumerate(lines):
        if line.strip() in ("---", "...") or count > 500:
            break
        m = _FRONT.match(line.strip())
        if m and m.group(2).strip().strip("\"'"):
            found[m.group(1)] = m.group(2).strip().strip("\"'")
    return found


def _when(header: str, order: list[str | None]) -> float | None:
    """Timestamp of a callout header like `**User** - 15.06.2025 at 6:21`."""
    m = _WHEN.search(header)
    if not m:
        return None
    known = date_order(m["a"], m["b"])
    if known:
        order[0] = known
    # Ambiguous (both fields <= 12): the file's order if seen, else the locale's habit —
    # dots mean day-first (15.06.2025), slashes with AM/PM mean US month-first.
    guess = known or order[0] or ("mdy" if m["sep"] == "/" and m["ampm"] else "dmy")
    y, mo, d = ymd(m["a"], m["b"], m["c"], guess)
    hour = hour24(int(m["h"] or 0), m["ampm"])
    return local_timestamp(y, mo, d, hour, int(m["mi"] or 0), int(m["s"] or 0))
