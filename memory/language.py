"""Language of a scene, recorded as an ISO 639-1 code in its metadata ("en", "ru", ...,
or "und" when unsure), so users who write in several languages can see and filter what
they imported. langdetect is randomised by default; the seed makes it deterministic,
which matters because the same scene must always get the same metadata."""

from __future__ import annotations

import re

_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)


def detect_language(text: str) -> str:
    sample = text[:1000]
    if len(_LETTERS.findall(sample)) < 12:
        return "und"
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(sample)
    except LangDetectException:
        return "und"
