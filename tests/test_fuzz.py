"""Fuzzing what a user can hand the app, with hypothesis: files for the importers and
messages for the chat. Whatever comes in — random bytes, lines of 200,000 characters,
JSON nested 10,000 deep, exports of the right shape holding the wrong types, cp1251 or
UTF-16 without a BOM, Latin-1 bytes inside UTF-8, odd file names and path-like source
names — the outcome is a successful import or one of the app's typed user errors
(`webapp.errors.USER_ERRORS`), never any other exception; what is imported is text that
can be stored (valid Unicode); a failed file leaves nothing behind. A chat message is
accepted (stripped, within the limit) or refused with `ChatInputError` before anything
is journaled; a few accepted ones go through a real turn on the real model."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memory.importers import detect_format, open_source
from memory.ingest import expand_paths
from memory.scenes import cut_scenes
from webapp.errors import USER_ERRORS, ChatInputError

EXTENSIONS = [".txt", ".md", ".markdown", ".json", ".srt", ".vtt", ".TXT", ".Json", "", ".bin", ".txt.gz"]
# Function-scoped fixtures (a data root, the service) are shared by a test's examples on
# purpose: state piling up across examples is part of what is being fuzzed.
SHARED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]

# -- file contents ----------------------------------------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
speaker_names = st.sampled_from(["Ann", "Иван Петров", "", " ", "a:b", "🙂", "X" * 300]) | st.text(max_size=12)


@st.composite
def maybe_wrong(draw, good: st.SearchStrategy):
    """Mostly a value of the right type, sometimes any JSON value, now and then missing."""
    roll = draw(st.integers(0, 19))
    return draw(good) if roll < 17 else draw(json_values) if roll < 19 else MISSING


MISSING = object()


def shaped(**fields) -> st.SearchStrategy:
    return st.fixed_dictionaries({k: maybe_wrong(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not MISSING})


entities = st.lists(st.text(max_size=10) | shaped(type=st.sampled_from(["bold", "link"]), text=st.text(max_size=10)),
                    max_size=3)
telegram_message = shaped(
    id=st.integers(0, 10**6), type=st.sampled_from(["message", "service"]),
    date=st.sampled_from(["2023-05-01T10:00:00", "2023-13-45T99:99:99", ""]),
    date_unixtime=st.sampled_from(["1682935200", "-1", "9" * 30]) | st.integers(),
    **{"from": speaker_names}, text=st.text(min_size=1, max_size=40) | entities,
)
telegram = st.one_of(
    shaped(name=st.text(max_size=20), id=st.integers(), messages=st.lists(telegram_message, max_size=6)),
    st.fixed_dictionaries({"chats": shaped(list=st.lists(
        shaped(name=st.text(max_size=20), messages=st.lists(telegram_message, max_size=3)), max_size=3))}),
)


@st.composite
def chatgpt(draw):
    """A conversation list whose nodes form a chain root → leaf, with fields made wrong now and then."""
    conversations = []
    for c in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 5))
        ids = [f"n{c}-{i}" for i in range(n)]
        mapping = {}
        for i, node_id in enumerate(ids):
            message = draw(shaped(
                author=shaped(role=st.sampled_from(["user", "assistant", "user", "assistant", "system", "tool"])),
                content=shaped(content_type=st.sampled_from(["text", "text", "multimodal_text", "code"]),
                               parts=st.lists(st.text(min_size=1, max_size=30) | json_values, min_size=1, max_size=3)),
                create_time=st.floats(allow_nan=False) | st.integers(),
                metadata=st.fixed_dictionaries({}, optional={"is_visually_hidden_from_conversation": st.booleans()}),
                recipient=st.sampled_from(["all", "all", "python"]), channel=st.sampled_from(["final", "final", "analysis"]),
            ))
            mapping[node_id] = draw(shaped(
                id=st.just(node_id), message=st.just(message),
                parent=st.just(ids[i - 1] if i else None) | st.sampled_from(ids),
                children=st.just(ids[i + 1:i + 2]) | st.lists(st.sampled_from(ids), max_size=2),
            ))
        conversations.append(draw(shaped(title=st.text(max_size=20), mapping=st.just(mapping),
                                         current_node=st.sampled_from(ids) | st.text(max_size=3))))
    return conversations


json_documents = st.one_of(json_values, telegram, chatgpt()).map(
    lambda doc: json.dumps(doc, ensure_ascii=False).encode("utf-8"))


def deep_json(depth: int) -> st.SearchStrategy:
    return st.sampled_from([
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"messages": [' + b"[" * depth + b"]" * depth + b"]}",
        b'[{"mapping": ' + b'{"x":' * depth + b"{}" + b"}" * depth + b"}]",
        b'{"messages": [{"text": ' + b"[" * depth + b"]" * depth + b', "from": "A", "type": "message"}]}',
        b"[" * depth,  # never closed
    ])


@st.composite
def whatsapp(draw):
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        d, m, y = draw(st.integers(0, 99)), draw(st.integers(0, 99)), draw(st.integers(0, 9999))
        hh, mm = draw(st.integers(0, 99)), draw(st.integers(0, 99))
        ampm = draw(st.sampled_from(["", " AM", " PM", "\u202fpm"]))
        text = draw(st.text(max_size=40))
        name = draw(speaker_names)
        lines.append(draw(st.sampled_from([f"{d}/{m}/{y}, {hh}:{mm}{ampm} - {name}: {text}",
                                           f"[{d}.{m}.{y}, {hh}:{mm}:{mm}] {name}: {text}", text])))
    return "\n".join(lines).encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-16-le"])), errors="replace")


@st.composite
def subtitles(draw):
    cues = []
    for n in range(draw(st.integers(1, 5))):
        start = draw(st.sampled_from(["00:00:01,000", "99:99:99,999", "1:2:3.4", "-00:00:01,000", "xx", ""]))
        speaker = draw(st.sampled_from(["", "SPEAKER_00: ", "<v Ann>", "Bob: "]))
        cues.append(f"{n}\n{start} --> {draw(st.sampled_from(['00:00:02,000', '', '00:00:00,500']))}\n"
                    f"{speaker}{draw(st.text(max_size=30))}")
    head = draw(st.sampled_from(["", "WEBVTT\n\n"]))
    return (head + "\n\n".join(cues)).encode("utf-8")


cyrillic = st.text(alphabet="абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗ ,.!\n", min_size=1, max_size=200)
encodings = st.one_of(
    cyrillic.map(lambda t: t.encode("cp1251")),
    st.text(max_size=200).map(lambda t: t.encode("utf-16-le", errors="surrogatepass")),  # no BOM
    st.text(max_size=200).map(lambda t: t.encode("utf-16-be", errors="surrogatepass")),
    st.tuples(st.text(max_size=60), st.binary(min_size=1, max_size=8).map(lambda b: bytes(x | 0x80 for x in b)),
              st.text(max_size=60)).map(lambda p: p[0].encode() + p[1] + p[2].encode()),  # Latin-1 bytes in UTF-8
    cyrillic.map(lambda t: t.encode("utf-8").decode("cp1252", errors="replace").encode("utf-8")),  # mojibake
    cyrillic.map(lambda t: t.encode("utf-8").decode("tis-620", errors="replace").encode("utf-8")),
)
huge_lines = st.tuples(st.sampled_from(["a", "й", "🙂", " ", "#", ">", "-"]), st.integers(60_000, 200_000)).map(
    lambda p: (p[0] * p[1]).encode("utf-8"))

TEXTS, JSONS, SUBS = [".txt", ".md", ".markdown"], [".json", ".JSON"], [".srt", ".vtt"]
# (content, the extensions that content would come with); another extension now and then.
kinds = [
    (st.binary(max_size=2048), EXTENSIONS),
    (st.text(max_size=400).map(lambda t: t.encode("utf-8")), TEXTS + SUBS),
    (st.text(alphabet=string.printable + "\x00\x1b\x7f\u2028\u202e", max_size=300).map(str.encode), TEXTS + SUBS),
    (json_documents, JSONS), (deep_json(10_000), JSONS), (whatsapp(), [".txt"]), (subtitles(), SUBS),
    (encodings, TEXTS + JSONS + SUBS), (huge_lines, TEXTS + JSONS + SUBS),
    (st.sampled_from([b"", b"\n\n\n", b"\xef\xbb\xbf", b"\xff\xfe", b"---\n", b">[!nexus_user]\n", b"WEBVTT"]),
     EXTENSIONS),
]
files = st.one_of([st.tuples(data, st.sampled_from(exts) | st.sampled_from(EXTENSIONS)) for data, exts in kinds])
contents = files.map(lambda f: f[0])
# File names: any Unicode a file system takes (no "/" or NUL, at most 255 bytes).
stems = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40) \
    .filter(lambda s: s not in (".", "..") and len(s.encode("utf-8")) <= 200)
# What the UI passes as a source's name, which is never used as a path.
source_names = st.one_of(st.text(max_size=60), st.sampled_from(
    ["../../x.txt", "/etc/passwd", "upload:../../evil.md", "C:\\Windows\\win.ini", "..", "", "a/../../../b"]))


def write(folder: Path, stem: str, ext: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}{ext}"
    if path.is_dir():
        path = folder / f"file{ext}"
    path.write_bytes(data)
    return path


def parse(path: Path) -> list:
    """The CLI's read path short of embedding: detect, stream utterances, cut scenes."""
    kind = detect_format(path)
    info, utterances = open_source(path, kind)
    scenes = list(cut_scenes(utterances, source=f"fuzz:{path.name}", kind=kind, me_names={"Ann"}))
    for scene in scenes:
        scene.text.encode("utf-8")  # storable: no lone surrogates
        assert scene.id
    return scenes


