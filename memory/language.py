"""Language of a scene, recorded as an ISO 639-1 code in its metadata ("en", "ru", ...,
or "und" when unsure), so users who write in several languages can see and filter what
they imported, and the import summary can tell a user whose texts are mostly not English
to switch to the multilingual model.

py3langid (a naive Bayes classifier over byte n-grams, deterministic) is used instead of
langdetect: it takes about half a millisecond a scene where langdetect took 16-40 ms,
which was a quarter of an import's time. Short or ambiguous texts are "und" rather than
a guess: a confidence floor keeps "ok" or "Продолжим?" from being labelled Serbian or
Estonian. It reads the first SAMPLE characters of a scene: the classifier's cost grows
with the text (0.4 ms at 1,000 characters, 0.2 at 400 here), and a few sentences tell
the language as well as a page."""

from __future__ import annotations

import re
import threading
from itertools import islice

_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)
MIN_LETTERS = 12  # fewer letters than this: too little to tell
MIN_CONFIDENCE = 0.6  # normalised probability of the best language
SAMPLE = 400  # characters classified
_identifier = None
_lock = threading.Lock()


def _get():
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier  # the packaged model, loaded once (~1 s)

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def detect_language(text: str) -> str:
    sample = text[:SAMPLE]
    # Counting stops at the floor: a long scene is not scanned letter by letter.
    if sum(1 for _ in islice(_LETTERS.finditer(sample), MIN_LETTERS)) < MIN_LETTERS:
        return "und"
    language, confidence = _get().classify(sample)
    return language if confidence >= MIN_CONFIDENCE else "und"
