"""Twenty people chatting with one running app at once: 20 `gradio_client` sessions (each
its own browser-like session, so its own conversation state) send two turns each, all at
the same moment, against the real `alterego run`. The turns queue behind the one model
(the chat event runs one at a time), and every one comes back: no errors, a reply for
every turn, exactly one conversation per session holding exactly that session's two
turns, each reply the client saw being the one journaled for its own turn, and no
session's code word ever showing up in another's conversation."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client

from appserver import start_app
from memory.journal import Journal

pytestmark = pytest.mark.slow

SESSIONS = 20
CODE = re.compile(r"\bzq\d{2}[a-z]{3}\b")  # no word the model would make up


def code_word(i: int) -> str:
    return f"zq{i:02d}" + "".join(chr(ord("a") + (i * k) % 26) for k in (3, 5, 7))


def text_of(message: dict) -> str:
    content = message["content"]
    return "".join(part.get("text", "") for part in content) if isinstance(content, list) else str(content)


def without_label(text: str) -> str:
    return text.split("\n\n", 1)[1] if text.startswith("**") and "\n\n" in text else text


def test_twenty_simultaneous_sessions(tmp_path: Path):
    home = tmp_path / "home"
    me = home / "personas" / "me"
    me.mkdir(parents=True)
    (me / "persona.yaml").write_text(
        "name: me\ndisplay_name: Me\ndescription: You.\n"
        "system_prompt: You are the user. Answer in one short sentence.\n"
        "generation:\n  max_tokens: 12\n", encoding="utf-8")
    app = start_app(home, env={"ALTEREGO_TUNING_SCHEDULER": "false"})
    start = threading.Barrier(SESSIONS, timeout=300)

    def session(i: int) -> list[tuple[str, str, list]]:
        word = code_word(i)
        client = Client(app.url, verbose=False)
        start.wait()  # every session sends its first message at the same moment
        chat: list = []
        seen = []
        for n, message in enumerate([f"My code word is {word}. Remember it.", f"Say my code word {word} back, turn 2."]):
            chat, textbox, status = client.predict(message, "me", chat, api_name="/respond")
            assert textbox == "" and "answered" in status, status
            assert len(chat) == 2 * (n + 1) and text_of(chat[-2]) == message
            seen.append((message, without_label(text_of(chat[-1])), chat))
        return seen

    try:
        with ThreadPoolExecutor(SESSIONS) as pool:
            results = list(pool.map(session, range(SESSIONS)))  # re-raises any session's error
    finally:
        app.stop()

    journal = Journal(home / "journal.sqlite3")
    try:
        assert journal.integrity_check() == "ok"
        conversations = journal.list_conversations(limit=100)
        assert len(conversations) == SESSIONS
        by_word: dict[str, list] = {}
        for conv in conversations:
            turns = journal.turns(conv.id)
            words = {w for t in turns for w in CODE.findall(t.user_text)}
            assert len(words) == 1, f"conversation {conv.id} mixes sessions: {words}"
            by_word[words.pop()] = turns
        assert set(by_word) == {code_word(i) for i in range(SESSIONS)}
        for i, seen in enumerate(results):
            turns = by_word[code_word(i)]
            assert [t.user_text for t in turns] == [message for message, _, _ in seen]
            assert all(t.status == "ok" and t.reply and t.error is None for t in turns)
            # What the client was shown is what was journaled for its own turn.
            assert [t.reply for t in turns] == [reply.strip() for _, reply, _ in seen]
            # No other session's code word anywhere in this conversation or in what this client saw.
            shown = " ".join(text_of(m) for m in seen[-1][2])
            everything = shown + " ".join(t.user_text + " " + t.reply for t in turns)
            assert set(CODE.findall(everything)) <= {code_word(i)}
        assert journal.count_turns() == 2 * SESSIONS
    finally:
        journal.close()
