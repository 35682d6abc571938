"""Hybrid retrieval on real ChromaDB, the real embedder and real bm25s: tokens keep every
script, the BM25 index follows Chroma through import, forget, re-import, a lost index
folder, a crash between the two writes and a kill -9 mid-import; a Russian question
finds its Russian note first; a named person or time lifts the matching scenes; a hit
brings the lines around it (across a size cut into the next scene), overlapping hits
merge, and the notes stay within the budget; a line is found by its own vector, and
rows from before line vectors get them; the sources panel shows when and who; the
recall benchmark's questions are held out of what is imported."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import ALTEREGO, FIXTURES, ROOT, cli_env
from memory.retrieval import NOTE_OVERHEAD

IMPORT = FIXTURES / "import"


def lexical_ids(memory) -> set[str]:
    return memory.store.lexical.all_ids()


def chroma_ids(memory) -> set[str]:
    return memory.store.all_ids()


def open_memory(service, **changes):
    """What another process (or the next start) gets: a fresh SceneMemory on the same root."""
    from memory.service import SceneMemory

    config = dataclasses.replace(service.settings.memory, **changes)
    return SceneMemory(config, service.settings.home, service.journal, embedder=service.memory.embedder)


# -- tokens and hints ----------------------------------------------------------------------
def test_tokens_keep_cyrillic_and_fold_inflections():
    from memory.lexical import tokenize

    terms = tokenize("Поездка на залив с Аней!")
    assert terms == tokenize("поездку на залив с Аней") and len(terms) == 3 and terms[0] == "поезд"
    assert tokenize("Ёлка") == tokenize("елка") and tokenize("поездке") == tokenize("поездка")
    assert tokenize("the hiking trips in 2019") == ["hike", "trip", "2019"]  # stop words out, stems in
    assert tokenize("東京 café") == ["東京", "café"]  # other scripts are kept as words


def test_time_and_speaker_hints():
    from memory.hints import parse_hints, speaker_names

    now = datetime(2024, 3, 15, 12).timestamp()
    names = speaker_names(["Иван Петров, Аня", "Anna, Bob Smith"])

    def span(text):
        h = parse_hints(text, names, now)
        return (datetime.fromtimestamp(h.since).date().isoformat(), datetime.fromtimestamp(h.until).date().isoformat())

    assert span("what did we do last summer?") == ("2023-06-01", "2023-09-01")
    assert span("прошлым летом") == ("2023-06-01", "2023-09-01")
    assert span("в марте") == ("2024-03-01", "2024-04-01")
    assert span("in May 2021") == ("2021-05-01", "2021-06-01")
    assert span("photos from 2019") == ("2019-01-01", "2020-01-01")
    assert span("в прошлом году") == ("2023-01-01", "2024-01-01")
    assert span("yesterday") == ("2024-03-14", "2024-03-15")
    assert not parse_hints("I may go, or not", names, now).timed  # "may" the verb is no month
    assert parse_hints("что говорила Ане?", names, now).speakers == {"Аня"}
    assert parse_hints("what did Anna and Bob say", names, now).speakers == {"Anna", "Bob Smith"}
    assert parse_hints("анекдот про Ивана", names, now).speakers == {"Иван Петров"}


# -- the lexical index follows Chroma ----------------------------------------------------------
def test_bm25_index_follows_import_forget_and_reimport(service):
    memory = service.memory
    memory.import_paths([IMPORT / "diary.txt", IMPORT / "whatsapp_us.txt"])
    assert lexical_ids(memory) == chroma_ids(memory) and len(chroma_ids(memory))
    hits = memory.search("ice river", k=3)
    assert hits[0].source.endswith("diary.txt") and hits[0].meta["bm25"] > 0

    memory.forget("diary.txt")
    assert lexical_ids(memory) == chroma_ids(memory)
    assert all(not h.source.endswith("diary.txt") for h in memory.search("ice river", k=5))
    assert all(not h.source.endswith("diary.txt") for h in memory.retrieve("the ice on the river").hits)

    memory.import_paths([IMPORT / "diary.txt"])
    assert lexical_ids(memory) == chroma_ids(memory)
    assert memory.search("ice river", k=1)[0].source.endswith("diary.txt")
    # The BM25 model was built by the import and saved under the data root, named by its
    # generation: another process loads it instead of rebuilding.
    lexical = memory.store.lexical
    assert (lexical.snapshots / f"gen-{lexical.generation()}" / "params.index.json").is_file()
    other = open_memory(service)
    other.store.lexical.refresh()
    assert other.store.lexical.ids == lexical.ids


def test_bm25_index_rebuilt_when_missing_and_repaired_after_a_crash(service):
    import shutil

    memory = service.memory
    memory.import_paths([IMPORT / "diary.txt", IMPORT / "notes.md"])
    before = chroma_ids(memory)
    expected = [h.id for h in memory.search("ice river", k=3)]
    memory.store.lexical.close()

    # The index folder is gone (deleted, or an older data root): rebuilt from Chroma.
    shutil.rmtree(service.settings.home / "lexical")
    again = open_memory(service)
    assert lexical_ids(again) == before
    assert [h.id for h in again.search("ice river", k=3)] == expected

    # A crash between the Chroma delete and the lexical delete leaves rows of scenes
    # Chroma no longer has: never returned, and dropped at the next start.
    gone = sorted(ids for ids in before if ids in set(again.store.ids_where({"source": str((IMPORT / "diary.txt").resolve())})))
    again.store.collection.delete(ids=gone)
    assert set(gone) <= lexical_ids(again)
    assert all(h.id not in gone for h in again.search("ice river", k=5))
    third = open_memory(service)
    assert lexical_ids(third) == chroma_ids(third) == before - set(gone)

    # Rows made by another version of the tokenizer are made again.
    third.store.lexical.db.execute("UPDATE meta SET value = 1 WHERE key = 'tokenizer'")
    third.store.lexical.db.execute("UPDATE scenes SET tokens = 'stale'")
    fourth = open_memory(service)
    assert lexical_ids(fourth) == chroma_ids(fourth)
    assert "stale" not in {r[0] for r in fourth.store.lexical.db.execute("SELECT tokens FROM scenes")}


def big_notes(path: Path, sections: int) -> Path:
    """A Markdown diary with one scene per heading (every heading starts a new scene)."""
    places = ["river", "market", "station", "library", "harbour", "forest", "bakery", "bridge"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(sections):
            fh.write(f"## Day {i}\n\nOn day {i} I walked to the {places[i % len(places)]} and counted "
                     f"{i * 7 % 113} gulls; entry number {i} of the long diary.\n\n")
    return path


def lexical_rows(home: Path, like: str) -> int:
    """Rows of the BM25 table for sources matching `like`, read-only, beside the writer."""
    path = home / "lexical" / "scenes.sqlite3"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM scenes WHERE source LIKE ?", (like,)).fetchone()[0]
    except sqlite3.OperationalError:  # the table is being created
        return 0
    finally:
        db.close()


@pytest.mark.slow
def test_kill9_mid_import_leaves_bm25_and_chroma_in_step(tmp_path, embedder):
    """`alterego import` killed with SIGKILL once its first batch is stored: at the next
    start the half import is gone from Chroma and from the BM25 index alike, and
    importing the file again stores all of it in both."""
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.settings import load_settings

    home = tmp_path / "home"
    env = cli_env(home)
    first = subprocess.run([*ALTEREGO, "import", str(IMPORT / "diary.txt")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    big = big_notes(tmp_path / "big.md", 400)
    proc = subprocess.Popen([*ALTEREGO, "import", str(big)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while lexical_rows(home, "%big.md") == 0:
            assert proc.poll() is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline, "the import stored nothing in 300 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 0 < lexical_rows(home, "%big.md") < 400  # killed mid-way, BM25 rows written

    settings = load_settings(home=home)
    journal = Journal(settings.journal_path)
    memory = SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
    try:
        # Recovery ran when the store opened: the half import is gone from both.
        assert lexical_ids(memory) == chroma_ids(memory) and lexical_rows(home, "%big.md") == 0
        assert {s for s in memory.sources()} == {str((IMPORT / "diary.txt").resolve())}
        assert all(not h.source.endswith("big.md") for h in memory.search("day 12 market gulls", k=5))
        assert journal.running_imports() == []

        summary = memory.import_paths([big]).as_dict()
        assert summary["scenes_added"] == 400
        assert lexical_ids(memory) == chroma_ids(memory) and lexical_rows(home, "%big.md") == 400
        assert "On day 12 I walked" in memory.search("day 12 market gulls", k=1)[0].text
    finally:
        journal.close()


# -- what a turn gets ------------------------------------------------------------------------
RUSSIAN_NOTES = """# Залив

