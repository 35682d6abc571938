"""The meta-adapter prompt router: in Auto mode, picks which persona answers a message.

It is an embedding router. Each persona is represented by its routing exemplars
(`exemplars.txt` in its folder), its description, and the messages the user sent to it
by overriding the router from the dropdown — so the router learns the user's habits.
A message is embedded (the chat turn passes in the embedding it already computed for
memory retrieval, so routing costs one matrix product) and scored against every persona
as the mean of its top-k exemplar similarities. The best persona wins only if it is
clearly ahead (score ≥ threshold and a margin over the runner-up); otherwise the
conversation stays with its current persona, so short or ambiguous messages ("ok",
"hm, and then?") never flip-flop between voices. Every decision carries the per-persona
scores and a one-line reason for the UI."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from memory.embedder import Embedder

from .catalog import PersonaCatalog
from .config import RouterConfig

AUTO = "auto"


@dataclass
class RouteDecision:
    persona: str
    scores: dict[str, float]
    reason: str
    switched: bool = False  # chose a persona other than the current one

    def as_dict(self) -> dict:
        return {"persona": self.persona, "scores": self.scores, "reason": self.reason}


@dataclass
class _Bank:
    texts: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None


class PromptRouter:
    def __init__(self, catalog: PersonaCatalog, embedder: Embedder, config: RouterConfig | None = None):
        self.catalog = catalog
        self.embedder = embedder
        self.config = config or RouterConfig()
        self._lock = threading.Lock()
        self._bank: _Bank | None = None
        self._overrides: list[tuple[str, str]] = []

    # -- exemplars ------------------------------------------------------------------------
    def _build(self) -> _Bank:
        bank = _Bank()
        for persona in self.catalog.all():
            for text in [persona.description, *persona.exemplars]:
                bank.texts.append(text)
                bank.owners.append(persona.name)
        for message, persona in self._overrides:
            if persona in self.catalog.names():
                bank.texts.append(message)
                bank.owners.append(persona)
        bank.vectors = self.embedder.encode(bank.texts)
        return bank

    def bank(self) -> _Bank:
        with self._lock:
            if self._bank is None:
                self._bank = self._build()
            return self._bank

    def set_overrides(self, pairs: list[tuple[str, str]]) -> None:
        """(message, persona) pairs the user chose by hand; they become exemplars."""
        with self._lock:
            self._overrides = list(pairs)
            self._bank = None

    def add_override(self, message: str, persona: str) -> None:
        with self._lock:
            self._overrides.append((message, persona))
            if self._bank is not None and persona in self.catalog.names():
                vec = self.embedder.encode([message])
                self._bank.texts.append(message)
                self._bank.owners.append(persona)
                self._bank.vectors = np.vstack([self._bank.vectors, vec])

    # -- routing --------------------------------------------------------------------------
    def scores(self, message: str, embedding: np.ndarray | None = None) -> dict[str, float]:
        bank = self.bank()
        q = embedding if embedding is not None else self.embedder.encode_one(message)
        sims = bank.vectors @ np.asarray(q, dtype=np.float32)
        owners = np.array(bank.owners)
        out = {}
        for name in self.catalog.names():
            mine = np.sort(sims[owners == name])[::-1][: self.config.top_k]
            out[name] = round(float(mine.mean()), 4) if len(mine) else 0.0
        return out

    def route(self, message: str, current: str | None = None, embedding: np.ndarray | None = None) -> RouteDecision:
        cfg = self.config
        current = current if current in self.catalog.names() else "me"
        scores = self.scores(message, embedding)
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        (best, best_score), (second, second_score) = ranked[0], ranked[1] if len(ranked) > 1 else ("", 0.0)
        short = len(message.split()) < cfg.min_words
        needed = cfg.short_threshold if short else cfg.threshold
        if best_score >= needed and best_score - second_score >= cfg.margin:
            reason = f"{self._display(best)}: the message is closest to its examples ({best_score:.2f}"
            reason += f" vs {self._display(second)} {second_score:.2f})" if second else ")"
            return RouteDecision(best, scores, reason, switched=best != current)
        if short and best_score < needed:
            why = f"a short message ({best_score:.2f} < {needed:.2f} for {self._display(best)})"
        elif best_score < needed:
            why = f"no persona is close enough (best {self._display(best)} {best_score:.2f} < {needed:.2f})"
        else:
            why = (f"{self._display(best)} and {self._display(second)} are too close "
                   f"({best_score:.2f} vs {second_score:.2f})")
        return RouteDecision(current, scores, f"staying with {self._display(current)}: {why}")

    def _display(self, name: str) -> str:
        return self.catalog.get(name).display_name if name in self.catalog.names() else name
