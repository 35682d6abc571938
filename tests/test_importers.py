"""Importers (memory.importers): format detection and the parsed content of real export
samples in tests/fixtures/import, plus errors, odd inputs and bounded-memory streaming."""

from __future__ import annotations

import json
import shutil
import tempfile
import tracemalloc
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from memory.documents import ALL_KINDS
from memory.errors import MalformedFileError, MemoryUserError, UnsupportedFormatError
from memory.importers import SUPPORTED_FORMATS, detect_format, open_source

FIX = Path(__file__).parent / "fixtures" / "import"
# Fixed examples, no timing flakiness, and hypothesis's caches kept out of the repository.
QUIET = dict(deadline=None, database=None, derandomize=True)
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "alterego-hypothesis")


def read(path: Path, kind: str | None = None):
    info, utterances = open_source(path, kind)
    return info, list(utterances)


def local(*args) -> float:
    """Exports without a zone are read as the machine's local time."""
    return datetime(*args).timestamp()


def texts(utts) -> list[str]:
    return [u.text for u in utts]


# -- detection ------------------------------------------------------------------------------
def test_supported_formats_cover_every_kind():
    assert set(SUPPORTED_FORMATS) == ALL_KINDS
    assert SUPPORTED_FORMATS["whatsapp"] == "WhatsApp chat export (.txt)"


@pytest.mark.parametrize("name, kind", [
    ("diary.txt", "text"), ("diary_cp1251.txt", "text"), ("thai_notes.txt", "text"),
    ("tis620_damaged.txt", "text"), ("notes.md", "markdown"),
    ("obsidian_chat.md", "obsidian_chat"), ("obsidian_chat_us.md", "obsidian_chat"),
    ("conversations.json", "chatgpt"), ("broken.json", "chatgpt"),
    ("telegram_chat.json", "telegram"), ("telegram_full.json", "telegram"),
    ("whatsapp_android.txt", "whatsapp"), ("whatsapp_us.txt", "whatsapp"), ("whatsapp_ios.txt", "whatsapp"),
    ("whatsapp_utf16.txt", "whatsapp"), ("whatsapp_macroman.txt", "whatsapp"),
    ("interview.srt", "srt"), ("meeting.vtt", "vtt"),
])
def test_detect_format(name, kind):
    assert detect_format(FIX / name) == kind


def test_detection_sniffs_content_not_only_the_extension(tmp_path):
    chat = tmp_path / "notes.txt"
    shutil.copy(FIX / "whatsapp_android.txt", chat)
    assert detect_format(chat) == "whatsapp"
    note = tmp_path / "chat.markdown"
    shutil.copy(FIX / "obsidian_chat.md", note)
    assert detect_format(note) == "obsidian_chat"
    export = tmp_path / "export.json"
    shutil.copy(FIX / "telegram_full.json", export)
    assert detect_format(export) == "telegram"


# -- errors ---------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    for name, data in (("empty.txt", b""), ("blank.md", b"\n  \n\t\n")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnsupportedFormatError, match="is empty"):
            detect_format(path)


@pytest.mark.parametrize("name", ["photo.txt", "data.json", "notes.md", "talk.srt"])
def test_binary_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x04\x00" + bytes(range(256)) * 4)
    with pytest.raises(UnsupportedFormatError, match="binary") as exc:
        open_source(path)
    assert name in str(exc.value)


def test_unknown_extension_names_the_supported_formats(tmp_path):
    path = tmp_path / "report.docx"
    path.write_text("hello")
    with pytest.raises(UnsupportedFormatError) as exc:
        detect_format(path)
    for description in SUPPORTED_FORMATS.values():
        assert description in str(exc.value)
    with pytest.raises(UnsupportedFormatError, match="Supported formats"):
        open_source(FIX / "diary.txt", "pdf")


