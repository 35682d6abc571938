"""Tuning retrieval on the recall benchmark's tuning people, never on the one it reports.

`python -m bench.tune --person dev2 --set passage_before=2 --set passage_after=4` builds
the person's chat history (`bench.chitchat.person`: DEV or DEV2, whose conversations
are not TEST's), imports it once into a kept workspace (`$ALTEREGO_HOME/bench/tune-<person>`,
reused by the next run for the same person), and prints the evidence recall of fixed
windows (the baseline) and of hybrid retrieval with the memory settings as configured,
then with each `--set` applied, at each `--budget`, and how often the evidence is in
one of the fused scenes passages are cut from (`bench.recall.pool_recall`). Settings
are `memory.*` fields; values are read as YAML (`3`, `0.5`, `true`). This is the
harness behind the tuned defaults in `memory.config`; TEST (`alterego bench --only
recall`) is run once, after a choice is made, so the reported figure is not tuned on.

Usage: .venv/bin/python -m bench.tune [--person dev|dev2] [--budget N ...] [--set KEY=VALUE ...] [--fresh]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys

import yaml

from bench.common import Workspace, bench_home, stderr_progress

TUNING_PEOPLE = ("dev", "dev2")


def overrides(pairs: list[str], config) -> dict:
    """`KEY=VALUE` strings as memory settings, refusing keys MemoryConfig lacks."""
    fields = {f.name for f in dataclasses.fields(config)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of memory's settings "
                             f"({', '.join(sorted(fields))})")
        out[key] = yaml.safe_load(value)
    return out


def tune(ws: Workspace, person: str, budgets: list[int], variants: list[dict], fresh: bool = False,
         conversations: int | None = None, questions: int = 400) -> dict:
    """Recall of fixed windows and of hybrid retrieval under each variant (`{}`: the
    configured settings) at each budget, for one tuning person."""
    from bench.chitchat import person as build_person
    from bench.recall import pool_recall, prepare, recall_at
    from memory.journal import Journal

    if person not in TUNING_PEOPLE:
        raise SystemExit(f"--person must be one of {', '.join(TUNING_PEOPLE)}: TEST is reported, not tuned on")
    settings = ws.settings("tune")
    settings.home = ws.out / f"tune-{person}"  # kept between runs, unlike the run's scratch root
    if fresh:
        shutil.rmtree(settings.home, ignore_errors=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    ws.progress(f"tune: building {person}'s chat history and its questions")
    corpus = build_person(person, conversations=conversations, questions=questions)
    journal = Journal(settings.journal_path)
    try:
        prep = prepare(corpus, settings, journal, ws.embedder, ws.progress, reuse=True)
        rows = []
        pools: dict[int, float] = {}  # the fused pool does not depend on the budget
        for budget in budgets:
            for n, over in enumerate(variants):
                ws.progress(f"tune: {len(prep.questions)} questions at {budget} tokens, {over or 'as configured'}")
                config = dataclasses.replace(settings.memory, **over)
                r = recall_at(prep, config, budget)
                if n not in pools:
                    pools[n] = pool_recall(prep, config)
                rows.append({"budget": budget, "settings": over, "hybrid": r["hybrid"],
                             "fixed_windows": r["fixed_windows"],
                             "ratio": round(r["hybrid"] / r["fixed_windows"], 3) if r["fixed_windows"] else None,
                             "evidence_in_fused_scenes": pools[n]})
    finally:
        journal.close()
    return {"person": person, "questions": len(prep.questions), "scenes": prep.scenes,
            "import_s": round(prep.import_s, 1), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--person", default="dev2", help="dev or dev2 (default dev2: 400 questions)")
    parser.add_argument("--budget", type=int, action="append", help="token budget (repeatable; default 600)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a memory setting for one variant (repeat --set for more keys; "
                             "separate variants with --then)")
    parser.add_argument("--then", action="append_const", dest="set", const="--then",
                        help="start another variant")
    parser.add_argument("--fresh", action="store_true", help="import the person again")
    args = parser.parse_args(argv)
    home = bench_home()
    ws = Workspace(home, stderr_progress())
    try:
        groups: list[list[str]] = [[]]
        for item in args.set:
            if item == "--then":
                groups.append([])
            else:
                groups[-1].append(item)
        variants = [{}] + [overrides(g, ws.base.memory) for g in groups if g]
        report = tune(ws, args.person, args.budget or [600], variants, fresh=args.fresh)
    finally:
        ws.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
