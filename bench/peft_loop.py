"""The training baseline: a plain peft LoRA loop (AdamW, no trainer), run as
`python -m bench.peft_loop RUN_DIR --steps N` on a run folder that `tuning.pipeline`
prepared. It uses the run's own model, LoRA config, data, batch size, max length and
threads, and runs like `tuning.train` does — its own process, nice 10, the same thread
environment — so the pipeline-vs-plain ratio shows the trainer's overhead and nothing
else. It times its steps (its optimizer is made before) and counts tokens with and
without padding (the trainer counts them without); prints one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def plain_peft_loop(run_dir: Path, steps: int) -> dict:
    from tuning.train import load_rows, lower_priority

    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    lower_priority(cfg.get("threads", 1))

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.get("seed", 0))
    tok = AutoTokenizer.from_pretrained(cfg["base_dir"])
    model = AutoModelForCausalLM.from_pretrained(cfg["base_dir"], dtype=torch.float32)
    lora = cfg["lora"]
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             target_modules=lora["target_modules"], bias="none", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.get("learning_rate", 2e-4))
    max_length = cfg.get("max_length", 512)
    from tuning.evaluate import encode_row  # the same tokens trl and the evaluation see, either layout

    encoded = []
    for row in load_rows(run_dir / "train.jsonl"):
        enc = encode_row(tok, row)
        if enc is not None:
            full, start = enc
            encoded.append((full[:max_length], min(start, max_length)))
    batch = cfg.get("batch_size", 4)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    model.train()
    tokens = padded = 0
    started = time.perf_counter()
    for step in range(steps):
        chunk = [encoded[(step * batch + i) % len(encoded)] for i in range(batch)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((batch, width), pad)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (seq, start) in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, start : len(seq)] = torch.tensor(seq[start:])  # loss on the completion only
            mask[i, : len(seq)] = 1
            tokens += len(seq)
        padded += batch * width
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - started
    return {"steps": steps, "tokens": padded, "tokens_without_padding": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(padded / seconds, 1), "tokens_without_padding_per_s": round(tokens / seconds, 1),
            "threads": cfg.get("threads", 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peft_loop", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(plain_peft_loop(args.run_dir, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
