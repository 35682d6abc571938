"""Text decoding and mojibake repair for imported files.

Exports arrive in whatever encoding the phone or PC used, and often already mangled: UTF-8
that some tool read as Mac Roman or Windows-1252 ("–î–µ–ª–∞—è", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚"), or UTF-8
Cyrillic read as Thai TIS-620 with bytes lost on the way ("ะะตะฝะตัะธ"). This module picks
a file's encoding (BOM, UTF-16 NUL pattern, UTF-8, else charset-normalizer), streams it
line by line in bounded memory, and repairs each line: ftfy for the usual code-page
mojibake, a strict Mac Roman round trip (which ftfy does not attempt for Cyrillic), and a
TIS-620 re-encoding that recovers what is readable of Thai-damaged text. `repaired` means
mojibake was found and undone; `damaged` means some characters are gone for good (the text
then carries U+FFFD where they were, as it does where bytes could not be decoded).
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ftfy

from .documents import SourceInfo

SAMPLE_BYTES = 64 * 1024  # what charset-normalizer sees when UTF-8 fails: enough to be sure, cheap
MAX_LINE = 64 * 1024  # longer "lines" (a file without newlines) are yielded in pieces, keeping memory bounded
REPLACEMENT = "\ufffd"


@dataclass
class Decoded:
    text: str
    repaired: bool = False
    damaged: bool = False


# ftfy.fix_encoding only: its other fixers (quotes, ligatures, widths, normalisation) change
# the author's own choices, and a line that needs no repair must come back unchanged.
_FTFY = ftfy.TextFixerConfig(explain=False)

# Characters that single-byte mojibake of UTF-8 always produces (Latin-1/cp1252/cp437 letters
# and symbols, C1 controls, cp1251's Ђ..џ, Mac Roman's punctuation and math signs). Text
# without any of them cannot be such mojibake, so ftfy (slow) is skipped for it.
_SUSPECT = re.compile(
    "[\u0080-\u03ff\u0400-\u040f\u0450-\u045f\u0490\u0491\u2000-\u22ff\u2500-\u25ff"
    "\uf8ff\ufb01\ufb02\ufffd]"
)

# Characters TIS-620 maps bytes to: Thai letters, plus the C1 controls Python's codec
# passes through for bytes 0x80-0x9F (continuation bytes that survive in the damaged text).
_THAI = re.compile("[\u0e01-\u0e3a\u0e3f-\u0e5b]")
_THAI_RUN = re.compile("[\u0e01-\u0e3a\u0e3f-\u0e5b\u0080-\u009f]+")
# Everyday letters and punctuation of the alphabets in _ALPHABETS, and emoji.
_EVERYDAY = re.compile(
    "[\u00c0-\u017f\u0386-\u03ce\u0400-\u045f\u0490\u0491\u0531-\u0587\u05d0-\u05ea\u0621-\u064a"
    "\u0900-\u097f\u10d0-\u10fa\u2010-\u206f\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7a3\U0001f300-\U0001faff]"
)
# Scripts whose UTF-8 bytes, read as TIS-620, give the Thai-looking damage.
_ALPHABETS = {"CYRILLIC", "GREEK", "LATIN", "ARMENIAN", "HEBREW", "ARABIC", "GEORGIAN",
              "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "DEVANAGARI"}

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)
WIDE = ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")


# -- choosing an encoding -------------------------------------------------------------------
def sniff_encoding(sample: bytes) -> tuple[str | None, int]:
    """(codec, BOM length) for the start of a file; codec is None when nothing fits."""
    for bom, codec in _BOMS:
        if sample.startswith(bom):
            return codec, len(bom)
    wide = _nul_pattern(sample)
    if wide:
        return wide, 0
    try:
        # Incremental, so a character cut at the end of the sample is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8", 0
    except UnicodeDecodeError:
        pass
    return _guess(sample), 0


def _nul_pattern(sample: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-ASCII text puts a NUL in every other byte."""
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    even, odd = sample[0:pairs * 2:2].count(0), sample[1:pairs * 2:2].count(0)
    if odd >= pairs * 0.3 and even <= pairs * 0.05:
        return "utf-16-le"
    if even >= pairs * 0.3 and odd <= pairs * 0.05:
        return "utf-16-be"
    return None


def _guess(data: bytes) -> str | None:
    import charset_normalizer  # slow to import, and only needed for non-UTF-8 files

    results = charset_normalizer.from_bytes(data)
    best = results.best()
    if best is None:
        return None
    # On short samples several code pages look equally clean; Cyrillic read as cp1250 or
    # cp1252 turns every letter into an accented Latin one ("Ďđčâĺň"), which real Latin
    # text never does, so such a reading loses to a near-tie that is plausible.
    close = [m for m in results if m.chaos <= best.chaos + 0.1][:8]
    choice = next((m for m in [best, *close] if _plausible(str(m))), best)
    try:
        return codecs.lookup(choice.encoding).name
    except LookupError:
        return None


