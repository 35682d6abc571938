"""Is the chat still responsive while a persona trains in the background?

Measures, in one run on the embedded defaults, the time to first token and decode
tokens/s of chat turns through ChatService while idle, then while a real training run
(`python -m tuning.train`, as the scheduler starts it: nice 10, `tuning.train_threads`
threads) is in progress, and their ratios. Each turn starts from an empty KV cache so
both sides pay the same prompt cost. Takes a few minutes (the training process has to
start first), so `alterego bench` runs it only when asked (`--responsiveness`).

Usage: .venv/bin/python -m bench.responsiveness [--json] [--quick]
Writes $ALTEREGO_HOME/bench/responsiveness.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, median, no_progress, run_suite, suite_main

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = ["What did you do this morning?", "Any plans for the weekend?", "How is the new job going?",
            "Tell me about the trip.", "What are you reading now?", "How did you sleep?"]


def turns(service, n: int) -> list[dict]:
    out = []
    for i in range(n):
        service.engine.llm.reset()
        out.append(service.send(MESSAGES[i % len(MESSAGES)], persona="poet").timings)
    return out


def _run(ws: Workspace, quick: bool) -> dict:
    from tuning.pipeline import prepare_run, read_status, train_env

    n = 2 if quick else 6
    base_dir = ws.hf_base()
    service = ws.service("responsiveness", max_tokens=32)
    settings = service.settings
    service.send("warm up", persona="poet")
    ws.progress(f"responsiveness: {n} idle turns")
    idle = turns(service, n)

    run_dir, _ = prepare_run(settings.home, settings.tuning, service.catalog.get("poet"), journal=service.journal,
                             store=None, library=service.adapters, base_dir=base_dir, max_steps=10_000)
    proc = subprocess.Popen([sys.executable, "-m", "tuning.train", str(run_dir)], env=train_env(settings.tuning.train_threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
    try:
        ws.progress("responsiveness: waiting for the training process to reach step 2")
        deadline = time.time() + 300
        while time.time() < deadline and (read_status(run_dir) or {}).get("step", 0) < 2 and proc.poll() is None:
            time.sleep(0.5)
        if (read_status(run_dir) or {}).get("step", 0) < 2:
            raise RuntimeError(f"the training process did not start training (status: {read_status(run_dir)})")
        ws.progress(f"responsiveness: {n} turns while training")
        busy = turns(service, n)
        status = read_status(run_dir) or {}
    finally:
        (run_dir / "cancel").touch()
        proc.terminate()
        proc.wait(timeout=60)

    def med(rows, key):
        return median(r[key] for r in rows)

    figures = {
        "ttft_while_training": figure(
            "chat time to first token while a training run is in progress", med(busy, "ttft_ms"), "ms",
            "the same turns with no training running", med(idle, "ttft_ms"), better="lower",
            label="while training", baseline_label="idle"),
        "decode_while_training": figure(
            "chat decode speed while a training run is in progress", med(busy, "tokens_per_s"), "tok/s",
            "the same turns with no training running", med(idle, "tokens_per_s"), better="higher",
            label="while training", baseline_label="idle"),
    }
    details = {
        "train_threads": settings.tuning.train_threads,
        "cpu_cores": os.cpu_count(),
        "turns": n,
        "training_steps_during_measurement": status.get("step"),
        "training_tokens_per_s_while_chatting": status.get("tokens_per_s"),
    }
    service.journal.close()
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("responsiveness", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