def test_malformed_json(tmp_path):
    with pytest.raises(MalformedFileError, match="broken.json"):
        read(FIX / "broken.json")
    garbage = tmp_path / "result.json"
    garbage.write_text('{"name": "chat", "messages": [{"id": 1,, }]}')
    with pytest.raises(MalformedFileError, match="result.json"):
        read(garbage)
    not_json = tmp_path / "conversations.json"
    not_json.write_text("this is not json at all")
    with pytest.raises(MalformedFileError):
        detect_format(not_json)


def test_json_of_another_kind(tmp_path):
    path = tmp_path / "package.json"
    path.write_text(json.dumps({"name": "x", "version": "1.0", "dependencies": {}}))
    with pytest.raises(UnsupportedFormatError, match="neither a ChatGPT"):
        detect_format(path)
    with pytest.raises(MalformedFileError, match="not a Telegram export"):
        read(path, "telegram")
    with pytest.raises(MalformedFileError, match="not a ChatGPT export"):
        read(FIX / "telegram_chat.json", "chatgpt")


def test_wrong_kind_for_text_formats():
    with pytest.raises(MalformedFileError, match="no WhatsApp messages"):
        read(FIX / "diary.txt", "whatsapp")
    with pytest.raises(MalformedFileError, match="no subtitle cues"):
        read(FIX / "diary.txt", "srt")
    with pytest.raises(MalformedFileError, match="no chat turns"):
        read(FIX / "notes.md", "obsidian_chat")


def test_odd_file_name(tmp_path):
    path = tmp_path / "Чат с \"Аней\" 'копия' (1) 😀.txt"
    shutil.copy(FIX / "whatsapp_android.txt", path)
    info, utts = read(path)
    assert info.kind == "whatsapp" and len(utts) == 8
    assert utts[0].conversation == path.stem
    assert info.path == str(path)


# -- plain text and Markdown ----------------------------------------------------------------
def test_plain_text_paragraphs():
    info, utts = read(FIX / "diary.txt")
    assert texts(utts) == [
        "Monday, the first warm day. I walked to the river after work and watched the ice go.\n"
        "Nobody else was there, which was exactly what I wanted.",
        "Вечером позвонила мама. Спрашивала, когда я приеду,\n"
        "и я опять сказал «скоро», хотя сам не знаю когда.",
        "I keep promising myself to write here every day — this is attempt number four.",
    ]
    assert all(u.speaker is None and u.heading is None and u.timestamp is None for u in utts)
    assert not info.speakers and not info.repaired and not info.damaged


def test_cp1251_text():
    info, utts = read(FIX / "diary_cp1251.txt")
    assert utts[0].text == "Дневник, 12 марта."
    assert utts[1].text.startswith("Сегодня наконец дочитал «Мастера и Маргариту».")
    assert "\r" not in utts[1].text and len(utts) == 3
    assert not info.damaged


def test_markdown_headings_and_front_matter():
    info, utts = read(FIX / "notes.md")
    pairs = [(u.heading, u.text) for u in utts]
    assert pairs[0] == ("Поход на Ладогу", "Собирались три недели, а выехали за один вечер.")
    assert pairs[1] == ("Поход на Ладогу / День 1",
                        "Шли вдоль берега, ветер такой, что палатку ставили вчетвером.\n"
                        "Костёр развели только с третьей попытки.")
    assert pairs[2] == ("Поход на Ладогу / День 1 / Список, что забыли", "- запасные носки\n- соль")
    assert pairs[3] == ("Поход на Ладогу / День 2", "Утром туман, вода абсолютно гладкая. *Тишина.*")
    # A fenced block stays whole and its "# ..." line is not a heading.
    assert pairs[4][0] == "Поход на Ладогу / День 2"
    assert pairs[4][1].startswith("```bash\n# это не заголовок")
    assert pairs[5] == ("Мысли после", "I think I need more trips like this one.")
    assert len(utts) == 6
    assert not any("title:" in t or "ladoga_1.jpg" in t for t in texts(utts))


