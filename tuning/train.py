"""One training run, in its own process: `python -m tuning.train RUN_DIR`.

RUN_DIR holds `config.json` (written by `tuning.pipeline`) and the harvested dataset
(`train.jsonl`, `heldout.jsonl`, the verdicts). The run trains a LoRA with trl's
`SFTTrainer` and a peft `LoraConfig` (loss on the completion only, on a CPU computed by
`completion_loss`; never the embeddings or the LM head), as QLoRA (bitsandbytes 4-bit
nf4, bf16 compute) when configured; with enough 👍/👎/edits a KTO preference stage
follows on the same adapter (`preference_stage`); then it exports the adapter to GGUF and
evaluates base / current / candidate on the held-out set (`tuning.evaluate`). Results
go to `result.json`; promotion is the parent's decision.

It runs at lower CPU priority (nice) with a bounded number of threads so the chat stays
responsive, writes progress (step, loss, tokens/s, ETA, the loss curve) to `status.json`
after every step, and stops cleanly when RUN_DIR/cancel appears or on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

STATUS = "status.json"
RESULT = "result.json"
CANCEL = "cancel"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


class Status:
    """status.json, rewritten atomically so a reader never sees half a file."""

    def __init__(self, run_dir: Path, max_steps: int):
        self.path = run_dir / STATUS
        self.data = {"state": "starting", "step": 0, "max_steps": max_steps, "loss": None, "tokens_per_s": 0.0,
                     "eta_s": None, "losses": [], "pid": os.getpid(), "started_at": time.time(), "message": ""}
        self.flush()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.data)


def lower_priority(threads: int) -> None:
    try:
        os.nice(10)
    except OSError:
        pass
    import torch

    torch.set_num_threads(max(1, threads))


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# Output scalings trl's LM head applies and `completion_loss` does not (no model this
# project ships has one): such a model keeps trl's loss.
_LOGIT_SCALINGS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def plain_loss_fits(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    return all(getattr(config, name, None) is None for name in _LOGIT_SCALINGS)


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """The completion-only loss with plain autograd: the backbone's hidden states, the LM
    head applied only where a label is trained on (`labels` != -100, next-token shifted),
    cross-entropy summed over those tokens and divided by their count (the trainer's
    `num_items_in_batch` when it gives one) — the loss trl computes.

    trl 1.16's own path (a "fused" LM head, `trl.kernels.chunked_logprob`) saves memory
    by recomputing the LM head's projection, tile by tile, in the backward pass; on a CPU
    that recomputation and its elementwise tiles were ~17% of a step (py-spy), and what
    it saves (a few hundred MB of logits for a small model) does not matter there."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    features = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = base.base_model(**features, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    trained = targets != -100
    logits = base.get_output_embeddings()(hidden[trained]).float()
    cap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
    if cap:  # Gemma 2 style: the logits the model itself returns are capped
        logits = torch.tanh(logits / cap) * cap
    count = num_items_in_batch if num_items_in_batch is not None else trained.sum()
    return F.cross_entropy(logits, targets[trained], reduction="sum") / torch.as_tensor(count).clamp(min=1)


