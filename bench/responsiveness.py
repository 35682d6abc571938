"""Is the chat still responsive while a persona trains in the background?

Measures, in one run on the embedded defaults, the time to first token (and decode
tokens/s) of chat turns through ChatService while idle, then while a real training run
(`python -m tuning.train`, as the scheduler starts it: nice 10, `tuning.train_threads`
threads) is in progress, and prints the ratio. Each turn starts from an empty KV cache so
both sides pay the same prompt cost.

Usage: .venv/bin/python bench/responsiveness.py [--json] [--turns N] [--train-threads N]
Writes $ALTEREGO_HOME/bench/responsiveness.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_home, write_report  # noqa: E402

MESSAGES = ["What did you do this morning?", "Any plans for the weekend?", "How is the new job going?",
            "Tell me about the trip.", "What are you reading now?", "How did you sleep?"]


def turns(service, n: int) -> list[dict]:
    out = []
    for i in range(n):
        service.engine.llm.reset()
        out.append(service.send(MESSAGES[i % len(MESSAGES)], persona="poet").timings)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--train-threads", type=int, default=None)
    args = parser.parse_args()

    home = bench_home()
    from personas.catalog import GenerationParams
    from tuning.pipeline import hf_base_dir, prepare_run, read_status, train_env
    from webapp.chat import ChatService
    from webapp.settings import load_settings

    settings = load_settings()
    if args.train_threads:
        settings.tuning.train_threads = args.train_threads
    service = ChatService(settings)
    poet = service.catalog.get("poet")
    service.catalog._personas["poet"] = dataclasses.replace(
        poet, generation=GenerationParams(temperature=0.0, max_tokens=32, repeat_penalty=1.0))
    service.engine
    idle = turns(service, args.turns)

    base_dir = hf_base_dir(home, settings.tuning, settings.engine.model_path)
    run_dir, _ = prepare_run(home, settings.tuning, service.catalog.get("poet"), journal=service.journal, store=None,
                             library=service.adapters, base_dir=base_dir, max_steps=10_000)
    proc = subprocess.Popen([sys.executable, "-m", "tuning.train", str(run_dir)], env=train_env(settings.tuning.train_threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[1]))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and (read_status(run_dir) or {}).get("step", 0) < 2:
            time.sleep(0.5)
        busy = turns(service, args.turns)
        status = read_status(run_dir) or {}
    finally:
        (run_dir / "cancel").touch()
        proc.terminate()
        proc.wait(timeout=60)

    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    report = {
        "train_threads": settings.tuning.train_threads,
        "cpu_cores": os.cpu_count(),
        "idle_ttft_ms": round(med(idle, "ttft_ms"), 1),
        "training_ttft_ms": round(med(busy, "ttft_ms"), 1),
        "ttft_ratio_training_vs_idle": round(med(busy, "ttft_ms") / med(idle, "ttft_ms"), 3),
        "idle_tokens_per_s": round(med(idle, "tokens_per_s"), 1),
        "training_tokens_per_s": round(med(busy, "tokens_per_s"), 1),
        "decode_ratio_training_vs_idle": round(med(busy, "tokens_per_s") / med(idle, "tokens_per_s"), 3),
        "training_steps_during_measurement": status.get("step"),
        "training_tokens_per_s_while_chatting": status.get("tokens_per_s"),
        "turns": args.turns,
    }
    write_report(home, "responsiveness", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
