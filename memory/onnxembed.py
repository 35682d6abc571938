"""The ONNX backends of the embedder: a local sentence-transformers model exported once
to ONNX, run with onnxruntime and the model's fast tokenizer, without torch at run time.
`exported_model(model_dir)` returns the export from the cache
`$ALTEREGO_MODEL_CACHE/onnx/<fingerprint>-v<EXPORT_VERSION>/` (default
`~/.cache/alterego/models/onnx`; the fingerprint hashes the folder's configuration,
tokenizer and weights), making it on first use (seconds, logged): `torch.onnx.export` (the
TorchScript exporter, which needs only the `onnx` package) of the transformer's last
hidden state, checked against torch, fused by onnxruntime's transformer optimizer (kept
only if it still matches), `quantize_dynamic` of that to int8, the tokenizer as one
`tokenizer.json` and the pooling settings; built in a temporary folder and renamed into
place with a marker written last that records each file's size and SHA-256, so a crash
mid-export leaves nothing a later run would use and a damaged export is made again.
`OnnxEncoder` embeds like sentence-transformers does for a Transformer → Pooling (mean,
CLS or max) → Normalize model: truncation at the model's `max_seq_length`, each text run
alone (no padding; with int8, a vector that does not depend on the texts beside it),
pooled with the attention mask, L2-normalised. Models with other modules (a Dense layer,
say) are not exported (`UnsupportedModelError`): the embedder runs them on torch."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EXPORT_VERSION = 3  # bump when the export changes what it writes
MARKER_FILE = ".alterego-onnx.json"  # written last: its presence means the folder is complete
FP32_FILE, INT8_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.onnx", "model-int8.onnx", "tokenizer.json", "embedder.json"
_export_lock = threading.Lock()


class UnsupportedModelError(ValueError):
    """The model folder is not a Transformer → Pooling → (Normalize) sentence-transformers model."""


def model_cache() -> Path:
    """Where exported models live: shared by every data root of this user, like the
    chat models (`personas.models.model_cache`, which memory may not import)."""
    raw = os.environ.get("ALTEREGO_MODEL_CACHE", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "alterego" / "models"


def _weights(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())


def fingerprint(model_dir: Path) -> str:
    """A short, stable id of a sentence-transformers folder, `<folder name>-<hash>`: the
    hash covers its small files whole and its weight files by size, head and tail (fast
    for large models), not where the folder is."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    small = [p for p in sorted(model_dir.rglob("*.json")) if p.is_file()] + sorted(model_dir.glob("*.txt"))
    for path in small + _weights(model_dir):
        h.update(str(path.relative_to(model_dir)).encode() + b"\0")
        size = path.stat().st_size
        h.update(str(size).encode())
        with path.open("rb") as fh:
            if size <= 2 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read(1 << 20))
    name = model_dir.parent.name if model_dir.name == "model" else model_dir.name
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:40] or "model"
    return f"{safe}-{h.hexdigest()[:12]}"


def read_layout(model_dir: Path) -> dict:
    """Pooling mode, normalisation and max_seq_length of a sentence-transformers folder;
    UnsupportedModelError for any other module layout."""
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise UnsupportedModelError(f"{model_dir} has no modules.json (not a sentence-transformers folder)")
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]) or modules[0].get("path"):
        raise UnsupportedModelError(f"{model_dir}: modules {kinds} (only Transformer, Pooling, Normalize export)")
    pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
    modes = [m for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                         "lasttoken") if pooling.get(f"pooling_mode_{m}")]
    mode = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}.get(modes[0]) if len(modes) == 1 else None
    if mode is None or pooling.get("include_prompt") is False:
        raise UnsupportedModelError(f"{model_dir}: pooling {modes} (only one of mean, CLS, max exports)")
    st_config = model_dir / "sentence_bert_config.json"
    settings = json.loads(st_config.read_text(encoding="utf-8")) if st_config.is_file() else {}
    if settings.get("do_lower_case"):
        raise UnsupportedModelError(f"{model_dir}: do_lower_case outside the tokenizer is not exported")
    return {
        "pooling": mode,
        "normalize": "Normalize" in kinds,
        "max_seq_length": settings.get("max_seq_length"),
        "dimension": int(pooling["word_embedding_dimension"]),
    }


