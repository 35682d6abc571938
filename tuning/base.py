"""Materialising an HF-format training base from the GGUF base model, cached by fingerprint.

The app serves a GGUF model with llama.cpp, but training (transformers + peft, bitsandbytes
for QLoRA) needs an ordinary HF model directory. transformers can *read* a GGUF
(`from_pretrained(dir, gguf_file=name)`: it dequantises the tensors to float and undoes
llama.cpp's q/k row permutation for llama models, and Gemma's norm offset), but the model it returns is marked as GGUF-quantised:
it refuses `save_pretrained` and bitsandbytes quantisation. So, once per base model, we
build a fresh model `from_config` (same config, minus the GGUF `quantization_config`),
copy the dequantised `state_dict` into it (tied `lm_head`/`embed_tokens` stay tied), check
its logits against the GGUF-loaded model, and `save_pretrained` it in float32 (the default
bases are small) together with the GGUF's tokenizer and chat template (base models have
none), under
`cache_root/<fingerprint>/`. The fingerprint ties the cache to the exact GGUF file, since a
LoRA only fits the base it was trained on. The directory is built in a temporary folder
and renamed into place, with a marker file written last, so a crash never leaves a
half-written cache that a later run would mistake for a complete one."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from memory.hfstack import hf_imports
from personas.adapters import fsync_dir, fsync_tree

MARKER_FILE = ".alterego-base.json"  # written last: its presence means the directory is complete
_PATCH_LOCK = threading.Lock()
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MARKER_FILE).is_file()


def materialize_hf_base(gguf_path: Path, cache_root: Path, fingerprint: str) -> Path:
    """Return `cache_root/<fingerprint>/`, an HF model directory (safetensors, float32)
    plus tokenizer with chat template, built from the GGUF at `gguf_path` unless a
    complete one is already cached there."""
    gguf_path = Path(gguf_path)
    cache_root = Path(cache_root)
    if not _SAFE_NAME.match(fingerprint) or ".." in fingerprint:
        raise ValueError(f"not a usable cache folder name: {fingerprint!r}")
    target = cache_root / fingerprint
    if is_complete(target):
        return target
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF base model not found: {gguf_path}")

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint}.", suffix=".tmp", dir=cache_root))
    try:
        _build(gguf_path, tmp)
        _write_marker(tmp, gguf_path, fingerprint)
        fsync_tree(tmp)
        if target.exists():
            if is_complete(target):  # another process finished first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            shutil.rmtree(target)  # leftover of an interrupted build from an older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if is_complete(target):  # lost a race with a concurrent builder
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
        fsync_dir(cache_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_gguf_with_transformers(gguf_path: Path):
    """(model, tokenizer) as transformers reads the GGUF: float32 weights dequantised
    from the GGUF, q/k permutation undone, tokenizer with the GGUF's chat template. The
    model cannot be saved or quantised (see the module docstring)."""
    with hf_imports():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    with _fast_gguf_reading(gguf_path):
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if not tokenizer.chat_template:
        tokenizer.chat_template = _gguf_chat_template(gguf_path) or None
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _fast_gguf_reading(gguf_path: Path):
    """Make transformers' GGUF reading about 4x faster without changing what it reads.

    transformers (5.x) parses the whole GGUF with `gguf.GGUFReader` once for the tokenizer,
    once for the config and once for the weights (~7 s each for the default model on two
    cores: 100k vocabulary strings), and calls `gguf.get_tensor_name_map(arch, n_layers)`,
    a pure function, once per module (~10 s in all). Both are looked up on the `gguf`
    module at call time, so for the duration of the load we memoise the name map and
    share one reader of *this* file (other paths get a fresh reader, as usual). A
    module-global patch: materialisation runs in the tuning subprocess, not beside the
    serving engine, and a lock keeps two loads in one process from interleaving."""
    try:
        import gguf

        real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    except (ImportError, AttributeError):  # a gguf without these: just read slowly
        yield
        return
    target = str(Path(gguf_path).resolve())
    shared: dict = {}

    def reader(path, *args, **kwargs):
        if args or kwargs or str(Path(path).resolve()) != target:
            return real_reader(path, *args, **kwargs)
        if "reader" not in shared:
            shared["reader"] = real_reader(path)
        return shared["reader"]

    with _PATCH_LOCK:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _build(gguf_path: Path, out: Path) -> None:
    with hf_imports():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, tokenizer = load_gguf_with_transformers(gguf_path)
    # A base model (no chat template, e.g. Gemma 3 270M) is trained on transcripts
    # (personas.prompting), which need no template.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF marker that makes the model unsaveable
    config.dtype = torch.float32

    with _no_init_weights():  # every weight is overwritten right below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()  # SmolLM2 and Gemma 3 (no output.weight in the GGUF) tie lm_head to embed_tokens
    model.generation_config = gguf_model.generation_config
    model.eval()

    # The copy must compute exactly what transformers' GGUF reading computes (tied
    # embeddings included); a loader change that broke this would silently poison training.
    probe = tokenizer("Hello, how are you today?", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = gguf_model(probe).logits
        got = model(probe).logits
    if not torch.allclose(expected, got, atol=1e-5, rtol=1e-5):
        raise RuntimeError(
            f"the materialised model of {gguf_path.name} does not reproduce the GGUF model's logits "
            f"(max diff {(expected - got).abs().max().item():.3g})"
        )
    del gguf_model

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    if (reloaded.chat_template or None) != (tokenizer.chat_template or None):
        raise RuntimeError(f"the chat template of {gguf_path.name} did not survive saving the tokenizer")


def _no_init_weights():
    try:
        with hf_imports():
            from transformers.initialization import no_init_weights
    except ImportError:  # older/newer layout: random init costs ~2 s, nothing else
        return contextlib.nullcontext()
    return no_init_weights()


def _gguf_chat_template(gguf_path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return str(field.contents()) if field is not None else ""


def _write_marker(folder: Path, gguf_path: Path, fingerprint: str) -> None:
    with hf_imports():
        import transformers

    info = {
        "source_gguf": str(gguf_path),
        "fingerprint": fingerprint,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MARKER_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
