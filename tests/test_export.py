"""The training base and the PEFT → GGUF LoRA export, on the real embedded model.

* `materialize_hf_base` turns the GGUF into an HF model directory whose logits equal
  transformers' own reading of the GGUF, with its chat template, cached by fingerprint and
  written atomically.
* The round trip the tuning pipeline rests on: a PEFT LoRA trained for a few real steps on
  that base, exported with `export_peft_to_gguf` and served by llama.cpp through
  `LlamaEngine` + `AdapterLibrary`, answers exactly like the PEFT model in transformers
  (greedy), and differs from the bare base. Exported without llama's q/k row permutation
  it does not.

Numerics: the shipped GGUF is Q4_1 (the HF base is read from it), llama.cpp serves it
re-encoded as Q8_0 and quantises activations to 8 bits for its quantised matmuls, while
transformers runs the dequantised weights in float32, so the two
base models' logits differ by ~0.23 on average (up to ~1–2 on single entries) with no
adapter at all. Greedy decoding therefore agrees only where the top two candidates are
further apart than that: on "What is the capital of France?" the two bases already part
at the first token (transformers: 'The' 25.33 > 'L' 25.24; llama.cpp: 'L' 24.91 > 'The'
24.56). PROMPT below is one where the bases agree with a clear margin (smallest top-2 gap
on the greedy path 0.54), and the test checks that precondition first, so a numerics
change reads as such, not as an export bug. The logit-level test measures the same thing
without depending on ties: with the exported adapter llama.cpp stays at the base-vs-base
noise level (0.233 vs 0.229 mean |Δlogit|); without the permutation it is 14x that."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from personas.adapters import AdapterLibrary
from personas.catalog import GenerationParams
from personas.config import EngineConfig
from personas.engine import LlamaEngine
from personas.models import embedded_chat_model, weights_file
from tuning import base as base_mod
from tuning.base import MARKER_FILE, load_gguf_with_transformers, materialize_hf_base
from tuning.export import export_peft_to_gguf, permute_rows

N = 24  # generated tokens compared
TRAIN_PROMPT = [{"role": "user", "content": "What is the capital of Japan?"}]
TRAIN_REPLY = "Tokyo, old friend, where I once sold paper umbrellas in the rain for a whole summer."
PROMPT = [{"role": "user", "content": "How many days are in a week?"}]  # not trained on
GREEDY = GenerationParams(temperature=0.0, max_tokens=N, repeat_penalty=1.0)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_path():
    """The GGUF as shipped: what the HF base is materialised from (llama.cpp serves its
    Q8_0 re-encoding, `embedded_chat_model()`)."""
    return weights_file(embedded_chat_model())


# `hf_base` is the session fixture of conftest.py: materialize_hf_base(embedded GGUF,
# a tmp cache root, its fingerprint), shared with the training tests.


@pytest.fixture(scope="module")
def tokenizer(hf_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_base)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores shared with other processes: torch's OpenMP threads spin at every
    barrier while their partner is descheduled, making a forward pass ~15x slower than
    on one thread (measured 6 s vs 0.4 s). One thread keeps this module fast anywhere."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def peft_model(hf_base, tokenizer):
    """A LoRA r=8, alpha=16 on q/k/v/o, trained for a few real steps to give one persona
    reply to TRAIN_PROMPT. It generalises to other prompts (the persona voice), with top-2
    logit margins well clear of the quantisation noise — unlike random LoRA weights, whose greedy
    paths are full of near-ties (margins < 0.1) that the quantisation noise can flip."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(model, config)
    prompt = prompt_ids(tokenizer, TRAIN_PROMPT)
    full = tokenizer.apply_chat_template(TRAIN_PROMPT + [{"role": "assistant", "content": TRAIN_REPLY}], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False).input_ids
    assert ids[: len(prompt)] == prompt
    x = torch.tensor([ids])
    labels = torch.tensor([[-100] * len(prompt) + ids[len(prompt):]])  # learn the reply only
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(8):
        model(x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def adapter_dir(peft_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(adapter_dir, tmp_path_factory):
    """A private engine (the session one is shared with tests that sync their own
    libraries) with two personas: the export, and the export without the permutation."""
    work = tmp_path_factory.mktemp("gguf")
    engine = LlamaEngine(EngineConfig())
    lib = AdapterLibrary(work / "adapters", engine.fingerprint)
    for persona, permute in (("exported", None), ("unpermuted", False)):
        gguf = export_peft_to_gguf(adapter_dir, work / f"{persona}.gguf", _permute=permute)
        lib.activate(persona, lib.add_version(persona, gguf).version)
    assert engine.sync_adapters(lib) == {"exported": "exported/v1", "unpermuted": "unpermuted/v1"}
    assert not engine.adapter_errors
    yield engine
    engine.llm.close()


def prompt_ids(tokenizer, messages=PROMPT) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def hf_generate(model, tokenizer) -> list[int]:
    """Greedy new tokens of transformers (PEFT or base) for PROMPT."""
    import torch

    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=N, do_sample=False)
    return out[0, len(ids):].tolist()


def hf_greedy(model, tokenizer) -> str:
    return tokenizer.decode(hf_generate(model, tokenizer), skip_special_tokens=True)


def llama_greedy(engine, tokenizer, adapter: str | None) -> str:
    text = engine.stream_chat(PROMPT, GREEDY, adapter=adapter).text()
    # The engine rendered the GGUF's chat template itself: its KV cache must start with
    # exactly the token sequence transformers was given (no extra BOS, same template).
    ids = prompt_ids(tokenizer)
    assert list(engine.llm._input_ids[: len(ids)]) == ids
    return text


def llama_logits(engine, adapter: str | None, ids: list[int], n_prompt: int) -> np.ndarray:
    """llama.cpp's next-token logits after each of ids[n_prompt-1:], teacher-forced."""
    llm = engine.llm
    rows = []
    with engine._lock:
        engine._use_adapter(adapter)
        llm.reset()
        llm.eval(ids[:n_prompt])
        rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())
        for tok in ids[n_prompt:-1]:
            llm.eval([tok])
            rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())
        llm.reset()
    return np.stack(rows)


