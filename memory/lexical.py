"""The lexical half of scene memory: a BM25 index (bm25s) over scene text, kept beside the
Chroma collection and in step with it, because MiniLM blurs names, places, rare words
and non-English text, which BM25 matches in any script. Terms are Unicode words,
lower-cased, `ё` folded to `е`, English and Russian stop words dropped, stemmed with
Snowball by script (English for Latin words; for Cyrillic ones the Russian stem cut to
five letters, so "поездке" finds "поездка" and "Булгакова" finds "Булгаков"). The index
is one SQLite file per collection under `<data root>/lexical/` — a row per scene (id,
source, position, conversation, timestamp, speakers, import id, terms, and its line
vectors from `memory.lines`, NULL until made), written in the
same calls as Chroma (`SceneStore`), also answering which scene comes before or after a
hit; every write bumps a generation number. The BM25 matrix is derived from the rows on
first use after a change and saved as a snapshot named after its generation, so another
process loads it instead of rebuilding. Chroma stays the source of truth: `reconcile`
repairs the rows from it when the two disagree (a lost folder, a crash between the two
writes, another tokenizer version)."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bumped whenever `tokenize` changes what it makes of a text: rows written by another
# version are re-made from Chroma at the next start (their terms would not match).
TOKENIZER_VERSION = 2
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


class _Tokenizer:
    """Words → index terms; the stemmers and stop words load once, on first use."""

    def __init__(self):
        self._ready = False
        self._lock = threading.Lock()

    def _load(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_RUSSIAN

        self.english = Stemmer.Stemmer("english")
        self.russian = Stemmer.Stemmer("russian")
        words = set(STOPWORDS_EN_PLUS) | {w.replace("ё", "е") for w in STOPWORDS_RUSSIAN}
        # Stop words are dropped as written and as terms, so "какие" goes like "какой".
        self.stop = frozenset(words)
        self.stop_terms = frozenset(self._term(w) for w in words)
        self._ready = True

    def _term(self, word: str) -> str:
        if word.isdigit():
            return word
        if _CYRILLIC.search(word):
            # Snowball alone leaves "Булгаков"/"Булгакова" or "перечитал"/"перечитывал"
            # apart; cutting its stem to 5 letters joins them (a classic for Russian).
            return self.russian.stemWord(word)[:5]
        return self.english.stemWord(word)

    def __call__(self, text: str) -> list[str]:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._load()
        out = []
        for word in _WORD.findall(text.lower().replace("ё", "е")):
            if word in self.stop or (len(word) < 2 and not word.isdigit()):
                continue
            term = self._term(word)
            if term not in self.stop_terms:
                out.append(term)
        return out


tokenize = _Tokenizer()


def _row_values(scene_id: str, text: str, meta: dict, lines: bytes | None) -> tuple:
    position = meta.get("position")
    ts = meta.get("timestamp")
    return (
        scene_id, str(meta.get("source", "")), int(position) if position is not None else None,
        str(meta.get("conversation", "")), float(ts) if ts is not None else None,
        str(meta.get("speakers") or meta.get("speaker") or ""), meta.get("import_id"),
        " ".join(tokenize(text)), lines,
    )


class LexicalIndex:
    SCHEMA = """
        CREATE TABLE IF NOT EXISTS scenes (
            id TEXT PRIMARY KEY, source TEXT NOT NULL, position INTEGER, conversation TEXT NOT NULL,
            timestamp REAL, speakers TEXT NOT NULL, import_id INTEGER, tokens TEXT NOT NULL, lines BLOB);
        CREATE INDEX IF NOT EXISTS scenes_at ON scenes (source, position);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT OR IGNORE INTO meta VALUES ('generation', 0);
        INSERT OR IGNORE INTO meta VALUES ('tokenizer', 0);
    """

    def __init__(self, folder: Path, name: str = "scenes"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{name}.sqlite3"
        self.snapshots = self.folder / f"{name}.bm25"
        self._lock = threading.RLock()
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(self.SCHEMA)
        if "lines" not in {r[1] for r in self.db.execute("PRAGMA table_info(scenes)")}:
            # A table from before line vectors: its rows get them from SceneMemory's fill.
            self.db.execute("ALTER TABLE scenes ADD COLUMN lines BLOB")
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            version = self.db.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()[0]
            if version != TOKENIZER_VERSION:  # emptied here, refilled by reconcile()
                self.db.execute("DELETE FROM scenes")
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'tokenizer'", (TOKENIZER_VERSION,))
                self._bump()
            self.db.execute("COMMIT")
        # The in-memory model and the generation it was built from.
        self._built = -1
        self._bm25 = None
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self.timestamps = np.zeros(0)
        self.speakers: list[str] = []

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- writes (called by SceneStore next to the Chroma writes) ------------------------
    def _bump(self) -> None:
        self.db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    def _write(self, statement: str, rows: list, bump: bool = True) -> None:
        """`statement` over `rows` in one transaction, bumping the generation when the
        BM25 model must follow."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(statement, rows)
                if bump:
                    self._bump()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def add(self, ids: list[str], documents: list[str], metadatas: list[dict],
            lines: list[bytes] | None = None) -> None:
        """Rows for these scenes; `lines` are their packed line vectors (None: made later)."""
        lines = lines if lines is not None else [None] * len(ids)
        rows = [_row_values(i, d, m or {}, b) for i, d, m, b in zip(ids, documents, metadatas, lines)]
        self._write("INSERT OR REPLACE INTO scenes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            self._write("DELETE FROM scenes WHERE id = ?", [(i,) for i in ids])

    def set_lines(self, ids: list[str], lines: list[bytes]) -> None:
        """Store packed line vectors for existing rows (BM25 is untouched: no new generation)."""
        self._write("UPDATE scenes SET lines = ? WHERE id = ?", list(zip(lines, ids)), bump=False)

    def clear_lines(self) -> None:
        """Drop every row's line vectors (another embedder's: they are made again, as
        for rows from before them)."""
        self._write("UPDATE scenes SET lines = NULL WHERE lines IS NOT NULL", [()], bump=False)

    # -- reads --------------------------------------------------------------------------
    def ids_without_lines(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM scenes WHERE lines IS NULL ORDER BY rowid")]

    def line_vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """scene id → its line vectors (float32 rows, in line order), where stored."""
        from .lines import unpack

        ids = list(dict.fromkeys(ids))
        out = {}
        with self._lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for sid, blob in self.db.execute(f"SELECT id, lines FROM scenes WHERE id IN ({marks})", chunk):
                    vectors = unpack(blob)
                    if vectors is not None:
                        out[sid] = vectors
        return out

    def generation(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    @property
    def built(self) -> int:
        """The generation the in-memory BM25 model was built from (-1: none yet)."""
        return self._built

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM scenes").fetchone()[0])

    def all_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM scenes")}

    def neighbours(self, scene_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        """scene id → (the scene before it, the scene after it) in the same source and
        conversation, by position; None where there is none."""
        out = {}
        with self._lock:
            for sid in scene_ids:
                row = self.db.execute(
                    "SELECT source, position, conversation FROM scenes WHERE id = ?", (sid,)).fetchone()
                if row is None or row[1] is None:
                    out[sid] = (None, None)
                    continue
                found = dict(self.db.execute(
                    "SELECT position, id FROM scenes WHERE source = ? AND position IN (?, ?) AND conversation = ?",
                    (row[0], row[1] - 1, row[1] + 1, row[2])).fetchall())
                out[sid] = (found.get(row[1] - 1), found.get(row[1] + 1))
        return out

    def reconcile(self, store) -> tuple[int, int]:
        """Make the table hold exactly the scenes Chroma holds (added, removed)."""
        chroma_ids = store.all_ids()
        with self._lock:
            mine = self.all_ids()
            extra = mine - chroma_ids
            missing = sorted(chroma_ids - mine)
            self.delete(extra)
            for i in range(0, len(missing), 1000):
                got = store.collection.get(ids=missing[i : i + 1000], include=["documents", "metadatas"])
                self.add(got["ids"], got["documents"], got["metadatas"])
        if extra or missing:
            log.warning("lexical index repaired from Chroma: %s added, %s removed", len(missing), len(extra))
        return len(missing), len(extra)

    # -- BM25 ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the BM25 model up to the table's generation: load the snapshot of that
        generation if one exists, else build it from the token rows and save one."""
        with self._lock:
            self.db.execute("BEGIN")  # one consistent view of generation and rows
            try:
                gen = self.generation()
                if gen == self._built:
                    return
                rows = self.db.execute(
                    "SELECT id, timestamp, speakers, tokens FROM scenes ORDER BY rowid").fetchall()
            finally:
                self.db.execute("COMMIT")
            self.ids = [r[0] for r in rows]
            self.rows = {sid: i for i, sid in enumerate(self.ids)}
            self.timestamps = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
            self.speakers = [r[2] for r in rows]
            self._bm25 = self._load_snapshot(gen, len(rows)) if rows else None
            if rows and self._bm25 is None:
                self._bm25 = self._build([r[3].split() for r in rows])
                self._save_snapshot(gen)
            self._built = gen

    def _build(self, corpus: list[list[str]]):
        import bm25s

        model = bm25s.BM25()  # Lucene BM25, k1 = 1.5, b = 0.75
        model.index(corpus, show_progress=False)
        return model

    def _load_snapshot(self, gen: int, docs: int):
        import bm25s

        folder = self.snapshots / f"gen-{gen}"
        if not (folder / "params.index.json").is_file():
            return None
        try:
            model = bm25s.BM25.load(str(folder), mmap=False, show_progress=False)
        except Exception as exc:  # noqa: BLE001 — a damaged snapshot is rebuilt, never fatal
            log.warning("BM25 snapshot %s unreadable (%s); rebuilding", folder, exc)
            return None
        return model if int(model.scores["num_docs"]) == docs else None

    def _save_snapshot(self, gen: int) -> None:
        # Written to a temp folder and renamed, so a reader never sees half a snapshot;
        # older generations are removed (they can never be current again).
        tmp = self.snapshots / f".tmp-{gen}-{os.getpid()}-{threading.get_ident()}"
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._bm25.save(str(tmp), show_progress=False)
            final = self.snapshots / f"gen-{gen}"
            if final.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.rename(final)
            for old in self.snapshots.iterdir():
                if old.name != final.name and not old.name.startswith(".tmp-"):
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:  # a read-only or full disk costs a rebuild later, not the turn
            log.warning("could not save the BM25 snapshot: %s", exc)
            shutil.rmtree(tmp, ignore_errors=True)

    def idf(self, terms: Iterable[str]) -> dict[str, float]:
        """Inverse document frequency of each term the index knows (for line scoring)."""
        if self._bm25 is None:
            return {}
        vocab, indptr = self._bm25.vocab_dict, self._bm25.scores["indptr"]
        n = len(self.ids)
        out = {}
        for term in set(terms):
            tid = vocab.get(term)
            if tid is not None and term:
                df = int(indptr[tid + 1] - indptr[tid])
                out[term] = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return out

    def search(self, terms: list[str], k: int, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The `k` best scenes for the query terms as (id, BM25 score), best first;
        only scenes where `mask` is true, when given; nothing that matches no term."""
        with self._lock:
            self.refresh()
            if self._bm25 is None or not terms or k <= 0:
                return []
            ids = self._bm25.get_tokens_ids(list(dict.fromkeys(terms)))
            if not ids:
                return []
            scores = self._bm25.get_scores_from_ids(ids)
            if len(scores) != len(self.ids):
                return []
            if mask is not None:
                scores = np.where(mask, scores, 0.0)
            k = min(k, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]