def _plausible(text: str) -> bool:
    latin = [c for c in text if c.isalpha() and unicodedata.name(c, "").startswith("LATIN")]
    return len(latin) < 4 or sum(not c.isascii() for c in latin) <= 0.4 * len(latin)


def _decode(raw: bytes, codec: str | None) -> tuple[str, bool]:
    """(text, lost) — never raises; `lost` when bytes had to be replaced."""
    codec = codec or "utf-8"
    try:
        return raw.decode(codec), False
    except UnicodeDecodeError:
        return raw.decode(codec, errors="replace"), True
    except LookupError:
        return raw.decode("utf-8", errors="replace"), True


def decode_bytes(data: bytes) -> Decoded:
    """Decode one chunk of raw bytes of unknown encoding, then repair it."""
    codec, bom = sniff_encoding(data)
    text, lost = _decode(data[bom:], codec)
    out = repair_text(text)
    out.damaged = out.damaged or lost
    return out


# -- repairing decoded text -----------------------------------------------------------------
def repair_text(text: str) -> Decoded:
    """Undo mojibake in already-decoded text; normal text comes back unchanged."""
    if text.isascii():  # mojibake of UTF-8 is never pure ASCII
        return Decoded(text)
    if _THAI.search(text):
        recovered = _recover_thai(text)
        if recovered is not None:
            return Decoded(recovered, repaired=True, damaged=REPLACEMENT in recovered)
    fixed = text
    if _SUSPECT.search(text):
        fixed = ftfy.fix_encoding(text, _FTFY)
        if fixed == text:
            fixed = _mac_roman(text) or text
    return Decoded(fixed, repaired=fixed != text, damaged=REPLACEMENT in fixed)


def _mac_roman(text: str) -> str | None:
    """UTF-8 read as Mac Roman ("–î–µ–ª–∞—è" for "Делая"): ftfy's heuristics do not see
    Cyrillic in that disguise, so try the round trip strictly. Every non-ASCII character
    must pair up into valid UTF-8, which ordinary text practically never does."""
    try:
        fixed = text.encode("mac_roman").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    if fixed == text or _odd(fixed):
        return None
    return fixed


def _odd(text: str) -> bool:
    """Control, unassigned or private characters, or an accent stuck on an ASCII letter
    ("cafÃ©" would round-trip to "caf" + U+0329): not what a real repair produces."""
    prev = ""
    for c in text:
        cat = unicodedata.category(c)
        if (cat in ("Cc", "Cn", "Co", "Cs") and c not in "\t\r\n") or (cat == "Mn" and prev.isascii() and prev.isalnum()):
            return True
        prev = c
    return False


def _recover_thai(text: str) -> str | None:
    """UTF-8 read as TIS-620: Cyrillic "е" (D0 B5) shows as "ะต", and bytes TIS-620 lacks
    (0xA0, 0xDB-0xDE, 0xFC-0xFF, often all of 0x80-0x9F) are gone. Re-encoding the Thai
    runs to TIS-620 gives back the UTF-8 bytes that survived; a lead byte whose partner was
    lost decodes to U+FFFD. Returns None for genuine Thai (see _utf8_shape)."""
    runs = [run.encode("tis-620", errors="ignore") for run in _THAI_RUN.findall(text)]
    pairs = lost = strays = 0
    leads: Counter = Counter()
    for data in runs:
        p, l, s = _utf8_shape(data, leads)
        pairs, lost, strays = pairs + p, lost + l, strays + s
    # Losing bytes leaves lead bytes without partners, never partners without a lead: a
    # continuation byte with no lead before it (a Thai word starting with ก..ฟ) is Thai.
    if pairs < 3 or pairs < 0.8 * lost or strays > 0.05 * pairs:
        return None
    # One alphabet's characters share one or two lead bytes (Cyrillic: D0/D1, shown as ะ/ั);
    # in Thai those byte values are a dozen different, common letters and vowels.
    if sum(n for _, n in leads.most_common(2)) < 0.9 * sum(leads.values()):
        return None
    letters = [c for c in b"".join(runs).decode("utf-8", errors="replace") if c >= "\u0080" and c != REPLACEMENT]
    # Thai vowel + consonant pairs decode to archaic or extended letters (ั+ก is "ѡ");
    # real text decodes to the everyday letters of one alphabet.
    scripts = Counter(unicodedata.name(c, "?").split(" ")[0] for c in letters)
    script, count = scripts.most_common(1)[0]
    if script not in _ALPHABETS or count < 0.8 * len(letters):
        return None
    if sum(bool(_EVERYDAY.match(c)) for c in letters) < 0.9 * len(letters):
        return None
    return _THAI_RUN.sub(lambda m: m.group().encode("tis-620", errors="ignore").decode("utf-8", errors="replace"), text)