В субботу ездили с Аней на залив на велосипедах. Ветер был сильный, но солнце грело,
и мы пили чай из термоса прямо на камнях.

# Дача

Весь июнь чинили крышу на даче. Отец ворчал, что доски опять кривые, а мама варила
варенье из крыжовника.

# Работа

Начальник снова перенёс совещание. Отчёт по проекту сдали в пятницу вечером.

# Книги

Перечитал «Мастера и Маргариту» и взялся за «Белую гвардию». Булгаков читается
совсем иначе, чем в школе.
"""


def test_russian_question_finds_its_note_first(service, tmp_path):
    notes = tmp_path / "заметки.md"
    notes.write_text(RUSSIAN_NOTES, encoding="utf-8")
    memory = service.memory
    memory.import_paths([notes, IMPORT / "diary.txt", IMPORT / "notes.md", IMPORT / "whatsapp_android.txt"],
                        me=["Иван Петров"])
    asks = {
        "Когда мы ездили на велосипедах на залив?": "на залив на велосипедах",
        "Что случилось с крышей на даче?": "чинили крышу",
        "Какие книги Булгакова я перечитывал?": "Мастера и Маргариту",
        "когда сдали отчёт по проекту": "Отчёт по проекту",
    }
    for question, expected in asks.items():
        hits = memory.retrieve(question).hits
        assert hits and expected in hits[0].text, (question, [h.text[:60] for h in hits])
        assert expected in memory.search(question, k=1)[0].text


def test_named_person_and_time_lift_their_scenes(service, tmp_path):
    chat = tmp_path / "chat.txt"
    chat.write_text(
        "03/03/21, 10:00 - Anna: the lighthouse was closed when I got there\n"
        "03/03/21, 10:01 - Bob: oh no\n"
        "05/07/22, 18:00 - Bob: we finally climbed the lighthouse, the view was great\n"
        "05/07/22, 18:02 - Anna: jealous\n"
        "09/11/23, 09:00 - Carl: is the lighthouse open in winter?\n"
        "09/11/23, 09:05 - Anna: no idea\n", encoding="utf-8")
    memory = open_memory(service, chat_gap_minutes=5)
    memory.import_paths([chat], me=["Anna"])
    first = lambda q: memory.retrieve(q).hits[0].text  # noqa: E731
    assert "climbed the lighthouse" in first("what did Bob say about the lighthouse?")
    assert "lighthouse was closed" in first("the lighthouse in March 2021")
    assert "open in winter" in first("the lighthouse, what did Carl ask?")
    # The sources carry who speaks and when, for the panel.
    src = memory.retrieve("what did Bob say about the lighthouse?").hits[0].as_dict()
    assert src["speakers"] == "Bob, Anna" and datetime.fromtimestamp(src["timestamp"]).year == 2022


def test_a_hit_brings_its_neighbours_and_overlaps_merge(service, tmp_path):
    """A scene cut by size alone continues into the next: the answer right after the
    matching line comes along even though it is stored in the next scene; passages that
    touch become one note; the notes (and their labels) stay within the budget."""
    lines = [f"01/02/23, 10:{i:02d} - {'Anna' if i % 2 else 'Bob'}: filler message number {i} about nothing much"
             for i in range(14)]
    lines[7] = "01/02/23, 10:07 - Anna: did you ever find the blue umbrella you lost at the opera?"
    lines[8] = "01/02/23, 10:08 - Bob: yes it was hanging in the cloakroom the whole time"
    chat = tmp_path / "chat.txt"
    chat.write_text("\n".join(lines) + "\n", encoding="utf-8")
    memory = open_memory(service, scene_tokens=110, context_tokens=200)
    memory.import_paths([chat], me=["Bob"])
    metas = memory.store.collection.get(include=["metadatas", "documents"])
    where = {d.splitlines()[-1]: m for d, m in zip(metas["documents"], metas["metadatas"])}
    umbrella = next(m for last, m in where.items() if "blue umbrella" in last)  # the question ends a scene
    assert umbrella["position"] == 0 and len(metas["ids"]) >= 2

    hits = memory.retrieve("the blue umbrella lost at the opera").hits
    assert "blue umbrella" in hits[0].text and "cloakroom" in hits[0].text
    assert hits[0].meta["scenes"] == 2  # one note made of two scenes
    text = "\n".join(h.text for h in hits)
    assert len(text.splitlines()) == len(set(text.splitlines()))  # no line paid for twice
    from memory.scenes import estimate_tokens

    assert sum(estimate_tokens(line) for line in text.splitlines()) + NOTE_OVERHEAD * len(hits) <= 200

    # (A scene's vector is the mean of its lines': one matching line among seven sits
    # below the default min_score, which the whole-scene ranking applies to scenes.)
    dense = open_memory(service, scene_tokens=110, context_tokens=200, retrieval="dense", min_score=0.1).retrieve(
        "the blue umbrella lost at the opera").hits
    assert dense and "cloakroom" not in dense[0].text  # before: the scene alone


def test_a_line_is_found_by_its_own_meaning_and_old_rows_get_line_vectors(service, tmp_path, caplog):
    """Each line of a scene has its own vector (int8, in the lexical row) and the scene's
    vector is their mean: a passage is chosen by its best line's cosine, so the one line
    that answers a question sharing none of its words comes first — with the line
    weight at 0 the scene's other lines tie with it and the first of them wins. Rows
    without line vectors (a collection from before them) get them when the store opens."""
    import numpy as np

    from memory.lines import pack, unpack

    filler = ["the meeting moved to thursday", "traffic was awful on the bridge", "printer is jammed again",
              "can you send the slides", "lunch at noon works", "the wifi keeps dropping",
              "forgot my badge at home", "the report needs one more chart"]
    lines = [f"01/02/23, 10:{i:02d} - {'Anna' if i % 2 else 'Bob'}: {text}" for i, text in enumerate(filler)]
    lines.insert(6, "01/02/23, 10:06 - Bob: we adopted a small grey kitten from the shelter last week")
    chat = tmp_path / "office.txt"
    chat.write_text("\n".join(lines) + "\n", encoding="utf-8")
    memory = open_memory(service, context_tokens=60, min_score=0.0)
    memory.import_paths([chat], me=["Bob"])
    store = memory.store
    got = store.collection.get(include=["documents", "embeddings"])
    assert len(got["ids"]) == 1  # one scene of nine lines
    vectors = store.lexical.line_vectors(got["ids"])[got["ids"][0]]
    assert vectors.shape == (9, 384)
    mean = vectors.mean(axis=0)
    assert float(np.dot(mean / np.linalg.norm(mean), got["embeddings"][0])) > 0.999

    question = "did your family get a new pet?"
    hits = memory.retrieve(question).hits
    assert hits and "kitten" in hits[0].text, [h.text for h in hits]
    flat = open_memory(service, context_tokens=60, min_score=0.0, line_weight=0.0).retrieve(question).hits
    assert flat and not any("kitten" in h.text for h in flat)  # the scene's cosine cannot tell its lines apart
    assert "kitten" in memory.search(question, k=1)[0].text

    # A row without line vectors is given them (and its scene the matching vector) at the next open.
    store.lexical.db.execute("UPDATE scenes SET lines = NULL")
    caplog.set_level("WARNING", logger="memory.service")
    again = open_memory(service, context_tokens=60, min_score=0.0)
    assert again.store.lexical.ids_without_lines() == [] and "making line vectors for 1 scenes" in caplog.text
    assert np.allclose(again.store.lexical.line_vectors(got["ids"])[got["ids"][0]], vectors, atol=0.02)
    assert "kitten" in again.retrieve(question).hits[0].text

    # int8 rows keep the cosines; a blob that does not add up reads as none.
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 384)).astype(np.float32)
    back = unpack(pack(rows))
    cos = (back * rows).sum(1) / np.linalg.norm(back, axis=1) / np.linalg.norm(rows, axis=1)
    assert back.shape == (5, 384) and cos.min() > 0.999
    assert unpack(pack(rows)[:-3]) is None and unpack(b"") is None and unpack(None) is None


class GatedEmbedder:
    """The real embedder, except that the background fill's first encode waits for `go`:
    the test acts while the fill is known to be under way."""

    def __init__(self, inner):
        self.inner, self.go, self.waiting = inner, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, **kwargs):
        if threading.current_thread().name == "line-vectors" and not self.go.is_set():
            self.waiting.set()
            assert self.go.wait(120)
        return self.inner.encode(texts, **kwargs)


def test_line_vectors_are_made_in_the_background_while_memory_works(service, caplog):
    """The web app opens a store whose scenes lack line vectors at once and fills them in a
    background thread: search and turns work meanwhile (on scene vectors), /health and the
    Memory tab report the progress, a source forgotten during the fill stays forgotten,
    and every other scene ends with its line vectors."""
    import gradio as gr

    from memory.service import SceneMemory
    from webapp.ui import ChatUI, memory_tab

    service.memory.import_paths([IMPORT / "diary.txt", IMPORT / "notes.md"])
    old = service.memory.store
    notes = set(old.ids_where({"source": str(IMPORT / "notes.md")}))
    total = old.count()
    assert notes and total > len(notes)
    old.lexical.db.execute("UPDATE scenes SET lines = NULL")  # as a collection from before line vectors

    caplog.set_level("WARNING", logger="memory.service")
    gated = GatedEmbedder(service.memory.embedder)
    memory = SceneMemory(service.settings.memory, service.settings.home, service.journal, embedder=gated,
                         fill_in_background=True)
    service.memory = memory
    store = memory.store  # returns while the fill waits
    assert gated.waiting.wait(60) and memory._fill_thread.is_alive()
    health = memory.health()["line_vectors"]
    assert health["scenes"] == total and health["done"] == 0 and not health["finished"], health
    with gr.Blocks():  # the Memory tab's refresh, as opening the tab runs it
        refresh, _, outputs = memory_tab(ChatUI(service))
    rows, _, note, ticker = refresh()
    assert len(outputs) == 4 and rows and "Upgrading memory: line vectors for 0 of" in note, note
    assert ticker.active  # the note follows the fill while the tab is open
    assert "in the background" in caplog.text

    assert any("river" in h.text for h in memory.search("walking by the river after work", k=3))
    assert memory.retrieve("the ice on the river").hits  # scene vectors alone still rank
    name, removed = memory.forget(str(IMPORT / "notes.md"))
    assert removed == len(notes)

    gated.go.set()
    memory._fill_thread.join(120)
    assert not memory._fill_thread.is_alive()
    state = memory.line_fill.as_dict()
    assert state == {"scenes": total, "done": total, "finished": True, "error": None, "paused": False,
                     "reembed": False, "eta_s": None}, state
    assert ChatUI(service).memory_note() == "" and not ChatUI(service).memory_busy()
    assert not refresh()[3].active  # done: the tab's timer stops
    assert not notes & store.all_ids() and not notes & store.lexical.all_ids()  # forgotten stays forgotten
    assert store.lexical.ids_without_lines() == [] and store.count() == total - len(notes)
    assert "line vectors made for" in caplog.text


def test_a_backend_switch_re_embeds_in_the_background(service, caplog):
    """A collection another kind of vectors made (torch's against int8's) opens at once in
    the web app: the new embedder is recorded, every scene is re-embedded by the background
    fill (health and the Memory tab say "re-embedding"), search works meanwhile, and at the
    end every scene and line vector is the new embedder's; the next open has nothing to do."""
    import numpy as np

    from memory.embedder import Embedder
    from memory.lines import embed_scenes, unpack
    from memory.service import SceneMemory
    from webapp.ui import ChatUI

    service.memory.import_paths([IMPORT / "diary.txt", IMPORT / "notes.md"])
    made = service.memory.embedder.identity
    total = service.memory.store.count()
    other = Embedder(backend="onnx-int8" if made["embedder_backend"] == "torch" else "torch")
    assert other.identity["embedder_backend"] != made["embedder_backend"]
    caplog.set_level("WARNING", logger="memory.service")
    gated = GatedEmbedder(other)
    memory = SceneMemory(service.settings.memory, service.settings.home, service.journal, embedder=gated,
                         fill_in_background=True)
    service.memory = memory
    store = memory.store  # returns while the re-embedding waits
    assert gated.waiting.wait(60) and memory._fill_thread.is_alive()
    assert store.embedder_identity() == other.identity and "re-embedding the" in caplog.text
    state = memory.health()["line_vectors"]
    assert state["reembed"] and state["scenes"] == total and state["done"] == 0, state
    assert "Re-embedding memory for the new embedder backend: 0 of" in ChatUI(service).memory_note()
    assert any("river" in h.text for h in memory.search("walking by the river after work", k=3))

    gated.go.set()
    memory._fill_thread.join(120)
    assert memory.line_fill.as_dict()["finished"] and memory.line_fill.error is None
    assert "new vectors made for" in caplog.text
    ids = sorted(store.all_ids())
    got = store.get(ids, embeddings=True)
    texts, kinds = [got[i][0] for i in ids], [got[i][1]["source_kind"] for i in ids]
    scenes, lines = embed_scenes(other.encode, texts, kinds)
    assert np.allclose(np.stack([got[i][2] for i in ids]), scenes, atol=1e-5)
    stored = store.lexical.line_vectors(ids)
    assert all(np.allclose(stored[i], unpack(b), atol=0.02) for i, b in zip(ids, lines))
    caplog.clear()
    again = SceneMemory(service.settings.memory, service.settings.home, service.journal, embedder=other,
                        fill_in_background=True)
    assert again.store.count() == total and again.line_fill is None and "re-embedding" not in caplog.text


