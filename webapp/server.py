"""Serving the app over HTTP: one FastAPI application with the Gradio UI mounted at `/`,
a `/health` endpoint and the JSON API (`webapp.api`: /api/chat, /api/import) beside it,
run by uvicorn. Mounting (rather than `Blocks.launch`) is what lets these routes live on
the same server and port as the UI — Docker's HEALTHCHECK and a load balancer probe the
real app, not a side process.

Exposure policy (`exposure_auth`): loopback addresses serve without a login; any other
address requires `server.auth`/`server.auth_file`, unless `server.allow_unauthenticated`
says otherwise, which prints a warning. The API asks for the same logins (HTTP Basic)
whenever the UI asks for one. `/health` itself needs no login (a container probe has
none) and reveals no user data: only whether the model is loaded, the store answers and
the retraining job runs."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from pathlib import Path

from .errors import SettingsError
from .settings import ServerConfig, Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything, treat it as exposed


def parse_auth(server: ServerConfig) -> list[tuple[str, str]]:
    """The configured logins, from `auth` and `auth_file`; malformed entries are errors."""
    entries: list[tuple[str, str]] = []
    lines: list[tuple[str, str]] = [(item, "server.auth") for item in server.auth.split(",")]
    if server.auth_file:
        path = Path(server.auth_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"server.auth_file: cannot read {path} ({exc})") from None
        lines += [(line, f"server.auth_file {path}") for line in text.splitlines()]
    for raw, where in lines:
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise SettingsError(f"{where}: expected 'user:password', got an entry without both parts")
        entries.append((user.strip(), password))
    return entries


def exposure_auth(server: ServerConfig) -> list[tuple[str, str]] | None:
    """Logins Gradio should require, or None for none. Refuses a non-loopback bind
    without a login unless explicitly allowed (then warns on stderr)."""
    logins = parse_auth(server) or None
    if logins or is_loopback(server.host):
        return logins
    if not server.allow_unauthenticated:
        raise SettingsError(
            f"Refusing to serve on {server.host} without a login: anyone who can reach this machine "
            "could read your conversations and memory. Set a login with ALTEREGO_SERVER_AUTH=user:password "
            "(or server.auth_file), bind to 127.0.0.1, or — if something else guards access, e.g. a container "
            "port published on 127.0.0.1 only — set ALTEREGO_SERVER_ALLOW_UNAUTHENTICATED=true."
        )
    print(
        f"alterego: WARNING: serving on {server.host} without a login (server.allow_unauthenticated). "
        "Anyone who can reach this port can read your conversations and memory.",
        file=sys.stderr, flush=True,
    )
    return None


def health_app_routes(app, service) -> None:
    """Add GET /health: 200 when the app can chat (model loaded), 503 while starting or
    when the model failed; the body says what is up and what is not."""
    from fastapi.responses import JSONResponse

    def health():
        report = service.health()
        return JSONResponse(report, status_code=200 if report["status"] != "down" else 503)

    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)


def build_server(settings: Settings, service=None):
    """The FastAPI app (UI at /, /health, /api/*) and the ChatService behind it."""
    import fastapi
    import gradio as gr

    from .api import add_api_routes
    from .chat import ChatService
    from .quietqueue import quiet_queue
    from .ui import build_app

    logins = exposure_auth(settings.server)  # refuse before loading anything
    # Gradio copies every upload into its cache before our code sees it; keep that copy
    # inside ALTEREGO_HOME (the user's data stays in one place, and nothing is written
    # to a world-readable /tmp). Set before the Blocks exist: they read it at creation.
    uploads = settings.home / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)

    service = service or ChatService(settings)
    service.catch_up = True  # a long-lived app: personas are caught up while the user reads
    # ...and scenes from before line vectors get them while the user chats, instead of
    # holding the first turn (and /health) for minutes on a big collection.
    service.memory.fill_in_background = True
    blocks = build_app(service)
    blocks.queue(default_concurrency_limit=4)
    quiet_queue(blocks)  # Gradio's queue polls every millisecond, even with nothing to do
    app = fastapi.FastAPI(title="alterego", docs_url=None, redoc_url=None, openapi_url=None)
    health_app_routes(app, service)
    add_api_routes(app, service, logins, settings.server.max_upload_mb)
    app = gr.mount_gradio_app(
        app, blocks, path="",
        server_name=settings.server.host, server_port=settings.server.port,
        auth=logins, auth_message="alterego: log in with the user set in server.auth." if logins else None,
        show_error=True, footer_links=[], max_file_size=f"{settings.server.max_upload_mb}mb",
    )
    # Gradio checks that a file named in a request was uploaded (is in its upload folder)
    # only for Blocks that `launch()`ed; mounted Blocks skip the check, and a request naming
    # /etc/passwd or the journal gets that server file copied in and handed to the Import
    # tab. The flag is all `_check_allowed` reads (tests/test_security.py proves it).
    blocks.has_launched = True
    return app, service


def serve(settings: Settings, *, block: bool = True, service=None):
    """Load the model, start background work, and serve until stopped. With
    block=False, serve in a thread and return (server, service) once it accepts
    (`server.should_exit = True` stops it)."""
    import uvicorn

    app, service = build_server(settings, service)
    print("alterego: loading the model…", flush=True)
    service.warm_up_model()
    # The embedder and router load in the background: Auto mode and learning from persona
    # overrides need them, the first plain turn doesn't.
    threading.Thread(target=service.warm_up, name="warm-up", daemon=True).start()
    if settings.tuning.scheduler:
        service.scheduler.start()
    untrained = [p.name for p in service.personas() if p.name not in service.engine.adapters]
    if untrained:
        print(f"alterego: prompt-only personas (no adapter yet): {', '.join(untrained)}. "
              f"Train one with: alterego train --persona {untrained[-1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.server.host, port=settings.server.port, log_level="warning", access_log=False,
        # Streaming replies and uploads of large exports: don't cut slow clients off.
        timeout_keep_alive=30,
    ))
    print(f"alterego: serving http://{settings.server.host}:{settings.server.port} (data in {settings.home})",
          flush=True)
    if block:
        server.run()
        return server, service
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.05)
    if not server.started:
        raise RuntimeError(f"the server did not start on {settings.server.host}:{settings.server.port}")
    return server, service
