"""Recall benchmark: does what a chat turn retrieves contain the evidence for a question?

Data (`bench.chitchat`): one real person's chat history from the Chit-Chat Challenge
dataset, written as WhatsApp exports and imported through the real importer; questions
are held-out real messages, the evidence is the reply that followed each (see that
module for how they are made and why they favour no method). In the same run, with the
same embedder and the same token budget, three retrievals answer every question:

  (a) dense scenes: whole scenes by cosine (`memory.retrieval = "dense"`,
      top_k = 4 per 300 tokens of budget, as before within 300), the ranking before
      hybrid, on today's scene vectors (the mean of their lines', `memory.lines`);
  (b) fixed windows of 4 messages, embedded into their own collection, ranked the same
      way: the simplest chunking there is, and the baseline of every figure;
  (c) hybrid retrieval as configured (`memory.retrieval = "hybrid"`, the defaults).

Recall = the share of questions whose evidence message appears whole in the text the
turn would get. Measured at 300, 600 and 1,000 tokens (300 and 600 with --quick), with
the time to first token of chat turns at each budget (empty KV cache, the notes in the
prompt), so a budget can be chosen by what it buys and what it costs.

Usage: .venv/bin/python -m bench.recall [--json] [--quick]
Writes $ALTEREGO_HOME/bench/recall.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, median, no_progress, run_suite, suite_main, write_fixed_personas

BUDGETS = (300, 600, 1000)
QUICK_BUDGETS = (300, 600)


def norm(text: str) -> str:
    return " ".join(text.split())


def found(evidence: str, hits) -> bool:
    return norm(evidence) in "\n".join(norm(h.text) for h in hits)


def dense_config(base, budget: int):
    """Today's dense ranking at `budget` tokens: top_k = 4 per 300 tokens."""
    return dataclasses.replace(base, retrieval="dense", context_tokens=budget, top_k=max(4, round(4 * budget / 300)))


def hybrid_config(base, budget: int):
    """The configured hybrid retrieval at `budget` tokens, its most notes scaled alike."""
    top_k = max(4, round(base.top_k * budget / base.context_tokens))
    return dataclasses.replace(base, retrieval="hybrid", context_tokens=budget, top_k=top_k)


@dataclasses.dataclass
class Prepared:
    """A person's chats in memory, their fixed windows beside them, and the questions."""
    memory: object  # memory.service.SceneMemory
    windows: object  # memory.store.SceneStore of the fixed windows
    questions: list
    vectors: object  # the questions' embeddings, in order
    files: int
    scenes: int
    window_count: int
    import_s: float


def prepare(corpus, settings, journal, embedder, progress: Progress = no_progress, reuse: bool = False) -> Prepared:
    """Import `corpus` through the real importer into `settings.home`, embed its fixed
    windows of 4 messages into a collection of their own, and keep the questions whose
    evidence survived import. `reuse`: a home prepared before for the same corpus is
    opened as it is (tuning runs repeat on one person)."""
    from bench.chitchat import fixed_windows
    from memory.service import SceneMemory
    from memory.store import SceneStore

    memory = SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
    # Chroma alone, beside the scenes: a SceneMemory would give the windows line vectors
    # on reopening, and with them its own kind of window vector (the mean of the lines').
    wstore = SceneStore(settings.home / "chroma", settings.memory.chroma_url, "windows")
    marker = settings.home / "prepared.json"
    key = {"messages": len(corpus.messages), "questions": [q.text for q in corpus.questions]}
    files = corpus.write(settings.home / "exports")
    windows = fixed_windows(corpus, 4)
    import_s = 0.0
    if not (reuse and marker.exists() and json.loads(marker.read_text(encoding="utf-8")) == key):
        progress(f"recall: importing {len(files)} chats, {len(corpus.messages):,} messages")
        t0 = time.perf_counter()
        memory.import_paths(files, me=[corpus.me])
        import_s = time.perf_counter() - t0
        progress("recall: embedding fixed windows of 4 messages")
        texts = [t for _, t in windows]
        wstore.add([f"w{i}" for i in range(len(windows))], embedder.encode(texts), texts,
                   [{"source": f, "source_kind": "whatsapp", "position": i} for i, (f, _) in enumerate(windows)])
        marker.write_text(json.dumps(key), encoding="utf-8")
    store = memory.store
    # A question counts only if its evidence survived import (a message the importer
    # reads as a media placeholder does not): the same questions for all three.
    docs = "\n".join(norm(d) for d in store.collection.get(include=["documents"])["documents"])
    questions = [q for q in corpus.questions if norm(q.evidence) in docs]
    return Prepared(memory, wstore, questions, embedder.encode([q.text for q in questions]), len(files),
                    store.count(), len(windows), import_s)


def pool_recall(prep: Prepared, config) -> float:
    """The share of questions whose evidence is in one of the `candidates` scenes the
    fused ranking hands the passage scorer: what hybrid could find at most from its own
    hits (a passage may also run into the scene before or after). Beside the recall, it
    tells a ranking that misses the evidence's scene from passages that leave it out."""
    from memory.retrieval import HybridRetriever

    retriever = HybridRetriever(prep.memory.store, config)
    hits = 0
    for q, v in zip(prep.questions, prep.vectors):
        cands, _, _ = retriever.rank(v, q.text, config.candidates)
        hits += found(q.evidence, cands)
    return round(hits / len(prep.questions), 4)


