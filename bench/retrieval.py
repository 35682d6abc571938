"""Retrieval benchmark: what memory costs a chat turn as the collection grows.

For collections of 10k and 100k scenes (1k and 5k with --quick) it measures:
  - embed + Chroma query latency for one message (the query a turn makes: top_k * 2);
  - chat turns through ChatService against that collection, each from an empty KV cache
    (so every turn pays its whole prompt, retrieved notes included): the time spent in
    retrieval (embed, dense + BM25 search, fusion and passages, as the turn itself
    measures it) as a share of the turn's time to first token.
The collections hold real embeddings of the ingest suite's scenes plus small noise (their
line vectors as they are, so each turn reads and scores them as after an import):
embedding 100k scenes would take ~10 minutes and measure nothing new, since search cost
depends on the collection's size, not on where its vectors came from.

Usage: .venv/bin/python -m bench.retrieval [--json] [--quick]
Writes $ALTEREGO_HOME/bench/retrieval.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.common import Progress, Workspace, figure, median, no_progress, run_suite, suite_main
from bench.ingest import corpus, timed

QUERIES = ["when did we talk about the sea", "coffee in the morning", "plans for the winter", "a letter to mother"]


def size_label(scenes: int) -> str:
    return f"{scenes // 1000}k" if scenes % 1000 == 0 else str(scenes)


def _run(ws: Workspace, quick: bool) -> dict:
    import numpy as np

    sizes = (1_000, 5_000) if quick else (10_000, 100_000)
    turns_per_size = 1 if quick else 3
    texts, vecs, lines = corpus(ws, quick)
    service = ws.service("retrieval", max_tokens=8)
    store = service.memory.store
    embedder = ws.embedder
    engine = service.engine
    k = service.settings.memory.top_k * 2
    rng = np.random.default_rng(0)

    figures, details = {}, {"corpus_scenes": len(texts), "query_k": k}
    filled = 0
    for target in sizes:
        ws.progress(f"retrieval: filling Chroma to {target:,} scenes")
        while filled < target:
            n = min(4096, target - filled)
            idx = rng.integers(0, len(vecs), n)
            noisy = vecs[idx] + rng.normal(0, 0.05, (n, vecs.shape[1])).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            store.add([f"s{filled + i}" for i in range(n)], noisy, [texts[j] for j in idx],
                      [{"source": "bench", "source_kind": "whatsapp"}] * n, lines=[lines[j] for j in idx])
            filled += n
        store.query(embedder.encode_one("warm up"), k)  # the first query after inserts loads the index
        store.lexical.refresh()  # the BM25 model is rebuilt after an import, not in the next turn

        ws.progress(f"retrieval: embed + query, and chat turns, at {target:,} scenes")
        embed_ms, search_ms = [], []
        for _ in range(1 if quick else 5):
            for q in QUERIES:
                qv, t_e = timed(lambda: embedder.encode_one(q))  # noqa: B023
                _, t_s = timed(lambda: store.query(qv, k))  # noqa: B023
                embed_ms.append(t_e * 1000)
                search_ms.append(t_s * 1000)
        if target == sizes[0]:
            service.send("warm up", persona="me")  # one-off costs stay out of the figures
        turns = []
        for i in range(turns_per_size):
            engine.llm.reset()  # every turn pays its whole prompt, notes included
            turns.append(service.send(QUERIES[i % len(QUERIES)], persona="me").timings)

        label = size_label(target)
        figures[f"retrieval_share_{label}"] = figure(
            f"retrieval share of time to first token, {target:,} scenes",
            median(t["retrieval_ms"] for t in turns), "ms",
            "time to first token of the same turns (ChatService, empty KV cache, notes in the prompt)",
            median(t["ttft_ms"] for t in turns), better="lower", label="retrieval", baseline_label="turn TTFT",
            scenes=target)
        details[label] = {
            "scenes": store.count(),
            "embed_ms_median": round(median(embed_ms), 2),
            "search_ms_median": round(median(search_ms), 2),
            "embed_plus_search_ms_median": round(median(a + b for a, b in zip(embed_ms, search_ms)), 2),
            "turn_prompt_tokens": median(t["prompt_tokens"] for t in turns),
            "turns": len(turns),
        }
    service.journal.close()
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("retrieval", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