# -- the materialised base ----------------------------------------------------------------
@pytest.mark.slow
def test_materialised_base_equals_the_gguf_reading(hf_base, gguf_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    assert (hf_base / MARKER_FILE).is_file() and (hf_base / "model.safetensors").is_file()
    assert json.loads((hf_base / "config.json").read_text())["dtype"] == "float32"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(hf_base).eval()  # round-trips from_pretrained
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    reference, gguf_tokenizer = load_gguf_with_transformers(gguf_path)
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    ids = torch.tensor([prompt_ids(tokenizer)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_second_call_returns_the_cache_without_rebuilding(hf_base, gguf_path, monkeypatch):
    def no_build(*_):
        raise AssertionError("rebuilt a complete cache")

    monkeypatch.setattr(base_mod, "_build", no_build)
    started = time.perf_counter()
    assert materialize_hf_base(gguf_path, hf_base.parent, hf_base.name) == hf_base
    assert time.perf_counter() - started < 0.5


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")

    def crash(_gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(base_mod, "_build", crash)
    with pytest.raises(RuntimeError, match="mid-write"):
        materialize_hf_base(fake, tmp_path / "cache", "fp")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_incomplete_cache_is_rebuilt(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    stale = tmp_path / "cache" / "fp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")  # no marker: a crashed older build

    monkeypatch.setattr(base_mod, "_build", lambda _gguf, out: (out / "model.safetensors").write_bytes(b"full"))
    assert materialize_hf_base(fake, tmp_path / "cache", "fp") == stale
    assert (stale / "model.safetensors").read_bytes() == b"full" and (stale / MARKER_FILE).is_file()
    with pytest.raises(ValueError):
        materialize_hf_base(fake, tmp_path / "cache", "../escape")


# -- the export ---------------------------------------------------------------------------
def test_permutation_is_llama_cpps_q_k_layout(hf_base, gguf_path):
    """permute_rows maps the HF q/k weights (as transformers un-permuted them from the
    GGUF) back onto the GGUF's own rows, exactly: the layout llama.cpp applies lora_B in."""
    from gguf import GGUFReader, dequantize
    from safetensors import safe_open

    config = json.loads((hf_base / "config.json").read_text())
    reader = GGUFReader(str(gguf_path))
    tensors = {t.name: t for t in reader.tensors if t.name in ("blk.3.attn_q.weight", "blk.3.attn_k.weight")}
    with safe_open(hf_base / "model.safetensors", "np") as f:
        for module, gguf_name, heads in (
            ("q_proj", "blk.3.attn_q.weight", config["num_attention_heads"]),
            ("k_proj", "blk.3.attn_k.weight", config["num_key_value_heads"]),
        ):
            t = tensors[gguf_name]
            theirs = dequantize(t.data, t.tensor_type).reshape(f.get_tensor(f"model.layers.3.self_attn.{module}.weight").shape)
            ours = permute_rows(f.get_tensor(f"model.layers.3.self_attn.{module}.weight"), heads)
            assert np.array_equal(ours, theirs)
            assert not np.array_equal(f.get_tensor(f"model.layers.3.self_attn.{module}.weight"), theirs)


@pytest.mark.slow
def test_llama_cpp_with_the_exported_adapter_answers_like_peft(peft_model, tokenizer, llama):
    with peft_model.disable_adapter():
        hf_base_text = hf_greedy(peft_model, tokenizer)
    hf_peft_text = hf_greedy(peft_model, tokenizer)
    # Precondition (numerics, not the export): the two bases agree on this prompt.
    assert llama_greedy(llama, tokenizer, None) == hf_base_text
    assert hf_peft_text != hf_base_text  # the adapter visibly changes the reply
    assert llama_greedy(llama, tokenizer, "exported") == hf_peft_text
    # Negative control: without llama's q/k row permutation the reply is different.
    assert llama_greedy(llama, tokenizer, "unpermuted") != hf_peft_text


@pytest.mark.slow
def test_exported_adapter_logits_stay_at_the_quantisation_noise_level(peft_model, tokenizer, llama):
    import torch

    ids = prompt_ids(tokenizer)
    full = torch.tensor([ids + hf_generate(peft_model, tokenizer)])
    with torch.no_grad():
        peft = peft_model(full).logits[0, len(ids) - 1 : -1].numpy()
        with peft_model.disable_adapter():
            base = peft_model(full).logits[0, len(ids) - 1 : -1].numpy()
    seq = full[0].tolist()

    def gap(ours, theirs):
        return float(np.abs(ours - theirs).mean())

    noise = gap(base, llama_logits(llama, None, seq, len(ids)))
    exported = gap(peft, llama_logits(llama, "exported", seq, len(ids)))
    unpermuted = gap(peft, llama_logits(llama, "unpermuted", seq, len(ids)))
    adapter_effect = gap(peft, base)
    assert noise < 0.5 and adapter_effect > 4 * noise  # the adapter moves logits well above the noise
    assert exported < 1.25 * noise, (noise, exported)  # the export adds nothing to the quantisation noise
    assert unpermuted > 4 * exported, (exported, unpermuted)


def test_alpha_and_tensors_are_written_as_peft_holds_them(adapter_dir, tmp_path):
    from gguf import GGUFReader

    out = export_peft_to_gguf(adapter_dir, tmp_path / "a.gguf")
    reader = GGUFReader(str(out))
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    assert reader.fields["general.type"].contents() == "adapter"
    peft = load_file(adapter_dir / "adapter_model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 30 * 4 * 2
    assert all(t.tensor_type.name == "F32" for t in tensors.values())
    v_b = np.asarray(tensors["blk.7.attn_v.weight.lora_b"].data)
    assert np.array_equal(v_b, peft["base_model.model.model.layers.7.self_attn.v_proj.lora_B.weight"].numpy())
    q_a = np.asarray(tensors["blk.7.attn_q.weight.lora_a"].data)
    assert np.array_equal(q_a, peft["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"].numpy())


def test_alpha_pattern_and_rslora_are_folded_into_lora_b(adapter_dir, hf_base, tmp_path):
    """llama.cpp has one alpha per file and scales by alpha / rank; PEFT's per-module
    scaling (alpha_pattern, rsLoRA) is folded into lora_B — checked against the scaling
    PEFT itself derives when it loads the adapter."""
    from gguf import GGUFReader
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = load_file(adapter_dir / "adapter_model.safetensors")
    key = "base_model.model.model.layers.{}.self_attn.{}.lora_B.weight"
    for name, change in (("patterned", {"alpha_pattern": {"layers.0.self_attn.v_proj": 32}}), ("rslora", {"use_rslora": True})):
        variant = _variant(adapter_dir, tmp_path / name, config=change)
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_base), variant)
        attn = loaded.base_model.model.model.layers
        gguf = {t.name: np.asarray(t.data) for t in GGUFReader(str(export_peft_to_gguf(variant, tmp_path / f"{name}.gguf"))).tensors}
        for layer, module, gguf_name in ((0, "v_proj", "attn_v"), (1, "v_proj", "attn_v"), (0, "o_proj", "attn_output")):
            factor = getattr(attn[layer].self_attn, module).scaling["default"] / (16 / 8)
            expected = peft[key.format(layer, module)].numpy()
            if factor != 1.0:
                expected = expected * np.float32(factor)
            assert np.array_equal(gguf[f"blk.{layer}.{gguf_name}.weight.lora_b"], expected), (name, layer, module)
        if name == "patterned":
            assert attn[0].self_attn.v_proj.scaling["default"] == 4.0 and attn[1].self_attn.v_proj.scaling["default"] == 2.0


def _variant(adapter_dir, tmp_path, *, config=None, extra_tensor=None):
    folder = tmp_path / "variant"
    shutil.copytree(adapter_dir, folder)
    if config:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg.update(config)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if extra_tensor:
        import torch

        tensors = load_file(folder / "adapter_model.safetensors")
        tensors[extra_tensor] = torch.zeros(4, 576)
        save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def test_refuses_adapters_that_train_the_head_or_embeddings(adapter_dir, tmp_path):
    with pytest.raises(ValueError, match="modules_to_save"):
        export_peft_to_gguf(_variant(adapter_dir, tmp_path / "a", config={"modules_to_save": ["lm_head"]}), tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="lm_head"):
        export_peft_to_gguf(
            _variant(adapter_dir, tmp_path / "b", extra_tensor="base_model.model.lm_head.modules_to_save.default.weight"),
            tmp_path / "b.gguf",
        )
    with pytest.raises(ValueError, match="embed_tokens"):
        export_peft_to_gguf(
            _variant(adapter_dir, tmp_path / "c", extra_tensor="base_model.model.model.embed_tokens.lora_embedding_A"),
            tmp_path / "c.gguf",
        )
    with pytest.raises(ValueError, match="DoRA"):
        export_peft_to_gguf(_variant(adapter_dir, tmp_path / "d", config={"use_dora": True}), tmp_path / "d.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_needs_the_base_config(adapter_dir, tmp_path):
    orphan = _variant(adapter_dir, tmp_path, config={"base_model_name_or_path": str(tmp_path / "gone")})
    with pytest.raises(ValueError, match="base_config"):
        export_peft_to_gguf(orphan, tmp_path / "o.gguf")
    config = {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3}
    assert export_peft_to_gguf(orphan, tmp_path / "o.gguf", base_config=config).is_file()
    with pytest.raises(ValueError, match="qwen2"):
        export_peft_to_gguf(orphan, tmp_path / "q.gguf", base_config={**config, "model_type": "qwen2"})
