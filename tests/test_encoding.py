"""Encoding detection and mojibake repair (memory.encoding), on real strings and fixture files."""

from __future__ import annotations

import codecs
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from memory.documents import SourceInfo
from memory.encoding import MAX_LINE, decode_bytes, iter_lines, repair_text

FIX = Path(__file__).parent / "fixtures" / "import"
# Fixed examples, no timing flakiness, and hypothesis's caches kept out of the repository.
QUIET = dict(deadline=None, database=None, derandomize=True)
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "alterego-hypothesis")
RU = "Делая ремонт, я нашёл старые письма деда. Работа в России — это «всё ещё» сложно…"


def lines_of(path: Path) -> tuple[list[str], SourceInfo]:
    info = SourceInfo(path=str(path), kind="text")
    return list(iter_lines(path, info)), info


# -- decode_bytes ---------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    RU.encode("utf-8"),
    codecs.BOM_UTF8 + RU.encode("utf-8"),
    RU.encode("utf-16"),  # with BOM
    RU.encode("utf-16-le"),  # no BOM: the NUL pattern of the ASCII in it gives it away
    RU.encode("utf-16-be"),
    RU.encode("cp1251"),
])
def test_decode_bytes_finds_the_encoding(data):
    out = decode_bytes(data)
    assert out.text == RU
    assert not out.repaired and not out.damaged


def test_decode_bytes_never_crashes_on_garbage():
    out = decode_bytes(b"\x81\x00\xff\xfe\xfd\x13abc\x80")
    assert "abc" in out.text
    assert out.damaged


# -- repair_text ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Plain English, nothing to see here.",
    RU,
    "Ça va ? Très bien, merci — à demain, «Zoë» & Ærø",
    "Grüße aus Köln, Straße 5",
    "Emoji: 😀👍🏻🎄 ☀️ 👨‍👩‍👧 ❤️",
    "สวัสดีครับ วันนี้อากาศดีมาก ผมจะไปตลาดกับเพื่อน",
    "ร้านอาหารนี้อร่อยมาก แต่ราคาค่อนข้างสูง",
    "รัก",
    "ประเทศไทยมีประชากรประมาณหกสิบเก้าล้านคน กรุงเทพมหานครเป็นเมืองหลวง",
    "我今天去了市场。東京は雨です。",
    "Ελληνικά: καλημέρα",
    "1990–2000, √2 ≈ 1.41, 5 € — “quoted” ‘text’…",
    "Ёжик в тумане",
])
def test_normal_text_is_left_alone(text):
    out = repair_text(text)
    assert out.text == text
    assert not out.repaired and not out.damaged


def test_mac_roman_mojibake_is_repaired():
    assert "Делая".encode("utf-8").decode("mac_roman") == "–î–µ–ª–∞—è"
    out = repair_text("–î–µ–ª–∞—è")
    assert (out.text, out.repaired, out.damaged) == ("Делая", True, False)
    mangled = RU.encode("utf-8").decode("mac_roman")
    assert repair_text(mangled).text == RU


@pytest.mark.parametrize("mangled", [
    "Ð¿Ñ€Ð¸Ð²ÐµÑ‚",  # UTF-8 read as cp1252
    "привет".encode("utf-8").decode("latin-1"),
    "РїСЂРёРІРµС‚",  # UTF-8 read as cp1251
])
def test_code_page_mojibake_is_repaired(mangled):
    out = repair_text(mangled)
    assert (out.text, out.repaired, out.damaged) == ("привет", True, False)


def test_mojibake_with_emoji_and_phone_punctuation():
    text = "Солнце ☀️ и 👨‍👩‍👧, 10:15\u202fAM"
    out = repair_text(text.encode("utf-8").decode("mac_roman"))
    assert out.text == text and out.repaired


def test_thai_damage_is_detected_and_readable_parts_recovered():
    # The form the damage is usually seen in: lead bytes 0xD0/0xD1 became "ะ"/"ั" and the
    # continuation bytes 0x80-0xA0 are gone.
    out = repair_text("ะะตะฝะตัะธ")
    assert out.damaged
    assert out.text == "\ufffdене\ufffdи"  # "Генери": Г and р were lost for good


