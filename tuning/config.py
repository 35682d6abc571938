"""Configuration of the tuning pipeline: LoRA defaults (r=32, alpha=32, dropout 0.05 on
the attention and MLP projections — what won the voice benchmark over the design notes'
r=16 on attention alone; never embeddings or the LM head), training steps and threads,
the held-out split, and the evaluation gate's margin.
Composed into `webapp.settings.Settings` as the `[tuning]` section."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TuningConfig:
    # On Falstaff (`alterego bench --only voice`, SmolLM2, 40 steps) r=32 on q/k/v/o and
    # gate/up/down cut held-out loss 8.1% vs 6.6% for r=16 on q/k/v/o, and its replies
    # were closer to his style 18 times in 20 (vs 8), at the same training speed.
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    learning_rate: float = 2e-4
    max_steps: int = 200
    batch_size: int = 4
    # "auto" = QLoRA on CUDA, plain LoRA on CPU; "on" / "off" force it.
    qlora: str = "auto"
    # Threads of a training run. It also runs at nice 10, so chat keeps priority.
    train_threads: int = 1
    max_length: int = 512
    # How much of the conversation before one of the user's lines a pair's prompt keeps
    # (tokens, whole turns; scene memory only).
    context_tokens: int = 200
    heldout_fraction: float = 0.1
    # A run needs at least this many training pairs.
    min_pairs: int = 8
    # The candidate must beat the current adapter's held-out loss by this much to be promoted.
    promote_margin: float = 0.01
    # An HF-format model directory to train from; "" = materialise it from the GGUF base.
    hf_base: str = ""
    # The background retraining job: how often it looks, how many new verdicts (approved,
    # edited or rejected replies; the name predates 👎 training) make a persona due, and
    # how long it waits after a failed run before trying again.
    schedule_minutes: float = 30.0
    min_new_approvals: int = 5
    retry_minutes: float = 60.0
    scheduler: bool = True  # start the job with the web app
    # The preference stage (KTO, after SFT): runs when at least this many training
    # verdicts (👍, 👎, edits; an edit gives one 👍 and one 👎 example) exist; 0 = never.
    preference_min_verdicts: int = 6
    preference_steps: int = 30
    preference_learning_rate: float = 5e-5
    preference_beta: float = 0.1
