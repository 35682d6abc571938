"""`SceneMemory`: the one object the rest of the app uses for scene memory — import
files, search, forget a source, and retrieve the scenes that matter for a chat turn.
It composes the embedder, the Chroma store (with its BM25 index under
`<data root>/lexical`), the hybrid retriever and the journal, opening each lazily so a
process that never touches memory never loads an embedding model or ChromaDB. Opening
the store checks that its vectors are the configured embedder's: one made by another
model is refused with a clear message; one whose vectors another backend of the same
model made (int8 against torch's) loses its line vectors, so that the fill below
re-embeds every scene, once. Scenes without line vectors (`memory.lines`: a collection
from before them, or one being re-embedded) get them then, and their scene vector with
them: in the foreground by default (the CLI, benchmarks), or in a background thread
when `fill_in_background` is set (the web app: a big collection would otherwise hold
the first turn and the health check for minutes); until a scene has them it is ranked
by its scene vector alone, and `health()` reports the progress. A background fill gives
way to chat and imports: while a turn runs (`turn()`, which `ChatService` holds from
retrieval to the last token, and `import_paths` for the whole import) it waits before
its next page, so it never slows a reply or an import for more than one page's encode."""

from __future__ import annotations

import contextlib
import logging
import typing
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import MemoryConfig
from .embedder import Embedder
from .errors import MemoryUserError, StoreUnavailableError
from .journal import Journal
from .lines import embed_scenes
from .recovery import rollback_dead_imports
from .scenes import my_lines
from .retrieval import HybridRetriever, dense_for_turn
from .store import Hit, SceneStore

if typing.TYPE_CHECKING:  # the ingest chain (importers, ftfy, ijson) loads on first import only
    from .ingest import ImportSummary, Ingestor, Progress

log = logging.getLogger(__name__)

# The longest a background fill waits for chat turns and imports to end before its next
# page: a turn abandoned without being closed must not stop the fill for good.
TURN_WAIT_S = 120.0


class UnknownSourceError(MemoryUserError):
    pass


class EmbedderMismatchError(MemoryUserError):
    """The scene collection holds vectors of another embedding model."""


@dataclass
class Retrieval:
    """What a turn got from memory: the scenes that fit, the user's own lines among them
    (style examples), and the query embedding (reused by the persona router)."""

    hits: list[Hit] = field(default_factory=list)
    style_lines: list[str] = field(default_factory=list)
    query_embedding: np.ndarray | None = None
    error: str | None = None  # memory unavailable: the turn goes on without it


@dataclass
class LineFill:
    """Progress of making line vectors for scenes stored without them (`reembed`: all of
    them, because the collection's vectors were another backend's)."""

    total: int
    reembed: bool = False
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    error: str | None = None
    finished: bool = False
    paused: bool = False  # waiting for a chat turn or an import to end
    waited: float = 0.0  # seconds spent paused, left out of the rate

    def as_dict(self) -> dict:
        elapsed = time.monotonic() - self.started - self.waited
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        left = (self.total - self.done) / rate if rate and not self.finished else None
        return {"scenes": self.total, "done": self.done, "finished": self.finished, "error": self.error,
                "paused": self.paused, "reembed": self.reembed, "eta_s": round(left) if left is not None else None}


