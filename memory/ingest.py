"""Importing files into scene memory, all-or-nothing per file.

For each file: detect the format, decide who "me" is, stream utterances through the
scene chunker, and embed (line by line, `memory.lines`) + insert scenes in batches
(bounded memory for any file size).
Atomicity: every scene added carries the id of its import run. If the file fails midway,
the run's scenes are deleted and the file's previous scenes are untouched; if it
succeeds, the file's scenes that no longer occur in it (a changed file) are deleted.
An import killed outright (kill -9) is still `running` in the journal; it is rolled back
as soon as any process opens the scene store (`memory.recovery`), while an import still
running in another process (it holds its lock) is left alone. Each file's report says
where its time went (`seconds`: parse, cut, language, embed, chroma, lexical, check,
other), which `alterego bench --only ingest` reports.

Who "me" is: the `--me` names, plus names already known from earlier imports; if none of
those speaks in a chat file (and the format does not mark the user itself), the most
frequent sender is taken and remembered, and the summary says so."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import MemoryConfig
from .documents import PROSE_KINDS
from .embedder import Embedder
from .errors import MemoryUserError, UnsupportedFormatError
from .importers import detect_format, open_source
from .journal import Journal
from .lines import embed_scenes
from .recovery import ImportLock, rollback_dead_imports
from .scenes import cut_scenes
from .store import SceneStore

log = logging.getLogger(__name__)

# Extensions picked up when a folder is imported; other files in a folder are listed as skipped.
FOLDER_EXTENSIONS = {".txt", ".md", ".markdown", ".json", ".srt", ".vtt"}
# Scenes per import step (embed, then store): the first step is small, so a file's first
# scenes are stored (and shown in the progress) within a second or two, and the steps then
# double up to BATCH_MAX — the embedder sorts a step's texts by length into batches, and a
# larger step means less padding and fewer waits for the slowest batch. Memory stays
# bounded by BATCH_MAX scenes. (Storing one step on a thread of its own while the next is
# embedded was tried: on 2 cores it slowed the embedding more than it hid, 127 vs 148
# scenes/s.)
BATCH = 128
BATCH_MAX = 512

Progress = Callable[[str, int, int, int], None]  # (file, file_index, file_count, scenes_so_far)


@dataclass
class FileReport:
    file: str
    kind: str = ""
    scenes_added: int = 0
    scenes_skipped: int = 0
    scenes_removed: int = 0
    repaired: bool = False
    damaged: bool = False
    me: list[str] = field(default_factory=list)
    me_detected: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    languages: dict[str, int] = field(default_factory=dict)  # new scenes per detected language
    # Wall seconds per stage: parse (reading the file into utterances), cut (into scenes),
    # language (scene metadata, mostly language detection), embed, chroma, lexical (the
    # BM25 rows), check (which scenes exist), other (the rest: me detection, cleanup).
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ImportSummary:
    reports: list[FileReport] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        ok = [r for r in self.reports if r.error is None]
        return {
            "files": len(self.reports),
            "scenes_added": sum(r.scenes_added for r in ok),
            "scenes_skipped": sum(r.scenes_skipped for r in ok),
            "scenes_removed": sum(r.scenes_removed for r in ok),
            "repaired": [r.file for r in ok if r.repaired],
            "damaged": [r.file for r in ok if r.damaged],
            "errors": [{"file": r.file, "error": r.error} for r in self.reports if r.error],
            "me": sorted({n for r in ok for n in r.me}),
            "me_detected": sorted({n for r in ok if r.me_detected for n in r.me}),
            "skipped_files": self.skipped_files,
            "languages": dict(sum((Counter(r.languages) for r in ok), Counter()).most_common()),
            "details": [asdict(r) for r in self.reports],
        }


def expand_paths(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Files to import: given files as they are; folders recursively (hidden entries and
    unknown extensions skipped and listed)."""
    files: list[Path] = []
    skipped: list[str] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    f = Path(root) / name
                    if name.startswith("."):
                        continue
                    if f.suffix.lower() in FOLDER_EXTENSIONS:
                        files.append(f)
                    else:
                        skipped.append(str(f))
        else:
            files.append(path)
    return files, skipped


