"""Who and when a message asks about: the time and speaker hints of a query.

"What did Anna say about the trip last summer?" names a person who speaks in memory and
a time span; "что Иван писал в марте" the same in Russian. `parse_hints` finds both:
speakers by comparing the message's stemmed words with the first and last names of the
people who speak in memory (so "Ивана" finds "Иван Петров"), times from a small set of
English and Russian expressions (yesterday, last week/month/year, last summer, in March,
in 2019, three weeks ago, вчера, в прошлом году, прошлым летом, в марте, …), relative to
`now`. Retrieval turns them into a score bonus and an extra filtered search — never a
hard filter, so a misread hint costs a little ranking, not the answer."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .lexical import tokenize

DAY = 86400.0

_MONTHS_EN = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
              "october", "november", "december"]
_MONTHS_RU = [r"январ\w*", r"феврал\w*", r"март\w*", r"апрел\w*", r"ма[йяе]", r"июн\w*", r"июл\w*",
              r"август\w*", r"сентябр\w*", r"октябр\w*", r"ноябр\w*", r"декабр\w*"]
_SEASONS = {  # name → first month; a season runs three months (winter: Dec–Feb)
    "spring": 3, "summer": 6, "autumn": 9, "fall": 9, "winter": 12,
    "весн": 3, "лет": 6, "осен": 9, "зим": 12,
}
_UNITS = {"day": 1, "week": 7, "month": 30, "year": 365,
          "дн": 1, "ден": 1, "недел": 7, "месяц": 30, "год": 365, "лет": 365}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "couple": 2,
            "few": 3, "several": 3, "один": 1, "одну": 1, "два": 2, "две": 2, "три": 3, "четыре": 4,
            "пять": 5, "несколько": 3, "пару": 2}


@dataclass
class Hints:
    speakers: set[str] = field(default_factory=set)  # full names as stored in scene metadata
    since: float | None = None  # POSIX seconds; the span a message asks about
    until: float | None = None

    @property
    def timed(self) -> bool:
        return self.since is not None

    def in_span(self, ts: float | None) -> bool:
        return self.timed and ts is not None and self.since <= ts < self.until


def _month_span(year: int, month: int, months: int = 1) -> tuple[float, float]:
    start = datetime(year, month, 1)
    end_month = month + months
    end = datetime(year + (end_month - 1) // 12, (end_month - 1) % 12 + 1, 1)
    return start.timestamp(), end.timestamp()


def _last(month: int, now: datetime, months: int = 1, *, completed: bool) -> tuple[float, float]:
    """The most recent span of `months` months starting at `month` that began before now
    (that ended before now, when `completed`)."""
    year = now.year
    while True:
        since, until = _month_span(year, month, months)
        if (until if completed else since) <= now.timestamp():
            return since, until
        year -= 1


def _time_span(text: str, now: datetime) -> tuple[float, float] | None:
    t = text.lower().replace("ё", "е")
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if re.search(r"\b(yesterday|вчера)\b", t):
        return (midnight - timedelta(days=1)).timestamp(), midnight.timestamp()
    if re.search(r"\b(today|tonight|this morning|сегодня)\b", t):
        return midnight.timestamp(), now.timestamp() + 1
    m = re.search(r"\b(a|an|one|two|three|four|five|six|couple|few|several|\d+)\s+(?:of\s+)?(day|week|month|year)s?\s+ago\b"
                  r"|\b(\d+|один|одну|два|две|три|четыре|пять|несколько|пару)\s+(дн|ден|недел|месяц|год|лет)\w*\s+назад\b", t)
    if m:
        n_word, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        days = (int(n_word) if n_word.isdigit() else _NUMBERS.get(n_word, 1)) * _UNITS[unit]
        centre = now.timestamp() - days * DAY
        half = max(days * 0.5, 1.0) * DAY
        return centre - half, centre + half
    year = re.search(r"\b(19[7-9]\d|20\d\d)\b", t)
    week_start = midnight - timedelta(days=midnight.weekday())
    if re.search(r"\blast week\b|\bпрошл\w* недел", t):
        return (week_start - timedelta(days=7)).timestamp(), week_start.timestamp()
    if re.search(r"\bthis week\b|\bэт\w* недел", t):
        return week_start.timestamp(), now.timestamp() + 1
    for pattern, first in _SEASONS.items():
        ru = not pattern.isascii()
        last = rf"\b(last|past)\s+{pattern}\b" if not ru else rf"\bпрошл\w*\s+{pattern}\w*"
        this = rf"\bthis\s+{pattern}\b" if not ru else rf"\bэт\w*\s+{pattern}\w*"
        bare = rf"\b(in|during|over)\s+(the\s+)?{pattern}\b" if not ru else rf"\b{pattern}(ом|ой|ою|ью)\b"
        if re.search(last, t):
            return _last(first, now, 3, completed=True)
        if year and re.search(rf"\b{pattern}", t):
            return _month_span(int(year.group(1)), first, 3)
        if re.search(this, t) or re.search(bare, t):
            return _last(first, now, 3, completed=False)
    if re.search(r"\blast month\b|\bпрошл\w* месяц", t):
        since = (midnight.replace(day=1) - timedelta(days=1)).replace(day=1)
        return _month_span(since.year, since.month)
    if re.search(r"\bthis month\b|\bэт\w* месяц", t):
        return _month_span(now.year, now.month)
    if re.search(r"\blast year\b|\bпрошл\w* год", t):
        return datetime(now.year - 1, 1, 1).timestamp(), datetime(now.year, 1, 1).timestamp()
    if re.search(r"\bthis year\b|\bэт\w* год", t):
        return datetime(now.year, 1, 1).timestamp(), now.timestamp() + 1
    for i, (en, ru) in enumerate(zip(_MONTHS_EN, _MONTHS_RU)):
        # "may" is also a verb: only "in May" / "May 2021" count in English.
        en_pat = rf"\b(in|of|during|since)\s+{en}\b|\b{en}\s+(19|20)\d\d\b" if en == "may" else rf"\b{en}\b"
        if re.search(en_pat, t) or re.search(rf"\b{ru}\b", t):
            if year:
                return _month_span(int(year.group(1)), i + 1)
            return _last(i + 1, now, completed=False)
    if year:
        y = int(year.group(1))
        return datetime(y, 1, 1).timestamp(), datetime(y + 1, 1, 1).timestamp()
    return None


def speaker_names(speakers: list[str]) -> dict[str, set[str]]:
    """name term (stemmed first or last name) → the full names it stands for."""
    out: dict[str, set[str]] = {}
    for joined in set(speakers):
        for name in joined.split(", "):
            for term in tokenize(name):
                if len(term) >= 2 and not term.isdigit():
                    out.setdefault(term, set()).add(name)
    return out


def parse_hints(text: str, names: dict[str, set[str]] | None = None, now: float | None = None) -> Hints:
    hints = Hints()
    span = _time_span(text, datetime.fromtimestamp(now if now is not None else time.time()))
    if span:
        hints.since, hints.until = span
    for term in tokenize(text):
        hints.speakers |= (names or {}).get(term, set())
    return hints
