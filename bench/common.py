"""What every benchmark suite shares: the `Workspace` a run works in, the `figure` record
(a measured value next to its baseline and their ratio), progress lines on stderr, and
the report of one suite run alone (`python -m bench.<suite>`: JSON under
`$ALTEREGO_HOME/bench/`, printed as JSON or as a table).

A run never touches the user's data: every suite gets its own scratch data root under
`$ALTEREGO_HOME/bench/` (journal, Chroma, adapters, persona overrides), deleted at the
end, or by the next run when this one was killed before it could. What the suites share
is what is expensive and stateless between them: one loaded chat model and one
embedder. The only thing kept under the real data root is the cached HF-format
training base (`hf_base/`), the same cache `alterego train` uses."""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

Progress = Callable[[str], None]


def bench_home() -> Path:
    """ALTEREGO_HOME, or a fresh temp dir so a benchmark script never writes into the
    per-user data dir unless asked to."""
    home = Path(os.environ.get("ALTEREGO_HOME") or tempfile.mkdtemp(prefix="alterego-bench-"))
    os.environ["ALTEREGO_HOME"] = str(home)
    return home


def stderr_progress() -> Progress:
    """Progress lines on stderr with the time since the run started (users wait minutes)."""
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[bench {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def no_progress(message: str) -> None:  # noqa: ARG001
    pass


def sig(x: float, digits: int = 4) -> float:
    """Round to significant digits: 0.0213 ms and 812.4 ms both stay readable."""
    return float(f"{x:.{digits}g}")


def median(values) -> float:
    return statistics.median(list(values))


def figure(title: str, value: float, unit: str, baseline: str, baseline_value: float, *, better: str,
           label: str = "alterego", baseline_label: str = "baseline", **extra) -> dict:
    """One figure of the report: `value` measured next to `baseline_value` in the same
    run; `ratio` is always value / baseline; `better` says which direction is good."""
    assert better in ("lower", "higher")
    return {
        "title": title,
        "value": sig(value),
        "unit": unit,
        "label": label,
        "baseline": baseline,
        "baseline_label": baseline_label,
        "baseline_value": sig(baseline_value),
        "ratio": sig(value / baseline_value) if baseline_value else None,
        "better": better,
        **extra,
    }


def write_fixed_personas(folder: Path, max_tokens: int, repeat_penalty: float = 1.0) -> Path:
    """Copy the built-in personas (with their exemplars and examples) as user overrides
    that decode greedily for a fixed length, so ours and the baseline generate the same
    tokens and a turn's cost does not depend on sampling luck."""
    from personas.catalog import BUILTIN_DIR

    for src in sorted(BUILTIN_DIR.glob("*/persona.yaml")):
        dst = folder / src.parent.name
        shutil.copytree(src.parent, dst, dirs_exist_ok=True)
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
        data["generation"] = {"temperature": 0.0, "max_tokens": max_tokens, "repeat_penalty": repeat_penalty}
        (dst / "persona.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


ROOT_LOCK = ".owner.lock"


def sweep_dead_roots(folder: Path) -> list[Path]:
    """Remove the scratch roots (`work-<pid>-*`) of runs that are gone: a run killed
    outright (SIGKILL, a closed terminal) never reached its own cleanup, and its imported
    corpora and adapters would otherwise stay on disk for good. A live run holds the
    `flock` on its root's ROOT_LOCK (memory.recovery.claim: a pid cannot tell a run in a
    restarted container, or in another pid namespace, from a dead one; the lock can)."""
    from memory.recovery import claim

    removed = []
    for root in folder.glob("work-*"):
        lock = root / ROOT_LOCK
        if not lock.exists():
            continue  # a root being made this instant, or from before the lock: not ours to judge
        fd = claim(lock)
        if fd is None:
            continue  # its run is alive
        try:
            shutil.rmtree(root, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(root)
    return removed


class Workspace:
    """Scratch data roots for the suites of one run, plus the model and embedder they
    share (loaded on first use). `cache` passes data between suites (the ingest suite's
    embedded scenes are the retrieval suite's corpus)."""

    def __init__(self, home: Path, progress: Progress = no_progress):
        from memory.recovery import claim
        from webapp.settings import load_settings

        self.home = Path(home)
        self.out = self.home / "bench"
        self.out.mkdir(parents=True, exist_ok=True)
        sweep_dead_roots(self.out)
        self.root = Path(tempfile.mkdtemp(prefix=f"work-{os.getpid()}-", dir=self.out))
        self._owner = claim(self.root / ROOT_LOCK)  # held until close(): this root is in use
        self.progress = progress
        # The user's config (model path, threads) applies; their data does not.
        self.base = load_settings(home=self.home)
        self.cache: dict = {}
        self._engine = None
        self._embedder = None

    def settings(self, suite: str):
        settings = copy.deepcopy(self.base)
        settings.home = self.root / suite
        settings.home.mkdir(parents=True, exist_ok=True)
        return settings

    @property
    def engine(self):
        if self._engine is None:
            from personas.engine import LlamaEngine

            self.progress("loading the chat model")
            self._engine = LlamaEngine(self.base.engine)
        return self._engine

    @property
    def embedder(self):
        if self._embedder is None:
            from memory.embedder import Embedder

            self.progress("loading the embedder")
            self._embedder = Embedder(self.base.memory.embedder, self.base.memory.embed_batch_size,
                                      backend=self.base.memory.embedder_backend)
            self._embedder.encode(["warm up"])  # the first encode pays for lazy loading
        return self._embedder

    def service(self, suite: str, max_tokens: int = 48, engine=None, repeat_penalty: float = 1.0):
        """A ChatService over a fresh scratch root, the shared model (or `engine`) and
        embedder, and greedy fixed-length personas (`repeat_penalty` 1.0: the same tokens
        as a raw llama.cpp baseline; the voice suite keeps Me's own 1.15 for text quality)."""
        from memory.journal import Journal
        from memory.service import SceneMemory
        from webapp.chat import ChatService

        settings = self.settings(suite)
        write_fixed_personas(settings.home / "personas", max_tokens, repeat_penalty)
        journal = Journal(settings.journal_path)
        memory = SceneMemory(settings.memory, settings.home, journal, embedder=self.embedder)
        if engine is not None:
            settings.engine.model = str(engine.model_path)  # adapters and training follow that model
        return ChatService(settings, engine=engine or self.engine, journal=journal, memory=memory)

    def hf_base(self) -> Path:
        """The HF-format training base, materialised once under the real data root."""
        from tuning.pipeline import hf_base_dir

        self.progress("preparing the HF-format training base (cached after the first run)")
        return hf_base_dir(self.home, self.base.tuning, self.base.engine.model_spec)

    def models(self) -> dict:
        """What was loaded in this run (for the report)."""
        out: dict = {}
        if self._engine is not None:
            out.update(chat=self._engine.model_path.name, threads=self._engine.llm.n_threads, n_ctx=self._engine.n_ctx)
        if self._embedder is not None:
            out["embedder"] = str(self._embedder.path)
        return out

    def close(self) -> None:
        if self._engine is not None:
            # Freed now rather than in Llama.__del__ at interpreter exit, which prints
            # a harmless but alarming traceback once the ctypes bindings are gone.
            self._engine.llm.close()
            self._engine = None
        shutil.rmtree(self.root, ignore_errors=True)
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None


def run_suite(run: Callable, home: Path, quick: bool, progress: Progress, workspace: Workspace | None) -> dict:
    """Call `run(ws, quick)` in the given workspace, or in a fresh one removed afterwards."""
    if workspace is not None:
        return run(workspace, quick)
    ws = Workspace(home, progress)
    try:
        return run(ws, quick)
    finally:
        ws.close()


def format_table(figures: dict[str, dict]) -> str:
    """Figures as aligned lines: ours, the baseline, the ratio, what the baseline is."""
    rows = [("figure", "alterego", "baseline", "ratio", "baseline is")]
    for f in figures.values():
        unit = f" {f['unit']}" if f["unit"] else ""
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.4g} ({f['better']} is better)"
        rows.append((f["title"], f"{f['value']:.4g}{unit}", f"{f['baseline_value']:.4g}{unit}", ratio, f["baseline"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)) for row in rows
    )


def write_report(home: Path, name: str, report: dict, as_json: bool) -> Path:
    out = home / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report.get("figures", {})))
        print(f"report: {out}")
    return out


def suite_main(name: str, run: Callable, doc: str, argv: list[str] | None = None) -> int:
    """The command line of one suite run alone: `python -m bench.<name> [--json] [--quick]`."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (a smoke test)")
    args = parser.parse_args(argv)
    home = bench_home()
    report = run(home, args.quick, stderr_progress())
    write_report(home, name, report, args.json)
    return 0