@settings(max_examples=600, deadline=None, suppress_health_check=SHARED)
@given(file=files, stem=stems)
@example(file=(b"[" * 10_000 + b"]" * 10_000, ".json"), stem="conversations")
@example(file=(b'{"messages": [{"type": "message", "from": 5, "text": {"a": 1}, "date_unixtime": "x"}]}', ".json"),
         stem="result")
@example(file=("Привет, как дела?\n".encode("cp1251") * 50, ".txt"), stem="diary")
@example(file=("hello there, friend\n".encode("utf-16-le") * 20, ".md"), stem="notes")
@example(file=(b"caf\xe9 au lait\nna\xefve\n", ".txt"), stem="latin")
def test_importers_parse_anything_or_refuse_it(tmp_path, file, stem):
    data, ext = file
    path = write(tmp_path / "files", stem, ext, data)
    try:
        parse(path)
    except USER_ERRORS:
        pass


@pytest.fixture
def memory(home, embedder):
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.settings import load_settings

    settings = load_settings()
    journal = Journal(settings.journal_path)
    yield SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
    journal.close()


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED)
@given(file=files.filter(lambda f: len(f[0]) < 50_000), stem=stems, name=source_names,
       how=st.sampled_from(["as is", "dotdot", "relative", "symlink", "folder", "missing", "dangling"]))
