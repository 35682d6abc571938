"""Plain-text reports shared by the CLI and the web UI (kept apart from both, so the UI
never imports the CLI): the import summary, with its advice on the model to use."""

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