def run(run_dir: Path) -> dict:
    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    status = Status(run_dir, cfg["max_steps"])
    stop = {"requested": False}

    def on_term(signum, frame):  # noqa: ARG001
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    lower_priority(cfg.get("threads", 1))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(cfg.get("seed", 0))
    base_dir = cfg["base_dir"]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    qlora = bool(cfg.get("qlora"))
    model_kwargs: dict = {"dtype": torch.float32}
    if qlora:
        from transformers import BitsAndBytesConfig

        model_kwargs = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True,
            ),
            "dtype": torch.bfloat16,
        }
        if torch.cuda.is_available():
            model_kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **model_kwargs)

    lora = cfg["lora"]
    peft_config = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"], bias="none", task_type="CAUSAL_LM",
    )
    train_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in load_rows(run_dir / "train.jsonl")]
    dataset = Dataset.from_list(train_rows)
    args = SFTConfig(
        output_dir=str(run_dir / "trainer"),
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg.get("batch_size", 4),
        learning_rate=cfg.get("learning_rate", 2e-4),
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(10, max(1, cfg["max_steps"] // 10)),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=cfg.get("max_length", 512),
        completion_only_loss=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=qlora,
        seed=cfg.get("seed", 0),
        dataloader_num_workers=0,
        disable_tqdm=True,
        # trl turns activation checkpointing on by default: it recomputes every layer's
        # forward pass in backward to save memory, which a small model on a CPU does not
        # need (it cost the pipeline ~25% of its tokens/s next to a plain peft loop). Kept
        # for QLoRA on a GPU, where larger bases meet memory limits.
        gradient_checkpointing=bool(qlora and torch.cuda.is_available()),
        # Batches of similar lengths: little padding, so few wasted tokens per step.
        train_sampling_strategy="group_by_length",
    )

    class Progress(TrainerCallback):
        def __init__(self):
            self.t0 = time.perf_counter()
            self.tokens = 0
            # The training steps alone, first step's start to last step's end: what a plain
            # loop times (trainer.train() also sets up its optimizer, data loader, callbacks).
            self.steps_from: float | None = None
            self.steps_to: float | None = None

        def on_step_begin(self, args_, state, control, **kw):  # noqa: ARG002
            if self.steps_from is None:
                self.steps_from = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):  # noqa: ARG002
            self.steps_to = time.perf_counter()
            if stop["requested"] or (run_dir / CANCEL).exists():
                control.should_training_stop = True
                status.update(state="cancelling")

        def on_log(self, args_, state, control, logs=None, **kw):  # noqa: ARG002
            if not logs or "loss" not in logs:
                return
            elapsed = time.perf_counter() - self.t0
            self.tokens = int(state.num_input_tokens_seen or 0) or self.tokens
            per_step = elapsed / max(state.global_step, 1)
            status.data["losses"].append([state.global_step, round(float(logs["loss"]), 4)])
            status.update(
                state="training", step=state.global_step, loss=round(float(logs["loss"]), 4),
                tokens_per_s=round(self.tokens / elapsed, 1) if elapsed else 0.0,
                eta_s=round(per_step * (cfg["max_steps"] - state.global_step), 1),
            )

    # Tokens trained on, padding left out: length grouping pads less, and padding teaches
    # nothing, so counting it would reward waste.
    args.include_num_input_tokens_seen = "non_padding"
    progress = Progress()

    class CpuLossSFTTrainer(SFTTrainer):
        """SFTTrainer with `completion_loss` on a CPU; on CUDA trl's memory-saving loss."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or torch.cuda.is_available() or "labels" not in inputs or not plain_loss_fits(model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return completion_loss(model, inputs, num_items_in_batch)

    trainer = CpuLossSFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[progress],
    )
    status.update(state="training", message=f"{len(train_rows)} training pairs")
    started = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - started
    tokens_seen = int(trainer.state.num_input_tokens_seen or 0)
    steps_s = (progress.steps_to - progress.steps_from) if progress.steps_from and progress.steps_to else train_s
    if stop["requested"] or (run_dir / CANCEL).exists():
        status.update(state="cancelled", message="cancelled; nothing was promoted")
        return {"state": "cancelled"}

    preference = preference_stage(trainer.model, tokenizer, run_dir, cfg, status, stop, qlora)
    if stop["requested"] or (run_dir / CANCEL).exists():
        status.update(state="cancelled", message="cancelled; nothing was promoted")
        return {"state": "cancelled"}

    adapter_dir = run_dir / "adapter"
    # Only the trained adapter: KTO adds a frozen "ref" copy beside it as its reference.
    trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"])
    status.update(state="exporting")
    from .export import export_peft_to_gguf

    gguf = export_peft_to_gguf(adapter_dir, run_dir / "adapter.gguf")

    status.update(state="evaluating")
    from .evaluate import evaluate_run

    evaluation = evaluate_run(
        base_dir=Path(base_dir), candidate_dir=adapter_dir,
        current_dir=Path(cfg["current_peft"]) if cfg.get("current_peft") else None,
        heldout=load_rows(run_dir / "heldout.jsonl"), tokenizer=tokenizer,
        verdicts=load_rows(run_dir / "heldout_verdicts.jsonl") if (run_dir / "heldout_verdicts.jsonl").is_file() else [],
    )
    result = {
        "state": "done",
        "gguf": str(gguf),
        "peft": str(adapter_dir),
        "train": {
            "steps": trainer.state.global_step,
            "loss": round(float(output.training_loss), 4),
            "tokens": tokens_seen,  # without padding
            "tokens_per_s": round(tokens_seen / train_s, 1) if train_s else 0.0,
            "seconds": round(train_s, 1),
            # Over the steps alone (see Progress): the figure a plain loop is comparable with.
            "steps_seconds": round(steps_s, 2),
            "steps_tokens_per_s": round(tokens_seen / steps_s, 1) if steps_s else 0.0,
            "qlora": qlora,
            "losses": status.data["losses"],
            "preference": preference,
        },
        "eval": evaluation,
    }
    status.update(state="done", message="finished")
    return result


def preference_stage(model, tokenizer, run_dir: Path, cfg: dict, status: Status, stop: dict, qlora: bool) -> dict:
    """KTO on the training verdicts, after SFT, on the same LoRA. KTO fits what the user
    actually gives — unpaired 👍/👎 — and an edit is one 👍 (the edited text) plus one 👎
    (the model's reply); DPO would learn from edits alone. The reference is the SFT
    adapter itself (trl copies it as a frozen "ref" adapter), so the stage moves the
    persona towards approved and away from rejected replies without forgetting SFT.
    Skipped (and said why) below `preference.min_verdicts`, or without both kinds."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import KTOConfig, KTOTrainer

    pref = cfg.get("preference") or {}
    rows = []
    path = run_dir / "train_verdicts.jsonl"
    verdicts = load_rows(path) if path.is_file() else []
    for v in verdicts:
        if v["type"] == "dpo":
            rows += [{"prompt": v["prompt"], "completion": v["chosen"], "label": True},
                     {"prompt": v["prompt"], "completion": v["rejected"], "label": False}]
        else:
            rows.append({"prompt": v["prompt"], "completion": v["completion"], "label": bool(v["label"])})
    need = int(pref.get("min_verdicts", 0) or 0)
    labels = {r["label"] for r in rows}
    if not need or len(verdicts) < need or labels != {True, False}:
        why = ("off (tuning.preference_min_verdicts = 0)" if not need else
               f"{len(verdicts)} training verdicts, {need} needed (tuning.preference_min_verdicts)" if len(verdicts) < need else
               "needs both approved and rejected replies")
        return {"ran": False, "verdicts": len(verdicts), "examples": len(rows), "reason": why}

    steps = int(pref.get("steps", 30))
    status.update(state="preference", step=0, max_steps=steps,
                  message=f"KTO on {len(verdicts)} verdicts ({len(rows)} examples)")

    class Progress(TrainerCallback):
        def on_step_end(self, args_, state, control, **kw):  # noqa: ARG002
            if stop["requested"] or (run_dir / CANCEL).exists():
                control.should_training_stop = True
            status.update(step=state.global_step)

    args = KTOConfig(
        output_dir=str(run_dir / "kto"), max_steps=steps, learning_rate=float(pref.get("learning_rate", 5e-5)),
        beta=float(pref.get("beta", 0.1)), per_device_train_batch_size=min(4, len(rows)),
        logging_steps=1, save_strategy="no", report_to=[], max_length=cfg.get("max_length", 512),
        use_cpu=not torch.cuda.is_available(), bf16=qlora, seed=cfg.get("seed", 0), dataloader_num_workers=0,
        disable_tqdm=True, gradient_checkpointing=bool(qlora and torch.cuda.is_available()),
    )
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Progress()])
    started = time.perf_counter()
    output = trainer.train()
    model.set_adapter("default")
    return {"ran": True, "verdicts": len(verdicts), "examples": len(rows), "steps": trainer.state.global_step,
            "loss": round(float(output.training_loss), 4), "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tuning.train RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    try:
        result = run(run_dir)
    except Exception as exc:  # noqa: BLE001 — recorded for the parent, with the traceback in the log
        traceback.print_exc()
        result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        try:
            status = json.loads((run_dir / STATUS).read_text())
            status.update(state="failed", message=result["error"])
            write_json(run_dir / STATUS, status)
        except (OSError, ValueError):
            pass
    write_json(run_dir / RESULT, result)
    return 0 if result["state"] in ("done", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