def _utf8_shape(data: bytes, leads: Counter) -> tuple[int, int, int]:
    """(complete characters, lead bytes cut short, bytes that no lead byte explains)."""
    pairs = lost = strays = 0
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if 0xC2 <= b <= 0xF4:
            leads[b] += 1
            need = 1 if b < 0xE0 else 2 if b < 0xF0 else 3
            j = i + 1
            while j < n and j - i <= need and 0x80 <= data[j] < 0xC0:
                j += 1
            pairs, lost = (pairs + 1, lost) if j - i - 1 == need else (pairs, lost + 1)
            i = j
        else:
            strays += b >= 0x80
            i += 1
    return pairs, lost, strays


# -- streaming a file -----------------------------------------------------------------------
def iter_lines(path: str | Path, info: SourceInfo, *, repair: bool = True) -> Iterator[str]:
    """Yield the file's lines (without line ends), decoded and repaired, in bounded memory.
    Sets info.repaired / info.damaged as it goes and adds a warning with the counts at the end."""
    repaired = damaged = 0
    with open(path, "rb") as fh:
        codec, bom = sniff_encoding(fh.read(SAMPLE_BYTES))
        fh.seek(bom)
        if codec is None:
            info.warnings.append("could not tell the text encoding; read as UTF-8 with unreadable bytes replaced")
        elif codec not in ("utf-8", "ascii"):
            info.warnings.append(f"read as {codec}")
        for line, lost in _raw_lines(fh, codec):
            if repair:
                fixed = repair_text(line)
                line = fixed.text
                if fixed.repaired:
                    repaired += 1
                    info.repaired = True
                lost = lost or fixed.damaged
            elif REPLACEMENT in line:
                lost = True
            if lost:
                damaged += 1
                info.damaged = True
            yield line
    if repaired:
        info.warnings.append(f"repaired mis-decoded text (mojibake) in {repaired} line(s)")
    if damaged:
        info.warnings.append(f"{damaged} line(s) had text that could not be fully recovered; the readable parts were imported")


def _raw_lines(fh: io.BufferedReader, codec: str | None) -> Iterator[tuple[str, bool]]:
    """Decoded lines and whether bytes were lost. CR-only line ends are split too."""
    if codec in WIDE:
        # NUL bytes of UTF-16/32 rule out splitting raw bytes on b"\n"; let io decode.
        stream = io.TextIOWrapper(fh, encoding=codec, errors="replace", newline=None)
        while chunk := stream.readline(MAX_LINE):
            for piece in chunk.rstrip("\n").split("\r"):
                yield piece, REPLACEMENT in piece
        stream.detach()
        return
    for raw in _byte_lines(fh):
        text, lost = _decode(raw.rstrip(b"\r\n"), codec)
        if lost and codec == "utf-8":
            # A stray line in another encoding inside a UTF-8 file (a pasted cp1251 note).
            guess = _guess(raw) if len(raw) >= 16 else None
            if guess and not guess.startswith("utf"):
                text, lost = _decode(raw.rstrip(b"\r\n"), guess)
        for piece in text.split("\r"):
            yield piece, lost or REPLACEMENT in piece


def _byte_lines(fh: io.BufferedReader) -> Iterator[bytes]:
    carry = b""
    while True:
        chunk = fh.readline(MAX_LINE)
        if not chunk:
            if carry:
                yield carry
            return
        chunk, carry = carry + chunk, b""
        if len(chunk) >= MAX_LINE and not chunk.endswith(b"\n"):
            # Cut an over-long line at a space near its end, else where no character is split.
            cut = chunk.rfind(b" ", len(chunk) - 256) + 1 or _utf8_boundary(chunk)
            chunk, carry = chunk[:cut], chunk[cut:]
        yield chunk


def _utf8_boundary(chunk: bytes) -> int:
    """Length of `chunk` without a UTF-8 character cut off at its end."""
    i = len(chunk)
    while i > 0 and len(chunk) - i < 3 and 0x80 <= chunk[i - 1] < 0xC0:
        i -= 1
    if i > 0 and chunk[i - 1] >= 0xC0:
        lead = chunk[i - 1]
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if len(chunk) - (i - 1) < need:
            return i - 1
    return len(chunk)
