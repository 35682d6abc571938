"""The tuning pipeline end to end, as the CLI (and later the scheduler) runs it:

1. the HF-format base, materialised once from the GGUF base and cached by fingerprint
   (or a configured HF directory);
2. the persona's dataset harvested into a fresh run folder under `ALTEREGO_HOME/runs/`;
3. `python -m tuning.train RUN_DIR` in a subprocess — low priority, bounded threads —
   while this process follows `status.json` for progress;
4. the run's result recorded as the persona's next adapter version, promoted only if the
   evaluation gate says so.
A run that crashes, is killed or is cancelled changes nothing that was active."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from memory.hfstack import hf_imports
from memory.journal import Journal
from personas.adapters import AdapterLibrary
from personas.catalog import Persona
from personas.models import CHAT, TRANSCRIPT, chat_format, fingerprint, resolve_chat_model, weights_file

from .config import TuningConfig
from .dataset import DatasetSummary, harvest
from .errors import NotEnoughDataError, TrainingFailedError
from .registry import Promotion, record_run
from .runlock import TrainingLock
from .train import CANCEL, RESULT, STATUS

Progress = Callable[[dict], None]


@dataclass
class TrainOutcome:
    persona: str
    run_dir: Path
    data: DatasetSummary
    promotion: Promotion | None = None
    result: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        ev = self.result.get("eval", {})
        return {
            "persona": self.persona,
            "version": self.promotion.version.version if self.promotion else None,
            "promoted": bool(self.promotion and self.promotion.promoted),
            "reason": self.promotion.reason if self.promotion else self.result.get("state", ""),
            "eval": {k: v for k, v in ev.items() if k != "samples"},
            "samples": ev.get("samples", []),
            "train": {k: v for k, v in self.result.get("train", {}).items() if k != "losses"},
            "data": self.data.as_dict(),
            "run_dir": str(self.run_dir),
        }


def hf_base_dir(home: Path, config: TuningConfig, model_path: str) -> Path:
    if config.hf_base:
        path = Path(config.hf_base).expanduser()
        if not (path / "config.json").is_file():
            raise NotEnoughDataError(f"tuning.hf_base {path} is not an HF model directory (no config.json)")
        return path
    from .base import materialize_hf_base

    gguf = resolve_chat_model(model_path)
    # From the weights as shipped, not a re-encoding made for serving speed.
    return materialize_hf_base(weights_file(gguf), home / "hf_base", fingerprint(gguf))


def base_chat_format(config: TuningConfig, model_path: str) -> str:
    """The chat format training data is laid out in: the served model's (so an adapter
    learns the prompt it will be served with), or for a configured HF base, its tokenizer's."""
    if config.hf_base:
        with hf_imports():
            from transformers import AutoTokenizer

        return CHAT if AutoTokenizer.from_pretrained(config.hf_base).chat_template else TRANSCRIPT
    return chat_format(resolve_chat_model(model_path))


