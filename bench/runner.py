"""`alterego bench`: every benchmark suite in one process, one report.

Runs the selected suites (chat, personas, ingest, retrieval, recall, training, models, voice, idle;
responsiveness only when asked, it takes minutes) in one `Workspace`, so the chat model and the
embedder load once. Collects every figure — `{value, unit, baseline, baseline_value,
ratio}` — with machine facts, library versions and timestamps into
`$ALTEREGO_HOME/bench/report.json`, and draws `report.png`. While suites run, anything
written to stdout (by us or by a library) goes to stderr, so `--json` prints exactly one
JSON document. A suite that fails is recorded under `errors`; the others still run.

Usage: .venv/bin/python -m bench.runner [--json] [--quick] [--only chat,ingest] [--responsiveness]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench.common import Progress, Workspace, bench_home, format_table, no_progress, stderr_progress
from webapp.errors import AppUserError

SUITES = ("chat", "personas", "ingest", "retrieval", "recall", "training", "models", "voice", "idle",
          "responsiveness")
DEFAULT_SUITES = SUITES[:-1]
PACKAGES = ("alterego", "llama_cpp_python", "torch", "transformers", "peft", "trl", "sentence-transformers",
            "chromadb", "gradio", "matplotlib")


class BenchSelectionError(AppUserError):
    """`--only` names a suite that does not exist."""


def select_suites(only: str | None = None, responsiveness: bool = False) -> list[str]:
    if not only:
        return list(DEFAULT_SUITES) + (["responsiveness"] if responsiveness else [])
    names = [n.strip().lower() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise BenchSelectionError(f"unknown benchmark suite(s) {', '.join(unknown) or '(none)'}; "
                                  f"choose from: {', '.join(SUITES)}")
    return [s for s in SUITES if s in names or (s == "responsiveness" and responsiveness)]


def machine_info() -> dict:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model or platform.processor(),
            "platform": platform.platform(), "python": platform.python_version()}
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr, so C libraries' prints can't break `--json`."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_bench(home: Path, *, quick: bool = False, suites: list[str] | None = None,
              progress: Progress = no_progress) -> dict:
    """Run the suites, write report.json and report.png under `home/bench/`, return the report."""
    suites = list(suites or DEFAULT_SUITES)
    started = time.perf_counter()
    report: dict = {
        "started_at": now(), "finished_at": None, "wall_s": None, "quick": quick, "suites_run": suites,
        "machine": {**machine_info(), "load_average_start": load_average()}, "versions": versions(),
        "models": {}, "figures": {}, "suites": {}, "errors": {},
    }
    with stdout_to_stderr():
        ws = Workspace(home, progress)
        try:
            for name in suites:
                module = importlib.import_module(f"bench.{name}")
                progress(f"{name}: starting")
                t0 = time.perf_counter()
                try:
                    result = module.run(home, quick, progress, workspace=ws)
                except Exception as exc:  # noqa: BLE001 — one failed suite must not cost the others' figures
                    traceback.print_exc()
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                    progress(f"{name}: FAILED ({exc})")
                    continue
                seconds = round(time.perf_counter() - t0, 1)
                report["figures"].update(result["figures"])
                report["suites"][name] = {"seconds": seconds, **result.get("details", {})}
                progress(f"{name}: done in {seconds:.0f} s")
            report["models"] = ws.models()
        finally:
            ws.close()
        report["machine"]["load_average_end"] = load_average()
        report["finished_at"] = now()
        report["wall_s"] = round(time.perf_counter() - started, 1)
        out = home / "bench"
        report["report_json"] = str(out / "report.json")
        report["report_png"] = str(out / "report.png")
        from bench.chart import draw

        draw(report, out / "report.png")
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"alterego bench ({'quick' if report['quick'] else 'full'}) · {report['finished_at']} · {report['wall_s']:.0f} s",
        f"{m['cpu_count']} CPUs · {m['cpu_model']} · load {m['load_average_start']} → {m['load_average_end']} · "
        f"{report['models'].get('chat', '')}",
        "",
        format_table(report["figures"]),
    ]
    for name, error in report["errors"].items():
        lines.append(f"FAILED {name}: {error}")
    lines += ["", f"report: {report['report_json']}", f"chart:  {report['report_png']}"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("--quick", action="store_true", help="small sizes and one run each (a smoke test of a few minutes)")
    parser.add_argument("--only", metavar="SUITES", help=f"comma-separated suites to run, of: {', '.join(SUITES)}")
    parser.add_argument("--responsiveness", action="store_true",
                        help="also measure chat latency while a training run is in progress (takes minutes)")


def main_with(home: Path, args: argparse.Namespace) -> int:
    """Run as the command line asked and print the report; 1 if a suite failed."""
    suites = select_suites(args.only, args.responsiveness)
    report = run_bench(home, quick=args.quick, suites=suites, progress=stderr_progress())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main_with(bench_home(), args)
    except AppUserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
