"""Scene memory end to end on real ChromaDB and the real embedder: importing a mixed
folder, idempotent re-import, a changed file replacing its scenes, all-or-nothing
failures, recovery of an import killed midway, forget, search, and retrieval in the
chat turn (sources in the reply, notes in the prompt)."""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import ALTEREGO, FIXTURES, ROOT, cli_env
from memory.errors import MemoryUserError

IMPORT = FIXTURES / "import"


@pytest.fixture
def memory(service):
    return service.memory


def test_mixed_folder_import_and_idempotent_reimport(memory):
    first = memory.import_paths([IMPORT]).as_dict()
    kinds = {d["kind"] for d in first["details"] if not d["error"]}
    assert kinds >= {"text", "markdown", "obsidian_chat", "chatgpt", "telegram", "whatsapp", "srt", "vtt"}
    assert first["scenes_added"] > 20 and first["scenes_skipped"] == 0
    assert [e["file"].endswith("broken.json") for e in first["errors"]] == [True]
    assert any(p.endswith("whatsapp_macroman.txt") for p in first["repaired"])
    assert any(p.endswith("tis620_damaged.txt") for p in first["damaged"])
    assert any(p.endswith("make_fixtures.py") for p in first["skipped_files"])
    count = memory.store.count()
    assert count == first["scenes_added"]

    again = memory.import_paths([IMPORT]).as_dict()
    assert again["scenes_added"] == 0 and again["scenes_skipped"] == first["scenes_added"]
    assert memory.store.count() == count


def test_scene_metadata(memory):
    memory.import_paths([IMPORT / "whatsapp_android.txt"], me=["Иван Петров"])
    got = memory.store.collection.get(include=["metadatas", "documents"])
    metas = got["metadatas"]
    assert {m["source_kind"] for m in metas} == {"whatsapp"}
    assert all(m["language"] == "ru" for m in metas)
    assert any(m["is_me"] and m["me_speaker"] == "Иван Петров" for m in metas)
    assert all(m["source"].endswith("whatsapp_android.txt") and "timestamp" in m for m in metas)
    assert sorted(m["position"] for m in metas) == list(range(len(metas)))


def test_me_is_explicit_or_detected_and_remembered(memory, tmp_path):
    chat = tmp_path / "chat.txt"
    chat.write_text("01/02/23, 10:00 - Bob: hi\n01/02/23, 10:01 - Alice: hello Bob\n01/02/23, 10:02 - Alice: how are you\n")
    summary = memory.import_paths([chat]).as_dict()
    assert summary["me"] == ["Alice"] and summary["me_detected"] == ["Alice"]
    other = tmp_path / "other.txt"
    other.write_text("01/02/23, 10:00 - Alice: hey Carol\n01/02/23, 10:01 - Carol: hey\n01/02/23, 10:02 - Carol: what's new\n")
    summary = memory.import_paths([other]).as_dict()
    assert summary["me"] == ["Alice"] and summary["me_detected"] == []  # known from before


def test_changed_file_replaces_its_scenes(memory, tmp_path):
    chat = tmp_path / "chat.txt"
    lines = [f"0{d}/02/23, 10:00 - Alice: day {d}: we talked about {topic}" for d, topic in
             [(1, "the lighthouse"), (3, "apricot jam"), (5, "the violin lessons")]]
    chat.write_text("\n".join(lines) + "\n")
    memory.import_paths([chat], me=["Alice"])
    assert memory.store.count() == 3
    chat.write_text("\n".join(lines[:2] + ["05/02/23, 10:00 - Alice: day 5: we talked about the piano instead"]) + "\n")
    summary = memory.import_paths([chat]).as_dict()
    assert (summary["scenes_added"], summary["scenes_skipped"], summary["scenes_removed"]) == (1, 2, 1)
    texts = memory.store.collection.get(include=["documents"])["documents"]
    assert any("piano" in t for t in texts) and not any("violin" in t for t in texts)


def _big_chatgpt(conversations: int) -> str:
    convs = []
    for i in range(conversations):
        mapping = {
            "root": {"id": "root", "message": None, "parent": None, "children": ["u"]},
            "u": {"id": "u", "parent": "root", "children": ["a"], "message": {
                "author": {"role": "user"}, "create_time": 1.7e9 + i * 86400,
                "content": {"content_type": "text", "parts": [f"Question {i}: tell me about topic number {i}"]}}},
            "a": {"id": "a", "parent": "u", "children": [], "message": {
                "author": {"role": "assistant"}, "create_time": 1.7e9 + i * 86400 + 5,
                "content": {"content_type": "text", "parts": [f"Answer {i}: topic {i} is interesting"]}}},
        }
        convs.append({"title": f"c{i}", "id": f"c{i}", "current_node": "a", "mapping": mapping})
    return json.dumps(convs)


