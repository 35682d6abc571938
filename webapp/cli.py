"""The `alterego` command line. Every command is a thin call into `ChatService` (or the
service of its package), so what the CLI can do, a test can do without a subprocess.
User errors print one clear line on stderr and exit with status 2; `--json` output is
a single JSON document on stdout. Heavy libraries load only inside the commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from .errors import USER_ERRORS
from .reports import format_dataset_summary, format_import_summary


def _settings():
    from .settings import load_settings

    return load_settings()


def _service(settings=None):
    from .chat import ChatService

    return ChatService(settings or _settings())


def cmd_health(args: argparse.Namespace) -> int:
    """Ask the running app's /health (Docker's HEALTHCHECK runs this): exit 0 when it can
    chat, 1 when it is down, unreachable or still starting."""
    import urllib.error
    import urllib.request

    from .server import is_loopback

    settings = _settings()
    host = settings.server.host
    host = "127.0.0.1" if is_loopback(host) or host in ("0.0.0.0", "::", "") else host
    url = f"http://{host}:{args.port or settings.server.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            code, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"alterego: health: no answer from {url} ({exc})", file=sys.stderr)
        return 1
    print(body.decode("utf-8", "replace"))
    return 0 if code == 200 else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .server import serve

    settings = _settings()
    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    serve(settings)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    service = _service()
    message = " ".join(args.message)
    if args.json:
        result = service.send(message, persona=args.persona, conversation_id=args.conversation)
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        return 0
    last = None
    printed = 0
    for last in service.stream_turn(message, persona=args.persona, conversation_id=args.conversation):
        if not last.done:
            sys.stdout.write(last.reply[printed:])
            sys.stdout.flush()
            printed = len(last.reply)
    t = last.timings if last else {}
    adapter = f" · adapter {last.adapter}" if last.adapter else ""
    print(
        f"\n\n[{last.persona}{adapter} · turn {last.turn_id} · conversation {last.conversation_id} · "
        f"first token {t.get('ttft_ms', 0):.0f} ms · {t.get('tokens', 0)} tokens · "
        f"{t.get('tokens_per_s', 0):.1f} tok/s]",
        file=sys.stderr,
    )
    if last.route:
        print(f"[routed: {last.route.reason}]", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    service = _service()
    tty = sys.stderr.isatty() and not args.json

    def progress(source: str, index: int, count: int, scenes: int) -> None:
        if tty:
            name = Path(source).name
            sys.stderr.write(f"\r[{index + 1}/{count}] {name[:50]:<50} {scenes:>7} scenes")
            sys.stderr.flush()

    summary = service.memory.import_paths([Path(p) for p in args.paths], me=args.me, progress=progress).as_dict()
    summary["advice"] = service.import_advice(summary)
    if tty:
        sys.stderr.write("\n")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(format_import_summary(summary))
    return 1 if summary["errors"] and not summary["scenes_added"] and not summary["scenes_skipped"] else 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the embedded and configured models, or `use NAME|PATH` to switch (config.toml)."""
    service = _service()
    if args.action == "use":
        if not args.target:
            print("alterego: error: usage: alterego models use NAME|PATH", file=sys.stderr)
            return 2
        result = service.use_model(args.target)
        if args.json:
            print(json.dumps(result, ensure_ascii=False, indent=2))
            return 0
        row = result["model"]
        print(f"Model: {row['name']} ({row['title']}, {row['languages']}). {'; '.join(result['notes'])}.")
        if result["prompt_only"]:
            print(f"Prompt-only until retrained for this base: {', '.join(result['prompt_only'])} "
                  "(`alterego train --persona NAME`).")
        print("A running app picks the new model up at its next start (or switch it in the app's Settings tab).")
        return 0
    if args.action not in (None, "list"):
        print(f"alterego: error: unknown models action '{args.action}' (list, use)", file=sys.stderr)
        return 2
    listing = service.models()
    if args.json:
        print(json.dumps(listing, ensure_ascii=False, indent=2))
        return 0
    for row in listing["models"]:
        mark = "*" if row["current"] else " "
        kind = "instruction-tuned" if row.get("instruction_tuned") else "base (transcript prompts)"
        print(f"{mark} {row['name']:<14} {row.get('title', '')}")
        if not row["available"]:
            print(f"    not available: {row['error']}")
            continue
        print(f"    {row['languages']}; {kind}; {row['size_mb']} MB; license: {row['license']}")
        print(f"    adapters: {', '.join(row['adapters']) or 'none yet (every persona answers prompt-only)'}")
    print("Switch with `alterego models use NAME` or `alterego models use /path/to/model.gguf`.")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    service = _service()
    hits = [h.as_dict() for h in service.memory.search(" ".join(args.query), k=args.k)]
    if args.json:
        print(json.dumps(hits, ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("No scenes found (import some texts with `alterego import PATH`).")
    for h in hits:
        who = f" · {h['speaker']}" if h["speaker"] else ""
        print(f"[{h['score']:.2f}] {h['source']}{who}\n    " + h["text"].replace("\n", "\n    ") + "\n")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    service = _service()
    source, removed = service.memory.forget(args.source)
    print(f"Forgot {source}: {removed} scenes removed.")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    service = _service()
    decision = service.route(" ".join(args.message), args.conversation)
    if args.json:
        print(json.dumps(decision.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(f"{decision.persona}: {decision.reason}")
        for name, score in sorted(decision.scores.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<12} {score:.3f}")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    service = _service()
    rows = service.adapters.listing()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(f"base model: {service.adapters.fingerprint}")
    if not rows:
        print("No adapters yet: every persona answers prompt-only. Train one with `alterego train --persona NAME`.")
    for r in rows:
        ev = r["eval"]
        figures = f" · held-out loss {ev['candidate_loss']:.3f}" if ev.get("candidate_loss") is not None else ""
        print(f"{'*' if r['active'] else ' '} {r['persona']:<12} v{r['version']:<3} {r['created_at'] or ''}{figures}")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    service = _service()
    persona = service.catalog.get(args.persona)
    summary = service.training_data(persona.name)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    print(format_dataset_summary(persona.display_name, summary, show=args.show))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tuning.pipeline import train_persona

    service = _service()
    persona = service.catalog.get(args.persona)
    store = service.store_for(persona.name)
    tty = sys.stderr.isatty()

    def progress(status: dict) -> None:
        if args.json and not tty:
            return
        eta = f" · ETA {status['eta_s']:.0f}s" if status.get("eta_s") is not None else ""
        loss = f" · loss {status['loss']:.3f}" if status.get("loss") is not None else ""
        line = f"[{status.get('state')}] step {status.get('step', 0)}/{status.get('max_steps')}{loss}{eta}"
        sys.stderr.write(("\r" + line.ljust(70)) if tty else line + "\n")
        sys.stderr.flush()

    outcome = train_persona(
        service.settings.home, service.settings.tuning, persona, journal=service.journal, store=store,
        library=service.adapters, model_path=service.settings.engine.model_spec, max_steps=args.max_steps,
        progress=progress,
    ).as_dict()
    if tty:
        sys.stderr.write("\n")
    if args.json:
        print(json.dumps(outcome, ensure_ascii=False, indent=2))
        return 0
    ev, tr = outcome["eval"], outcome["train"]
    print(f"{persona.display_name} v{outcome['version']}: {'PROMOTED' if outcome['promoted'] else 'not promoted'} — {outcome['reason']}")
    print(f"  held-out loss: base {ev['base_loss']} · current {ev['current_loss']} · candidate {ev['candidate_loss']}")
    if ev.get("candidate_pref_accuracy") is not None:
        print(f"  agrees with {ev['heldout_verdicts']} held-out verdicts: base {ev['base_pref_accuracy']} · "
              f"current {ev['current_pref_accuracy']} · candidate {ev['candidate_pref_accuracy']}")
    print(f"  trained {tr.get('steps')} steps at {tr.get('tokens_per_s')} tokens/s in {tr.get('seconds')} s")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    service = _service()
    version = service.adapters.rollback(service.catalog.get(args.persona).name)
    print(f"{args.persona}: v{version.version} is active again.")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    turn = _service().approve(args.turn_id, edit=args.edit)
    print(f"turn {turn.id}: {turn.feedback}" + (" (the edited text is the training target)" if args.edit else ""))
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    turn = _service().reject(args.turn_id)
    print(f"turn {turn.id}: {turn.feedback}")
    return 0


def cmd_turns(args: argparse.Namespace) -> int:
    service = _service()
    turns = service.journal.pending_turns(args.limit) if args.pending else service.journal.recent_turns(args.limit)
    rows = [
        {"turn_id": t.id, "conversation_id": t.conversation_id, "persona": t.persona, "status": t.status,
         "feedback": t.feedback, "user_text": t.user_text, "reply": t.reply, "edited_text": t.edited_text,
         "created_at": t.created_at}
        for t in turns
    ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for r in rows:
        reply = " ".join((r["edited_text"] or r["reply"]).split())
        print(f"{r['turn_id']:>6}  {r['persona']:<11} {r['feedback'] or 'pending':<9} "
              f"{' '.join(r['user_text'].split())[:40]!r} -> {reply[:60]!r}")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    import time

    service = _service()
    scheduler = service.scheduler
    if args.once:
        print(json.dumps(scheduler.tick(), ensure_ascii=False, indent=2, default=str))
        return 0
    interval = args.interval if args.interval else service.settings.tuning.schedule_minutes * 60
    scheduler.start(interval)
    print(f"alterego: retraining job every {interval:.0f} s (Ctrl-C to stop); next run {scheduler.next_run()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        scheduler.shutdown()


def cmd_personas(args: argparse.Namespace) -> int:
    from personas.catalog import PersonaCatalog

    settings = _settings()
    catalog = PersonaCatalog.load(settings.home / "personas")
    if args.json:
        rows = [
            {"name": p.name, "display_name": p.display_name, "description": p.description,
             "generation": p.generation.as_llama_kwargs()}
            for p in catalog.all()
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        for p in catalog.all():
            print(f"{p.name:<12} {p.display_name:<12} {p.description}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.runner import main_with

    return main_with(_settings().home, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alterego",
        description="A local, private chat with a persona that speaks like you. "
        "All data lives under $ALTEREGO_HOME.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="launch the web UI")
    p.add_argument("--host", help="bind address (default from settings: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from settings: 7860)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("health", help="check a running app's /health (exit 0 = can chat)")
    p.add_argument("--port", type=int, help="port (default from settings: 7860)")
    p.add_argument("--timeout", type=float, default=8.0, help="seconds to wait (default 8)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("chat", help="send one message and print the reply")
    p.add_argument("message", nargs="+", help="the message")
    p.add_argument("--persona", default="me", help="persona name (see `alterego personas`) or 'auto' to let the router pick")
    p.add_argument("--conversation", type=int, help="continue this conversation id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("import", help="import texts, chats and transcripts into memory")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--me", action="append", default=[], metavar="NAME",
                   help="your name in chat exports (repeatable); default: auto-detected")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("search", help="search memory for scenes")
    p.add_argument("query", nargs="+")
    p.add_argument("-k", type=int, default=5, help="number of scenes (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("forget", help="remove an imported source (file) from memory")
    p.add_argument("source", help="the source as listed by import/search: path or file name")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("route", help="show which persona Auto mode would pick for a message, and why")
    p.add_argument("message", nargs="+")
    p.add_argument("--conversation", type=int, help="route as a next turn of this conversation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("adapters", help="list persona LoRA adapters for the current base model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("dataset", help="harvest a persona's training data and show what it holds")
    p.add_argument("--persona", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--show", type=int, default=3, metavar="N", help="examples shown per frame (default 3, 0 = none)")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("train", help="train a persona's LoRA adapter; promoted only if it beats the current one")
    p.add_argument("--persona", required=True)
    p.add_argument("--max-steps", type=int, help="training steps (default: tuning.max_steps)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("rollback", help="re-activate a persona's previous adapter version")
    p.add_argument("persona")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("approve", help="approve a reply (optionally with your edited text)")
    p.add_argument("turn_id", type=int)
    p.add_argument("--edit", metavar="TEXT", help="what the reply should have said")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("reject", help="reject a reply")
    p.add_argument("turn_id", type=int)
    p.set_defaults(func=cmd_reject)

    p = sub.add_parser("turns", help="list recent turns and their approval state")
    p.add_argument("--pending", action="store_true", help="only replies without a verdict")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_turns)

    p = sub.add_parser("scheduler", help="run the background retraining job without the web UI")
    p.add_argument("--interval", type=float, help="seconds between checks (default: tuning.schedule_minutes)")
    p.add_argument("--once", action="store_true", help="check once, train what is due, print what happened")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("bench", help="measure chat, memory and training speed and idle CPU next to baselines; "
                       "writes $ALTEREGO_HOME/bench/report.json and report.png")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--quick", action="store_true", help="small sizes and one run each (a smoke test of a few minutes)")
    p.add_argument("--only", metavar="SUITES",
                   help="comma-separated suites: chat, personas, ingest, retrieval, recall, training, models, "
                        "voice, idle, responsiveness")
    p.add_argument("--responsiveness", action="store_true",
                   help="also measure chat latency while a training run is in progress (takes minutes)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="list the chat models (languages, size, adapters), or `models use NAME|PATH`")
    p.add_argument("action", nargs="?", metavar="use", help="`use` to switch the model (written to config.toml)")
    p.add_argument("target", nargs="?", metavar="NAME|PATH", help="an embedded model's name or a GGUF file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("personas", help="list the personas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_personas)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as exc:
        print(f"alterego: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
