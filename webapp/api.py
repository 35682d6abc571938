"""The JSON API beside the UI, for scripts and containers: `POST /api/chat` runs one turn
and answers with what `alterego chat --json` prints (`TurnUpdate.as_dict`), or with
`"stream": true` one JSON line per update as the reply grows; `POST /api/import` imports
uploaded files (multipart field `file`, repeatable; optional `me`) and answers with the
import summary of `alterego import --json`. Both are thin calls into `ChatService`.

Login: the same policy as the UI. When the server has logins (`server.auth` /
`server.auth_file`), every API request must carry one of them as HTTP Basic credentials
(`curl -u user:password`), checked in constant time; without logins — loopback, or the
explicit `allow_unauthenticated` — the API is open like the UI. User errors answer 400
with `{"error": message}`; uploads are written under `$ALTEREGO_HOME/uploads` and
removed once imported (their scenes are in memory; the source is named `upload:NAME`)."""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' types.
# (This module is imported by `server.build_server` only, which loads FastAPI anyway.)
import base64
import binascii
import json
import secrets
import shutil
import tempfile
from pathlib import Path

from fastapi import Depends, File, Form, Request, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from .errors import USER_ERRORS

_CHUNK = 1 << 20


class ChatRequest(BaseModel):
    message: str
    persona: str = "me"
    conversation_id: int | None = None
    stream: bool = False


def _authorized(header: str | None, logins: list[tuple[str, str]]) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic" or not token:
        return False
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok = False
    for known_user, known_password in logins:  # no early exit: the time says nothing
        ok |= secrets.compare_digest(user.encode(), known_user.encode()) & secrets.compare_digest(
            password.encode(), known_password.encode())
    return ok and bool(sep)


def add_api_routes(app, service, logins: list[tuple[str, str]] | None, max_upload_mb: int) -> None:
    """Add /api/chat and /api/import to the FastAPI app (before Gradio is mounted at /)."""

    def require_login(request: Request) -> None:
        if logins and not _authorized(request.headers.get("authorization"), logins):
            raise HTTPException(401, "log in with a user of server.auth (HTTP Basic)",
                                headers={"WWW-Authenticate": 'Basic realm="alterego"'})

    def user_error(exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    def chat(body: ChatRequest, _=Depends(require_login)):
        if not body.stream:
            try:
                return service.send(body.message, persona=body.persona, conversation_id=body.conversation_id).as_dict()
            except USER_ERRORS as exc:
                return user_error(exc)
        turn = service.stream_turn(body.message, persona=body.persona, conversation_id=body.conversation_id)
        try:
            first = next(turn)  # bad input is refused with a 400 before the stream starts
        except USER_ERRORS as exc:
            return user_error(exc)

        def lines():
            try:
                update = first
                while update is not None:
                    yield json.dumps({**update.as_dict(), "done": update.done}, ensure_ascii=False) + "\n"
                    update = next(turn, None)
            finally:
                turn.close()  # a client that went away: the turn is journaled as cut off

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def import_files(file: list[UploadFile] = File(...), me: str = Form(""), _=Depends(require_login)):
        uploads = service.settings.home / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="api-", dir=uploads))
        try:
            paths, names = [], {}
            for index, upload in enumerate(file):
                # Only the last part of the browser's name, never a path it chose.
                name = Path((upload.filename or "").replace("\\", "/")).name.strip() or f"upload-{index}"
                target = folder / f"{index}" / name
                target.parent.mkdir()
                if _copy_limited(upload.file, target, max_upload_mb << 20):
                    return JSONResponse({"error": f"{name} is larger than {max_upload_mb} MB "
                                                  "(setting server.max_upload_mb)"}, status_code=413)
                paths.append(target)
                names[target] = f"upload:{name}"
            try:
                summary = service.memory.import_paths(
                    paths, me=[m.strip() for m in me.split(",") if m.strip()], source_names=names).as_dict()
            except USER_ERRORS as exc:
                return user_error(exc)
            summary["advice"] = service.import_advice(summary)
            return summary
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app.add_api_route("/api/chat", chat, methods=["POST"])
    app.add_api_route("/api/import", import_files, methods=["POST"])


def _copy_limited(source, target: Path, limit: int) -> bool:
    """Copy an upload to `target`; True (and nothing kept) when it exceeds `limit` bytes."""
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                return True
            out.write(chunk)
    return False
