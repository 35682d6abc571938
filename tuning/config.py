"""Configuration of the tuning pipeline (LoRA training defaults from the design notes:
r=16, alpha=16, dropout 0.05 on the attention projections). The training pipeline itself
arrives with the tuning issue; the dataclass is here so settings are complete and stable."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TuningConfig:
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: float = 2e-4
    max_steps: int = 200
    batch_size: int = 4
    # "auto" = QLoRA on CUDA, plain LoRA on CPU; "on" / "off" force it.
    qlora: str = "auto"
    train_threads: int = 1
