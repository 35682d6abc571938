"""The versioned adapter registry's promotion step: a finished training run becomes the
persona's next version (GGUF LoRA + its PEFT adapter + meta.json with the data summary,
training and evaluation figures), and the evaluation gate decides whether it becomes the
active one. All writes go through `personas.adapters.AdapterLibrary`, whose version
folders are written-then-renamed and whose active pointer flips by atomic rename — so a
crash at any point leaves the previous active adapter in force. `AdapterLibrary.rollback`
re-activates the previous version; the running app picks either up on its next turn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personas.adapters import AdapterLibrary, AdapterVersion

from .evaluate import should_promote


@dataclass
class Promotion:
    version: AdapterVersion
    promoted: bool
    reason: str


def record_run(library: AdapterLibrary, persona: str, result: dict, data: dict, margin: float) -> Promotion:
    promoted, reason = should_promote(result["eval"], margin)
    meta = {
        "persona": persona,
        "base_fingerprint": library.fingerprint,
        "data": data,
        "train": {k: v for k, v in result["train"].items() if k != "losses"},
        "losses": result["train"].get("losses", []),
        "eval": {k: v for k, v in result["eval"].items() if k != "samples"},
        "samples": result["eval"].get("samples", []),
        "promoted": promoted,
        "gate": reason,
    }
    version = library.add_version(persona, Path(result["gguf"]), meta, peft_dir=Path(result["peft"]))
    if promoted:
        library.activate(persona, version.version)
    return Promotion(library.active(persona) if promoted else version, promoted, reason)  # type: ignore[arg-type]
