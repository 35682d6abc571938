"""ChatGPT data export (`conversations.json`) importer.

The file is a list of conversations, each a tree of messages (`mapping`: node id ->
{message, parent, children}) because every edit or regenerated reply starts a branch. Only
the branch the user last saw is imported: from `current_node` up through `parent` to the
root, then reversed. System, tool and hidden messages (custom instructions, tool calls,
reasoning) and non-text parts (images) are left out. Conversations are streamed one at a
time with ijson, so the export's size does not matter, only its largest conversation's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import ijson

from ..documents import SourceInfo, Utterance
from ..encoding import repair_text
from ..errors import MalformedFileError
from . import open_json

SPEAKERS = {"user": ("User", True), "assistant": ("ChatGPT", False)}
TEXT_TYPES = ("text", "multimodal_text")


def read_chatgpt(path: Path, info: SourceInfo) -> Iterator[Utterance]:
    skipped: list[str] = []
    count = 0
    with open_json(path) as fh:
        events = ijson.parse(fh, use_float=True)
        first = next(events, None)
        if first is None or first[:2] != ("", "start_array"):
            raise MalformedFileError(f"{path.name}: not a ChatGPT export (expected a list of conversations)")
        for conv in ijson.items(itertools.chain([first], events), "item"):
            if not isinstance(conv, dict) or not isinstance(conv.get("mapping"), dict):
                if count == 0:
                    raise MalformedFileError(f"{path.name}: not a ChatGPT export (conversations have no \"mapping\")")
                skipped.append(str(conv.get("title") if isinstance(conv, dict) else conv)[:60])
                continue
            count += 1
            yield from _conversation(conv, info)
    if skipped:
        info.warnings.append(f"skipped {len(skipped)} conversation(s) without messages: " + ", ".join(skipped[:5]))


def _conversation(conv: dict, info: SourceInfo) -> Iterator[Utterance]:
    mapping = conv["mapping"]
    conversation = str(conv.get("conversation_id") or conv.get("id") or conv.get("title") or "")
    title = conv.get("title") if isinstance(conv.get("title"), str) else None
    for node in _current_branch(conv, mapping, info):
        msg = node.get("message")
        if not isinstance(msg, dict):
            continue
        author = msg.get("author")
        role = author.get("role") if isinstance(author, dict) else None
        if not isinstance(role, str) or role not in SPEAKERS:
            continue  # system and tool messages
        meta = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {}
        if meta.get("is_visually_hidden_from_conversation"):
            continue
        # Tool calls go to a recipient ("python", "browser"); reasoning has its own channel.
        if msg.get("recipient") not in (None, "all") or msg.get("channel") not in (None, "final"):
            continue
        content = msg.get("content") if isinstance(msg.get("content"), dict) else {}
        parts = content.get("parts") if content.get("content_type") in TEXT_TYPES else None
        if not isinstance(parts, list):
            continue
        text = "\n".join(p for p in parts if isinstance(p, str))  # images etc. are objects
        fixed = repair_text(text)
        info.repaired |= fixed.repaired
        info.damaged |= fixed.damaged
        speaker, mine = SPEAKERS[role]
        ts = msg.get("create_time")
        ts = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts) else None
        yield Utterance(fixed.text, speaker, ts, conversation, title, is_me=mine)


def _current_branch(conv: dict, mapping: dict, info: SourceInfo) -> list[dict]:
    """The nodes from the root to `current_node`. Without a usable `current_node` (old or
    hand-edited exports) the newest child is followed down from the root instead."""
    node_id = conv.get("current_node")
    chain: list[dict] = []
    seen: set[str] = set()
    while isinstance(node_id, str) and node_id not in seen and isinstance(mapping.get(node_id), dict):
        seen.add(node_id)
        chain.append(mapping[node_id])
        node_id = mapping[node_id].get("parent")
    if chain:
        return chain[::-1]
    roots = [n for n in mapping.values() if isinstance(n, dict) and not _known(n.get("parent"), mapping)]
    if not roots:
        return []
    info.warnings.append(f"conversation {str(conv.get('title'))[:60]!r} has no current node; followed the newest replies")
    node = roots[0]
    while isinstance(node, dict) and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        children = node.get("children")
        node = mapping.get(children[-1]) if isinstance(children, list) and children and isinstance(children[-1], str) else None
    return chain


def _known(node_id: object, mapping: dict) -> bool:
    return isinstance(node_id, str) and node_id in mapping
