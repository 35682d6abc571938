"""The persona catalog: persona definitions loaded from YAML. Built-in personas ship in
`personas/builtin/<name>/persona.yaml` (beside their training set `examples.jsonl` and
routing exemplars `exemplars.txt`); a user may add or override personas with the same
layout under `$ALTEREGO_HOME/personas/<name>/`. Each persona has a display name, a
description, a system prompt (for chat models), an optional `intro` (for base models,
which continue a transcript) and its own generation parameters."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PersonaDefinitionError, UnknownPersonaError

BUILTIN_DIR = Path(__file__).parent / "builtin"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class GenerationParams:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    max_tokens: int = 256
    repeat_penalty: float = 1.1

    def as_llama_kwargs(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Persona:
    name: str
    display_name: str
    description: str
    system_prompt: str
    generation: GenerationParams = field(default_factory=GenerationParams)
    folder: Path | None = None
    # Who the persona is, in the third person: opens the transcript a base model continues
    # (`personas.prompting`). None = the description; "" = no description at all.
    transcript_intro: str | None = None

    @property
    def intro(self) -> str:
        return self.description if self.transcript_intro is None else self.transcript_intro

    @property
    def examples_path(self) -> Path | None:
        path = self.folder / "examples.jsonl" if self.folder else None
        return path if path and path.is_file() else None

    @property
    def exemplars(self) -> list[str]:
        path = self.folder / "exemplars.txt" if self.folder else None
        if not path or not path.is_file():
            return []
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_persona(path: Path) -> Persona:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PersonaDefinitionError(f"{path}: cannot read persona definition ({exc})") from None
    if not isinstance(data, dict):
        raise PersonaDefinitionError(f"{path}: a persona definition must be a YAML mapping")
    missing = [k for k in ("name", "display_name", "description", "system_prompt") if not data.get(k)]
    if missing:
        raise PersonaDefinitionError(f"{path}: missing required field(s): {', '.join(missing)}")
    name = str(data["name"])
    if not NAME_RE.match(name):
        raise PersonaDefinitionError(f"{path}: persona name '{name}' must be lowercase letters, digits, - or _")
    gen = data.get("generation") or {}
    known = {f.name for f in dataclasses.fields(GenerationParams)}
    unknown = set(gen) - known
    if unknown:
        raise PersonaDefinitionError(
            f"{path}: unknown generation parameter(s) {sorted(unknown)}; valid: {sorted(known)}"
        )
    try:
        params = GenerationParams(**{k: type(getattr(GenerationParams, k))(v) for k, v in gen.items()})
    except (TypeError, ValueError) as exc:
        raise PersonaDefinitionError(f"{path}: bad generation parameter ({exc})") from None
    extra = set(data) - {"name", "display_name", "description", "system_prompt", "generation", "intro"}
    if extra:
        raise PersonaDefinitionError(f"{path}: unknown field(s) {sorted(extra)}")
    return Persona(
        name=name,
        display_name=str(data["display_name"]),
        description=str(data["description"]).strip(),
        system_prompt=str(data["system_prompt"]).strip(),
        generation=params,
        folder=path.parent,
        transcript_intro=None if "intro" not in data else str(data["intro"] or "").strip(),
    )


class PersonaCatalog:
    """All personas by name; `me` is always first."""

    def __init__(self, personas: dict[str, Persona]):
        if "me" not in personas:
            raise PersonaDefinitionError("the persona catalog must define 'me'")
        self._personas = dict(sorted(personas.items(), key=lambda kv: (kv[0] != "me", kv[0])))

    @classmethod
    def load(cls, user_dir: Path | None = None) -> "PersonaCatalog":
        personas: dict[str, Persona] = {}
        for root in [BUILTIN_DIR] + ([user_dir] if user_dir else []):
            if root and root.is_dir():
                for path in sorted(root.glob("*/persona.yaml")):
                    persona = load_persona(path)
                    personas[persona.name] = persona  # user folder overrides built-ins
        return cls(personas)

    def names(self) -> list[str]:
        return list(self._personas)

    def all(self) -> list[Persona]:
        return list(self._personas.values())

    def get(self, name: str) -> Persona:
        key = (name or "").strip().lower()
        if key not in self._personas:
            raise UnknownPersonaError(name, self.names())
        return self._personas[key]
