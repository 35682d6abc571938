"""Choosing the base model, for the `alterego models` command, the UI's model switch and the
import summary's advice. It lists the embedded models (from `personas.models`) and the
configured one with what a user needs to choose — languages, size, instruction-tuned or
base, license — and which personas have adapters for each (adapters live per base-model
fingerprint, so a persona trained on one base answers prompt-only on another until it
is retrained). `ChatService` calls these; nothing here loads a model."""

from __future__ import annotations

from pathlib import Path

from personas.adapters import AdapterLibrary
from personas.errors import ModelNotFoundError
from personas.models import (
    DEFAULT_MODEL,
    EMBEDDED,
    MULTILINGUAL_MODEL,
    chat_format,
    embedded_info,
    fingerprint,
    resolve_chat_model,
)

# An import whose new scenes are mostly in another language than English gets advice to
# switch when the configured model is English-only.
NON_ENGLISH_SHARE = 0.5


def describe(spec: str, adapters_root: Path) -> dict:
    """One model's row: name, file, languages, size, instruction-tuned, chat format,
    license, and which personas have active adapters for it (or why it is unavailable)."""
    info = embedded_info(spec)
    row: dict = {"name": info.name if info else spec, "embedded": info is not None}
    if info:
        row.update(title=info.title, languages=info.languages, instruction_tuned=info.instruction_tuned,
                   params=info.params, license=info.license, packages=list(info.packages))
    try:
        path = resolve_chat_model(spec)
    except ModelNotFoundError as exc:
        row.update(available=False, error=str(exc), adapters=[])
        return row
    fmt = chat_format(path)
    fp = fingerprint(path)
    row.update(
        available=True, path=str(path), size_mb=round(path.stat().st_size / 2**20), chat_format=fmt,
        fingerprint=fp, adapters=sorted(AdapterLibrary(adapters_root, fp).all_active()),
    )
    if not info:
        row.update(title=path.name, languages="as the model was trained", instruction_tuned=fmt == "chat",
                   license="the model's own")
    return row


def overview(current_spec: str, adapters_root: Path) -> dict:
    """Every embedded model and the configured one (when it is a path), marking the current."""
    current = embedded_info(current_spec)
    current_name = current.name if current else current_spec
    specs = list(EMBEDDED) + ([] if current else [current_spec])
    rows = [describe(spec, adapters_root) for spec in specs]
    for row in rows:
        row["current"] = row["name"] == current_name
    return {"current": current_name, "models": rows}


def prompt_only_personas(persona_names: list[str], row: dict) -> list[str]:
    """The personas that answer without an adapter on this model (none trained for it)."""
    return [p for p in persona_names if p not in set(row.get("adapters", []))]


def import_advice(summary: dict, current_spec: str) -> str | None:
    """When most of the newly imported scenes are not English and the configured model
    only speaks English, say so and give the exact command to switch."""
    languages = {k: v for k, v in (summary.get("languages") or {}).items() if k != "und"}
    total = sum(languages.values())
    if not total:
        return None
    other = total - languages.get("en", 0)
    if other / total <= NON_ENGLISH_SHARE:
        return None
    info = embedded_info(current_spec)
    if info is None or info.name != DEFAULT_MODEL:
        return None  # already multilingual, or a model of the user's own choosing
    top = ", ".join(f"{lang} {n * 100 // total}%" for lang, n in list(languages.items())[:3])
    return (
        f"Most of what you imported is not in English ({top}). The current model, "
        f"{EMBEDDED[DEFAULT_MODEL].title}, writes English only; for replies in your language switch to "
        f"the multilingual base: `alterego models use {MULTILINGUAL_MODEL}` (or Settings → Model in the app)."
    )