def test_background_line_vectors_wait_while_a_reply_is_written(service):
    """A chat turn holds the background fill between pages: it starts no page while the
    reply streams, says so on /health and in the Memory tab, and goes on after the turn."""
    from memory.service import SceneMemory
    from webapp.ui import ChatUI

    service.memory.import_paths([IMPORT / "diary.txt", IMPORT / "notes.md"])
    service.memory.store.lexical.db.execute("UPDATE scenes SET lines = NULL")
    total = service.memory.store.count()
    memory = SceneMemory(service.settings.memory, service.settings.home, service.journal,
                         embedder=service.memory.embedder, fill_in_background=True)
    service.memory = memory
    stream = service.stream_turn("Tell me about the river in winter.")
    first = next(stream)  # the turn is under way; its retrieval opened the store and started the fill
    assert not first.done and memory._fill_thread is not None
    deadline = time.monotonic() + 30
    while not memory.line_fill.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    state = memory.health()["line_vectors"]
    assert state["paused"] and state["done"] == 0 and memory._fill_thread.is_alive(), state
    assert "paused while a reply is written" in ChatUI(service).memory_note()
    time.sleep(0.5)
    assert memory.line_fill.done == 0  # still holding: no page while the reply streams
    last = list(stream)[-1]
    assert last.done and last.reply
    memory._fill_thread.join(120)
    state = memory.line_fill.as_dict()
    assert state["finished"] and state["done"] == total and not state["paused"] and state["error"] is None, state
    assert memory._turns == 0
    # A turn that ends in an error lets go as well.
    with pytest.raises(RuntimeError), memory.turn():
        raise RuntimeError("boom")
    assert memory._turns == 0


