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


def _settings():
    from .settings import load_settings

    return load_settings()


def _service(settings=None):
    from .chat import ChatService

    return ChatService(settings or _settings())


def cmd_run(args: argparse.Namespace) -> int:
    from .ui import launch

    settings = _settings()
    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    launch(settings)
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
    print(
        f"\n\n[{last.persona} · turn {last.turn_id} · conversation {last.conversation_id} · "
        f"first token {t.get('ttft_ms', 0):.0f} ms · {t.get('tokens', 0)} tokens · "
        f"{t.get('tokens_per_s', 0):.1f} tok/s]",
        file=sys.stderr,
    )
    return 0


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

    p = sub.add_parser("chat", help="send one message and print the reply")
    p.add_argument("message", nargs="+", help="the message")
    p.add_argument("--persona", default="me", help="persona name (see `alterego personas`)")
    p.add_argument("--conversation", type=int, help="continue this conversation id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_chat)

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
