"""Ingest benchmark for scene memory, on the embedded defaults.

Measures, in one run and next to its baseline:
  - the whole import pipeline on a generated WhatsApp export (parse, cut into scenes,
    embed, insert into Chroma) in scenes/s, vs raw sentence-transformers `encode` on the
    same scene texts (the embedding alone, the part no pipeline can skip);
  - our `Embedder.encode` on the same texts vs raw sentence-transformers (its overhead);
  - the Chroma insert alone, in scenes/s (a detail).
The embedded scenes are left in the run's workspace as the corpus of the retrieval suite.

Usage: .venv/bin/python -m bench.ingest [--json] [--quick]
Writes $ALTEREGO_HOME/bench/ingest.json (ALTEREGO_HOME defaults to a temp dir here).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from bench.common import Progress, Workspace, figure, no_progress, run_suite, suite_main

WORDS = (
    "sea morning coffee train letter mother city winter river book friend night window rain work "
    "music garden idea money dream walk bread story summer road light house dog love plan"
).split()


def fake_whatsapp(path: Path, messages: int, seed: int = 1) -> None:
    """A two-person WhatsApp export (Android format) of random short messages; gaps of up
    to two hours make the importer cut it into many scenes."""
    rnd = random.Random(seed)
    names = ["Ivan", "Anna"]
    t = 1_600_000_000
    with path.open("w", encoding="utf-8") as fh:
        for i in range(messages):
            t += rnd.choice([30, 60, 300, 7200])
            day = time.gmtime(t)
            text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 30)))
            fh.write(f"{day.tm_mday:02d}/{day.tm_mon:02d}/{day.tm_year % 100:02d}, "
                     f"{day.tm_hour:02d}:{day.tm_min:02d} - {names[i % 2]}: {text}\n")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def import_export(ws: Workspace, suite: str, messages: int) -> tuple[list[str], float]:
    """Generate an export and import it through SceneMemory into a scratch root; returns
    the scene texts and the import's wall time."""
    from memory.journal import Journal
    from memory.service import SceneMemory

    settings = ws.settings(suite)
    export = settings.home / "chat.txt"
    fake_whatsapp(export, messages)
    memory = SceneMemory(settings.memory, settings.home, Journal(settings.journal_path), embedder=ws.embedder)
    memory.store  # opening Chroma is not part of an import's cost
    summary, seconds = timed(lambda: memory.import_paths([export], me=["Ivan"]).as_dict())
    got = memory.store.collection.get(include=["documents"], limit=summary["scenes_added"])
    memory.journal.close()
    return got["documents"], seconds


def corpus(ws: Workspace, quick: bool):
    """Embedded scene texts for the retrieval suite: this run's ingest corpus if the
    ingest suite ran, otherwise a small one made now."""
    if "corpus" not in ws.cache:
        ws.progress("corpus: importing a generated chat export")
        texts, _ = import_export(ws, "corpus", 600 if quick else 2000)
        ws.cache["corpus"] = (texts, ws.embedder.encode(texts))
    return ws.cache["corpus"]


def _run(ws: Workspace, quick: bool) -> dict:
    from memory.store import SceneStore

    messages = 600 if quick else 6000
    embedder = ws.embedder
    ws.progress(f"ingest: importing a generated WhatsApp export of {messages} messages")
    texts, t_import = import_export(ws, "ingest", messages)
    n = len(texts)

    ws.progress(f"ingest: raw sentence-transformers vs Embedder on {n} scenes")
    model = embedder.model
    _, t_raw = timed(lambda: model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True))
    vecs, t_ours = timed(lambda: embedder.encode(texts))

    store = SceneStore(ws.settings("ingest-insert").home / "chroma")
    metas = [{"source": "bench", "i": i} for i in range(n)]
    _, t_insert = timed(lambda: store.add([f"id{i}" for i in range(n)], vecs, texts, metas))
    ws.cache["corpus"] = (texts, vecs)

    figures = {
        "ingest_scenes_per_s": figure(
            "ingest: import pipeline scenes/s", n / t_import, "scenes/s",
            "raw sentence-transformers encode of the same scenes (embedding alone)", n / t_raw,
            better="higher", label="import pipeline", baseline_label="raw encode"),
        "embedder_scenes_per_s": figure(
            "ingest: Embedder.encode scenes/s", n / t_ours, "scenes/s",
            "raw sentence-transformers encode of the same scenes", n / t_raw,
            better="higher", label="Embedder", baseline_label="raw encode"),
    }
    details = {
        "messages": messages,
        "scenes": n,
        "import_s": round(t_import, 2),
        "chroma_insert_scenes_per_s": round(n / t_insert, 1),
        "embed_batch_size": embedder.batch_size,
    }
    return {"figures": figures, "details": details}


def run(home: Path, quick: bool = False, progress: Progress = no_progress, workspace: Workspace | None = None) -> dict:
    return run_suite(_run, home, quick, progress, workspace)


def main(argv: list[str] | None = None) -> int:
    return suite_main("ingest", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