class Ingestor:
    def __init__(self, config: MemoryConfig, journal: Journal, store: SceneStore, embedder: Embedder):
        self.config, self.journal, self.store, self.embedder = config, journal, store, embedder
        self.recover()

    def recover(self) -> None:
        """Roll back imports that were killed midway (their scenes are deleted)."""
        rollback_dead_imports(self.journal, self.store)

    def import_paths(
        self,
        paths: Iterable[Path],
        *,
        me: Iterable[str] = (),
        source_names: dict[Path, str] | None = None,
        progress: Progress | None = None,
    ) -> ImportSummary:
        files, skipped = expand_paths(paths)
        summary = ImportSummary(skipped_files=skipped)
        explicit_me = {m.strip() for m in me if m and m.strip()}
        if explicit_me:
            self.journal.add_me_names(explicit_me)
        for index, path in enumerate(files):
            source = (source_names or {}).get(path) or str(path.resolve())
            report = FileReport(file=source)
            summary.reports.append(report)
            try:
                self._import_file(path, source, explicit_me, report, lambda n: progress and progress(source, index, len(files), n))
            except MemoryUserError as exc:
                report.error = str(exc)
            except OSError as exc:
                report.error = f"{path.name}: cannot read ({exc.strerror or exc})"
        return summary

    # -- one file -------------------------------------------------------------------------
    def _import_file(self, path: Path, source: str, explicit_me: set[str], report: FileReport, tick) -> None:
        if not path.is_file():
            raise UnsupportedFormatError(f"{path}: no such file")
        started = time.perf_counter()
        kind = detect_format(path)
        report.kind = kind
        me_names = self._me_for(path, kind, explicit_me, report)

        import_id, lock = self._begin(source, kind)
        try:
            self._fill(path, source, kind, me_names, import_id, report, tick)
        finally:
            lock.release()  # only once the row is final: until then a recovery must see it alive
            stages = report.seconds
            stages["other"] = max(0.0, time.perf_counter() - started - sum(stages.values()))
            report.seconds = {k: round(v, 4) for k, v in stages.items()}

    def _fill(self, path: Path, source: str, kind: str, me_names: set[str], import_id: int, report: FileReport,
              tick) -> None:
        """Add the file's scenes under `import_id`; on any failure remove them again."""
        seen: set[str] = set()
        stages = report.seconds
        try:
            info, utterances = open_source(path, kind)
            scenes = cut_scenes(
                _timed(utterances, stages, "parse"), source=source, kind=kind, me_names=me_names,
                budget=self.config.scene_tokens, chat_gap_s=self.config.chat_gap_minutes * 60.0,
            )
            batch, step = [], BATCH
            for scene in _timed(scenes, stages, "cut"):
                if scene.id in seen:  # the same scene twice in one file: keep one
                    continue
                seen.add(scene.id)
                batch.append(scene)
                if len(batch) >= step:
                    self._insert(batch, import_id, report)
                    batch, step = [], min(2 * step, BATCH_MAX)
                    tick(report.scenes_added + report.scenes_skipped)
            self._insert(batch, import_id, report)
            tick(report.scenes_added + report.scenes_skipped)
            if not seen:
                raise UnsupportedFormatError(f"{path.name}: no text found to import")
        except BaseException as exc:
            removed = self.store.delete_where({"import_id": import_id})
            self.journal.finish_import(import_id, "failed", error=str(exc))
            log.info("import of %s failed, rolled back %s scenes: %s", source, removed, exc)
            report.scenes_added = 0
            raise
        # Success: drop scenes of this source that the file no longer contains.
        stale = set(self.store.ids_where({"source": source})) - seen
        report.scenes_removed = self.store.delete_ids(stale)
        self.journal.finish_import(import_id, "ok", scenes_added=report.scenes_added)
        report.repaired, report.damaged, report.warnings = info.repaired, info.damaged, list(info.warnings)

    def _begin(self, source: str, kind: str) -> tuple[int, ImportLock]:
        """Journal the import as running and take its lock (see memory.recovery)."""
        while True:
            import_id = self.journal.begin_import(source, kind)
            lock = ImportLock(self.journal, import_id)
            if lock.still_running:
                return import_id, lock
            lock.release()  # another process's recovery closed the row in between: start afresh

    def _me_for(self, path: Path, kind: str, explicit_me: set[str], report: FileReport) -> set[str]:
        known = explicit_me | self.journal.me_names()
        if kind in PROSE_KINDS or kind == "obsidian_chat" or kind == "chatgpt":
            # Prose is the user's own writing; these chat formats mark the user's turns.
            return known
        # A first pass over the file counts speakers (streamed, cheap next to embedding).
        info, utterances = open_source(path, kind)
        speakers: Counter = Counter()
        for utt in utterances:
            if utt.speaker:
                speakers[utt.speaker] += 1
        present = {s for s in speakers if s in known}
        if not present and explicit_me:
            # The user said who they are; guessing someone else would be wrong.
            report.warnings.append(f"none of {sorted(explicit_me)} speaks in this file")
        elif not present and speakers:
            top = speakers.most_common(1)[0][0]
            present = {top}
            report.me_detected = True
            self.journal.add_me_names(present)
        report.me = sorted(present)
        return known | present

    def _insert(self, batch: list, import_id: int, report: FileReport) -> None:
        if not batch:
            return
        stages = report.seconds
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - clock
            clock = now

        ids = [s.id for s in batch]
        existing = self.store.existing(ids)
        new = [s for s in batch if s.id not in existing]
        report.scenes_skipped += len(batch) - len(new)
        lap("check")
        if not new:
            return
        texts = [s.text for s in new]
        vectors, lines = embed_scenes(self.embedder.encode, texts, [s.source_kind for s in new])
        lap("embed")
        metas = [s.metadata(import_id) for s in new]
        lap("language")
        self.store.add([s.id for s in new], vectors, texts, metas, timings=stages, lines=lines)  # times its two parts
        report.scenes_added += len(new)
        for meta in metas:
            lang = meta.get("language") or "und"
            report.languages[lang] = report.languages.get(lang, 0) + 1


def _timed(items: Iterable, stages: dict[str, float], stage: str):
    """Yield from `items`, adding the time spent producing each to `stages[stage]`, less
    the time that stages timed inside it took (the cut stage pulls from the parse stage)."""
    iterator = iter(items)
    while True:
        start, inner = time.perf_counter(), sum(v for k, v in stages.items() if k != stage)
        item = next(iterator, _END)
        inner = sum(v for k, v in stages.items() if k != stage) - inner
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start - inner
        if item is _END:
            return
        yield item


_END = object()
