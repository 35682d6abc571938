"""Ingest and retrieval benchmark for scene memory, on the embedded defaults.

Measures, in one run and next to its baseline:
  - raw sentence-transformers `encode` speed on scene texts (the baseline),
  - our `Embedder.encode` speed on the same texts (ratio to raw),
  - the whole import pipeline on a generated WhatsApp export (parse, cut, embed,
    insert) in scenes/s, and the Chroma insert alone in scenes/s,
  - query latency (embed one query + Chroma search) at 10k and 100k scenes.
The 10k/100k collections are filled with real embeddings of generated scenes plus small
noise (embedding 100k scenes would take ~10 minutes and measures nothing new: search cost
depends on the collection size, not on where the vectors came from).

Usage: .venv/bin/python bench/ingest.py [--json] [--scenes N]
Writes $ALTEREGO_HOME/bench/ingest.json (ALTEREGO_HOME defaults to a temp dir here).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_home, write_report  # noqa: E402

WORDS = (
    "sea morning coffee train letter mother city winter river book friend night window rain work "
    "music garden idea money dream walk bread story summer road light house dog love plan"
).split()


def fake_whatsapp(path: Path, messages: int, seed: int = 1) -> None:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--messages", type=int, default=6000, help="messages in the generated chat export")
    args = parser.parse_args()

    home = bench_home()
    from memory.embedder import Embedder
    from memory.journal import Journal
    from memory.service import SceneMemory
    from memory.store import SceneStore
    from webapp.settings import load_settings

    settings = load_settings()
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=home))
    export = work / "chat.txt"
    fake_whatsapp(export, args.messages)

    embedder = Embedder()
    embedder.encode(["warm up"])
    memory = SceneMemory(settings.memory, home, Journal(work / "journal.sqlite3"), embedder=embedder)
    memory._store = SceneStore(work / "chroma")

    # Whole pipeline: parse + cut + embed + insert.
    summary, t_import = timed(lambda: memory.import_paths([export], me=["Ivan"]).as_dict())
    n_scenes = summary["scenes_added"]
    got = memory.store.collection.get(include=["documents"], limit=n_scenes)
    texts = got["documents"]

    # Baseline: raw sentence-transformers on the same texts, then our wrapper.
    model = embedder.model
    _, t_raw = timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True))
    vecs, t_ours = timed(lambda: embedder.encode(texts))

    # Chroma insert alone.
    store = SceneStore(work / "chroma-insert")
    metas = [{"source": "bench", "i": i} for i in range(len(texts))]
    _, t_insert = timed(lambda: store.add([f"id{i}" for i in range(len(texts))], vecs, texts, metas))

    # Query latency at 10k and 100k scenes.
    rng = __import__("numpy").random.default_rng(0)
    np = __import__("numpy")
    queries = ["when did we talk about the sea", "coffee in the morning", "plans for the winter", "a letter to mother"]
    latency = {}
    big = SceneStore(work / "chroma-big")
    filled = 0
    for target in (10_000, 100_000):
        while filled < target:
            n = min(4096, target - filled)
            base = vecs[rng.integers(0, len(vecs), n)]
            noisy = base + rng.normal(0, 0.05, base.shape).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            big.add([f"s{filled + i}" for i in range(n)], noisy, [texts[0]] * n, [{"source": "bench"}] * n)
            filled += n
        embed_ms, search_ms = [], []
        for _ in range(5):
            for q in queries:
                qv, t_e = timed(lambda: embedder.encode_one(q))
                _, t_s = timed(lambda: big.query(qv, 8))
                embed_ms.append(t_e * 1000)
                search_ms.append(t_s * 1000)
        latency[str(target)] = {
            "embed_ms_median": round(statistics.median(embed_ms), 2),
            "search_ms_median": round(statistics.median(search_ms), 2),
            "total_ms_median": round(statistics.median([a + b for a, b in zip(embed_ms, search_ms)]), 2),
        }

    report = {
        "scenes": n_scenes,
        "raw_sentence_transformers_scenes_per_s": round(n_scenes / t_raw, 1),
        "embedder_scenes_per_s": round(n_scenes / t_ours, 1),
        "embedder_vs_raw_ratio": round(t_raw / t_ours, 3),
        "chroma_insert_scenes_per_s": round(n_scenes / t_insert, 1),
        "import_pipeline_scenes_per_s": round(n_scenes / t_import, 1),
        "import_pipeline_vs_raw_encode_ratio": round(t_raw / t_import, 3),
        "query_latency": latency,
    }
    write_report(home, "ingest", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