class SceneMemory:
    def __init__(self, config: MemoryConfig, home: Path, journal: Journal, embedder: Embedder | None = None,
                 fill_in_background: bool = False):
        self.config, self.home, self.journal = config, home, journal
        self.fill_in_background = fill_in_background
        self.line_fill: LineFill | None = None  # the last fill of missing line vectors, while and after it runs
        self._fill_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._embedder: Embedder | None = embedder
        self._store: SceneStore | None = None
        self._ingestor: Ingestor | None = None
        self._hybrid: HybridRetriever | None = None
        self._turns = 0  # chat turns running now (`turn()`)
        self._quiet = threading.Condition()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(self.config.embedder, self.config.embed_batch_size,
                                          backend=self.config.embedder_backend)
            return self._embedder

    @property
    def store(self) -> SceneStore:
        embedder = self.embedder  # cheap until it encodes; its identity is checked below
        with self._lock:
            if self._store is None:
                if self.config.retrieval not in ("hybrid", "dense"):
                    raise MemoryUserError(f"memory.retrieval must be 'hybrid' or 'dense', not {self.config.retrieval!r}")
                store = SceneStore(self.home / "chroma", self.config.chroma_url, self.config.collection,
                                   lexical=self.home / "lexical")
                # Scenes of an import killed mid-way must never be searched or retrieved:
                # roll such imports back before anyone sees the store (memory.recovery).
                rollback_dead_imports(self.journal, store)
                reembed = self._match_embedder(store, embedder)
                # The BM25 index follows Chroma: rebuilt when missing, repaired after a crash
                # between the two writes or an import by another replica (server mode).
                if store.lexical.count() != store.count():
                    store.lexical.reconcile(store)
                # Rows without line vectors (a collection from before them, or rows just
                # repaired from Chroma) get them now, and their scenes the matching vector.
                missing = store.lexical.ids_without_lines()
                # (A store reopened after a Chroma server failure may find a fill still running.)
                if missing and not (self._fill_thread is not None and self._fill_thread.is_alive()):
                    self.line_fill = LineFill(len(missing), reembed=reembed)
                    if self.fill_in_background:
                        self._fill_thread = threading.Thread(
                            target=self._fill_lines, args=(store, embedder, missing), name="line-vectors", daemon=True)
                        self._fill_thread.start()
                    else:
                        self._fill_lines(store, embedder, missing)
                self._store = store
            return self._store

    def _fill_lines(self, store: SceneStore, embedder: Embedder, ids: list[str]) -> None:
        """Give `ids` their line vectors (and their scenes the matching vector), logging
        progress every tenth or so. In the background a failure is recorded and logged,
        not raised: the scenes keep working on their scene vectors, and the next start
        tries again (the fill is idempotent)."""
        fill = self.line_fill
        where = "in the background" if self.fill_in_background else "now"
        what = "re-embedding" if fill.reembed else "making line vectors for"
        log.warning("%s %s scenes of collection '%s' %s (once; one to three minutes per 10,000 scenes on 2 cores)",
                    what, len(ids), self.config.collection, where)
        step = max(1, len(ids) // 10)

        def progress(done: int) -> None:
            if done // step != fill.done // step and done < len(ids):
                log.warning("%s: %s of %s scenes", "re-embedding" if fill.reembed else "line vectors",
                            f"{done:,}", f"{len(ids):,}")
            fill.done = done

        def embed(texts: list[str], kinds: list[str]):
            if self.fill_in_background:
                self._wait_for_quiet(fill)
            return embed_scenes(embedder.encode, texts, kinds)

        try:
            # Pages of 128: progress moves every second or so, a stop loses little, and a
            # chat turn that starts mid-page waits for at most one page (about a second).
            store.reembed(embed, page=128, ids=ids, progress=progress)
        except Exception as exc:
            fill.error = str(exc)
            if not self.fill_in_background:
                raise
            log.warning("%s stopped (tried again at the next start): %s",
                        "re-embedding" if fill.reembed else "making line vectors", exc)
            return
        finally:
            fill.finished = True
        log.warning("%s for %s scenes", "new vectors made" if fill.reembed else "line vectors made", f"{len(ids):,}")

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold while a chat turn (or an import) runs: background work on the store waits
        for it."""
        with self._quiet:
            self._turns += 1
        try:
            yield
        finally:
            with self._quiet:
                self._turns -= 1
                self._quiet.notify_all()

    def _wait_for_quiet(self, fill: LineFill) -> None:
        """Wait (at most TURN_WAIT_S) until no chat turn or import runs."""
        with self._quiet:
            if not self._turns:
                return
            fill.paused = True
            start = time.monotonic()
            self._quiet.wait_for(lambda: not self._turns, timeout=TURN_WAIT_S)
            fill.waited += time.monotonic() - start
            fill.paused = False

    def _match_embedder(self, store: SceneStore, embedder: Embedder) -> bool:
        """Make the collection's vectors this embedder's; True when its scenes are to be
        re-embedded. A new or empty collection just records the embedder, and so does one
        made before embedders were recorded (by torch) when this one makes torch's vectors
        (torch, torch-bf16, onnx); one made by another model is refused (its dimension may
        differ, and a user who switches models keeps the old collection under its own
        name). One made by the same model with other vectors (int8 against torch's: up to
        0.015 of cosine apart, as much as the gaps between close neighbours, so not to be
        kept mixed) loses its line vectors and records this embedder, in that order, so
        the line-vector fill that follows re-embeds every scene, once (the texts are in
        Chroma), and a stop at any point is finished by the next open. In the web app that
        runs in the background with progress, like any fill: the first turn does not wait
        minutes for a big collection, and meanwhile a scene not yet done keeps its old
        vector, close enough to rank by until its new one is in."""
        want, have = embedder.identity, store.embedder_identity()
        if have == want:
            return False
        if store.count() == 0 or (not have and want["embedder_backend"] == "torch"):
            store.record_embedder(want)  # new, or made before this was recorded: by torch
            return False
        if have and have.get("embedder_fingerprint") != want["embedder_fingerprint"]:
            raise EmbedderMismatchError(
                f"The scene collection '{self.config.collection}' was embedded with the model "
                f"{have.get('embedder_model')} ({have.get('embedder_fingerprint')}); memory.embedder is now "
                f"{want['embedder_model']} ({want['embedder_fingerprint']}). Vectors of different models don't mix: "
                "set memory.collection to a new name and re-import your files, or set memory.embedder back."
            )
        made_by = have.get("embedder_backend", "torch (not recorded)")
        log.warning("re-embedding the %s scenes of collection '%s' once: made by %s, memory.embedder_backend is %s",
                    store.count(), self.config.collection, made_by, want["embedder_backend"])
        store.lexical.clear_lines()
        store.record_embedder(want)
        return True

    def _forget_server_client(self) -> None:
        """After a failure against a Chroma *server*, open a fresh client next time: the
        server may come back restarted (a new collection id), and get_or_create on a new
        client finds the collection again. The embedded store is never dropped (its
        failures are not connection failures, and reopening it is not free)."""
        if self.config.chroma_url:
            with self._lock:
                self._store = None
                self._ingestor = None  # it holds the old client

    def health(self, timeout_s: float = 3.0) -> dict:
        """Whether the scene store answers, within `timeout_s` (a hung server must not hang
        the health endpoint): {"reachable", "mode", "scenes", "error"}."""
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures import TimeoutError as FutureTimeout

        mode = "server" if self.config.chroma_url else "embedded"
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-health")
        try:
            scenes = pool.submit(lambda: self.store.count()).result(timeout=timeout_s)
            out = {"reachable": True, "mode": mode, "scenes": scenes, "error": None}
            if self.line_fill is not None:
                out["line_vectors"] = self.line_fill.as_dict()
            return out
        except FutureTimeout:
            return {"reachable": False, "mode": mode, "scenes": None, "error": f"no answer within {timeout_s:.0f} s"}
        except Exception as exc:  # noqa: BLE001 — any failure means "not reachable", said plainly
            self._forget_server_client()
            return {"reachable": False, "mode": mode, "scenes": None, "error": str(exc)}
        finally:
            pool.shutdown(wait=False)

    @property
    def ingestor(self) -> "Ingestor":
        from .ingest import Ingestor

        store, embedder = self.store, self.embedder
        with self._lock:
            if self._ingestor is None:
                self._ingestor = Ingestor(self.config, self.journal, store, embedder)
            return self._ingestor

    # -- import / forget ----------------------------------------------------------------
    def import_paths(
        self,
        paths: Iterable[Path],
        *,
        me: Iterable[str] = (),
        source_names: dict[Path, str] | None = None,
        progress: "Progress | None" = None,
    ) -> "ImportSummary":
        # An import holds background work like a turn does: the user watches its progress,
        # and a fill beside it would take half of the 2 cores.
        try:
            with self.turn():
                return self.ingestor.import_paths(paths, me=me, source_names=source_names, progress=progress)
        finally:
            self._refresh_lexical()

    def _refresh_lexical(self) -> None:
        """Build (and snapshot) the BM25 model after a change, so the next turn does not
        pay for it; if that fails, the next search builds it."""
        try:
            self.store.lexical.refresh()
        except Exception as exc:  # noqa: BLE001 — never costs the import or forget that came before
            log.warning("BM25 index not rebuilt now: %s", exc)

    def _call(self, fn):
        """Run a store operation. Against a Chroma server, a failure drops the client and
        tries once more on a fresh one (the server may have restarted, even empty: the
        new client's get_or_create finds or makes the collection); a second failure is a
        clear StoreUnavailableError. The embedded store's errors pass through unchanged."""
        attempts = 2 if self.config.chroma_url else 1
        for attempt in range(attempts):
            try:
                return fn(self.store)
            except StoreUnavailableError:
                raise  # could not even connect: retrying now would only wait again
            except Exception as exc:  # noqa: BLE001 — chromadb/httpx raise many types
                if not self.config.chroma_url:
                    raise
                self._forget_server_client()
                if attempt == attempts - 1:
                    raise StoreUnavailableError(
                        f"The Chroma server at {self.config.chroma_url} does not answer ({type(exc).__name__}: "
                        f"{exc}). Chat goes on without memory; check that the server runs (setting memory.chroma_url)."
                    ) from None

    def sources(self) -> dict[str, dict]:
        return self._call(lambda store: store.sources())

    def resolve_source(self, name: str) -> str:
        """A source as the user names it: its full key, a path, or a unique file name."""
        known = self.sources()
        if name in known:
            return name
        try:
            as_path = str(Path(name).expanduser().resolve())
        except (OSError, ValueError):
            as_path = name
        if as_path in known:
            return as_path
        matches = [s for s in known if Path(s).name == name or s.endswith(f"/{name}")]
        if len(matches) == 1:
            return matches[0]
        listing = ", ".join(sorted(known)) or "(memory is empty)"
        if matches:
            raise UnknownSourceError(f"'{name}' matches several sources: {', '.join(matches)}")
        raise UnknownSourceError(f"No imported source '{name}'. Imported sources: {listing}")

    def forget(self, name: str) -> tuple[str, int]:
        source = self.resolve_source(name)
        removed = self._call(lambda store: store.delete_where({"source": source}))
        self._refresh_lexical()
        return source, removed

    def _retriever(self, store: SceneStore) -> HybridRetriever:
        # One per store (it caches speaker names and masks); a reopened store gets a new one.
        with self._lock:
            if self._hybrid is None or self._hybrid.store is not store:
                self._hybrid = HybridRetriever(store, self.config)
            return self._hybrid

    # -- search ---------------------------------------------------------------------------
    def search(self, query: str, k: int = 5) -> list[Hit]:
        if not query.strip():
            raise MemoryUserError("The search query is empty.")
        vector = self.embedder.encode_one(query)
        if self.config.retrieval == "dense":
            return self._call(lambda store: store.query(vector, k))
        return self._call(lambda store: self._retriever(store).search(vector, query, k))

    def retrieve(self, message: str, recent: list[str] | None = None) -> Retrieval:
        """What one chat turn gets from memory: query = the message plus a little recent
        context; hybrid passages (memory.retrieval), or with `retrieval = "dense"` the
        scenes above `min_score`, best first, within `context_tokens`."""
        cfg = self.config
        query = "\n".join([*(recent or [])[-1:], message])
        try:
            if self._call(lambda store: store.count()) == 0:
                return Retrieval()  # nothing imported yet: don't load the embedder for nothing
            vector = self.embedder.encode_one(query)
            if cfg.retrieval == "hybrid":
                kept = self._call(lambda store: self._retriever(store).for_turn(vector, query))
            else:
                kept = self._call(lambda store: dense_for_turn(store, vector, cfg))
        except Exception as exc:  # noqa: BLE001 — a broken store must not break the chat
            log.warning("memory unavailable for this turn: %s", exc)
            return Retrieval(error=f"memory unavailable: {exc}")
        style = []
        for hit in kept:
            if hit.meta.get("is_me") or hit.meta.get("me_speaker"):
                style += my_lines(hit.text, hit.meta.get("me_speaker", ""), hit.meta.get("source_kind", ""))
        return Retrieval(hits=kept, style_lines=style[:6], query_embedding=vector)
