"""Line vectors: a scene is embedded line by line (a chat message without its "Name: "
label, or a prose paragraph), its vector for Chroma is the normalised mean of its line
vectors, and the line vectors themselves are kept, int8, in the scene's BM25 row
(`memory.lexical`), so a turn can score each line of a candidate scene by meaning as
well as by words (`memory.retrieval`). Why: the line that answers a question is one
message among a dozen, and a whole-scene vector blurs it: on the recall benchmark at
600 tokens, scoring lines by their own cosine found the evidence for 0.454 of the
tuning person's questions against 0.375 with the scene's cosine alone, and 0.276
against 0.250 for the reported person. Embedding lines costs about what embedding
whole scenes did (the same tokens in shorter sequences: 0.97x on the ingest
benchmark's chat, 1.24x on the recall benchmark's chats of very short messages)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .documents import PROSE_KINDS


def scene_lines(text: str, kind: str) -> list[str]:
    """A stored scene's lines as the retriever sees them: messages ("Name: text") for
    chats, paragraphs for prose."""
    sep = "\n\n" if kind in PROSE_KINDS else "\n"
    return [line for line in text.split(sep) if line.strip()]


def line_text(line: str, kind: str) -> str:
    """What is embedded of a line: a chat message without its speaker's label (names
    would pull every line of one person together; who speaks is matched by BM25 and the
    speaker hints)."""
    if kind not in PROSE_KINDS:
        label, sep, said = line.partition(": ")
        if sep and said.strip() and len(label) <= 60:
            return said
    return line


def embed_scenes(encode: Callable[[list[str]], np.ndarray], texts: list[str],
                 kinds: list[str]) -> tuple[np.ndarray, list[bytes]]:
    """Scene vectors (normalised means of their line vectors) and each scene's packed
    line vectors, from one `encode` call over all the lines."""
    per = []
    flat: list[str] = []
    for text, kind in zip(texts, kinds):
        lines = [line_text(line, kind) for line in scene_lines(text, kind)] or [text]
        per.append(len(lines))
        flat += lines
    vectors = np.asarray(encode(flat), dtype=np.float32)
    scenes = np.zeros((len(texts), vectors.shape[1] if len(vectors) else 0), dtype=np.float32)
    packed = []
    start = 0
    for n, count in enumerate(per):
        rows = vectors[start : start + count]
        start += count
        mean = rows.mean(axis=0)
        scenes[n] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        packed.append(pack(rows))
    return scenes, packed


def line_cosines(vectors: np.ndarray | None, query: np.ndarray, count: int) -> np.ndarray | None:
    """Each line's cosine to the (normalised) query, or None when the scene has no line
    vectors or they do not match its `count` lines (a row from another text)."""
    if vectors is None or len(vectors) != count:
        return None
    return vectors @ query


def pack(vectors: np.ndarray) -> bytes:
    """Rows as int8 with a float32 scale each (a cosine error of about 0.001): 4 + 4n +
    n·d bytes, so 100k scenes of ten lines take ~390 MB instead of 1.5 GB."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    scale = np.abs(vectors).max(axis=1) / 127.0 if n else np.zeros(0, np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
    return np.uint32(n).tobytes() + scale.tobytes() + q.tobytes()


def unpack(blob: bytes | None) -> np.ndarray | None:
    """Packed rows back as float32 (None for none, or a blob that does not add up)."""
    if not blob or len(blob) < 4:
        return None
    n = int(np.frombuffer(blob[:4], dtype=np.uint32)[0])
    body = len(blob) - 4 - 4 * n
    if n == 0 or body <= 0 or body % n:
        return None
    scale = np.frombuffer(blob[4 : 4 + 4 * n], dtype=np.float32)
    q = np.frombuffer(blob[4 + 4 * n :], dtype=np.int8).reshape(n, body // n)
    return q.astype(np.float32) * scale[:, None]
