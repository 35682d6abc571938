"""Hybrid retrieval: which scenes a message is about, and which of their lines a chat turn
gets within its token budget. Ranking fuses the dense ranking (Chroma, MiniLM cosine)
with the lexical one (BM25, `memory.lexical`) by weighted reciprocal rank into a pool of
`candidates` scenes; a message naming a person or a time (`memory.hints`) adds the same
searches restricted to them, so their scenes join the pool without others being
filtered away. A turn then gets passages, not whole scenes: every line of every pooled
scene is the centre of a window of `passage_before`/`passage_after` lines, scored by
`Scorer` (the share of the query's BM25 word weight the window holds, plus the scene's
cosine, plus the cosine of its best line by that line's own vector, `memory.lines`, plus
bonuses for the named person's lines and time), and the best windows fill
the budget. A window runs on into the scene before or after when the two were cut apart
by size alone, so a reply stored in the next scene comes along; windows that touch merge
into one note, so no line is paid for twice; only relevant scenes take part (cosine ≥
`min_score`, or `lexical_gate` of the query's word weight), so small talk pulls in
nothing. Measured, not assumed: `alterego bench --only recall`. `retrieval = "dense"`
keeps the older ranking (whole scenes by cosine alone) for comparison."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import MemoryConfig
from .documents import PROSE_KINDS
from .hints import Hints, parse_hints, speaker_names
from .lexical import tokenize
from .lines import line_cosines, scene_lines
from .scenes import estimate_tokens
from .store import Hit, SceneStore

NOTE_OVERHEAD = 10  # tokens of the "[whatsapp, 2018-05-02]" label each note carries in the prompt


@dataclass
class Candidate:
    id: str
    score: float = 0.0  # fused
    cosine: float = 0.0
    bm25: float = 0.0
    text: str = ""
    meta: dict = field(default_factory=dict)


def rrf(lists: list[tuple[list[str], float]], k: float) -> dict[str, float]:
    """Weighted reciprocal-rank fusion of ranked id lists."""
    fused: dict[str, float] = {}
    for ids, weight in lists:
        for rank, sid in enumerate(ids, 1):
            fused[sid] = fused.get(sid, 0.0) + weight / (k + rank)
    return fused


class HybridRetriever:
    def __init__(self, store: SceneStore, config: MemoryConfig):
        self.store, self.config = store, config
        self._names: tuple[int, dict] = (-1, {})
        self._masks: dict = {}

    # -- ranking --------------------------------------------------------------------------
    def hints(self, query: str) -> Hints:
        lexical = self.store.lexical
        if lexical is None:
            return parse_hints(query)
        lexical.refresh()
        if self._names[0] != lexical.built:
            self._names = (lexical.built, speaker_names(lexical.speakers))
            self._masks = {}
        return parse_hints(query, self._names[1])

    def _speaker_mask(self, names: set[str]) -> np.ndarray:
        key = frozenset(names)
        if key not in self._masks:
            self._masks[key] = np.array([bool(key & set(s.split(", "))) for s in self.store.lexical.speakers], dtype=bool)
        return self._masks[key]

    def rank(self, vector: np.ndarray, query: str, n: int) -> tuple[list[Candidate], list[str], Hints]:
        """The `n` best scenes for the query, fused, with text, metadata and cosine; the
        query's terms and hints."""
        cfg, store, lexical = self.config, self.store, self.store.lexical
        terms = tokenize(query)
        hints = self.hints(query)
        dense = store.query(vector, n)
        lists = [([h.id for h in dense], cfg.dense_weight)]
        bm25: dict[str, float] = {}
        if lexical is not None:
            found = lexical.search(terms, n)
            bm25.update(found)
            lists.append(([i for i, _ in found], cfg.lexical_weight))
            if hints.timed:
                where = {"$and": [{"timestamp": {"$gte": hints.since}}, {"timestamp": {"$lt": hints.until}}]}
                dense_t = store.query(vector, n, where=where)
                dense += dense_t
                ts = lexical.timestamps
                with np.errstate(invalid="ignore"):
                    found_t = lexical.search(terms, n, (ts >= hints.since) & (ts < hints.until))
                bm25.update(found_t)
                lists += [([h.id for h in dense_t], cfg.hint_weight * cfg.dense_weight),
                          ([i for i, _ in found_t], cfg.hint_weight * cfg.lexical_weight)]
            if hints.speakers:
                found_s = lexical.search(terms, n, self._speaker_mask(hints.speakers))
                bm25.update(found_s)
                lists.append(([i for i, _ in found_s], cfg.hint_weight * cfg.lexical_weight))
        fused = rrf(lists, cfg.rrf_k)
        best = sorted(fused, key=lambda i: -fused[i])[:n]
        known = {h.id: h for h in dense}
        fetched = store.get([i for i in best if i not in known], embeddings=True)
        out = []
        for sid in best:
            if sid in known:
                h = known[sid]
                out.append(Candidate(sid, fused[sid], h.score, bm25.get(sid, 0.0), h.text, h.meta))
            elif sid in fetched:  # a lexical row whose scene Chroma no longer has is skipped
                text, meta, emb = fetched[sid]
                cos = float(np.dot(vector, emb)) if emb is not None else 0.0
                out.append(Candidate(sid, fused[sid], cos, bm25.get(sid, 0.0), text, meta))
        return out, terms, hints

    def search(self, vector: np.ndarray, query: str, k: int) -> list[Hit]:
        """Whole scenes, best first (for `alterego search`)."""
        cands, terms, hints = self.rank(vector, query, max(k, self.config.candidates))
        lexical = self.store.lexical
        scorer = Scorer(lexical.idf(terms) if lexical is not None else {}, hints, self.config)
        vectors = lexical.line_vectors(c.id for c in cands) if lexical is not None else {}

        def score(c: Candidate) -> float:
            lines = scene_lines(c.text, c.meta.get("source_kind", ""))
            found = line_cosines(vectors.get(c.id), vector, len(lines))
            return scorer(c, lines, None if found is None else list(found))

        cands.sort(key=lambda c: -score(c))
        return [self._hit(c) for c in cands[:k]]

    @staticmethod
    def _hit(c: Candidate) -> Hit:
        return Hit(id=c.id, text=c.text, score=c.cosine, meta={**c.meta, "bm25": round(c.bm25, 3)})

    # -- a turn's passages ------------------------------------------------------------------
    def for_turn(self, vector: np.ndarray, query: str) -> list[Hit]:
        cfg = self.config
        cands, terms, hints = self.rank(vector, query, cfg.candidates)
        lexical = self.store.lexical
        scorer = Scorer(lexical.idf(terms) if lexical is not None else {}, hints, cfg)
        # Relevant: close in meaning, or holding most of the query's word weight.
        cands = [c for c in cands if c.cosine >= cfg.min_score
                 or scorer.share(scene_lines(c.text, c.meta.get("source_kind", ""))) >= cfg.lexical_gate]
        if not cands:
            return []
        return Packer(self.store, cfg, scorer, vector).pack(cands)


