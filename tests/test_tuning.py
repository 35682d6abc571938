"""The tuning pipeline on the real default model: dataset harvest, a few real training
steps in the training subprocess, GGUF export, the evaluation gate (a better candidate is
promoted and used by the next chat turn, a worse one refused), QLoRA on CPU, and runs
that are cancelled or killed mid-way leaving the active adapter untouched."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, tuning_config as config
from memory.journal import Journal
from tuning.dataset import harvest
from tuning.evaluate import should_promote
from tuning.pipeline import prepare_run, run_subprocess, train_persona

def test_dataset_from_imported_chats_and_journal(service):
    service.memory.import_paths([FIXTURES / "import" / "whatsapp_android.txt"], me=["Иван Петров"])
    journal = service.journal
    a = service.send("what did we plan for saturday?", persona="me")
    b = service.send("and the weather?", persona="me", conversation_id=a.conversation_id)
    c = service.send("bye", persona="me", conversation_id=a.conversation_id)
    journal.set_feedback(a.turn_id, "approved")
    journal.set_feedback(b.turn_id, "edited", "Sunny, +12, perfect for bikes.")
    journal.set_feedback(c.turn_id, "rejected")
    me = service.catalog.get("me")
    out = service.settings.home / "ds"
    summary = harvest(me, out, journal=journal, store=service.memory.store, heldout_fraction=0.2)
    rows = [json.loads(l) for f in ("train.jsonl", "heldout.jsonl") for l in (out / f).read_text().splitlines()]
    completions = [r["completion"][0]["content"] for r in rows]
    # the user's own WhatsApp lines are targets, the other side's lines their prompts
    assert any("давай в субботу поедем на залив" in c for c in completions)
    assert all(r["prompt"][0] == {"role": "system", "content": me.system_prompt} for r in rows)
    chat_row = next(r for r in rows if "давай в субботу" in r["completion"][0]["content"])
    assert "Аня" not in chat_row["completion"][0]["content"] and chat_row["prompt"][-1]["content"]
    # approved reply and edited text are targets; the rejected one is not
    assert a.reply in completions and "Sunny, +12, perfect for bikes." in completions and c.reply not in completions
    edited_row = next(r for r in rows if r["completion"][0]["content"].startswith("Sunny"))
    context = [m["content"] for m in edited_row["prompt"][1:]]
    assert context[-1] == "and the weather?"
    assert context[:-1] in ([], ["what did we plan for saturday?", a.reply])  # earlier turn, if it fits the budget
    prefs = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    assert {(p["type"], p["turn_id"], p.get("label")) for p in prefs} == {
        ("kto", a.turn_id, True), ("dpo", b.turn_id, None), ("kto", c.turn_id, False)}
    # Held out for the gate: the rejection always, approvals/edits only if their pair was held out.
    verdicts = [json.loads(l) for l in (out / "heldout_verdicts.jsonl").read_text().splitlines()]
    held = {r["completion"][0]["content"] for r in map(json.loads, (out / "heldout.jsonl").read_text().splitlines())}
    expected = {c.turn_id} | {t.turn_id for t, text in ((a, a.reply), (b, "Sunny, +12, perfect for bikes.")) if text in held}
    assert {v["turn_id"] for v in verdicts} == expected and summary.heldout_verdicts == len(verdicts)
    rejected = next(v for v in verdicts if v["turn_id"] == c.turn_id)
    assert rejected["label"] is False and rejected["completion"] == [{"role": "assistant", "content": c.reply}]
    # newest slice held out; sources recorded
    assert summary.heldout >= 1 and summary.train + summary.heldout == len(rows)
    assert any(s.startswith("memory:") for s in summary.sources) and "journal:approved" in summary.sources
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["pairs"] == len(rows)


def test_dataset_dedupes_and_drops(tiny, tmp_path, home):
    journal = Journal(home / "journal.sqlite3")
    folder = tiny.folder
    rows = (folder / "examples.jsonl").read_text().splitlines()
    empty = json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]})
    huge = json.dumps({"messages": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "word " * 2000}]})
    (folder / "examples.jsonl").write_text("\n".join(rows + rows[:3] + [empty, huge]) + "\n")
    summary = harvest(tiny, tmp_path / "ds", journal=journal)
    assert summary.dropped == {"duplicate": 3, "empty": 1, "oversized": 1}
    assert summary.train + summary.heldout == 20



def test_every_line_the_user_wrote_becomes_a_pair_in_a_frame(service, tmp_path):
    """The Nexus (Obsidian) chats open with the user's own question: that opener is a
    pair (its context the chat's title), the follow-up a reply; a long run of the user's
    own messages becomes passages; text damaged at import is counted, never trained on."""
    from webapp.reports import format_dataset_summary

    imp = FIXTURES / "import"
    monologue = tmp_path / "monologue.txt"
    diary = [l.strip() for l in (imp / "diary.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    monologue.write_text("".join(f"[01.02.2024, 10:{i:02d}:00] Иван Петров: {line}\n" for i, line in enumerate(diary * 12)),
                         encoding="utf-8")
    service.memory.import_paths([imp / "obsidian_chat.md", imp / "obsidian_chat_us.md", imp / "tis620_damaged.txt",
                                 monologue], me=["Иван Петров"])
    summary = harvest(service.catalog.get("me"), tmp_path / "ds", journal=service.journal,
                      store=service.memory.store, heldout_fraction=0.2).as_dict()
    rows = [json.loads(l) for f in ("train.jsonl", "heldout.jsonl") for l in (tmp_path / "ds" / f).read_text().splitlines()]
    nexus = [r for r in rows if "obsidian_chat" in r["source"]]
    user_messages = sum((imp / f).read_text(encoding="utf-8").count("[!nexus_user]") for f in ("obsidian_chat.md", "obsidian_chat_us.md"))
    assert len(nexus) >= user_messages == 4
    opener = next(r for r in nexus if "велосипед для города" in r["completion"][0]["content"])
    assert opener["prompt"][-1]["content"] == "(New conversation: Как выбрать велосипед)"
    assert any(r["completion"][0]["content"] == "Спасибо! А зимой на гибриде можно?"
               and "шипованн" not in r["prompt"][-1]["content"] for r in nexus)
    assert summary["frames"]["opener"] >= 2 and summary["frames"]["reply"] >= 2 and summary["frames"]["passage"] >= 2
    assert summary["kinds"]["obsidian_chat"] == len(nexus) and summary["kinds"]["whatsapp"] >= 3
    # A passage continues the user's own previous passage.
    passage = summary["examples"]["passage"][0]
    assert passage["context"] and passage["completion"] and passage["context"] != passage["completion"]
    # Damaged lines are counted, and no U+FFFD reaches a training target.
    assert summary["dropped"].get("damaged", 0) >= 1
    assert not any("\ufffd" in r["completion"][0]["content"] for r in rows)
    report = format_dataset_summary("Me", summary, show=2)
    assert "opener" in report and "dropped" in report and "letters lost at import" in report


@pytest.mark.slow
def test_train_promote_and_use(tiny, service, hf_base, engine):
    library = service.adapters
    base_files = {p.name: p.stat().st_mtime_ns for p in hf_base.iterdir()}
    cfg = config(hf_base)
    outcome = train_persona(service.settings.home, cfg, tiny, journal=service.journal, store=None,
                            library=library, max_steps=6).as_dict()
    ev = outcome["eval"]
    assert outcome["promoted"] and outcome["version"] == 1, outcome["reason"]
    assert ev["candidate_loss"] < ev["base_loss"] and ev["current_loss"] is None
    assert outcome["train"]["steps"] == 6 and outcome["train"]["tokens_per_s"] > 0
    # base weights untouched, adapter weights moved away from PEFT's zero-initialised B
    assert {p.name: p.stat().st_mtime_ns for p in hf_base.iterdir()} == base_files
    from safetensors.numpy import load_file

    active = library.active("tiny")
    weights = load_file(str(active.peft_dir / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(abs(v).sum() > 0 for v in lora_b)
    assert not any("embed" in k or "lm_head" in k for k in weights)
    meta = json.loads((active.folder / "meta.json").read_text())
    assert meta["eval"]["candidate_loss"] == ev["candidate_loss"] and meta["samples"] and meta["losses"]
    # the running app uses it on the next turn
    turn = service.send("Tell me about kites.", persona="tiny")
    assert turn.adapter == "tiny/v1"

    # A worse candidate (learning rate 0: no better than the base) is refused.
    worse = train_persona(service.settings.home, config(hf_base, learning_rate=0.0), tiny, journal=service.journal,
                          store=None, library=library, max_steps=2).as_dict()
    assert not worse["promoted"] and worse["version"] == 2
    assert worse["eval"]["current_loss"] == pytest.approx(ev["candidate_loss"], abs=1e-3)
    assert library.active("tiny").version == 1


def test_gate_rules():
    # Preference accuracy on held-out verdicts may not drop below what the candidate replaces.
    better_loss = {"base_loss": 3.0, "current_loss": None, "candidate_loss": 2.5, "heldout_verdicts": 4}
    assert not should_promote({**better_loss, "base_pref_accuracy": 0.5, "candidate_pref_accuracy": 0.25}, 0.01)[0]
    assert should_promote({**better_loss, "base_pref_accuracy": 0.5, "candidate_pref_accuracy": 0.75}, 0.01)[0]
    assert not should_promote({**better_loss, "current_loss": 2.7, "base_pref_accuracy": 0.5,
                               "current_pref_accuracy": 1.0, "candidate_pref_accuracy": 0.75}, 0.01)[0]
    assert should_promote({"base_loss": 3.0, "current_loss": None, "candidate_loss": 2.5}, 0.01)[0]
    assert not should_promote({"base_loss": 3.0, "current_loss": None, "candidate_loss": 3.1}, 0.01)[0]
    assert not should_promote({"base_loss": 3.0, "current_loss": 2.5, "candidate_loss": 2.495}, 0.01)[0]
    assert should_promote({"base_loss": 3.0, "current_loss": 2.5, "candidate_loss": 2.4}, 0.01)[0]
    assert not should_promote({"base_loss": 3.0, "current_loss": 2.5, "candidate_loss": None}, 0.01)[0]


@pytest.mark.slow
def test_a_candidate_that_prefers_rejected_replies_is_not_promoted(tiny, service, hf_base):
    """The user rejected replies written exactly in the style tiny's examples teach. A
    candidate trained on those examples beats the base on held-out loss, but it now finds
    the rejected replies likelier than the base did: it disagrees with every held-out 👎,
    so the gate refuses it however good its loss."""
    j = service.journal
    conv = j.create_conversation()
    for topic in ("kites", "owls", "clouds"):
        turn = j.start_turn(conv, f"Tell me about {topic}.", "tiny")
        j.finish_turn(turn, f"{topic.upper()} IS GOOD. I LIKE {topic.upper()} VERY MUCH.")  # tiny's very template
        j.set_feedback(turn, "rejected")
    out = train_persona(service.settings.home, config(hf_base), tiny, journal=j, store=None,
                        library=service.adapters, max_steps=6).as_dict()
    ev = out["eval"]
    assert out["data"]["heldout_verdicts"] == ev["heldout_verdicts"] == 1  # the newest 👎; two train
    assert out["train"]["preference"]["ran"] is False  # 2 training verdicts, all 👎: no KTO stage
    assert ev["candidate_loss"] < ev["base_loss"]  # the loss alone would have promoted it
    assert ev["base_pref_accuracy"] == 0.5 and ev["candidate_pref_accuracy"] < 0.5
    assert not out["promoted"] and "held-out verdicts" in out["reason"], out["reason"]
    assert service.adapters.active("tiny") is None


@pytest.mark.slow
def test_verdicts_train_a_kto_stage_after_sft(tiny, service, hf_base):
    """With enough 👍, 👎 and edits (an edit is one of each), the run adds a KTO stage on the
    same adapter after SFT, in the same subprocess; the exported adapter is the trained
    one alone (not KTO's frozen reference copy) and the gate measures it on held-out verdicts."""
    j = service.journal
    conv = j.create_conversation()
    topics = ["kites", "owls", "clouds", "ferns", "lamps", "roads", "bells", "ponds", "hills", "coats", "nests", "boats"]
    for i, topic in enumerate(topics):
        turn = j.start_turn(conv, f"Tell me about {topic}.", "tiny")
        if i % 2:
            j.finish_turn(turn, f"{topic.upper()} ARE GOOD. I LIKE {topic.upper()} VERY MUCH.")
            j.set_feedback(turn, "approved")
        else:
            j.finish_turn(turn, f"well, {topic} are a complicated subject and i would rather not say much about them")
            if i:
                j.set_feedback(turn, "rejected")
            else:  # the oldest: rewritten by the user — a 👍 for the edit and a 👎 for the reply
                j.set_feedback(turn, "edited", f"{topic.upper()} IS GOOD. I LIKE {topic.upper()} VERY MUCH.")
    cfg = config(hf_base, heldout_fraction=0.1, preference_min_verdicts=6, preference_steps=3)
    out = train_persona(service.settings.home, cfg, tiny, journal=j, store=None, library=service.adapters,
                        max_steps=4).as_dict()
    pref = out["train"]["preference"]
    assert pref["ran"] and pref["steps"] == 3 and pref["verdicts"] == out["data"]["train_verdicts"] >= 6, pref
    assert out["data"]["train_verdicts"] + out["data"]["heldout_verdicts"] == len(topics)
    assert pref["examples"] == out["data"]["train_verdicts"] + 1  # the edit gave two KTO examples
    ev = out["eval"]
    assert ev["heldout_verdicts"] >= 2 and ev["candidate_pref_accuracy"] is not None and ev["base_pref_accuracy"] is not None
    adapter = Path(out["run_dir"]) / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()


def _wait_for_step(run_dir: Path, proc, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("step", 0) >= 1:
            return status
        assert proc.poll() is None, (run_dir / "train.log").read_text()[-2000:]
        time.sleep(0.5)
    raise AssertionError("training never reached step 1")


@pytest.mark.slow
def test_killed_run_leaves_the_active_adapter_untouched(tiny, service, hf_base):
    library = service.adapters
    from tuning.export import llama_dims, random_lora, write_gguf_lora

    layers, dims = llama_dims(service.engine.llm.metadata)
    v1 = library.add_version("tiny", write_gguf_lora(service.settings.home / "x.gguf", random_lora(layers, dims), alpha=16))
    library.activate("tiny", v1.version)
    before = sorted(p.name for p in library.persona_dir("tiny").iterdir())
    run_dir, _ = prepare_run(service.settings.home, config(hf_base, max_steps=500), tiny, journal=service.journal,
                             store=None, library=library, base_dir=hf_base)
    log = open(run_dir / "train.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tuning.train", str(run_dir)], cwd=ROOT, stdout=log, stderr=log)
    _wait_for_step(run_dir, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert library.active("tiny").version == v1.version
    assert sorted(p.name for p in library.persona_dir("tiny").iterdir()) == before
    assert service.refresh_adapters()["tiny"] == "tiny/v1"


@pytest.mark.slow
def test_cancelled_run_promotes_nothing(tiny, service, hf_base):
    run_dir, _ = prepare_run(service.settings.home, config(hf_base, max_steps=500), tiny, journal=service.journal,
                             store=None, library=service.adapters, base_dir=hf_base)
    seen = []

    def progress(status):
        seen.append(status)
        if status.get("step", 0) >= 1:
            (run_dir / "cancel").touch()

    result = run_subprocess(run_dir, 1, progress, poll_s=0.2)
    assert result["state"] == "cancelled" and seen[-1]["state"] == "cancelled"
    assert seen[-1]["step"] < 500
    assert service.adapters.active("tiny") is None


@pytest.mark.slow
def test_qlora_on_cpu_trains(tiny, service, hf_base):
    outcome = train_persona(service.settings.home, config(hf_base, qlora="on", max_steps=2), tiny,
                            journal=service.journal, store=None, library=service.adapters, max_steps=2).as_dict()
    assert outcome["train"]["qlora"] is True and outcome["train"]["steps"] == 2
    assert outcome["eval"]["candidate_loss"] is not None
    assert Path(outcome["run_dir"], "adapter.gguf").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("base", ["hf_base", "gemma_hf_base"])
def test_cpu_completion_loss_matches_trls_loss_and_gradients(base, request):
    """The loss the pipeline trains with on a CPU (`completion_loss`, plain autograd) is
    trl's own completion-only loss (its fused LM head), to float precision, on both
    embedded models, and so are the LoRA gradients it gives."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from tuning.train import completion_loss, plain_loss_fits

    path = request.getfixturevalue(base)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs",))  # as SFTTrainer does, before peft
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             task_type="CAUSAL_LM", init_lora_weights=False))
    batch = tok(["Anna: are we still going to the dacha on Saturday?\nMe: yes, bring the soup and the cat",
                 "Olga: hi\nMe: привет, как дела?"], return_tensors="pt", padding=True)
    assert plain_loss_fits(model)  # the pipeline trains this model with completion_loss
    labels = batch["input_ids"].clone()
    labels[:, :8] = -100  # the prompt
    labels[batch["attention_mask"] == 0] = -100

    def loss_and_grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    ours, ours_grads = loss_and_grads(lambda: completion_loss(model, {**batch, "labels": labels}))

    def trl_loss():
        out = model(**batch, labels=labels, fused_lm_head=True)
        return -out.log_probs.sum() / out.label_mask.sum()

    theirs, their_grads = loss_and_grads(trl_loss)
    assert torch.isfinite(ours) and ours.item() > 0
    assert torch.allclose(ours, theirs, rtol=1e-5), (ours.item(), theirs.item())
    assert len(ours_grads) == len(their_grads) > 0
    for a, b in zip(ours_grads, their_grads):
        # Summed in another order (trl in vocabulary tiles): equal to float rounding.
        assert (a - b).norm() <= 1e-3 * b.norm(), ((a - b).norm() / b.norm()).item()


def test_dataset_cli(tmp_path):
    from conftest import ALTEREGO, cli_env

    proc = subprocess.run([*ALTEREGO, "dataset", "--persona", "poet", "--json"], cwd=ROOT, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["pairs"] >= 280 and out["heldout"] == out["pairs"] - out["train"] > 0
    assert out["sources"] == {"builtin:poet/examples.jsonl": out["pairs"]}
    unknown = subprocess.run([*ALTEREGO, "train", "--persona", "pirate"], cwd=ROOT, env=cli_env(tmp_path),
                             capture_output=True, text=True, timeout=180)
    assert unknown.returncode == 2 and "Unknown persona 'pirate'" in unknown.stderr
