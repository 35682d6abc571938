"""Training benchmark on the embedded default model, in one run:

  - training tokens/s of the pipeline's run (`python -m tuning.train`: trl SFTTrainer +
    peft, completion-only loss, length-grouped batches) next to a plain peft training
    loop (`bench.peft_loop`: AdamW, same model, LoRA config, data, batch size, threads and
    priority, batches in data order): tokens trained on (padding excluded) per second of
    training steps, on both sides;
  - (not with --quick) a full `train --persona me` (harvest, train, export, evaluate,
    promote) on a generated chat export of about 1,000 training pairs: its wall time and
    its held-out loss next to the base model's.
The chat export is generated (two speakers, recurring phrasings of one "me"), so its
losses say the pipeline learns a style, not how well it learns a real person.

Usage: .venv/bin/python -m bench.training [--json] [--quick]
Writes $ALTEREGO_HOME/bench/training.json.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, no_progress, run_suite, suite_main

ROOT = Path(__file__).resolve().parents[1]
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


def plain_loop_subprocess(run_dir: Path, steps: int, threads: int) -> dict:
    from tuning.pipeline import train_env

    proc = subprocess.run([sys.executable, "-m", "bench.peft_loop", str(run_dir), "--steps", str(steps)],
                          env=train_env(threads), cwd=str(ROOT), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plain peft loop failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(ws: Workspace, quick: bool) -> dict:
    from tuning.errors import TrainingFailedError
    from tuning.pipeline import prepare_run, run_subprocess, train_persona

    steps = 2 if quick else 30
    pairs = 40 if quick else 1000
    base_dir = ws.hf_base()
    service = ws.service("training")
    settings = service.settings
    cfg = settings.tuning
    cfg.hf_base = str(base_dir)  # the cached base, not a second copy in the scratch root
    home = settings.home
    export = home / "chat.txt"
    fake_chat(export, exchanges=int(pairs / (1 - cfg.heldout_fraction)) + 5)
    ws.progress("training: importing a generated chat export")
    service.memory.import_paths([export], me=["Me"])
    me = service.catalog.get("me")

    last_state = {"state": None}

    def progress(status: dict) -> None:
        state = status.get("state")
        if state == "training" and status.get("step"):
            ws.progress(f"training: step {status['step']}/{status.get('max_steps')} · loss {status.get('loss')}")
        elif state != last_state["state"] and state in ("exporting", "evaluating"):
            ws.progress(f"training: {state}")
        last_state["state"] = state

    # 1. Throughput: the pipeline's training process vs a plain peft loop, same data.
    run_dir, data = prepare_run(home, cfg, me, journal=service.journal, store=service.memory.store,
                                library=service.adapters, base_dir=base_dir, max_steps=steps)
    ws.progress(f"training: pipeline run, {steps} steps (trl SFTTrainer in a subprocess)")
    result = run_subprocess(run_dir, cfg.train_threads, progress)
    if result.get("state") != "done":
        raise TrainingFailedError(f"pipeline run failed: {result.get('error')} (log {run_dir / 'train.log'})")
    pipeline = result["train"]
    ws.progress(f"training: plain peft loop, {steps} steps")
    plain = plain_loop_subprocess(run_dir, steps, cfg.train_threads)

    # Both sides over their training steps (set-up excluded on both), counting the tokens
    # trained on: padding is work that teaches nothing, and avoiding it (length grouping)
    # is part of what the pipeline does. The whole trainer.train() call and the padded
    # counts are in the details.
    figures = {
        "training_tokens_per_s": figure(
            "training tokens/s (padding excluded): pipeline vs plain peft loop", pipeline["steps_tokens_per_s"],
            "tok/s", "a plain peft LoRA loop (AdamW) on the same model, data, batch, threads and priority",
            plain["tokens_without_padding_per_s"], better="higher", label="pipeline (trl)", baseline_label="plain peft"),
    }
    details = {
        "threads": cfg.train_threads,
        "batch_size": cfg.batch_size,
        "throughput_steps": steps,
        "pairs": data.as_dict()["pairs"],
        "pipeline": {k: v for k, v in pipeline.items() if k != "losses"},
        "plain_peft": plain,
        "ratio_whole_train_call": round(pipeline["tokens_per_s"] / plain["tokens_without_padding_per_s"], 3),
        "plain_peft_padding_share": round(1 - plain["tokens_without_padding"] / plain["tokens"], 3),
    }

    # 2. A full `train --persona me` on the whole dataset (minutes: not in quick mode).
    if not quick:
        ws.progress(f"training: full `train --persona me` run on ~{pairs} pairs")
        started = time.perf_counter()
        outcome = train_persona(home, cfg, me, journal=service.journal, store=service.memory.store,
                                library=service.adapters, model_path=settings.engine.model_spec,
                                progress=progress).as_dict()
        wall = time.perf_counter() - started
        ev = outcome["eval"]
        figures["full_run_heldout_loss"] = figure(
            "full `train --persona me`: held-out loss", ev["candidate_loss"], "",
            "the base model's held-out loss on the same pairs", ev["base_loss"], better="lower",
            label="trained adapter", baseline_label="base model")
        details["full_run"] = {
            "pairs": outcome["data"]["pairs"], "steps": outcome["train"]["steps"], "wall_s": round(wall, 1),
            "train_s": outcome["train"]["seconds"], "tokens_per_s": outcome["train"]["tokens_per_s"],
            "promoted": outcome["promoted"], "qlora": outcome["train"]["qlora"],
        }
    service.journal.close()
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("training", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