class Scorer:
    """How well some lines of a scene answer the query: the share of the query's word
    weight (BM25 idf) they hold, plus `cosine_weight` × the scene's cosine, plus
    `line_weight` × the best of those lines' own cosines (when the scene has line
    vectors; of the named person's lines when the query names someone who speaks in
    them), plus `hint_weight` × (the share held by lines of the person the query names,
    and 1 if the scene falls in the time span it names)."""

    def __init__(self, idf: dict[str, float], hints: Hints, config: MemoryConfig):
        self.idf, self.hints, self.config = idf, hints, config
        self.total = sum(idf.values()) or 1.0
        self._cache: dict[str, set[str]] = {}

    def terms(self, line: str) -> set[str]:
        if line not in self._cache:
            self._cache[line] = set(tokenize(line))
        return self._cache[line]

    def share(self, lines: list[str]) -> float:
        have = set().union(*(self.terms(line) for line in lines)) if lines else set()
        return sum(w for t, w in self.idf.items() if t in have) / self.total

    def __call__(self, cand: Candidate, lines: list[str], cosines: list | None = None) -> float:
        """`cosines`: each line's own cosine to the query (None where unknown)."""
        cfg, hints = self.config, self.hints
        score = self.share(lines) + cfg.cosine_weight * cand.cosine
        said = [i for i, line in enumerate(lines) if line.split(": ", 1)[0] in hints.speakers] if hints.speakers else []
        if cosines is not None:
            # "What did Bob say about X": Bob's line about X, not Anna's beside it.
            known = [cosines[i] for i in (said or range(len(lines))) if cosines[i] is not None]
            if known:
                score += cfg.line_weight * float(max(known))
        if said:
            score += cfg.hint_weight * self.share([lines[i] for i in said])
        if hints.in_span(cand.meta.get("timestamp")):
            score += cfg.hint_weight
        return score