def test_background_line_vectors_wait_while_files_are_imported(service):
    """An import holds the background fill as a turn does: a fill that starts with it
    (the import opens the store) makes no page until the import ends, then finishes."""
    from memory.service import SceneMemory

    service.memory.import_paths([IMPORT / "diary.txt"])
    service.memory.store.lexical.db.execute("UPDATE scenes SET lines = NULL")
    total = service.memory.store.count()
    memory = SceneMemory(service.settings.memory, service.settings.home, service.journal,
                         embedder=service.memory.embedder, fill_in_background=True)
    seen = []

    def progress(source, index, count, scenes):
        deadline = time.monotonic() + 30
        while not (memory.line_fill and memory.line_fill.paused) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append((memory.line_fill.paused, memory.line_fill.done))

    added = memory.import_paths([IMPORT / "notes.md"], progress=progress).as_dict()["scenes_added"]
    assert added and seen and all(paused and done == 0 for paused, done in seen), seen
    memory._fill_thread.join(120)
    state = memory.line_fill.as_dict()
    assert state["finished"] and state["done"] == total and state["error"] is None, state
    assert memory._turns == 0 and memory.store.lexical.ids_without_lines() == []


def test_small_talk_pulls_in_nothing_from_unrelated_notes(service):
    memory = service.memory
    memory.import_paths([IMPORT / "diary.txt"])
    assert memory.retrieve("quantum chromodynamics lattice gauge").hits == []


