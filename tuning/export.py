"""Writing LoRA adapters in llama.cpp's GGUF LoRA format with the `gguf` package.

A GGUF LoRA holds `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`
and, per adapted weight, two F32 tensors named after llama.cpp's tensor names:
`blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a` with
numpy shape (r, n_in) and `….lora_b` with shape (n_out, r) — the same layout as PEFT's
`lora_A.weight` / `lora_B.weight`.

`export_peft_to_gguf` converts an adapter saved by `PeftModel.save_pretrained` the way
llama.cpp's `convert_lora_to_gguf.py` does: module names mapped through `HF_TO_GGUF`, the
rows of q_proj/k_proj `lora_B` permuted exactly as `convert_hf_to_gguf.py` permutes the
base q/k weights (llama.cpp stores them in its own rotary-pair order, transformers
un-permutes them on load, so a delta trained in HF order must be re-permuted or every
head's rotary pairs get the wrong update — for llama-family bases only: Gemma 3's q/k are
stored unpermuted, so its deltas are written as trained), and anything llama.cpp's LoRA cannot carry
(trained embeddings / lm_head, DoRA, LoRA biases, replicated layers) refused with a
`ValueError` rather than silently dropped."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

# PEFT / HF module name -> llama.cpp tensor name
HF_TO_GGUF = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def write_gguf_lora(
    path: Path,
    tensors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]],
    *,
    alpha: float,
    architecture: str = "llama",
    name: str = "alterego-lora",
) -> Path:
    """Write {(layer, gguf module name): (lora_a (r, n_in), lora_b (n_out, r))} as a GGUF LoRA."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("general.name", name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for (layer, module), (a, b) in sorted(tensors.items()):
        base = f"blk.{layer}.{module}.weight"
        writer.add_tensor(f"{base}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{base}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_lora(
    layers: int, dims: dict[str, tuple[int, int]], *, rank: int = 8, scale: float = 0.05, seed: int = 0
) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """A random LoRA over the given modules ({gguf module: (n_in, n_out)}): enough to
    move a model's output visibly; used by tests and benchmarks of the adapter swap."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for module, (n_in, n_out) in dims.items():
            a = rng.normal(0, scale, (rank, n_in)).astype(np.float32)
            b = rng.normal(0, scale, (n_out, rank)).astype(np.float32)
            out[(layer, module)] = (a, b)
    return out


def llama_dims(metadata: dict) -> tuple[int, dict[str, tuple[int, int]]]:
    """Layer count and attention projection shapes of a llama-architecture base, from
    its GGUF metadata (as llama-cpp-python's `Llama.metadata` exposes it)."""
    arch = metadata.get("general.architecture", "llama")
    hidden = int(metadata[f"{arch}.embedding_length"])
    heads = int(metadata[f"{arch}.attention.head_count"])
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
    kv = hidden // heads * kv_heads
    dims = {"attn_q": (hidden, hidden), "attn_k": (hidden, kv), "attn_v": (hidden, kv), "attn_output": (hidden, hidden)}
    return int(metadata[f"{arch}.block_count"]), dims


# model_type in the base's config.json -> (llama.cpp architecture, permute q/k rows).
# llama.cpp's converter permutes q/k only for llama-family models; Gemma 3 keeps HF's
# rotary layout (its converter stores q/k as they are), so its deltas go in unchanged.
_ARCHITECTURES = {
    "llama": ("llama", True), "mistral": ("llama", True),
    "gemma3_text": ("gemma3", False), "gemma3": ("gemma3", False),
}
_LORA_KEY = re.compile(
    r"^base_model\.model\.((?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+))\.lora_([AB])\.weight$"
)


def permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k weight (or of a LoRA `lora_B`, shape (rows, r))
    from HF's rotary layout to llama.cpp's, as `convert_hf_to_gguf.py`'s `LlamaModel.permute`
    does (with n_head = n_kv_head for k_proj)."""
    rows = b.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {rows} rows into {n_head} heads of rotary pairs")
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def export_peft_to_gguf(
    adapter_dir: Path, out_path: Path, *, base_config: dict | None = None, _permute: bool | None = None
) -> Path:
    """Convert a saved PEFT LoRA (`adapter_config.json` + `adapter_model.safetensors`)
    into a llama.cpp GGUF LoRA at `out_path`. `base_config` is the base model's HF
    config.json as a dict; by default it is read from the adapter's
    `base_model_name_or_path` directory. Raises ValueError for adapters llama.cpp cannot
    apply faithfully. (`_permute` overrides the architecture's q/k permutation — False
    skips it, True forces it: negative controls for tests only.)"""
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{adapter_dir} is not a saved PEFT adapter ({exc})") from None
    weights_file = adapter_dir / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise ValueError(f"{adapter_dir} has no adapter_model.safetensors")
    _check_adapter_config(cfg)
    base_config = base_config if base_config is not None else _read_base_config(cfg)
    model_type = base_config.get("model_type", "")
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"cannot export a LoRA for a {model_type or 'unknown'} model; supported: {sorted(_ARCHITECTURES)}"
        )
    architecture, needs_permute = _ARCHITECTURES[model_type]
    n_head = int(base_config["num_attention_heads"])
    n_kv_head = int(base_config.get("num_key_value_heads") or n_head)

    from safetensors.torch import load_file

    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    qualified: dict[tuple[int, str], str] = {}  # the module's name in the model, as PEFT matches patterns
    for key, tensor in load_file(str(weights_file), device="cpu").items():
        if "embed_tokens" in key or "lm_head" in key or "modules_to_save" in key:
            raise ValueError(
                f"the adapter trains the embeddings or the output head ({key}); a llama.cpp LoRA "
                "cannot carry that — train with target_modules on the attention/MLP projections only"
            )
        m = _LORA_KEY.match(key)
        if not m:
            raise ValueError(f"unexpected tensor {key} in the adapter: not a LoRA A/B of a decoder layer projection")
        name, layer, module, which = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if module not in HF_TO_GGUF:
            raise ValueError(f"cannot export a LoRA on {module} (supported: {', '.join(HF_TO_GGUF)})")
        pairs.setdefault((layer, module), {})[which] = tensor.detach().float().numpy()
        qualified[(layer, module)] = name
    if not pairs:
        raise ValueError(f"{weights_file} holds no LoRA tensors")

    alpha = float(cfg["lora_alpha"])
    tensors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    for (layer, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"layer {layer} {module}: the adapter holds lora_{''.join(ab)} without its pair")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            raise ValueError(f"layer {layer} {module}: lora_A {a.shape} and lora_B {b.shape} do not pair up")
        # llama.cpp scales each tensor pair by alpha / its own rank, with one alpha for the
        # file (so rank_pattern needs nothing); PEFT by the module's alpha (alpha_pattern)
        # / rank, or / sqrt(rank) with rsLoRA. Fold any difference into lora_B: a factor
        # of exactly 1 for a plain adapter.
        factor = _peft_scaling(cfg, qualified[(layer, module)], rank) / (alpha / rank)
        if factor != 1.0:
            b = b * np.float32(factor)
        if (needs_permute if _permute is None else _permute) and module in ("q_proj", "k_proj"):
            b = permute_rows(b, n_head if module == "q_proj" else n_kv_head)
        tensors[(layer, HF_TO_GGUF[module])] = (a, b)

    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        write_gguf_lora(tmp, tensors, alpha=alpha, architecture=architecture, name=adapter_dir.name or "alterego-lora")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _check_adapter_config(cfg: dict) -> None:
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"only LoRA adapters can be exported, this one is {cfg.get('peft_type')}")
    if cfg.get("modules_to_save"):
        raise ValueError(
            f"the adapter fully trains {cfg['modules_to_save']} (modules_to_save); a llama.cpp LoRA cannot "
            "carry that — train with target_modules on the attention/MLP projections only"
        )
    if cfg.get("trainable_token_indices"):
        raise ValueError("the adapter trains token embeddings (trainable_token_indices); llama.cpp cannot apply that")
    if cfg.get("use_dora"):
        raise ValueError("DoRA adapters cannot be exported to a llama.cpp LoRA; train with use_dora=False")
    if cfg.get("lora_bias"):
        raise ValueError("adapters with LoRA biases (lora_bias=True) cannot be exported to a llama.cpp LoRA")
    if cfg.get("layer_replication"):
        raise ValueError("adapters with layer_replication cannot be exported to a llama.cpp LoRA")
    if not float(cfg.get("lora_alpha") or 0) > 0:
        raise ValueError(f"lora_alpha must be positive, the adapter has {cfg.get('lora_alpha')!r}")


def _read_base_config(cfg: dict) -> dict:
    base = cfg.get("base_model_name_or_path") or ""
    path = Path(base).expanduser() / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(
            f"cannot read the base model's config ({path}); the adapter's base_model_name_or_path is "
            f"{base!r} — pass base_config explicitly"
        ) from None


def _pattern_value(patterns: dict, module_key: str, default):
    """PEFT's rank/alpha_pattern lookup (peft.utils.other.get_pattern_key): the first key
    that matches the end of the module's qualified name, on a dot boundary."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_key):
            return value
    return default


def _peft_scaling(cfg: dict, module_name: str, rank: int) -> float:
    """PEFT's `scaling` of one LoRA layer (peft.tuners.lora.layer.LoraLayer.update_layer)."""
    alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module_name, cfg["lora_alpha"]))
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