def test_markdown_unclosed_front_matter_is_text(tmp_path):
    path = tmp_path / "rule.md"
    path.write_text("---\nНе front matter, просто черта сверху.\n\nВторой абзац.\n", encoding="utf-8")
    _, utts = read(path)
    assert texts(utts) == ["Не front matter, просто черта сверху.", "Второй абзац."]  # the rule is dropped


def test_mojibake_and_damage_in_text_files():
    info, utts = read(FIX / "tis620_damaged.txt")
    assert info.damaged
    assert "идеи" in utts[0].text and "ะ" not in utts[0].text
    assert utts[1].text == "The English part of this note survived intact."
    info, utts = read(FIX / "thai_notes.txt")
    assert utts[1].text == "ร้านอาหารนี้อร่อยมาก แต่ราคาค่อนข้างสูง"
    assert not info.damaged and not info.repaired


# -- Obsidian (Nexus AI Chat Importer) ------------------------------------------------------
def test_obsidian_chat_note():
    info, utts = read(FIX / "obsidian_chat.md")
    assert [(u.speaker, u.is_me) for u in utts] == [("User", True), ("Assistant", False)] * 2
    assert utts[0].text == "Хочу купить велосипед для города, бюджет до 60 тысяч.\nЧто посмотреть?"
    assert utts[1].text == (
        "Для города в таком бюджете хорошо подойдут:\n\n"
        "- **гибрид** (Merida Crossway, Trek FX) — быстрый и удобный;\n"
        "- **складной** — если храните дома или возите в метро.\n\n"
        "> Совет: обязательно сделайте тест-драйв."
    )
    assert utts[2].text == "Спасибо! А зимой на гибриде можно?"
    assert utts[3].text == "Можно, если поставить шипованную резину."
    assert utts[0].timestamp == local(2025, 6, 15, 6, 21)
    assert utts[3].timestamp == local(2025, 6, 15, 18, 40)
    assert {u.conversation for u in utts} == {"684e6c1a-2f1c-8004-9b1e-3c1f0a7d5e21"}
    assert not any("57_" in t or "UID" in t for t in texts(utts))
    assert info.speakers == {"User": 2, "Assistant": 2}


def test_obsidian_chat_note_us_dates():
    _, utts = read(FIX / "obsidian_chat_us.md")
    assert [u.speaker for u in utts] == ["User", "Assistant", "User"]
    assert utts[0].timestamp == local(2025, 7, 4, 16, 28)
    assert utts[1].text.endswith("ran out of food.\n\nFeed it twice a day for a couple of days.")
    assert utts[2].timestamp == local(2025, 7, 4, 0, 5)  # 12:05 AM
    assert {u.conversation for u in utts} == {"obsidian_chat_us"}


# -- ChatGPT --------------------------------------------------------------------------------
def test_chatgpt_follows_the_current_branch():
    info, utts = read(FIX / "conversations.json")
    spb = [u for u in utts if u.conversation == "6671c2aa-0b1c-8004-a1b2-1f2e3d4c5b6a"]
    assert [(u.speaker, u.is_me) for u in spb] == [("User", True), ("ChatGPT", False)] * 2
    assert spb[0].text == "Посоветуй, что почитать про историю Петербурга"
    assert spb[0].timestamp == 1718431260.5
    assert spb[1].text.startswith("Вот три книги")  # the regenerated reply, not the first one
    assert spb[2].text == "А что это за здание на фото?"  # the image part is dropped
    assert spb[3].text == "Это Кунсткамера на Университетской набережной."
    joined = "\n".join(texts(utts))
    assert "Википедии" not in joined  # the replaced reply (other branch)
    assert "never mind" not in joined  # an edited-away user message
    assert "Отвечай кратко" not in joined and "analyze_image" not in joined and "Kunstkamera" not in joined
    gift = [u for u in utts if u.conversation == "b7e1"]
    assert texts(gift) == [
        "Gift ideas for my dad? He likes fishing and jazz.",
        "A vintage jazz vinyl or a good fly-fishing reel.",
        "He already has plenty of reels.",
        "Then tickets to a jazz club could be perfect.",
    ]
    assert info.speakers == {"User": 4, "ChatGPT": 4}