def test_sources_panel_shows_date_and_speakers():
    from webapp.ui import sources_message

    msg = sources_message([{"source": "/x/chat.txt", "text": "Anna: hi\nBob: hello", "score": 0.5,
                            "speaker": "Anna", "speakers": "Anna, Bob", "timestamp": 1617440400.0}])
    assert "chat.txt · Anna, Bob · 2021-04-03 09:00" in msg["content"]


# -- the recall benchmark's data ---------------------------------------------------------------
def test_recall_questions_are_held_out_and_their_evidence_is_kept():
    from bench.chitchat import TEST_SENDER, build, fixed_windows

    corpus = build(TEST_SENDER, conversations=20, questions=30)
    again = build(TEST_SENDER, conversations=20, questions=30)
    assert [q.text for q in corpus.questions] == [q.text for q in again.questions]  # fixed seed
    assert 10 <= len(corpus.questions) <= 30
    exported = "\n".join(line for lines in corpus.files.values() for line in lines)
    for q in corpus.questions:
        assert "?" in q.text and len(re.findall(r"\w+", q.text)) >= 6 and len(re.findall(r"\w+", q.evidence)) >= 5
        assert f": {q.text}\n" not in exported + "\n"  # the question is not in memory
        assert exported.count(f": {q.evidence}") == 1  # its evidence is, once
    windows = fixed_windows(corpus)
    assert all(len(text.splitlines()) <= 4 for _, text in windows)
    assert sum(len(text.splitlines()) for _, text in windows) == len(corpus.messages)