def test_thai_damage_from_python_decode_keeps_what_survived():
    damaged = RU.encode("utf-8").decode("tis-620", errors="ignore")
    out = repair_text(damaged)
    assert out.damaged
    # TIS-620 has no byte 0xA0, the second byte of "Р"; everything else comes back.
    assert out.text == RU.replace("Р", "\ufffd")


def test_genuine_thai_paragraphs_are_not_damaged():
    lines, info = lines_of(FIX / "thai_notes.txt")
    assert lines[0] == "วันนี้ไปตลาดกับเพื่อน ซื้อผลไม้และขนมไทยหลายอย่าง"
    assert not info.damaged and not info.repaired


# -- iter_lines -----------------------------------------------------------------------------
def test_cp1251_file():
    lines, info = lines_of(FIX / "diary_cp1251.txt")
    assert lines[0] == "Дневник, 12 марта."
    assert "Лёд почти сошёл" in lines[5]
    assert not any("\r" in line for line in lines)
    assert "read as cp1251" in info.warnings
    assert not info.damaged


def test_utf16_file():
    lines, info = lines_of(FIX / "whatsapp_utf16.txt")
    assert lines[2] == "21/09/2019, 22:14 - Дмитрий: Да, буду к семи"
    assert len(lines) == 4 and not info.damaged


def test_mac_roman_file_is_repaired_line_by_line():
    lines, info = lines_of(FIX / "whatsapp_macroman.txt")
    assert lines[0] == "12/05/21, 19:30 - Олег: Делая ремонт, я нашёл старые письма"
    assert info.repaired and not info.damaged
    assert any("mojibake" in w for w in info.warnings)


def test_tis620_damaged_file():
    lines, info = lines_of(FIX / "tis620_damaged.txt")
    assert info.damaged
    assert "идеи" in lines[0] and "ะ" not in lines[0]
    assert lines[3] == "The English part of this note survived intact."


def test_repair_can_be_turned_off():
    info = SourceInfo(path="x", kind="text")
    lines = list(iter_lines(FIX / "whatsapp_macroman.txt", info, repair=False))
    assert "–û–ª–µ–≥" in lines[0] and not info.repaired


def test_line_ends_and_invalid_bytes(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"one\rtwo\r\nthree\n" + "Привет, как дела? Всё хорошо.".encode("cp1251") + b"\nend")
    lines, info = lines_of(path)
    assert lines == ["one", "two", "three", "Привет, как дела? Всё хорошо.", "end"]
    assert not info.damaged


def test_very_long_line_is_split_without_breaking_characters(tmp_path):
    path = tmp_path / "long.txt"
    text = "ж" * (MAX_LINE * 2) + "ok"  # no newline, no space: cut where no character is split
    path.write_text(text, encoding="utf-8")
    lines, info = lines_of(path)
    assert len(lines) >= 3
    assert max(len(line.encode()) for line in lines) <= MAX_LINE
    assert "".join(lines) == text and not info.damaged


# -- properties -----------------------------------------------------------------------------
NORMAL = st.text(st.sampled_from("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВЕЁЖЗИКЛМНОПРСТУЯ"
                                 "abcxyzABCXYZ0123456789 .,!?:;-—«»…()\"'\n😀👍"), max_size=80)


@settings(**QUIET, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(NORMAL)
def test_property_normal_text_unchanged(text):
    out = repair_text(text)
    assert out.text == text and not out.repaired and not out.damaged


@settings(**QUIET, max_examples=150)
@given(NORMAL.filter(lambda t: any("а" <= c.lower() <= "я" for c in t)))
def test_property_mac_roman_round_trip(text):
    assert repair_text(text.encode("utf-8").decode("mac_roman")).text == text


@settings(**QUIET, max_examples=150)
@given(st.binary(max_size=300))
def test_property_decode_bytes_never_raises(data):
    out = decode_bytes(data)
    assert isinstance(out.text, str)


@settings(**QUIET, max_examples=150)
@given(st.text(max_size=120))
def test_property_repair_text_never_raises(text):
    assert isinstance(repair_text(text).text, str)