def test_chatgpt_without_current_node_follows_newest_replies(tmp_path):
    data = json.loads((FIX / "conversations.json").read_text(encoding="utf-8"))
    del data[1]["current_node"]
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(data[1:]), encoding="utf-8")
    info, utts = read(path)
    assert texts(utts)[-1] == "Then tickets to a jazz club could be perfect."
    assert "never mind" not in texts(utts)
    assert info.warnings


# -- Telegram -------------------------------------------------------------------------------
def test_telegram_single_chat():
    info, utts = read(FIX / "telegram_chat.json")
    assert [(u.speaker, u.text) for u in utts] == [
        ("Мама", "С праздником, девочки! 💐"),
        ("Катя", "Спасибо, мамочка! Смотри https://example.com/tulips — это тебе тюльпаны!"),
        ("Deleted Account", "Кто-нибудь помнит пароль от wifi на даче?"),
        ("Катя", "Доброе утро!"),
    ]
    assert utts[0].timestamp == 1678256102.0
    assert utts[3].timestamp == local(2023, 3, 10, 8, 0)  # no date_unixtime: the local date
    assert {u.conversation for u in utts} == {"Семья"}
    assert all(u.is_me is None for u in utts)
    assert any("skipped 2" in w for w in info.warnings)  # the service message and the photo


def test_telegram_full_export():
    _, utts = read(FIX / "telegram_full.json")
    assert [(u.conversation, u.speaker, u.text) for u in utts] == [
        ("Мама", "Мама", "Ты поела?"),
        ("Мама", "Катя Иванова", "Да, мам 🙂"),
        ("Work chat", "Boss", "Standup in 5"),
        ("3", "Катя Иванова", "Купить хлеб и батарейки"),  # saved messages: no name, the id
        ("Old group", "Катя Иванова", "Всем пока!"),
    ]
    assert utts[0].timestamp == 1704470400.0


def test_telegram_repairs_mojibake_in_texts_and_names(tmp_path):
    chat = {"name": "Мама".encode().decode("mac_roman"), "id": 1, "messages": [
        {"id": 1, "type": "message", "date": "2024-01-01T10:00:00", "date_unixtime": "1704103200",
         "from": "Олег".encode().decode("mac_roman"), "text": "Делая ремонт".encode().decode("mac_roman")}]}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(chat), encoding="utf-8")
    info, utts = read(path)
    assert (utts[0].conversation, utts[0].speaker, utts[0].text) == ("Мама", "Олег", "Делая ремонт")
    assert info.repaired and not info.damaged


# -- WhatsApp -------------------------------------------------------------------------------
def test_whatsapp_android():
    info, utts = read(FIX / "whatsapp_android.txt")
    assert [u.speaker for u in utts] == ["Иван Петров", "Аня"] * 4
    assert utts[0].text == "Привет! Ты уже проснулась?"
    assert utts[0].timestamp == local(2021, 4, 3, 9, 12)  # day-first: the file has 14/04/21
    assert utts[2].text == ("Слушай, давай в субботу поедем на залив?\n"
                            "Возьмём велосипеды, термос\nи тот плед, который ты любишь.")
    assert utts[5].text == "Смотрела: +12 и солнце ☀️"
    assert utts[7].text == "Договорились 👍"
    assert {u.conversation for u in utts} == {"whatsapp_android"}
    joined = "\n".join(texts(utts))
    for system in ("шифрованием", "создал(а)", "Без медиафайлов", "сообщение удалено", "добавил(а)"):
        assert system not in joined
    assert "skipped 5 system, media or deleted-message line(s)" in info.warnings
    assert info.speakers == {"Иван Петров": 4, "Аня": 4}


