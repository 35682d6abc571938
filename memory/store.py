"""The scene store: one ChromaDB collection (cosine space) of scenes with their
embeddings and metadata (source, source kind, speaker, is_me, timestamp, position,
conversation, heading, language, import id). By default a `PersistentClient` under
`ALTEREGO_HOME/chroma`; with `memory.chroma_url` set, an `HttpClient` to a Chroma server.
We always pass our own embeddings: Chroma's default embedding function would try to
download a model, so the collection is created without one. Given a `lexical` folder,
every add and delete also goes to the BM25 index there (`memory.lexical`), Chroma first:
a crash in between leaves at most scenes of a still-`running` import in Chroma alone
(rolled back from both by `memory.recovery`) or deleted scenes in the lexical table
alone (dropped by `LexicalIndex.reconcile`, and never returned meanwhile, since hits are
read back from Chroma). The collection's metadata records which embedder (model
fingerprint and backend) made its vectors; `SceneMemory` compares it with the configured
one when it opens the store, and `reembed` replaces the vectors (and the lexical rows'
line vectors, `memory.lines`) in place."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .errors import StoreUnavailableError

log = logging.getLogger(__name__)


@dataclass
class Hit:
    id: str
    text: str
    score: float  # cosine similarity, 1 = identical
    meta: dict

    @property
    def source(self) -> str:
        return self.meta.get("source", "")

    @property
    def speaker(self) -> str:
        return self.meta.get("speaker", "")

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "score": round(self.score, 4),
            "source": self.source,
            "source_kind": self.meta.get("source_kind", ""),
            "speaker": self.speaker,
            "speakers": self.meta.get("speakers", ""),
            "is_me": bool(self.meta.get("is_me", False)),
            "timestamp": self.meta.get("timestamp"),
            "conversation": self.meta.get("conversation", ""),
            "heading": self.meta.get("heading", ""),
            "language": self.meta.get("language", ""),
        }


class SceneStore:
    def __init__(self, path: Path | None = None, url: str = "", collection: str = "scenes",
                 lexical: Path | None = None):
        import chromadb

        settings = chromadb.Settings(anonymized_telemetry=False)
        try:
            if url:
                parsed = urlparse(url)
                self.client = chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1",
                    port=parsed.port or 8000,
                    ssl=parsed.scheme == "https",
                    settings=settings,
                )
            else:
                assert path is not None
                path.mkdir(parents=True, exist_ok=True)
                self.client = chromadb.PersistentClient(path=str(path), settings=settings)
            self.collection = self.client.get_or_create_collection(
                collection, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
            )
        except Exception as exc:  # chromadb raises many types (connection, validation)
            where = url or str(path)
            raise StoreUnavailableError(f"Cannot open the scene store at {where}: {exc}") from None
        self.max_batch = min(self.client.get_max_batch_size(), 1024)
        self.lexical = None
        if lexical is not None:
            from .lexical import LexicalIndex

            self.lexical = LexicalIndex(lexical, collection)

    def count(self) -> int:
        return self.collection.count()

    # -- which embedder made the vectors (recorded in the collection's metadata) ----------
    def embedder_identity(self) -> dict:
        """The `embedder_*` keys recorded with the collection ({} for one made before
        they were recorded, or never written to)."""
        return {k: v for k, v in (self.collection.metadata or {}).items() if k.startswith("embedder_")}

    def record_embedder(self, identity: dict) -> None:
        others = {k: v for k, v in (self.collection.metadata or {}).items() if not k.startswith("embedder_")}
        self.collection.modify(metadata={**others, **identity})  # modify replaces the whole mapping

    def reembed(self, embed, page: int = 512, ids: list[str] | None = None, progress=None) -> int:
        """Re-make the vectors of every scene (or of `ids`) from its text with
        `embed(texts, kinds) -> (scene vectors, packed line vectors)`, in pages: the scene
        vectors into Chroma, the line vectors into the lexical rows; `progress(done)`
        after each page. Ids, texts and metadata stay. Idempotent: a run cut short is
        simply done again. A scene deleted meanwhile (forgotten while this runs in the
        background) stays deleted: Chroma's update skips ids it no longer has, and so
        does the lexical UPDATE."""
        ids = sorted(self.all_ids()) if ids is None else list(ids)
        for i in range(0, len(ids), page):
            got = self.collection.get(ids=ids[i : i + page], include=["documents", "metadatas"])
            if got["ids"]:
                kinds = [(m or {}).get("source_kind", "") for m in got["metadatas"]]
                vectors, lines = embed(got["documents"], kinds)
                self.collection.update(ids=got["ids"], embeddings=vectors)
                if self.lexical is not None:
                    self.lexical.set_lines(got["ids"], lines)
            if progress is not None:
                progress(min(i + page, len(ids)))
        return len(ids)

    def existing(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        return set(self.collection.get(ids=ids, include=[])["ids"])

    def add(self, ids: list[str], embeddings: np.ndarray, documents: list[str], metadatas: list[dict],
            timings: dict[str, float] | None = None, lines: list[bytes] | None = None) -> None:
        """Add scenes to Chroma, then to the BM25 rows (with their packed line vectors,
        when given); `timings` (when given) gains the seconds each took, as "chroma" and
        "lexical"."""
        timings = {} if timings is None else timings
        for i in range(0, len(ids), self.max_batch):
            sl = slice(i, i + self.max_batch)
            start = time.perf_counter()
            self.collection.add(
                ids=ids[sl], embeddings=embeddings[sl], documents=documents[sl], metadatas=metadatas[sl]
            )
            middle = time.perf_counter()
            timings["chroma"] = timings.get("chroma", 0.0) + middle - start
            if self.lexical is not None:
                self.lexical.add(ids[sl], documents[sl], metadatas[sl], None if lines is None else lines[sl])
                timings["lexical"] = timings.get("lexical", 0.0) + time.perf_counter() - middle

    def ids_where(self, where: dict) -> list[str]:
        return self.collection.get(where=where, include=[])["ids"]

    def delete_ids(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        for i in range(0, len(ids), self.max_batch):
            self.collection.delete(ids=ids[i : i + self.max_batch])
            if self.lexical is not None:
                self.lexical.delete(ids[i : i + self.max_batch])
        return len(ids)

    def all_ids(self) -> set[str]:
        out: set[str] = set()
        offset, page = 0, 5000
        while True:
            got = self.collection.get(include=[], limit=page, offset=offset)["ids"]
            out.update(got)
            if len(got) < page:
                return out
            offset += page

    def get(self, ids: list[str], embeddings: bool = False) -> dict[str, tuple[str, dict, np.ndarray | None]]:
        """id → (text, metadata, embedding or None) for the ids that exist."""
        if not ids:
            return {}
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        got = self.collection.get(ids=list(ids), include=include)
        vecs = got.get("embeddings") if embeddings else None
        return {
            i: (d, m or {}, None if vecs is None else np.asarray(vecs[n], dtype=np.float32))
            for n, (i, d, m) in enumerate(zip(got["ids"], got["documents"], got["metadatas"]))
        }

    def delete_where(self, where: dict) -> int:
        return self.delete_ids(self.ids_where(where))

    def sources(self) -> dict[str, dict]:
        """source -> {kind, scenes}; reads metadata only, in pages."""
        out: dict[str, dict] = {}
        offset, page = 0, 5000
        while True:
            got = self.collection.get(include=["metadatas"], limit=page, offset=offset)
            for meta in got["metadatas"] or []:
                row = out.setdefault(meta["source"], {"kind": meta.get("source_kind", ""), "scenes": 0})
                row["scenes"] += 1
            if len(got["ids"]) < page:
                return out
            offset += page

    def query(self, embedding: np.ndarray, k: int, where: dict | None = None) -> list[Hit]:
        n = self.count()
        if n == 0 or k <= 0:
            return []
        res = self.collection.query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32)],
            n_results=min(k, n),
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        return [
            Hit(id=i, text=d, score=1.0 - float(dist), meta=m or {})
            for i, d, m, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0])
        ]
