"""Tuning: harvest training pairs, train LoRA adapters, export them to GGUF and promote
them through an evaluation gate. May import `memory` and `personas`."""
