"""The evaluation gate's measurements: mean held-out loss per assistant token of the
base model, the currently active adapter and the candidate, plus a few sample
generations of the candidate, all with transformers + peft on the HF base.

Loss is the mean negative log-likelihood of the completion tokens only (the prompt is
masked), summed over the held-out set and divided by its completion-token count, so
long and short answers weigh by their tokens. Rows come in either layout the dataset
harvest writes (`personas.prompting.pair_record`): chat messages through the tokenizer's
template, or a transcript prompt + completion (+ EOS, as trl trains it) for base models.
Preference accuracy is measured on held-out verdicts (`tuning.dataset.heldout_verdicts`):
how often a model agrees with the user's 👍/👎 and edits (see `preference_accuracy`).
`should_promote` is the gate itself: the candidate must beat the base, and the current
adapter by a margin, on held-out loss, and its preference accuracy must not fall below
the current adapter's (else the base's)."""

from __future__ import annotations

import math
from pathlib import Path

SAMPLES = 3
SAMPLE_TOKENS = 48


def encode_row(tokenizer, row: dict) -> tuple[list[int], int] | None:
    """(token ids of prompt + completion, where the completion starts), as trl trains on
    the row; None when the prompt's tokens are not a prefix of the whole."""
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):  # transcript (base model): what trl trains on, EOS included
        head = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion + (tokenizer.eos_token or ""))["input_ids"]
    else:
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=True)
    head, full = list(_ids(head)), list(_ids(full))
    if full[: len(head)] != head or len(full) <= len(head):
        return None
    return full, len(head)


def _ids(encoded):
    return encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded


def completion_logp(model, tokenizer, row: dict, max_length: int = 512) -> tuple[float, int] | None:
    """(summed log-likelihood of the row's completion tokens, their count); None when the
    row cannot be encoded or its completion falls past `max_length`."""
    import torch

    enc = encode_row(tokenizer, row)
    if enc is None:
        return None
    ids, start = enc
    ids = ids[:max_length]
    if start >= len(ids):
        return None
    model.eval()
    with torch.no_grad():
        input_ids = torch.tensor([ids], device=model.device)
        logits = model(input_ids=input_ids).logits.float()
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        token_logp = logp.gather(1, input_ids[0, 1:].unsqueeze(1)).squeeze(1)[start - 1 :]
    return float(token_logp.sum()), int(token_logp.numel())


def heldout_loss(model, tokenizer, rows: list[dict], max_length: int = 512) -> tuple[float, int]:
    """(mean NLL per completion token, completion tokens)."""
    total, count = 0.0, 0
    for row in rows:
        got = completion_logp(model, tokenizer, row, max_length)
        if got is not None:
            total -= got[0]
            count += got[1]
    return (total / count if count else math.nan), count


def _mean_logp(model, tokenizer, prompt, completion) -> float | None:
    got = completion_logp(model, tokenizer, {"prompt": prompt, "completion": completion})
    return got[0] / got[1] if got and got[1] else None


def verdict_scores(model, tokenizer, verdicts: list[dict]) -> list[float | None]:
    """Per verdict, the model's mean log-likelihood per token: of the reply for a 👍/👎
    (kto), of the edited text minus the original reply for an edit (dpo)."""
    out = []
    for v in verdicts:
        if v["type"] == "dpo":
            chosen = _mean_logp(model, tokenizer, v["prompt"], v["chosen"])
            rejected = _mean_logp(model, tokenizer, v["prompt"], v["rejected"])
            out.append(None if chosen is None or rejected is None else chosen - rejected)
        else:
            out.append(_mean_logp(model, tokenizer, v["prompt"], v["completion"]))
    return out


def preference_accuracy(verdicts: list[dict], scores: list[float | None],
                        base_scores: list[float | None] | None) -> float | None:
    """Share of held-out verdicts a model agrees with: an edit when it finds the edited
    text likelier per token than its original reply; a 👍 / 👎 when its log-likelihood
    ratio against the base model (KTO's implicit reward) is above / below zero. With
    `base_scores` None the model *is* the base: its ratio is zero, so each 👍/👎 counts
    as a coin toss (0.5) — the base prefers nothing it was never told."""
    points = []
    for i, (v, score) in enumerate(zip(verdicts, scores)):
        if score is None:
            continue
        if v["type"] == "dpo":
            points.append(1.0 if score > 0 else 0.0)
        elif base_scores is None:
            points.append(0.5)
        elif base_scores[i] is not None:
            ratio = score - base_scores[i]
            points.append(1.0 if (ratio > 0) == bool(v["label"]) and ratio != 0 else 0.0)
    return round(sum(points) / len(points), 4) if points else None