def test_whatsapp_us_12h():
    info, utts = read(FIX / "whatsapp_us.txt")
    assert [(u.speaker, u.text) for u in utts] == [
        ("Mike", "Merry Christmas!! 🎄"),
        ("Sarah Connor", "Merry Christmas to you too\ndid you get my package?"),
        ("Mike", "Yes!! The scarf is perfect"),
        ("Sarah Connor", "Happy new year (a bit late)"),
        ("Mike", "Same to you!"),
    ]
    assert utts[0].timestamp == local(2020, 12, 25, 9, 5)
    assert utts[2].timestamp == local(2020, 12, 25, 12, 31)
    assert utts[3].timestamp == local(2021, 1, 2, 0, 5)  # month-first, 12:05 AM
    assert utts[4].timestamp == local(2021, 1, 2, 10, 15)


def test_whatsapp_ios():
    info, utts = read(FIX / "whatsapp_ios.txt")
    assert [(u.speaker, u.text) for u in utts] == [
        ("Мама", "Ты доехала?"),
        ("Я", "Да, всё хорошо. Вот вид из окна 👆"),
        ("Мама", "С днём рождения, солнышко!\nЦелую, обнимаю ❤️"),
        ("+7 912 345-67-89", "Поздравляю!"),
    ]
    assert utts[0].timestamp == local(2022, 6, 5, 21, 40, 12)
    assert not any("\u200e" in u.text or "\u200e" in u.speaker for u in utts)
    assert "skipped 2 system, media or deleted-message line(s)" in info.warnings


def test_whatsapp_utf16_export():
    _, utts = read(FIX / "whatsapp_utf16.txt")
    assert [(u.speaker, u.text) for u in utts] == [
        ("Lena", "Are you coming tomorrow?"), ("Дмитрий", "Да, буду к семи"), ("Lena", "👍")]
    assert utts[1].timestamp == local(2019, 9, 21, 22, 14)


def test_whatsapp_mac_roman_mojibake_is_repaired():
    info, utts = read(FIX / "whatsapp_macroman.txt")
    assert [(u.speaker, u.text) for u in utts] == [
        ("Олег", "Делая ремонт, я нашёл старые письма"),
        ("Наташа", "Правда? Чьи?"),
        ("Олег", "Деда. Он писал их бабушке с фронта"),
    ]
    assert info.repaired and not info.damaged


@pytest.mark.parametrize("lines, expected", [
    (["03/04/21, 10:00 - A: x"], (2021, 4, 3)),  # ambiguous, 24h: day-first
    (["03/04/21, 10:00 AM - A: x"], (2021, 3, 4)),  # ambiguous, AM/PM: month-first
    (["03/04/21, 10:00 AM - A: x", "13/04/21, 10:00 AM - A: y"], (2021, 4, 3)),  # proven day-first
    (["03/04/21, 10:00 - A: x", "03/14/21, 10:00 - A: y"], (2021, 3, 4)),  # proven month-first
    (["2021-04-03, 10:00 - A: x"], (2021, 4, 3)),
])
def test_whatsapp_day_month_order(tmp_path, lines, expected):
    path = tmp_path / "chat.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    _, utts = read(path)
    assert utts[0].timestamp == local(*expected, 10, 0)


# -- transcripts ----------------------------------------------------------------------------
def test_srt_transcript():
    info, utts = read(FIX / "interview.srt")
    assert [(u.speaker, u.timestamp, u.end_timestamp, u.text) for u in utts] == [
        ("SPEAKER_00", 1.0, 4.2, "Добрый день, спасибо, что пришли."),
        ("SPEAKER_01", 4.5, 8.0, "Спасибо за приглашение. Я очень рада быть здесь."),
        ("SPEAKER_01", 8.3, 11.75, "Честно говоря, я до сих пор волнуюсь."),  # no label: same speaker
        ("SPEAKER_00", 12.0, 62.5, "Well, it started in 2015, in a tiny garage in Kazan."),
        ("Anna Petrova", 3600.0, 3603.0, "Это было весело."),
    ]
    assert {u.conversation for u in utts} == {"interview"}


