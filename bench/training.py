"""Training benchmark on the embedded default model, in one run:

  - training tokens/s of the pipeline's run (`python -m tuning.train`: trl SFTTrainer +
    peft, completion-only loss) next to a plain peft training loop (AdamW, same model,
    LoRA config, data, batch size and threads) — the ratio is the trainer's overhead;
  - the wall time of a full `train --persona me` (harvest, train, export, evaluate,
    promote) on a generated chat export of about 1,000 training pairs, with its held-out
    losses (base vs candidate).
The chat export is generated (two speakers, recurring phrasings of one "me"), so its
losses say the pipeline learns a style, not how well it learns a real person.

Usage: .venv/bin/python bench/training.py [--json] [--steps N] [--pairs N]
Writes $ALTEREGO_HOME/bench/training.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_home, write_report  # noqa: E402

OPENERS = ["hey", "so", "honestly", "ok so", "listen", "ha", "well"]
TOPICS = ["the dacha", "our trip to Kazan", "the new job", "my bike", "that film", "the concert", "grandma's soup",
          "the cat", "the rent", "the exam", "football tonight", "the train tickets", "the garden", "my sister"]
MINE = ["{o}, {t} is fine, don't worry about it", "{o} — I think {t} can wait till Sunday, right?",
        "{o}, {t}? classic. let's talk tonight", "{o} I was just thinking about {t}, funny", "{o}, I'll sort out {t} myself"]
THEIRS = ["what about {t}?", "did you see the news about {t}?", "are we still doing {t}?", "how is {t} going?",
          "should I worry about {t}?"]


def fake_chat(path: Path, exchanges: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    t = 1_650_000_000
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(exchanges):
            topic = rnd.choice(TOPICS)
            for who, pool in (("Olga", THEIRS), ("Me", MINE)):
                t += rnd.choice([40, 90, 600])
                d = time.gmtime(t)
                text = rnd.choice(pool).format(o=rnd.choice(OPENERS), t=topic)
                fh.write(f"{d.tm_mday:02d}/{d.tm_mon:02d}/{d.tm_year % 100:02d}, {d.tm_hour:02d}:{d.tm_min:02d} - {who}: {text}\n")
            t += 3 * 3600  # a new scene per exchange keeps pairs short


def plain_peft_loop(base_dir: Path, rows: list[dict], steps: int, batch: int, threads: int, lora: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    encoded = []
    for r in rows:
        head = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
        head = head["input_ids"] if hasattr(head, "keys") else head
        full = full["input_ids"] if hasattr(full, "keys") else full
        encoded.append((list(full), len(head)))
    model.train()
    tokens = 0
    started = time.perf_counter()
    for step in range(steps):
        chunk = [encoded[(step * batch + i) % len(encoded)] for i in range(batch)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((batch, width), tok.pad_token_id or 0)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (seq, start) in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, start : len(seq)] = torch.tensor(seq[start:])
            mask[i, : len(seq)] = 1
            tokens += len(seq)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - started
    return {"steps": steps, "tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--steps", type=int, default=30, help="steps for the throughput comparison")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs for the full run")
    parser.add_argument("--full-steps", type=int, default=None, help="steps of the full run (default tuning.max_steps)")
    args = parser.parse_args()

    home = bench_home()
    from tuning.pipeline import hf_base_dir, prepare_run, run_subprocess, train_persona
    from webapp.chat import ChatService
    from webapp.settings import load_settings

    settings = load_settings()
    service = ChatService(settings)
    cfg = settings.tuning
    base_dir = hf_base_dir(home, cfg, settings.engine.model_path)
    export = home / "chat.txt"
    fake_chat(export, exchanges=int(args.pairs / (1 - cfg.heldout_fraction)) + 5)
    service.memory.import_paths([export], me=["Me"])
    me = service.catalog.get("me")

    # 1. Throughput: the pipeline's training process vs a plain peft loop, same data.
    run_dir, data = prepare_run(home, cfg, me, journal=service.journal, store=service.memory.store,
                                library=service.adapters, base_dir=base_dir, max_steps=args.steps)
    run_cfg = json.loads((run_dir / "config.json").read_text())
    pipeline = run_subprocess(run_dir, cfg.train_threads)["train"]
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    plain = plain_peft_loop(base_dir, rows, args.steps, cfg.batch_size, cfg.train_threads, run_cfg["lora"])

    # 2. A full `train --persona me` on the whole dataset.
    started = time.perf_counter()
    outcome = train_persona(home, cfg, me, journal=service.journal, store=service.memory.store,
                            library=service.adapters, model_path=settings.engine.model_path,
                            max_steps=args.full_steps).as_dict()
    wall = time.perf_counter() - started

    report = {
        "threads": cfg.train_threads,
        "batch_size": cfg.batch_size,
        "throughput_steps": args.steps,
        "pipeline_tokens_per_s": pipeline["tokens_per_s"],
        "plain_peft_tokens_per_s": plain["tokens_per_s"],
        "pipeline_vs_plain_ratio": round(pipeline["tokens_per_s"] / plain["tokens_per_s"], 3),
        "full_run_pairs": outcome["data"]["pairs"],
        "full_run_steps": outcome["train"]["steps"],
        "full_run_wall_s": round(wall, 1),
        "full_run_train_s": outcome["train"]["seconds"],
        "full_run_base_loss": outcome["eval"]["base_loss"],
        "full_run_candidate_loss": outcome["eval"]["candidate_loss"],
        "full_run_promoted": outcome["promoted"],
        "qlora": outcome["train"]["qlora"],
    }
    write_report(home, "training", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
