"""Models benchmark: the multilingual base (Gemma 3 270M) next to the default SmolLM2-135M
as its baseline, in one run, on real text no one on the team wrote (`bench.corpora`):

  - bits per character (tokenizer-independent: the summed negative log2-likelihood of
    each text under llama.cpp, over its characters) on Russian fortunes (Debian's
    fortunes-ru) and English ones (Debian's fortunes);
  - time to first token and decode tokens/s of the same plain-text prompt;
  - training tokens/s (a plain peft LoRA loop, `bench.peft_loop`, on the same Russian
    pairs in each model's layout, padding excluded) and the wall time to train on 1,000
    characters of Russian (each tokenizer's tokens for the fortunes above, at that speed);
  - Russian replies to the same ten Russian messages (persona Me, greedy, through
    ChatService in each model's format): the share answered in Russian, and the share of
    their new Cyrillic words (not copied from the message) that Debian's hunspell-ru
    dictionary knows;
  - (not with --quick) a Russian `me` round trip on Gemma: the "Armenian radio" jokes of
    fortunes-ru imported as a WhatsApp chat in which the radio is the user, `train
    --persona me` on gemma3-270m, held-out loss base → candidate and three sample replies.

Usage: .venv/bin/python -m bench.models [--json] [--quick]
Writes $ALTEREGO_HOME/bench/models.json.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, median, no_progress, run_suite, suite_main

BASELINE, MODEL = "smollm2-135m", "gemma3-270m"
RUSSIAN_MESSAGES = [  # everyday messages a user might send (written for this benchmark)
    "Привет! Как прошли выходные?", "Что думаешь про новую работу?", "Пойдём завтра в кино?",
    "Ты где сейчас?", "Как думаешь, стоит ли переезжать в другой город?", "Что приготовить на ужин?",
    "Ты уже купил билеты на поезд?", "Почему ты вчера не позвонил?", "Расскажи, как прошла поездка на море.",
    "Что подарить маме на день рождения?",
]
SPEED_PROMPT = "Вчера вечером мы долго гуляли по набережной и говорили о том, куда поехать летом. "


def bits_per_char(llm, texts: list[str], max_tokens: int = 400) -> tuple[float, int, int]:
    """(bits per character over `texts`, characters scored, tokens scored) under a llama.cpp model
    created with logits_all. Each text is scored on its own, from BOS; a text longer than
    `max_tokens` tokens is cut at a token boundary and only the kept characters count."""
    import numpy as np

    bits, chars, tokens = 0.0, 0, 0
    for text in texts:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:max_tokens]
        if len(ids) < 2:
            continue
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        nll = logz - logits[np.arange(len(ids) - 1), ids[1:]]
        bits += float(nll.sum()) / math.log(2)
        chars += len(llm.detokenize(ids[1:]).decode("utf-8", "replace"))
        tokens += len(ids) - 1
    llm.reset()
    return (bits / chars if chars else math.nan), chars, tokens


def _bpc_all(spec: str, texts: dict[str, list[str]]) -> dict[str, tuple[float, int, int]]:
    from llama_cpp import Llama

    from personas.models import resolve_chat_model

    llm = Llama(model_path=str(resolve_chat_model(spec)), n_ctx=512, n_batch=512, logits_all=True, verbose=False)
    try:
        return {lang: bits_per_char(llm, rows) for lang, rows in texts.items()}
    finally:
        llm.close()


def _speed(engine, runs: int, tokens: int) -> dict:
    """TTFT and decode rate of raw llama.cpp on the same text prompt, from an empty cache."""
    ttft, rate = [], []
    for _ in range(runs):
        engine.llm.reset()
        started, first, n = time.perf_counter(), None, 0
        for chunk in engine.llm.create_completion(SPEED_PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
            if chunk["choices"][0].get("text"):
                n += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        ttft.append(((first or end) - started) * 1000)
        rate.append((n - 1) / (end - first) if first and n > 1 else 0.0)
    engine.llm.reset()
    return {"ttft_ms": median(ttft), "tokens_per_s": median(rate)}


def _fluency(ws: Workspace, spec: str, engine, messages: list[str]) -> dict:
    """Replies of Me to Russian messages: the share that are in Russian at all, and the
    share of their Cyrillic words — not counting words copied from the message, so echoing
    the message scores nothing — that the hunspell-ru dictionary knows."""
    import re

    from bench.corpora import hunspell_known_share

    service = ws.service(f"fluency-{spec}", max_tokens=40, engine=engine)
    replies = [service.send(m, persona="me").reply for m in messages]
    service.journal.close()
    words = re.compile(r"[А-Яа-яЁё]+(?:-[А-Яа-яЁё]+)*")
    novel = []
    for message, reply in zip(messages, replies):
        seen = {w.lower() for w in words.findall(message)}
        novel.append(" ".join(w for w in words.findall(reply) if w.lower() not in seen))
    share, checked = hunspell_known_share(novel)
    russian = sum(bool(re.search("[А-Яа-яЁё]{3,}", n)) for n in novel) / len(messages)
    return {"known_share": share, "words": checked, "russian_replies": russian, "replies": replies}


def _training_speed(ws: Workspace, service, spec: str, steps: int) -> dict:
    """Tokens/s of a plain peft loop on `spec`'s own layout of the same Russian pairs
    (padding excluded)."""
    import json

    from bench.training import plain_loop_subprocess
    from tuning.pipeline import base_chat_format, hf_base_dir, prepare_run

    cfg = service.settings.tuning
    base_dir = hf_base_dir(ws.home, cfg, spec)
    run_dir, _ = prepare_run(service.settings.home, cfg, service.catalog.get("me"), journal=service.journal,
                             store=service.memory.store, library=service.adapters, base_dir=base_dir,
                             max_steps=steps, chat_format=base_chat_format(cfg, spec))
    result = plain_loop_subprocess(run_dir, steps, cfg.train_threads)
    return {**result, "tokens_per_s": result["tokens_without_padding"] / result["seconds"],
            "format": json.loads((run_dir / "config.json").read_text())["chat_format"]}


def _run(ws: Workspace, quick: bool) -> dict:
    from bench.corpora import armenian_radio_export, fortune_texts
    from personas.config import EngineConfig
    from personas.engine import LlamaEngine

    chars = 2_000 if quick else 20_000
    texts = {"ru": fortune_texts("ru", chars), "en": fortune_texts("en", chars)}
    figures, details = {}, {"corpora": {
        "ru": "Debian fortunes-ru (citates, life, love, ... files), fixed sample",
        "en": "Debian fortunes (literature, wisdom, people, humorists, education), fixed sample",
        "chat": "Debian fortunes-ru 'armenian' (Armenian radio jokes) as a WhatsApp export, the radio = me",
    }}

    # 1. Bits per character.
    bpc = {}
    for spec in (BASELINE, MODEL):
        ws.progress(f"models: bits per character of {spec} on {chars:,} characters of ru and en fortunes")
        bpc[spec] = _bpc_all(spec, texts)
    for lang in ("ru", "en"):
        figures[f"bpc_{lang}"] = figure(
            f"bits per character, {lang} fortunes: {MODEL} vs {BASELINE}", bpc[MODEL][lang][0], "bits/char",
            f"{BASELINE} on the same text", bpc[BASELINE][lang][0], better="lower", label=MODEL, baseline_label=BASELINE)
    details["bpc"] = {spec: {lang: {"bits_per_char": v[0], "chars": v[1], "tokens": v[2]} for lang, v in rows.items()}
                      for spec, rows in bpc.items()}

    # 2. Speed, 3. fluency (both models loaded once each).
    engines = {spec: LlamaEngine(EngineConfig(model=spec, n_threads=ws.base.engine.n_threads)) for spec in (BASELINE, MODEL)}
    try:
        speed, fluency = {}, {}
        for spec, engine in engines.items():
            ws.progress(f"models: speed and Russian fluency of {spec}")
            speed[spec] = _speed(engine, 1 if quick else 5, 16 if quick else 64)
            fluency[spec] = _fluency(ws, spec, engine, RUSSIAN_MESSAGES[:3] if quick else RUSSIAN_MESSAGES)
    finally:
        for engine in engines.values():
            engine.llm.close()
    figures["ttft"] = figure(f"time to first token, same prompt: {MODEL} vs {BASELINE}", speed[MODEL]["ttft_ms"], "ms",
                             f"{BASELINE}, same prompt, empty cache", speed[BASELINE]["ttft_ms"], better="lower",
                             label=MODEL, baseline_label=BASELINE)
    figures["decode"] = figure(f"decode tokens/s: {MODEL} vs {BASELINE}", speed[MODEL]["tokens_per_s"], "tok/s",
                               f"{BASELINE}, same prompt", speed[BASELINE]["tokens_per_s"], better="higher",
                               label=MODEL, baseline_label=BASELINE)
    figures["fluency_ru"] = figure(
        f"Russian replies: share of new words hunspell-ru knows, {MODEL} vs {BASELINE}", fluency[MODEL]["known_share"],
        "", f"{BASELINE}'s replies to the same messages", fluency[BASELINE]["known_share"], better="higher",
        label=MODEL, baseline_label=BASELINE)
    figures["russian_replies"] = figure(
        f"Russian messages answered in Russian (new Cyrillic words), {MODEL} vs {BASELINE}",
        fluency[MODEL]["russian_replies"], "", f"{BASELINE} on the same messages", fluency[BASELINE]["russian_replies"],
        better="higher", label=MODEL, baseline_label=BASELINE)
    details["fluency"] = fluency

    # 4. Training speed on the same Russian pairs, and 5. the round trip.
    service = ws.service("models-train")
    # Each model trains from its own HF base (materialised once under the data root's
    # hf_base/ cache, as `alterego train` does), never a configured tuning.hf_base.
    service.settings.tuning = dataclasses.replace(service.settings.tuning, hf_base="")
    export = service.settings.home / "armenian_radio.txt"
    details["chat_export"] = armenian_radio_export(export)
    service.memory.import_paths([export], me=["Радио"])
    train = {}
    for spec in (BASELINE, MODEL):
        ws.progress(f"models: training speed of {spec} (plain peft loop)")
        train[spec] = _training_speed(ws, service, spec, 2 if quick else 10)
    figures["train_tokens_per_s"] = figure(
        f"training tokens/s (plain peft loop): {MODEL} vs {BASELINE}", train[MODEL]["tokens_per_s"], "tok/s",
        f"{BASELINE}, same pairs, threads and batch", train[BASELINE]["tokens_per_s"], better="higher",
        label=MODEL, baseline_label=BASELINE)
    # Wall time to train on 1,000 characters of Russian text: the tokens each tokenizer
    # needs for them (measured on the fortunes above) at each model's training speed.
    for spec in (BASELINE, MODEL):
        _, ru_chars, ru_tokens = bpc[spec]["ru"]
        train[spec]["tokens_per_1000_chars_ru"] = 1000 * ru_tokens / ru_chars
        train[spec]["s_per_1000_chars_ru"] = train[spec]["tokens_per_1000_chars_ru"] / train[spec]["tokens_per_s"]
    figures["train_s_per_1000_chars"] = figure(
        f"training wall time per 1,000 characters of Russian: {MODEL} vs {BASELINE}",
        train[MODEL]["s_per_1000_chars_ru"], "s", f"{BASELINE} (its tokens for the same text, at its speed)",
        train[BASELINE]["s_per_1000_chars_ru"], better="lower", label=MODEL, baseline_label=BASELINE)
    details["training"] = train
    if not quick:
        details["round_trip"] = _round_trip(ws, service, figures)
    service.journal.close()
    return {"figures": figures, "details": details}


def _round_trip(ws: Workspace, service, figures: dict) -> dict:
    from tuning.pipeline import train_persona

    settings = service.settings
    service.use_model(MODEL, persist=False)  # adapters (and the engine) for the Gemma base
    steps = 120
    ws.progress(f"models: Russian `me` round trip on {MODEL}, {steps} steps")
    started = time.perf_counter()

    def progress(status: dict) -> None:
        if status.get("state") == "training" and status.get("step") and status["step"] % 10 == 0:
            ws.progress(f"models: round trip step {status['step']}/{steps} · loss {status.get('loss')}")

    outcome = train_persona(settings.home, settings.tuning, service.catalog.get("me"), journal=service.journal,
                            store=service.memory.store, library=service.adapters, model_path=MODEL,
                            max_steps=steps, progress=progress).as_dict()
    ev = outcome["eval"]
    figures["round_trip_loss"] = figure(
        f"Russian `me` round trip on {MODEL}: held-out loss per completion token", ev["candidate_loss"], "nats",
        "the base model's held-out loss on the same pairs", ev["base_loss"], better="lower",
        label="trained adapter", baseline_label="base")
    return {"wall_s": round(time.perf_counter() - started, 1), "steps": steps, "promoted": outcome["promoted"],
            "pairs": outcome["data"]["pairs"], "heldout": outcome["data"]["heldout"], "samples": outcome["samples"],
            "train": outcome["train"]}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("models", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
