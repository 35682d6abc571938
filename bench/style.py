"""What the voice benchmark measures in a reply's text, model-free: how much it sounds like
one speaker, whether it copies memory, whether it talks about the prompt.

- `StyleMeasure`: character 2–4-gram TF-IDF (IDF over all lines of the corpus), and a
  reply's score is its cosine to the speaker's training lines (their centroid) minus its
  cosine to everyone else's. Character n-grams catch spelling, contractions, oaths and
  punctuation habits — what a voice is made of — and work in any language without a
  tokenizer; subtracting the others' centroid removes what the speaker shares with the
  rest of the corpus (period, topic), so the score says "this speaker", not "this book".
  `auc` is its calibration on real lines: how often a real held-out line of the speaker
  scores above a real held-out line of someone else (0.5 = no better than chance).
- `copies_verbatim`: a reply holds a run of ≥ 8 words that also occurs in a retrieved line.
- `meta_commentary`: a reply talks about "the user", the style or itself as an assistant
  instead of answering (phrases seen in prompt-only Me replies), or recites its
  instructions."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

NGRAMS = (2, 3, 4)
WORD = re.compile(r"\w+(?:'\w+)?")
# Phrases in which a reply talks about its instructions or the user instead of as them,
# in English and Russian: collected from prompt-only Me replies (issue 16) and the usual
# assistant disclaimers. Kept narrow: "your words" or "the note" are things people say.
META = re.compile(
    r"\bthe user(?:'s)?\b|\buser's\b|\bin the style\b|\bstyle of\b|\bwriting style\b|\bpast writing\b|"
    r"\bas an ai\b|\blanguage model\b|\bthis is (?:a|an) (?:classic |good |great )?example\b|\balter ego\b|"
    r"\bin the first person\b|пользовател|\bв стиле\b|\bкак ии\b|языков(?:ая|ой) модел|"
    # the prompt's own headings echoed back ("Message: …", "Lines you wrote before: …")
    r"^\s*-?\s*message:|\blines you wrote\b|\bpast chats and notes\b|"
    # describing the conversation instead of taking part in it
    r"\bthe original text\b|\bcontinuation of the conversation\b",
    re.IGNORECASE | re.MULTILINE,
)


def _ngrams(text: str) -> Counter:
    t = " " + re.sub(r"\s+", " ", text.lower()).strip() + " "
    return Counter(t[i:i + n] for n in NGRAMS for i in range(len(t) - n + 1))


def _norm(vec: dict[str, float]) -> dict[str, float]:
    size = math.sqrt(sum(v * v for v in vec.values()))
    return {k: v / size for k, v in vec.items()} if size else {}


def _dot(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


class StyleMeasure:
    """Char n-gram TF-IDF closeness to one speaker's lines against everyone else's."""

    def __init__(self, speaker_lines: list[str], other_lines: list[str]):
        if not speaker_lines or not other_lines:
            raise ValueError("the style measure needs lines of the speaker and of others")
        grams = [_ngrams(t) for t in speaker_lines + other_lines]
        df: Counter = Counter()
        for g in grams:
            df.update(g.keys())
        n = len(grams)
        self.idf = {k: math.log((1 + n) / (1 + d)) + 1 for k, d in df.items()}
        self.speaker = self._centroid(grams[:len(speaker_lines)])
        self.others = self._centroid(grams[len(speaker_lines):])

    def _vector(self, grams: Counter) -> dict[str, float]:
        # Unseen n-grams get the highest IDF: they are rare by definition.
        top = math.log(1 + len(self.idf)) + 1
        return _norm({k: (1 + math.log(c)) * self.idf.get(k, top) for k, c in grams.items()})

    def _centroid(self, grams: list[Counter]) -> dict[str, float]:
        total: Counter = Counter()
        for g in grams:
            total.update(self._vector(g))
        return _norm(dict(total))

    def score(self, text: str) -> float:
        v = self._vector(_ngrams(text))
        return _dot(v, self.speaker) - _dot(v, self.others) if v else -1.0

    def auc(self, speaker_lines: Iterable[str], other_lines: Iterable[str]) -> float:
        """P(a real line of the speaker scores above a real line of someone else)."""
        mine = [self.score(t) for t in speaker_lines]
        theirs = [self.score(t) for t in other_lines]
        if not mine or not theirs:
            return float("nan")
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in mine for b in theirs)
        return wins / (len(mine) * len(theirs))


def word_runs(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def copies_verbatim(reply: str, sources: Iterable[str], n: int = 8) -> bool:
    """Does `reply` contain a run of `n` words that a retrieved text also holds?"""
    runs = word_runs(reply, n)
    return bool(runs) and any(runs & word_runs(s, n) for s in sources)


def meta_commentary(reply: str, instructions: str = "") -> bool:
    """Does `reply` talk about the user, the style or itself, or repeat its instructions
    (a run of 8 words from `instructions`, e.g. the persona's system prompt)?"""
    return bool(META.search(reply)) or (bool(instructions) and copies_verbatim(reply, [instructions]))