def test_tuning_people_share_nothing_with_test_and_tune_reuses_its_import(tmp_path, monkeypatch):
    from bench.chitchat import PEOPLE, person
    from bench.common import Workspace
    from bench.tune import overrides, tune

    test_convs = {q.conversation for q in person("test").questions}
    for name in ("dev", "dev2"):
        assert not {q.conversation for q in person(name).questions} & test_convs
    with pytest.raises(ValueError, match="unknown person"):
        person("nobody")
    assert set(PEOPLE) == {"test", "dev", "dev2"}

    monkeypatch.setenv("ALTEREGO_HOME", str(tmp_path))
    ws = Workspace(tmp_path)
    try:
        with pytest.raises(SystemExit, match="TEST is reported"):
            tune(ws, "test", [300], [{}])
        variants = [{}, overrides(["passage_before=0", "passage_after=0"], ws.base.memory)]
        assert variants[1] == {"passage_before": 0, "passage_after": 0}
        with pytest.raises(SystemExit, match="memory's settings"):
            overrides(["passage_width=3"], ws.base.memory)
        first = tune(ws, "dev", [300], variants, conversations=12, questions=12)
        again = tune(ws, "dev", [300], variants, conversations=12, questions=12)
    finally:
        ws.close()
    assert first["import_s"] > 0 and again["import_s"] == 0  # the second run opens the kept import
    assert first["questions"] >= 8 and first["scenes"] == again["scenes"] > 0
    assert [r["settings"] for r in first["rows"]] == variants
    for a, b in zip(first["rows"], again["rows"]):  # the same recall from the reopened store, give or
        # take one question: Chroma's approximate search may order near-ties differently after a reload
        assert a["settings"] == b["settings"]
        assert abs(a["hybrid"] - b["hybrid"]) <= 1 / first["questions"] + 1e-9
        assert abs(a["fixed_windows"] - b["fixed_windows"]) <= 1 / first["questions"] + 1e-9
    for row in first["rows"]:
        assert 0 <= row["hybrid"] <= 1 and 0 < row["fixed_windows"] <= 1
        assert 0 < row["evidence_in_fused_scenes"] <= 1
    # Passages of one line never leave the fused scenes, so they find no more than those hold.
    assert first["rows"][1]["hybrid"] <= first["rows"][1]["evidence_in_fused_scenes"]
    assert first["rows"][0]["hybrid"] > 0  # the configured retrieval finds some evidence even here
    assert (tmp_path / "bench" / "tune-dev" / "prepared.json").exists()