def test_failed_file_is_all_or_nothing(memory, tmp_path):
    good = tmp_path / "conversations.json"
    good.write_text(_big_chatgpt(5))
    memory.import_paths([good])
    before = sorted(memory.store.collection.get(include=[])["ids"])
    # The same source, now 300 conversations (more than one insert batch) and cut off.
    good.write_text(_big_chatgpt(300)[:-2000])
    summary = memory.import_paths([good]).as_dict()
    assert summary["errors"] and "conversations.json" in summary["errors"][0]["error"]
    assert summary["scenes_added"] == 0
    # nothing of the failed run stayed, and the old scenes of the file are untouched
    assert sorted(memory.store.collection.get(include=[])["ids"]) == before


def test_import_killed_midway_is_rolled_back_on_next_start(memory, service, tmp_path):
    from memory.ingest import Ingestor

    memory.import_paths([IMPORT / "diary.txt"])
    kept = memory.store.count()
    # What a kill -9 leaves behind: a run still 'running' with some scenes in the store.
    run = service.journal.begin_import("/somewhere/half.txt", "text")
    vec = memory.embedder.encode(["half-imported scene"])
    memory.store.add(["half-1"], vec, ["half-imported scene"], [{"source": "/somewhere/half.txt", "import_id": run}])
    assert memory.store.count() == kept + 1
    Ingestor(memory.config, service.journal, memory.store, memory.embedder)  # next start
    assert memory.store.count() == kept and service.journal.running_imports() == []


def test_forget_and_search(memory):
    memory.import_paths([IMPORT / "diary.txt", IMPORT / "whatsapp_us.txt"])
    hits = memory.search("walking to the river after work", k=3)
    assert hits and hits[0].source.endswith("diary.txt") and hits[0].score > 0.2
    source, removed = memory.forget("diary.txt")
    assert source.endswith("diary.txt") and removed > 0
    assert all(not h.source.endswith("diary.txt") for h in memory.search("walking to the river after work", k=5))
    with pytest.raises(MemoryUserError, match="No imported source"):
        memory.forget("nothing.txt")
    with pytest.raises(MemoryUserError, match="empty"):
        memory.search("   ")


def test_unknown_and_odd_files(memory, tmp_path):
    odd = tmp_path / "my \"notes\" — 2024 ✓ (copy).md"
    odd.write_text("# Title\n\nA paragraph about gardening and tomatoes.\n")
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.4 binary")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    summary = memory.import_paths([odd, pdf, empty, tmp_path / "missing.txt"]).as_dict()
    assert summary["scenes_added"] == 1
    errors = {Path(e["file"]).name: e["error"] for e in summary["errors"]}
    assert "Supported formats" in errors["scan.pdf"] and "empty" in errors["empty.txt"]
    assert "missing.txt" in errors


def test_reply_cites_retrieved_scenes(service):
    service.memory.import_paths([IMPORT / "diary.txt"])
    seen = []
    original = service.engine.stream_chat
    service.engine.stream_chat = lambda m, p, adapter=None, session=None: seen.append(m) or original(m, p, adapter=adapter, session=session)
    try:
        result = service.send("Do you remember walking to the river after work when the ice went?", persona="me")
    finally:
        service.engine.stream_chat = original
    assert result.sources and result.sources[0]["source"].endswith("diary.txt")
    assert {"text", "source", "speaker", "score", "timestamp"} <= set(result.sources[0])
    prompt = seen[-1].messages[-1]["content"]
    # Me's notes are its own memory, worded to it ("you"), never as "the user's" writing.
    assert "From your own past chats and notes" in prompt and "watched the ice go" in prompt
    assert "Lines you wrote before" in prompt and "the user" not in prompt  # the me persona gets style lines
    assert service.journal.get_turn(result.turn_id).source_list == result.sources
    # history keeps the message as typed, so the next turn's prefix stays stable
    nxt = service.build_prompt(service.catalog.get("me"), service.history(result.conversation_id), "and?")
    assert nxt.messages[1]["content"] == "Do you remember walking to the river after work when the ice went?"


def test_cli_import_search_forget(tmp_path):
    run = lambda *a: subprocess.run([*ALTEREGO, *a], cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=180)  # noqa: E731
    proc = run("import", "--json", "--me", "Я", str(IMPORT / "whatsapp_ios.txt"), str(IMPORT / "notes.md"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {"files", "scenes_added", "scenes_skipped", "repaired", "damaged", "errors"} <= set(summary)
    assert summary["files"] == 2 and summary["scenes_added"] > 0 and summary["me"] == ["Я"] and not summary["me_detected"]
    hits = json.loads(run("search", "--json", "-k", "2", "trip").stdout)
    assert len(hits) == 2 and {"text", "source", "speaker", "score"} <= set(hits[0])
    proc = run("forget", "notes.md")
    assert proc.returncode == 0 and "scenes removed" in proc.stdout
    hits = json.loads(run("search", "--json", "-k", "10", "trip").stdout)
    assert all(not h["source"].endswith("notes.md") for h in hits)
    out = json.loads(run("chat", "--json", "what did we plan?").stdout)
    assert "sources" in out
    (tmp_path / "scan.xyz").write_bytes(b"data")
    bad = run("import", str(tmp_path / "scan.xyz"))
    assert bad.returncode == 1 and "Supported formats" in bad.stdout