def dense_for_turn(store: SceneStore, vector: np.ndarray, config: MemoryConfig) -> list[Hit]:
    """The ranking before hybrid: the best scenes by cosine above `min_score`, at most
    `top_k`, whole, within `context_tokens`."""
    kept: list[Hit] = []
    used = 0
    for hit in store.query(vector, config.top_k * 2):
        if hit.score < config.min_score or len(kept) >= config.top_k:
            continue
        cost = estimate_tokens(hit.text)
        if used + cost > config.context_tokens:
            continue
        kept.append(hit)
        used += cost
    return kept


class Packer:
    """Lays ranked scenes out as passages within the budget (see the module docstring).
    Lines are keyed (group, position, line number); a group is one conversation of one
    source, where positions are consecutive scenes."""

    def __init__(self, store: SceneStore, config: MemoryConfig, scorer: Scorer, vector: np.ndarray):
        self.store, self.config, self.scorer, self.vector = store, config, scorer, vector
        self.lines: dict[tuple, str] = {}  # every known line
        self.cosines: dict[tuple, float] = {}  # line key → its own cosine to the query
        self.nlines: dict[tuple, int] = {}  # (group, position) → lines in that scene
        self.continues: dict[tuple, bool] = {}
        self.picked: dict[tuple, float] = {}  # line key → score of the passage that took it
        self.meta: dict[tuple, tuple[Candidate, int]] = {}  # (group, position) → (scene, rank)
        self.scene_meta: dict[tuple, dict] = {}
        self.used = 0
        self.runs = 0

    def _scene(self, sid: str, text: str, meta: dict, vectors: np.ndarray | None = None) -> tuple:
        pos = meta.get("position")
        if pos is None:  # no position: a group of its own
            key = (("#", sid), 0)
        else:
            key = ((meta.get("source", ""), meta.get("conversation", "")), int(pos))
        if key not in self.nlines:
            self.scene_meta[key] = meta
            lines = scene_lines(text, meta.get("source_kind", ""))
            self.nlines[key] = len(lines)
            self.continues[key] = bool(meta.get("continues", True)) and pos is not None
            found = line_cosines(vectors, self.vector, len(lines))
            for i, line in enumerate(lines):
                self.lines[(*key, i)] = line
                if found is not None:
                    self.cosines[(*key, i)] = float(found[i])
        return key

    def _before(self, line: tuple) -> tuple | None:
        g, p, i = line
        if i > 0:
            return (g, p, i - 1)
        if self.continues.get((g, p)) and (g, p - 1) in self.nlines:
            return (g, p - 1, self.nlines[(g, p - 1)] - 1)
        return None

    def _after(self, line: tuple) -> tuple | None:
        g, p, i = line
        if i + 1 < self.nlines.get((g, p), 0):
            return (g, p, i + 1)
        if self.continues.get((g, p + 1)) and self.nlines.get((g, p + 1)):
            return (g, p + 1, 0)
        return None

    def _cost(self, line: tuple) -> int:
        """What taking this line adds to the budget: its tokens, plus a note label if it
        starts a note of its own, minus one if it joins two notes."""
        if line in self.picked:
            return 0
        joins = sum(1 for n in (self._before(line), self._after(line)) if n is not None and n in self.picked)
        return estimate_tokens(self.lines[line]) + NOTE_OVERHEAD * (1 - joins)

    def _take(self, line: tuple, score: float) -> None:
        cost = self._cost(line)
        if line not in self.picked:
            joins = sum(1 for n in (self._before(line), self._after(line)) if n is not None and n in self.picked)
            self.runs += 1 - joins
            self.picked[line] = score
        self.used += cost

    def _window(self, centre: tuple) -> list[tuple]:
        """A line with `passage_before`/`passage_after` lines of context, across a cut
        into the scene before or after where allowed."""
        lines = [centre]
        for _ in range(self.config.passage_before):
            prev = self._before(lines[0])
            if prev is None:
                break
            lines.insert(0, prev)
        for _ in range(self.config.passage_after):
            nxt = self._after(lines[-1])
            if nxt is None:
                break
            lines.append(nxt)
        return lines

    def pack(self, cands: list[Candidate]) -> list[Hit]:
        cfg, lexical = self.config, self.store.lexical
        wanted: set[str] = set()
        if cfg.neighbours and lexical is not None:
            around = lexical.neighbours(c.id for c in cands)
            wanted = {n for pair in around.values() for n in pair if n}
        vectors = lexical.line_vectors([c.id for c in cands] + sorted(wanted)) if lexical is not None else {}
        keys = [self._scene(c.id, c.text, c.meta, vectors.get(c.id)) for c in cands]
        for sid, (text, meta, _) in self.store.get(sorted(wanted)).items():
            self._scene(sid, text, meta, vectors.get(sid))
        # Every line of every candidate scene is the centre of a window (see Scorer).
        windows = []
        for rank, (cand, key) in enumerate(zip(cands, keys)):
            self.meta.setdefault(key, (cand, rank))
            for i in range(self.nlines[key]):
                lines = self._window((*key, i))
                score = self.scorer(cand, [self.lines[line] for line in lines], [self.cosines.get(line) for line in lines])
                windows.append((score, -rank, lines))
        windows.sort(key=lambda w: (w[0], w[1]), reverse=True)
        for score, _, lines in windows:
            if cfg.context_tokens - self.used < 12:
                break
            new = [line for line in lines if line not in self.picked]
            if not new:
                continue
            saved = (dict(self.picked), self.used, self.runs)
            for line in new:
                self._take(line, score)
            if self.used > cfg.context_tokens or self.runs > cfg.top_k:
                self.picked, self.used, self.runs = saved  # does not fit: try a smaller window
        return self._hits()

    def _hits(self) -> list[Hit]:
        """The picked lines as notes: runs of adjacent lines, best passage first."""
        runs: list[list[tuple]] = []
        for line in sorted(self.picked, key=lambda k: (str(k[0]), k[1], k[2])):
            before = self._before(line)
            if runs and before is not None and before == runs[-1][-1]:
                runs[-1].append(line)
            else:
                runs.append([line])
        hits = []
        for run in runs:
            best = max(self.picked[line] for line in run)
            scenes = sorted({(line[0], line[1]) for line in run}, key=lambda s: self.meta.get(s, (None, 10**9))[1])
            cand = next((self.meta[s][0] for s in scenes if s in self.meta), None)
            if cand is None:  # cannot happen: every window is centred on a ranked scene
                continue
            kind = cand.meta.get("source_kind", "")
            text = ("\n\n" if kind in PROSE_KINDS else "\n").join(self.lines[line] for line in run)
            meta = {**cand.meta, "bm25": round(cand.bm25, 3), "scenes": len(scenes)}
            # Date and speakers of the passage itself: it may start in the scene before
            # the hit, and hold only some of the people who speak in the hit's scene.
            stamps = [self.scene_meta[s].get("timestamp") for s in scenes if self.scene_meta[s].get("timestamp")]
            if stamps:
                meta["timestamp"] = min(stamps)
            known = {n for s in scenes for n in str(self.scene_meta[s].get("speakers", "")).split(", ") if n}
            said = [self.lines[line].split(": ", 1)[0] for line in run if kind not in PROSE_KINDS]
            said = [n for n in said if n in known]
            if said:
                meta["speakers"] = ", ".join(dict.fromkeys(said))
                meta["speaker"] = max(set(said), key=said.count)
            hits.append((-best, Hit(id=cand.id, text=text, score=cand.cosine, meta=meta)))
        return [h for _, h in sorted(hits, key=lambda x: x[0])]