def test_vtt_transcript():
    info, utts = read(FIX / "meeting.vtt")
    assert [(u.speaker, u.timestamp, u.end_timestamp, u.text) for u in utts] == [
        ("Олег", 1.0, 4.0, "Всем привет, начинаем."),
        ("Maria Lopez", 4.5, 7.25, "Hi! Can you hear me?"),
        ("Maria Lopez", 7.5, 10.0, "Yes, loud & clear."),
        ("Олег", 10.0, 14.0, "Отлично."),
        ("Maria Lopez", 10.0, 14.0, "Let's go through the roadmap."),
        ("Олег", 3723.5, 3725.0, "Спасибо всем!"),
    ]
    assert not any("NOTE" in t or "Auto-generated" in t or "::cue" in t for t in texts(utts))
    assert info.speakers == {"Олег": 3, "Maria Lopez": 3}


# -- robustness -----------------------------------------------------------------------------
EXTENSIONS = {"text": ".txt", "markdown": ".md", "obsidian_chat": ".md", "chatgpt": ".json",
              "telegram": ".json", "whatsapp": ".txt", "srt": ".srt", "vtt": ".vtt"}


def consume(path: Path, kind: str | None) -> None:
    try:
        info, utterances = open_source(path, kind)
        for utt in utterances:
            assert isinstance(utt.text, str) and utt.text.strip()
    except MemoryUserError:
        pass


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
@settings(**QUIET, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),
    st.lists(st.sampled_from([
        "12/03/21, 10:15 - Аня: привет", "[12.03.21, 10:15:32] Иван: ok", "00:00:01,000 --> 00:00:02,000",
        "WEBVTT", ">[!nexus_user] **User** - 15.06.2025 at 6:21", "> text", "<!-- UID: 1 -->", "# Heading",
        "---", "", "SPEAKER_00: hi", "99/99/99, 99:99 - X: y", '{"messages": [', '[{"mapping": {',
    ]), max_size=12).map(lambda lines: "\n".join(lines).encode("utf-8")),
))
def test_random_input_raises_only_user_errors(tmp_path, kind, data):
    path = tmp_path / f"input{EXTENSIONS[kind]}"
    path.write_bytes(data)
    consume(path, kind)
    consume(path, None)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.sampled_from(["user", "assistant", "message", "service", "text", "n1", "n2"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["mapping", "current_node", "parent", "children", "message", "author", "role",
                         "content", "parts", "content_type", "messages", "type", "from", "text",
                         "date", "date_unixtime", "name", "id", "chats", "list", "metadata", "n1", "n2"]),
        children, max_size=5),
    max_leaves=25,
)


@pytest.mark.parametrize("kind", ["chatgpt", "telegram"])
@settings(**QUIET, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON)
def test_random_json_raises_only_user_errors(tmp_path, kind, value):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    consume(path, kind)
    consume(path, None)


def test_streaming_keeps_memory_bounded(tmp_path):
    """A ~30 MB WhatsApp export is parsed with a small, size-independent peak."""
    path = tmp_path / "big.txt"
    body = "sea morning coffee train letter mother city winter river book friend night window " * 3
    size = 0
    with path.open("w", encoding="utf-8") as fh:
        n = 0
        while size < 30_000_000:
            line = f"{n // 2000 % 28 + 1:02d}/{n // 56000 % 12 + 1:02d}/21, {n % 24:02d}:{n % 60:02d} - {'Anna' if n % 2 else 'Ivan'}: {body}{n}\n"
            if n % 10 == 0:
                line += "second line of the message\n"
            fh.write(line)
            size += len(line)
            n += 1
    tracemalloc.start()
    try:
        info, utterances = open_source(path)
        count = 0
        for utt in utterances:
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 50_000_000
    assert info.speakers == {"Anna": n // 2, "Ivan": n - n // 2}