def samples(model, tokenizer, rows: list[dict], n: int = SAMPLES) -> list[dict]:
    import torch

    out = []
    for row in rows[-n:]:
        transcript = isinstance(row["prompt"], str)
        if transcript:
            ids = tokenizer(row["prompt"])["input_ids"]
        else:
            ids = _ids(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True))
        input_ids = torch.tensor([list(ids)], device=model.device)
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, max_new_tokens=SAMPLE_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        text = tokenizer.decode(gen[0, input_ids.shape[1]:], skip_special_tokens=True)
        if transcript:  # the served reply ends at the next speaker line, as the engine stops it
            text = text.split("\n")[0]
            # the user's message: the last "User: " line(s), without the opened reply label
            from personas.prompting import USER_LABEL

            tail = ("\n" + row["prompt"]).rpartition(f"\n{USER_LABEL}: ")[2]
            prompt_text = tail.rsplit("\n", 1)[0]
            reference = row["completion"]
        else:
            prompt_text, reference = row["prompt"][-1]["content"], row["completion"][0]["content"]
        out.append({"prompt": prompt_text, "reference": reference.strip(), "candidate": text.strip()})
    return out


def evaluate_run(*, base_dir: Path, candidate_dir: Path, current_dir: Path | None, heldout: list[dict], tokenizer,
                 verdicts: list[dict] | None = None) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(candidate_dir), adapter_name="candidate")
    verdicts = verdicts or []
    candidate_loss, tokens = heldout_loss(model, tokenizer, heldout)
    candidate_scores = verdict_scores(model, tokenizer, verdicts)
    with model.disable_adapter():
        base_loss, _ = heldout_loss(model, tokenizer, heldout)
        base_scores = verdict_scores(model, tokenizer, verdicts)
    current_loss = current_pref = None
    if current_dir is not None and (current_dir / "adapter_config.json").is_file():
        model.load_adapter(str(current_dir), adapter_name="current")
        model.set_adapter("current")
        current_loss, _ = heldout_loss(model, tokenizer, heldout)
        current_pref = preference_accuracy(verdicts, verdict_scores(model, tokenizer, verdicts), base_scores)
        model.set_adapter("candidate")
    return {
        "base_loss": _round(base_loss),
        "current_loss": _round(current_loss),
        "candidate_loss": _round(candidate_loss),
        "heldout_pairs": len(heldout),
        "heldout_tokens": tokens,
        "heldout_verdicts": len(verdicts),
        "base_pref_accuracy": preference_accuracy(verdicts, base_scores, None),
        "current_pref_accuracy": current_pref,
        "candidate_pref_accuracy": preference_accuracy(verdicts, candidate_scores, base_scores),
        "samples": samples(model, tokenizer, heldout),
    }


def _round(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def preference_reference(evaluation: dict) -> tuple[str, float | None]:
    """What the candidate's preference accuracy is held against: the current adapter's,
    else the base model's — (its name, its accuracy)."""
    current = evaluation.get("current_pref_accuracy")
    if current is not None:
        return "current adapter", current
    return "base model", evaluation.get("base_pref_accuracy")


def should_promote(evaluation: dict, margin: float) -> tuple[bool, str]:
    """The gate: beat the base, and beat the current adapter by `margin` (absolute loss)."""
    cand, base, cur = evaluation.get("candidate_loss"), evaluation.get("base_loss"), evaluation.get("current_loss")
    if cand is None:
        return False, "no held-out data to evaluate on"
    if base is not None and cand >= base:
        return False, f"candidate loss {cand:.4f} does not beat the base model ({base:.4f})"
    if cur is not None and cand > cur - margin:
        return False, f"candidate loss {cand:.4f} does not beat the current adapter ({cur:.4f}) by {margin}"
    against = f"current {cur:.4f}" if cur is not None else f"base {base:.4f}"
    # Held-out verdicts: the candidate may not agree with the user's 👍/👎/edits less
    # often than what it would replace (the current adapter, else the base).
    pref = evaluation.get("candidate_pref_accuracy")
    ref_name, ref = preference_reference(evaluation)
    if pref is not None and ref is not None and pref < ref:
        n = evaluation.get("heldout_verdicts", 0)
        return False, (f"candidate loss {cand:.4f} beats {against}, but it agrees with {pref:.0%} of {n} held-out "
                       f"verdicts (👍/👎/edits), less than the {ref_name}'s {ref:.0%}")
    if pref is not None:
        return True, f"candidate loss {cand:.4f} beats {against}; preference accuracy {pref:.0%} (was {ref:.0%})"
    return True, f"candidate loss {cand:.4f} beats {against}"
