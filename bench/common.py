"""What every benchmark script shares: a data root (ALTEREGO_HOME, or a fresh temp dir
so a benchmark never touches the user's data unless asked) and the report — written as
JSON under `$ALTEREGO_HOME/bench/` and printed as JSON or as aligned lines."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_home() -> Path:
    home = Path(os.environ.get("ALTEREGO_HOME") or tempfile.mkdtemp(prefix="alterego-bench-"))
    os.environ["ALTEREGO_HOME"] = str(home)
    return home


def write_report(home: Path, name: str, report: dict, as_json: bool) -> Path:
    out = home / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in report) + 2
        for key, value in report.items():
            print(f"{key:{width}} {value}")
        print(f"report: {out}")
    return out