# -- the cache ----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_complete(folder: Path, files: tuple[str, ...] = (FP32_FILE, INT8_FILE, TOKENIZER_FILE, CONFIG_FILE)) -> bool:
    """Whether `folder` holds a finished export whose `files` match the sizes and SHA-256
    its marker recorded (a truncated or altered file fails)."""
    marker = Path(folder) / MARKER_FILE
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
        for name in files:
            path = Path(folder) / name
            if path.stat().st_size != recorded[name]["size"] or _sha256(path) != recorded[name]["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def exported_model(model_dir: Path, cache_root: Path | None = None, needs: str = INT8_FILE) -> Path:
    """`cache_root/<fingerprint>/` for the model at `model_dir`, exported now unless a
    complete, intact export (checked for `needs`) is already there."""
    model_dir = Path(model_dir)
    layout = read_layout(model_dir)  # refuse unsupported models before any work
    cache_root = Path(cache_root) if cache_root is not None else model_cache() / "onnx"
    target = cache_root / f"{fingerprint(model_dir)}-v{EXPORT_VERSION}"
    wanted = (needs, TOKENIZER_FILE, CONFIG_FILE)
    with _export_lock:
        if is_complete(target, wanted):
            return target
        if target.exists():
            log.warning("ONNX export at %s is incomplete or damaged; exporting it again", target)
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache_root))
            # mkdtemp makes it 0700: readable to whoever runs the app (an image's export
            # is made by root at build and read by the app's own user).
            os.chmod(tmp, 0o755)
        except OSError as exc:  # a read-only cache (e.g. an image's): export for this process only
            log.warning("cannot write the ONNX cache %s (%s); exporting to a temporary folder", cache_root, exc)
            tmp = Path(tempfile.mkdtemp(prefix="alterego-onnx-"))
            _export(model_dir, layout, tmp)
            return tmp
        try:
            _export(model_dir, layout, tmp)
            _fsync_tree(tmp)
            if target.exists():
                if is_complete(target, wanted):  # another process finished first: use theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if is_complete(target, wanted):  # lost a race with a concurrent exporter
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _export(model_dir: Path, layout: dict, out: Path) -> None:
    """Write the fp32 and int8 ONNX graphs, the tokenizer, the config and (last) the marker."""
    started = time.perf_counter()
    log.info("exporting embedder %s to ONNX (once per model) in %s", model_dir, out)
    from .hfstack import hf_imports

    with hf_imports():
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
        # eager attention: a plain graph (sdpa traces into shape-dependent branches).
        model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(f"{model_dir}: no fast tokenizer")
    inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    if inputs[:2] != ["input_ids", "attention_mask"]:
        raise UnsupportedModelError(f"{model_dir}: tokenizer inputs {tokenizer.model_input_names}")

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(inputs, args))).last_hidden_state

    sample = tokenizer(["an example sentence", "a second, longer example sentence"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*inputs, "hidden"]}
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        # The reference first: after the export the torch module no longer computes the same.
        check = tokenizer(["Anna: shall we take the morning train to the sea?", "ok"], padding=True,
                          return_tensors="pt")
        expected = Hidden(model)(*(check[n] for n in inputs)).numpy()
        torch.onnx.export(Hidden(model), tuple(sample[n] for n in inputs), str(out / FP32_FILE),
                          input_names=inputs, output_names=["hidden"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    _optimize(out / FP32_FILE, model.config, {n: check[n].numpy() for n in inputs}, expected)
    _quantize(out / FP32_FILE, out / INT8_FILE)
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    backend.save(str(out / TOKENIZER_FILE))
    max_len = layout["max_seq_length"] or tokenizer.model_max_length
    max_len = min(int(max_len), int(getattr(model.config, "max_position_embeddings", max_len) or max_len))
    config = {
        **layout, "max_seq_length": max_len, "inputs": inputs, "pad_id": int(tokenizer.pad_token_id or 0),
        "source": str(model_dir), "export_version": EXPORT_VERSION,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    files = {name: {"size": (out / name).stat().st_size, "sha256": _sha256(out / name)}
             for name in (FP32_FILE, INT8_FILE, TOKENIZER_FILE, CONFIG_FILE)}
    (out / MARKER_FILE).write_text(json.dumps({"files": files}, indent=2), encoding="utf-8")
    log.info("embedder exported to ONNX in %.1f s", time.perf_counter() - started)


class _DropOrtNotes(logging.Filter):
    """onnxruntime's optimizer and quantizer log notes (on the root logger and their
    own); not ours to show. Installed on the root logger and its handlers meanwhile."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    def __enter__(self):
        root = logging.getLogger()
        self._on = [root, *root.handlers]
        for target in self._on:
            target.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for target in self._on:
            target.removeFilter(self)


def _hidden(path: Path, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _optimize(path: Path, config, feed: dict, expected: np.ndarray) -> None:
    """Fuse attention, layer norms and GELU (onnxruntime's transformer optimizer), in
    place: the same vectors, less work. The fused graph must give torch's hidden states
    on a sample (padding included); a model it cannot fuse, or fuses wrongly, keeps the
    plain graph, which is checked the same way."""
    if not np.allclose(_hidden(path, feed), expected, atol=1e-3):
        raise UnsupportedModelError(f"{path.parent}: the exported graph does not reproduce the model")
    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    if not heads or not hidden:
        return
    fused_path = path.with_name("fused.onnx")
    try:
        from onnxruntime.transformers import optimizer

        with _DropOrtNotes():
            fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden,
                                             opt_level=1)
            fused.save_model_to_file(str(fused_path))
        if not np.allclose(_hidden(fused_path, feed), expected, atol=1e-3):
            raise ValueError("fused graph differs from the model")
        os.replace(fused_path, path)
    except Exception as exc:  # noqa: BLE001 — an unfused graph is still correct
        log.warning("ONNX graph of %s left unfused: %s", path.parent, exc)
        fused_path.unlink(missing_ok=True)


def _quantize(src: Path, dst: Path) -> None:
    """int8 weights of the attention and the feed-forward blocks' first matrix, one scale
    per output channel, activations quantised on the fly; the feed-forward blocks' second
    matrix and the token embeddings stay float32. Against torch on real scenes a
    per-tensor scale cost a cosine of 0.07 on average, per channel 0.008 (0.035 on a
    one-word text), per channel with those kept 0.004 (0.02): the second matrix's inputs,
    just out of GELU, have the outliers that one 8-bit scale per run handles worst, and
    a short text is little more than its embeddings."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}
    gelus = {"Gelu", "BiasGelu", "FastGelu"}
    keep = [node.name for node in graph.node if node.op_type == "MatMul" and (
        getattr(made_by.get(node.input[0]), "op_type", "") in gelus
        or ("/output/dense/" in node.name and "attention" not in node.name))]
    with _DropOrtNotes():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=keep,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


# -- running it ---------------------------------------------------------------------------
def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class OnnxEncoder:
    """Embeds texts with an exported folder (`exported_model`): `int8` picks the quantised
    graph. Each text runs alone, `threads` texts at once, each single-threaded in
    onnxruntime. Alone, because the int8 graph quantises activations with one scale per
    run: in a batch, a text's vector would depend on its neighbours and their padding
    (a cosine of up to 0.03 apart); alone it is the same vector every time, and no
    padding is computed — on 2 cores it was also the fastest (218 scenes/s against 177
    in batches of 32). Several texts at once on one thread each beat one text on all
    cores: for a model this small, threads mostly wait for each other."""

    def __init__(self, folder: Path, int8: bool = True, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.config = json.loads((self.folder / CONFIG_FILE).read_text(encoding="utf-8"))
        self.max_seq_length = int(self.config["max_seq_length"])
        self.dimension = int(self.config["dimension"])
        self.inputs = list(self.config["inputs"])
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()
        self.threads = threads or cpu_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # InferenceSession.run is thread-safe and releases the GIL: one session serves all threads.
        self.session = ort.InferenceSession(str(self.folder / (INT8_FILE if int8 else FP32_FILE)), options,
                                            providers=["CPUExecutionProvider"])
        self._pool = None
        self._pool_lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        # sentence-transformers strips each text before tokenising it.
        encodings = self.tokenizer.encode_batch([str(t).strip() for t in texts])

        def run(row: int) -> None:
            out[row] = self._embed([encodings[row]])[0]

        if len(texts) == 1 or self.threads == 1:
            for row in range(len(texts)):
                run(row)
        else:
            with self._pool_lock:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embed")
            for _ in self._pool.map(run, range(len(texts)), chunksize=16):
                pass
        return out

    def _embed(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        pad = int(self.config["pad_id"])
        ids = np.full((len(encodings), width), pad, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for r, e in enumerate(encodings):
            n = len(e.ids)
            ids[r, :n] = e.ids
            mask[r, :n] = 1
            types[r, :n] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(None, {n: feed[n] for n in self.inputs})[0]
        return self._pool_vectors(hidden, mask)

    def _pool_vectors(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        mode = self.config["pooling"]
        if mode == "cls":
            vec = hidden[:, 0]
        elif mode == "max":
            vec = np.where(mask[..., None] > 0, hidden, -1e9).max(axis=1)
        else:
            m = mask[..., None].astype(np.float32)
            vec = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        # Always L2-normalised, as Embedder asks sentence-transformers for (normalize_embeddings).
        vec = vec.astype(np.float32)
        return vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
