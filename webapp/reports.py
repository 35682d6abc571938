"""Plain-text reports shared by the CLI and the web UI (kept apart from both, so the UI
never imports the CLI): the import summary, with its advice on the model to use, and the
training-data summary (pairs per source kind and frame, what was dropped and why)."""

from __future__ import annotations


def format_import_summary(summary: dict) -> str:
    lines = [
        f"{summary['files']} file(s): {summary['scenes_added']} scenes added, "
        f"{summary['scenes_skipped']} already known, {summary['scenes_removed']} replaced."
    ]
    if summary["me"]:
        detected = f" (auto-detected: {', '.join(summary['me_detected'])}; give your name (--me NAME, or the field in the Import tab) to correct)" if summary["me_detected"] else ""
        lines.append(f"You are: {', '.join(summary['me'])}{detected}")
    for path in summary["repaired"]:
        lines.append(f"repaired encoding: {path}")
    for path in summary["damaged"]:
        lines.append(f"damaged text (readable parts imported): {path}")
    for err in summary["errors"]:
        lines.append(f"error: {err['error']}")
    for path in summary["skipped_files"]:
        lines.append(f"skipped (not a supported format): {path}")
    if summary.get("advice"):
        lines.append(summary["advice"])
    return "\n".join(lines)


DROP_REASONS = {
    "empty": "no text on one side",
    "duplicate": "the same context and reply seen before",
    "oversized": "longer than tuning.max_length tokens",
    "damaged": "letters lost at import (U+FFFD), not the user's spelling",
}
FRAMES = {
    "reply": "answers to the other side's turns",
    "opener": "first messages, prompted by the title or date",
    "passage": "continuations of the user's own previous passage",
}


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_dataset_summary(name: str, summary: dict, show: int = 3) -> str:
    lines = [
        f"{name}: {summary['pairs']} pairs ({summary['train']} train, {summary['heldout']} held out), "
        f"~{summary['tokens']:,} tokens, {summary['preferences']} preference pairs"
    ]
    if summary.get("kinds"):
        lines.append("by source kind: " + ", ".join(f"{k or 'other'} {n}" for k, n in sorted(summary["kinds"].items(), key=lambda kv: -kv[1])))
    for frame, n in sorted(summary.get("frames", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:>6}  {frame}: {FRAMES.get(frame, '')}")
    for source, n in sorted(summary["sources"].items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"  {n:>6}  {source}")
    for reason, n in summary["dropped"].items():
        lines.append(f"dropped {n}: {reason} ({DROP_REASONS.get(reason, '')})")
    for frame, examples in summary.get("examples", {}).items():
        for ex in examples[:show]:
            lines.append(f"[{frame}] {_clip(ex['context'])!s}\n    → {_clip(ex['completion'])}")
    lines.append(f"written to {summary['path']}")
    return "\n".join(lines)