def new_run_dir(home: Path, persona: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    path = home / "runs" / f"{persona}-{stamp}"
    path.mkdir(parents=True)
    return path


def use_qlora(config: TuningConfig) -> bool:
    if config.qlora in ("on", "true", "yes"):
        return True
    if config.qlora in ("off", "false", "no"):
        return False
    import torch

    return torch.cuda.is_available()


def prepare_run(
    home: Path, config: TuningConfig, persona: Persona, *, journal: Journal, store, library: AdapterLibrary,
    base_dir: Path, max_steps: int | None = None, chat_format: str = CHAT,
) -> tuple[Path, DatasetSummary]:
    run_dir = new_run_dir(home, persona.name)
    data = harvest(persona, run_dir, journal=journal, store=store, heldout_fraction=config.heldout_fraction,
                   max_tokens=config.max_length, chat_format=chat_format, context_tokens=config.context_tokens)
    if data.train < config.min_pairs or data.heldout < 1:
        raise NotEnoughDataError(
            f"{persona.display_name} has {data.train} training pairs and {data.heldout} held-out; at least "
            f"{config.min_pairs} are needed (tuning.min_pairs). Import more of your texts or approve more replies."
        )
    current = library.active(persona.name)
    cfg = {
        "persona": persona.name,
        "base_dir": str(base_dir),
        "chat_format": chat_format,
        "current_peft": str(current.peft_dir) if current and current.peft_dir else None,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": list(config.target_modules)},
        "learning_rate": config.learning_rate,
        "max_steps": max_steps or config.max_steps,
        "batch_size": config.batch_size,
        "qlora": use_qlora(config),
        "threads": config.train_threads,
        "max_length": config.max_length,
        "seed": 0,
        "preference": {"min_verdicts": config.preference_min_verdicts, "steps": config.preference_steps,
                       "learning_rate": config.preference_learning_rate, "beta": config.preference_beta},
    }
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return run_dir, data


def train_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(max(1, threads))
    # PASSIVE: idle OpenMP threads sleep instead of spinning; with the chat engine busy on
    # the same cores, spinning threads slow training ~15x and steal the chat's CPU.
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def run_subprocess(run_dir: Path, threads: int, progress: Progress | None = None, poll_s: float = 0.5) -> dict:
    """Run `python -m tuning.train RUN_DIR`, reporting status.json while it runs."""
    log = open(run_dir / "train.log", "w", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning.train", str(run_dir)], stdout=log, stderr=subprocess.STDOUT,
        env=train_env(threads), cwd=str(Path(__file__).resolve().parents[1]),
    )
    (run_dir / "pid").write_text(str(proc.pid))
    last = None
    try:
        while proc.poll() is None:
            time.sleep(poll_s)
            status = read_status(run_dir)
            if progress and status and status != last:
                progress(status)
                last = status
    except BaseException:
        proc.terminate()  # the parent is going away: stop the run, nothing gets promoted
        proc.wait(timeout=30)
        raise
    finally:
        log.close()
    try:
        result = json.loads((run_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {"state": "failed", "error": f"training process exited with code {proc.returncode}"}
    if progress and (status := read_status(run_dir)):
        progress(status)
    return result


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cancel(run_dir: Path) -> None:
    (run_dir / CANCEL).touch()


def train_persona(
    home: Path, config: TuningConfig, persona: Persona, *, journal: Journal, store, library: AdapterLibrary,
    model_path: str = "", max_steps: int | None = None, progress: Progress | None = None,
    on_run_dir: Callable[[Path], None] | None = None, lock_held: bool = False,
) -> TrainOutcome:
    """One whole run for `persona`, under the data root's training lock (`tuning.runlock`;
    `lock_held`: the caller holds it already). Raises TrainingBusyError when another run
    holds it, NotEnoughDataError / TrainingFailedError as their names say."""
    if not lock_held:
        with TrainingLock(home):
            return train_persona(home, config, persona, journal=journal, store=store, library=library,
                                 model_path=model_path, max_steps=max_steps, progress=progress,
                                 on_run_dir=on_run_dir, lock_held=True)
    base_dir = hf_base_dir(home, config, model_path)
    run_dir, data = prepare_run(home, config, persona, journal=journal, store=store, library=library,
                                base_dir=base_dir, max_steps=max_steps,
                                chat_format=base_chat_format(config, model_path))
    if on_run_dir:
        on_run_dir(run_dir)
    result = run_subprocess(run_dir, config.train_threads, progress)
    outcome = TrainOutcome(persona.name, run_dir, data, result=result)
    if result.get("state") == "cancelled":
        return outcome
    if result.get("state") != "done":
        raise TrainingFailedError(
            f"Training {persona.display_name} failed: {result.get('error', 'unknown error')} (log: {run_dir / 'train.log'}). "
            "The active adapter was not changed."
        )
    outcome.promotion = record_run(library, persona.name, result, data.as_dict(), config.promote_margin)
    return outcome