def recall_at(prep: Prepared, config, budget: int, timings: list | None = None) -> dict[str, float]:
    """The three recalls at `budget` tokens; `config`: the memory settings hybrid uses;
    `timings`: gets each hybrid retrieval's milliseconds."""
    from memory.retrieval import HybridRetriever, dense_for_turn

    store = prep.memory.store
    dense_cfg = dense_config(config, budget)
    hybrid = HybridRetriever(store, hybrid_config(config, budget))
    hits = {"dense_scenes": 0, "fixed_windows": 0, "hybrid": 0}
    for q, v in zip(prep.questions, prep.vectors):
        hits["dense_scenes"] += found(q.evidence, dense_for_turn(store, v, dense_cfg))
        hits["fixed_windows"] += found(q.evidence, dense_for_turn(prep.windows, v, dense_cfg))
        t = time.perf_counter()
        got = hybrid.for_turn(v, q.text)
        if timings is not None:
            timings.append((time.perf_counter() - t) * 1000)
        hits["hybrid"] += found(q.evidence, got)
    return {k: round(n / len(prep.questions), 4) for k, n in hits.items()}


def _run(ws: Workspace, quick: bool) -> dict:
    from bench.chitchat import person
    from memory.journal import Journal
    from webapp.chat import ChatService

    budgets = QUICK_BUDGETS if quick else BUDGETS
    ws.progress("recall: building the chat history and its questions")
    corpus = person("test", conversations=30 if quick else None, questions=60 if quick else 400)
    settings = ws.settings("recall")
    journal = Journal(settings.journal_path)
    prep = prepare(corpus, settings, journal, ws.embedder, ws.progress)
    memory, questions = prep.memory, prep.questions

    base = settings.memory
    recall: dict[int, dict[str, float]] = {}
    retrieval_ms: list[float] = []
    for budget in budgets:
        ws.progress(f"recall: {len(questions)} questions at {budget} tokens")
        recall[budget] = recall_at(prep, base, budget, retrieval_ms)
    pool = pool_recall(prep, base)

    ws.progress("recall: chat turns at each budget (time to first token)")
    write_fixed_personas(settings.home / "personas", 8)
    service = ChatService(settings, engine=ws.engine, journal=journal, memory=memory)
    service.send("warm up", persona="me")
    ttft: dict[int, dict] = {}
    for budget in budgets:
        memory.config = hybrid_config(base, budget)
        memory._hybrid = None  # the retriever holds the config it was made with
        turns = []
        for q in questions[: 1 if quick else 3]:
            ws.engine.llm.reset()  # every turn pays its whole prompt, notes included
            turns.append(service.send(q.text, persona="me").timings)
        ttft[budget] = {"ttft_ms": median(t["ttft_ms"] for t in turns),
                        "prompt_tokens": median(t["prompt_tokens"] for t in turns),
                        "retrieval_ms": median(t["retrieval_ms"] for t in turns)}
    memory.config = base
    journal.close()

    default = base.context_tokens if base.context_tokens in recall else budgets[0]
    r = recall[default]
    figures = {
        "recall_hybrid": figure(
            f"evidence recall in a turn's notes, hybrid, {default} tokens", r["hybrid"], "",
            "fixed windows of 4 messages, same embedder and budget", r["fixed_windows"], better="higher",
            label="hybrid", baseline_label="fixed windows", questions=len(questions)),
        "recall_dense_scenes": figure(
            f"evidence recall in a turn's notes, dense scenes (before), {default} tokens", r["dense_scenes"], "",
            "fixed windows of 4 messages, same embedder and budget", r["fixed_windows"], better="higher",
            label="dense scenes", baseline_label="fixed windows", questions=len(questions)),
    }
    for budget in budgets:
        if budget != default:
            figures[f"recall_hybrid_{budget}"] = figure(
                f"evidence recall in a turn's notes, hybrid, {budget} tokens", recall[budget]["hybrid"], "",
                "fixed windows of 4 messages, same embedder and budget", recall[budget]["fixed_windows"],
                better="higher", label="hybrid", baseline_label="fixed windows", questions=len(questions))
    for budget in budgets:
        if budget != budgets[0]:
            figures[f"recall_ttft_{budget}"] = figure(
                f"turn TTFT with notes of {budget} tokens", ttft[budget]["ttft_ms"], "ms",
                f"the same turns with notes of {budgets[0]} tokens", ttft[budgets[0]]["ttft_ms"], better="lower",
                label=f"{budget} tokens", baseline_label=f"{budgets[0]} tokens")
    details = {
        "dataset": "chitchat-dataset (BYU PCC Chit-Chat Challenge, MIT), one person's chats as WhatsApp exports",
        "person": "TEST", "chats": prep.files, "messages": len(corpus.messages),
        "scenes": prep.scenes, "windows": prep.window_count, "import_s": round(prep.import_s, 1),
        "questions": len(questions), "questions_made": len(corpus.questions),
        "recall": {str(b): v for b, v in recall.items()},
        "ttft": {str(b): v for b, v in ttft.items()},
        "hybrid_retrieval_ms_median": round(median(retrieval_ms), 2),
        f"evidence_in_{base.candidates}_fused_scenes": pool,
        "default_budget": default,
    }
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("recall", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
