"""The adapter library: versioned GGUF LoRA adapters per persona, keyed by base model.

Layout under the data root (one tree per base model, because a LoRA only fits the exact
base it was trained on — change the base and every persona falls back to prompt-only
until it is retrained):

    adapters/<base fingerprint>/<persona>/v<N>/adapter.gguf
    adapters/<base fingerprint>/<persona>/v<N>/meta.json     created_at, data summary, eval figures
    adapters/<base fingerprint>/<persona>/v<N>/peft/         the PEFT adapter it was exported from
    adapters/<base fingerprint>/<persona>/active              "v<N>": the one version in use

Writes are crash-safe: a version is written into a temporary folder, fsynced and renamed
into place; the active pointer is flipped by writing a temporary file and renaming it
over `active` (atomic on POSIX). A crash at any point leaves the previous active version
in force. The tuning pipeline's registry and evaluation gate build on these primitives."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import PersonaUserError

ADAPTER_FILE = "adapter.gguf"
META_FILE = "meta.json"
VERSION_RE = re.compile(r"^v(\d+)$")


class AdapterError(PersonaUserError):
    """An adapter file is missing, corrupt, or does not fit the base model."""


@dataclass(frozen=True)
class AdapterVersion:
    persona: str
    version: int
    folder: Path
    active: bool
    meta: dict

    @property
    def gguf(self) -> Path:
        return self.folder / ADAPTER_FILE

    @property
    def peft_dir(self) -> Path | None:
        path = self.folder / "peft"
        return path if (path / "adapter_config.json").is_file() else None

    @property
    def tag(self) -> str:
        return f"v{self.version}"

    def as_dict(self, fingerprint: str) -> dict:
        return {
            "persona": self.persona,
            "version": self.version,
            "active": self.active,
            "base_fingerprint": fingerprint,
            "created_at": self.meta.get("created_at"),
            "eval": self.meta.get("eval", {}),
            "data": self.meta.get("data", {}),
            "path": str(self.gguf),
        }


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file below `folder`, then the folder, before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class AdapterLibrary:
    def __init__(self, root: Path, fingerprint: str):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.base_dir = self.root / fingerprint

    def persona_dir(self, persona: str) -> Path:
        return self.base_dir / persona

    # -- reading --------------------------------------------------------------------------
    def active_tag(self, persona: str) -> str | None:
        pointer = self.persona_dir(persona) / "active"
        try:
            tag = pointer.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return tag if VERSION_RE.match(tag) and (self.persona_dir(persona) / tag / ADAPTER_FILE).is_file() else None

    def versions(self, persona: str) -> list[AdapterVersion]:
        folder = self.persona_dir(persona)
        if not folder.is_dir():
            return []
        active = self.active_tag(persona)
        out = []
        for entry in folder.iterdir():
            m = VERSION_RE.match(entry.name)
            if not m or not (entry / ADAPTER_FILE).is_file():
                continue
            try:
                meta = json.loads((entry / META_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            out.append(AdapterVersion(persona, int(m.group(1)), entry, entry.name == active, meta))
        return sorted(out, key=lambda v: v.version)

    def active(self, persona: str) -> AdapterVersion | None:
        return next((v for v in self.versions(persona) if v.active), None)

    def personas(self) -> list[str]:
        if not self.base_dir.is_dir():
            return []
        return sorted(p.name for p in self.base_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def all_active(self) -> dict[str, AdapterVersion]:
        return {p: v for p in self.personas() if (v := self.active(p)) is not None}

    def listing(self) -> list[dict]:
        return [v.as_dict(self.fingerprint) for p in self.personas() for v in self.versions(p)]

    # -- writing --------------------------------------------------------------------------
    def add_version(
        self, persona: str, gguf: Path, meta: dict | None = None, peft_dir: Path | None = None
    ) -> AdapterVersion:
        """Copy a GGUF LoRA (and the PEFT adapter it came from) in as the persona's next
        version, not yet active."""
        folder = self.persona_dir(persona)
        folder.mkdir(parents=True, exist_ok=True)
        existing = [int(m.group(1)) for e in folder.iterdir() if (m := VERSION_RE.match(e.name))]
        version = max(existing, default=0) + 1
        tmp = folder / f".v{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(gguf, tmp / ADAPTER_FILE)
        if peft_dir is not None:
            shutil.copytree(peft_dir, tmp / "peft")
        meta = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(meta or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        fsync_tree(tmp)
        os.rename(tmp, folder / f"v{version}")
        fsync_dir(folder)
        return AdapterVersion(persona, version, folder / f"v{version}", False, meta)

    def update_meta(self, persona: str, version: int, **fields) -> None:
        path = self.persona_dir(persona) / f"v{version}" / META_FILE
        meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        meta.update(fields)
        _write_atomic(path, json.dumps(meta, indent=2, ensure_ascii=False))

    def activate(self, persona: str, version: int) -> None:
        if not (self.persona_dir(persona) / f"v{version}" / ADAPTER_FILE).is_file():
            raise AdapterError(f"{persona} has no adapter version v{version}")
        previous = self.active_tag(persona)
        if previous and previous != f"v{version}":
            _write_atomic(self.persona_dir(persona) / "previous", previous)
        _write_atomic(self.persona_dir(persona) / "active", f"v{version}")

    def rollback(self, persona: str) -> AdapterVersion:
        """Re-activate the version that was active before the current one."""
        current = self.active_tag(persona)
        try:
            previous = (self.persona_dir(persona) / "previous").read_text(encoding="utf-8").strip()
        except OSError:
            previous = ""
        candidates = [v for v in self.versions(persona) if v.tag != current]
        target = next((v for v in candidates if v.tag == previous), None)
        if target is None:
            older = [v for v in candidates if current and v.version < int(current[1:])]
            target = older[-1] if older else None
        if target is None:
            raise AdapterError(f"{persona} has no earlier adapter version to roll back to")
        self.activate(persona, target.version)
        return self.active(persona)  # type: ignore[return-value]