def test_full_import_never_raises_and_leaves_nothing_half_done(memory, tmp_path, file, stem, name, how):
    data, ext = file
    folder = tmp_path / "in" / f"d{len(os.listdir(tmp_path / 'in')) if (tmp_path / 'in').exists() else 0}"
    path = write(folder, stem, ext, data)
    target = {
        "as is": path,
        "dotdot": folder / ".." / folder.name / path.name,
        "relative": Path(os.path.relpath(path)),
        "folder": folder,
        "missing": folder / ".." / ".." / "no-such-file.txt",
    }.get(how)
    if how in ("symlink", "dangling"):
        target = folder / f"link{ext}"
        target.symlink_to(path if how == "symlink" else folder / "gone.txt")
    before = memory.store.count()
    summary = memory.import_paths([target], me=["Ann"], source_names={target: name} if name else None).as_dict()
    assert summary["files"] + len(summary["skipped_files"]) >= 1
    assert memory.journal.running_imports() == []  # every import finished, one way or the other
    if summary["errors"] and not summary["scenes_added"]:
        assert memory.store.count() == before  # a refused file left no scene behind
    for err in summary["errors"]:
        assert isinstance(err["error"], str) and err["error"]
    assert memory.store.count() == before + summary["scenes_added"] - summary["scenes_removed"]


# -- chat input ---------------------------------------------------------------------------------
messages = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50),
    st.text(alphabet="\x00\x01\x07\x1b\x7f\u200b\u200e\u202e\ufeff \t\r\n", max_size=40),  # controls, invisibles
    st.tuples(st.sampled_from(["a", " ", "🙂", "й", "\n"]), st.integers(7_990, 20_000)).map(lambda p: p[0] * p[1]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=SHARED)
@given(message=messages)
def test_chat_validate_accepts_or_refuses_cleanly(service, message):
    try:
        text = service.validate(message)
    except ChatInputError as exc:
        assert str(exc)
        assert not message.strip() or len(message.strip()) > service.settings.engine.max_message_chars
        return
    assert text == message.strip() and 0 < len(text) <= service.settings.engine.max_message_chars


@pytest.fixture
def short_service(service):
    """The service with `me` answering in at most 4 tokens (generation is the slow part)."""
    from personas.catalog import PersonaCatalog

    folder = service.settings.home / "personas" / "me"
    folder.mkdir(parents=True)
    (folder / "persona.yaml").write_text("name: me\ndisplay_name: Me\ndescription: You.\n"
                                         "system_prompt: You are the user.\ngeneration:\n  max_tokens: 4\n")
    service.catalog = PersonaCatalog.load(service.settings.home / "personas")
    return service


@settings(max_examples=6, deadline=None, suppress_health_check=SHARED)
@given(message=messages)
@example(message="🙂" * 7_999)  # within the character limit, beyond the context window
@example(message="\x00\x1b[31mred\x1b[0m\u202e")
def test_chat_turn_accepts_or_refuses_cleanly(short_service, message):
    service = short_service
    before = service.journal.count_turns(), len(service.conversations())
    try:
        last = service.send(message, persona="me")
    except ChatInputError:
        # Refused before anything was stored: no turn, not even an empty conversation.
        assert (service.journal.count_turns(), len(service.conversations())) == before
        return
    turn = service.journal.get_turn(last.turn_id)
    assert turn.status == "ok" and turn.user_text == message.strip()
