"""The recall benchmark's data: real chats from the Chit-Chat Challenge dataset (BYU PCC
lab, MIT licence, inside the PyPI package `chitchat-dataset`: 7,168 English conversations
between real people, typed in 2018), written as WhatsApp exports of one person's chat
history — one file per partner holding all their conversations in time order, senders
(anonymous ids) named from a fixed list — plus questions whose evidence is known. The
dataset has no questions, so they are made mechanically, without looking at any
retrieval method: a question is a real message that asks something (has "?", ≥ 6
words) and ends its speaker's turn; its evidence is the reply that follows (the other
speaker's next message, ≥ 5 words, once in the corpus); the question is held out of the
export, so only what surrounds it is in memory. At most two per conversation, not next
to each other, fixed seed. Three people are used: DEV and DEV2 for tuning retrieval
(`bench.tune`, never reported) and TEST, whom the benchmark reports; DEV2's history is
taken without the conversations it shares with TEST (`person`), so no tuning question
or scene is one of TEST's."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# The two "me"s: chosen for having many two-person conversations and no conversation in
# common (the 257 conversations of TEST share none with DEV's 96).
TEST_SENDER = "720840be-e522-47ba-9e9f-143f66372673"
DEV_SENDER = "afe2b8b4-deb6-4f94-849b-8cc59a6140bd"
# A larger tuning person (618 conversations, 400 questions once TEST's 38 are dropped):
# DEV's 152 questions move by 0.02 when three answers change.
DEV2_SENDER = "31267496-e50f-4f91-a197-c5b1bfde803b"
PEOPLE = {"test": TEST_SENDER, "dev": DEV_SENDER, "dev2": DEV2_SENDER}

NAMES = (
    "Alex Ben Chloe Dana Eli Fiona Gabe Hana Ian Jade Kyle Lena Marco Nina Owen Paula Quinn Rosa Sam Tara "
    "Umar Vera Wes Xena Yuri Zoe Adam Bella Carl Daisy Ethan Freya George Holly Isaac Julia Kevin Lucy Mason "
    "Nora Oscar Piper Reed Sara Theo Uma Victor Wendy Yara Zack Aaron Beth Colin Delia Evan Flora Grant Heidi "
    "Ivan Jenna Kurt Lila Miles Naomi Otto Petra Ralph Stella Toby Ursula Vince Willa Abel Bianca Cyrus Diana "
    "Emil Faye Glen Helga Igor Joy Karl Lara Max Nell Omar Pia Rex Sofia Tom Una Vic Wyatt Ada Bruno Cleo Dean "
    "Edie Finn Gwen Hugo Iris Jack Kate Leo Mia Ned Olga Pete Ruth Seth Tess Ulla Vito Walt Yvonne"
).split()
_WORD = re.compile(r"\w+")


@dataclass
class Question:
    text: str  # the held-out message, used as the query
    evidence: str  # the reply that answers it
    conversation: str  # dataset conversation id
    partner: str  # the chat file it belongs to


@dataclass
class Corpus:
    me: str
    files: dict[str, list[str]] = field(default_factory=dict)  # chat file name -> export lines
    questions: list[Question] = field(default_factory=list)
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (file, "Name: text", conversation)

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, lines in self.files.items():
            path = folder / f"{name}.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            paths.append(path)
        return paths


def load_dataset() -> dict:
    try:
        import chitchat_dataset
    except ImportError:
        raise RuntimeError("the recall benchmark needs the `chitchat-dataset` package (make install adds it)") from None
    return json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def clean(text: str) -> str:
    """One line per message (the export format has one), whitespace collapsed."""
    return " ".join(text.split())


def build(sender: str, *, conversations: int | None = None, questions: int = 400, per_conversation: int = 2,
          seed: int = 13, data: dict | None = None) -> Corpus:
    """The chat history of `sender` (their first `conversations` two-person conversations
    by start time, or all) and up to `questions` held-out questions, at most
    `per_conversation` from one conversation (never next to each other)."""
    data = data or load_dataset()
    mine = []
    for cid, conv in data.items():
        people = {u["sender"] for turn in conv["messages"] for u in turn}
        if sender in people and len(people) == 2:
            mine.append((conv["messages"][0][0]["timestamp"], cid))
    mine.sort()
    if conversations is not None:
        mine = mine[:conversations]
    names: dict[str, str] = {sender: "Sam"}
    pool = iter(n for n in NAMES if n != "Sam")

    def name_of(who: str) -> str:
        if who not in names:
            names[who] = next(pool, f"Friend{len(names)}")
        return names[who]

    # Candidate questions: every (question, reply) pair that passes the rules above.
    rng = random.Random(seed)
    per_conv: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    flat: dict[str, list[tuple[str, str, float]]] = {}
    for _, cid in mine:
        msgs = [(u["sender"], clean(u["text"]), u["timestamp"]) for turn in data[cid]["messages"] for u in turn]
        msgs = [m for m in msgs if m[1]]
        flat[cid] = msgs
        for i in range(len(msgs) - 1):
            who, text, _ = msgs[i]
            nxt_who, reply, _ = msgs[i + 1]
            if nxt_who != who and "?" in text and _words(text) >= 6 and _words(reply) >= 5:
                per_conv[cid].append(i)
    counts: dict[str, int] = defaultdict(int)
    for msgs in flat.values():
        for _, text, _ in msgs:
            counts[text.lower()] += 1
    picks: list[tuple[str, int]] = []
    for cid in sorted(per_conv):
        options = [i for i in per_conv[cid] if counts[flat[cid][i + 1][1].lower()] == 1]
        rng.shuffle(options)
        taken: list[int] = []
        for i in options:
            if len(taken) < per_conversation and all(abs(i - j) > 2 for j in taken):
                taken.append(i)
        picks += [(cid, i) for i in taken]
    chosen = set(rng.sample(picks, min(questions, len(picks))))

    corpus = Corpus(me="Sam")
    for _, cid in mine:
        msgs = flat[cid]
        partner = next(w for w, _, _ in msgs if w != sender) if any(w != sender for w, _, _ in msgs) else sender
        file = f"WhatsApp Chat with {name_of(partner)}"
        lines = []
        for i, (who, text, ts) in enumerate(msgs):
            if (cid, i) in chosen:
                corpus.questions.append(Question(text, msgs[i + 1][1], cid, file))
                continue
            when = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")
            lines.append(f"{when:%d/%m/%Y, %H:%M} - {name_of(who)}: {text}")
            corpus.messages.append((file, f"{name_of(who)}: {text}", cid))
        corpus.files.setdefault(file, []).extend(lines)
    return corpus


def person(name: str, **kwargs) -> Corpus:
    """`build` for one of PEOPLE by name; a tuning person's history never holds a
    conversation of TEST's."""
    if name not in PEOPLE:
        raise ValueError(f"unknown person {name!r}: one of {', '.join(PEOPLE)}")
    data = kwargs.pop("data", None) or load_dataset()
    if name != "test":
        data = {cid: conv for cid, conv in data.items()
                if TEST_SENDER not in {u["sender"] for turn in conv["messages"] for u in turn}}
    return build(PEOPLE[name], data=data, **kwargs)


def fixed_windows(corpus: Corpus, size: int = 4) -> list[tuple[str, str]]:
    """The naive baseline's chunks: `size` consecutive messages of one chat file, no
    regard for sessions or meaning. Returns (file, text) pairs."""
    out = []
    by_file: dict[str, list[str]] = defaultdict(list)
    for file, line, _ in corpus.messages:
        by_file[file].append(line)
    for file, lines in by_file.items():
        for i in range(0, len(lines), size):
            out.append((file, "\n".join(lines[i : i + size])))
    return out
