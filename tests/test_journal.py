"""The SQLite journal: schema versioning and migrations, WAL, durability across reopen,
and refusing (without touching) a journal newer than the code."""

import sqlite3

import pytest

from memory.errors import JournalError
from memory.journal import SCHEMA_VERSION, Journal


def test_fresh_journal_is_migrated_and_wal(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    assert j.schema_version == SCHEMA_VERSION
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.integrity_check() == "ok"


def test_turns_survive_reopen(tmp_path):
    path = tmp_path / "j.sqlite3"
    j = Journal(path)
    conv = j.create_conversation()
    t1 = j.start_turn(conv, "first message about the sea", "me")
    j.finish_turn(t1, "a reply", timings={"ttft_ms": 12.5, "total_ms": 40.0, "tokens": 5, "tokens_per_s": 90.0})
    t2 = j.start_turn(conv, "second, never answered", "poet")
    j.close()

    j = Journal(path)
    turns = j.turns(conv)
    assert [t.id for t in turns] == [t1, t2]
    assert turns[0].reply == "a reply" and turns[0].status == "ok" and turns[0].ttft_ms == 12.5
    assert turns[1].status == "pending" and turns[1].user_text == "second, never answered"
    conv_row = j.get_conversation(conv)
    assert conv_row.title == "first message about the sea" and conv_row.turns == 2
    assert [c.id for c in j.list_conversations()] == [conv]


def test_migrates_an_old_database_in_place(tmp_path):
    path = tmp_path / "j.sqlite3"
    sqlite3.connect(path).close()  # a v0 (empty) database
    j = Journal(path)
    assert j.schema_version == SCHEMA_VERSION
    conv = j.create_conversation("kept")
    j.close()
    assert Journal(path).get_conversation(conv).title == "kept"


def test_newer_journal_is_refused_untouched(tmp_path):
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future(x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="newer"):
        Journal(path)
    assert path.read_bytes() == before


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="Cannot open the journal"):
        Journal(path)


def test_long_titles_are_shortened(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    conv = j.create_conversation()
    j.start_turn(conv, "word " * 100, "me")
    title = j.get_conversation(conv).title
    assert len(title) <= 60 and title.endswith("…")


def test_every_kind_of_verdict_counts_towards_retraining(tmp_path):
    """👍, ✏️ and 👎 all train (SFT pairs, the KTO stage), so all three make a persona due."""
    j = Journal(tmp_path / "j.sqlite3")
    conv = j.create_conversation()
    ids = []
    for text in ("one", "two", "three", "four"):
        ids.append(j.start_turn(conv, text, "me"))
        j.finish_turn(ids[-1], f"reply to {text}")
    j.set_feedback(ids[0], "approved")
    j.set_feedback(ids[1], "edited", "my own words")
    j.set_feedback(ids[2], "rejected")
    assert j.verdicts_since("me", 0) == (3, ids[2])  # the fourth has no verdict yet
    assert j.verdicts_since("me", ids[1]) == (1, ids[2]) and j.verdicts_since("poet", 0) == (0, 0)
