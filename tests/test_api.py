"""The JSON API over real HTTP, against the real app (`alterego run` in a subprocess):
/api/chat answers with the `alterego chat --json` document, streams NDJSON on request and
refuses bad input with a 400; /api/import imports an uploaded file whose scenes the next
turn names as its sources; with logins set, both need HTTP Basic credentials and a wrong
password gets a 401; an upload over the size limit is refused and nothing is kept.
(A subprocess rather than in-process servers: after a chat turn, a second `serve()` in one
process makes the interpreter abort at exit — a teardown problem, not an API one.)"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid

import pytest

from tests.appserver import start_app
from tests.conftest import FIXTURES


def call(url: str, body: dict | bytes, content_type: str = "application/json", *, login: tuple | None = None):
    """POST; returns (status, raw body, headers)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def multipart(files: dict[str, bytes], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, content in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def brief_persona(home) -> None:
    folder = home / "personas" / "brief"
    folder.mkdir(parents=True)
    (folder / "persona.yaml").write_text(
        "name: brief\ndisplay_name: Brief\ndescription: Answers in a few words.\n"
        "system_prompt: Answer in a few words.\ngeneration:\n  max_tokens: 12\n")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One open app (loopback, no login) with a 1 MB upload limit, and a persona of short
    replies so that each turn costs little."""
    home = tmp_path_factory.mktemp("api") / "home"
    brief_persona(home)
    proc = start_app(home, env={"ALTEREGO_TUNING_SCHEDULER": "false", "ALTEREGO_SERVER_MAX_UPLOAD_MB": "1"})
    proc.home = home
    yield proc
    proc.stop()


def test_import_then_chat_names_its_sources_and_streams(app):
    url = app.url
    diary = (FIXTURES / "import" / "diary.txt").read_bytes()
    status, raw, _ = call(url + "/api/import", *multipart({"diary.txt": diary}))
    summary = json.loads(raw)
    assert status == 200 and summary["scenes_added"] > 0 and not summary["errors"], summary
    assert not list((app.home / "uploads").glob("api-*")), "the upload is removed once imported"

    status, raw, _ = call(url + "/api/chat", {"message": "I walked to the river after work and watched the ice go.",
                                             "persona": "brief"})
    reply = json.loads(raw)
    assert status == 200, reply
    assert {"reply", "persona", "turn_id", "conversation_id", "timings", "sources", "model"} <= set(reply)
    assert reply["reply"] and reply["persona"] == "brief" and reply["timings"]["tokens"] > 0
    assert "upload:diary.txt" in {s["source"] for s in reply["sources"]}

    status, raw, headers = call(url + "/api/chat", {"message": "And then?", "persona": "brief",
                                                     "conversation_id": reply["conversation_id"], "stream": True})
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    assert len(lines) > 1 and lines[-1]["done"] and not any(x["done"] for x in lines[:-1])
    assert lines[-1]["conversation_id"] == reply["conversation_id"] and lines[-1]["turn_id"] > reply["turn_id"]


def test_user_errors_are_400_with_the_message(app):
    url = app.url
    status, raw, _ = call(url + "/api/chat", {"message": "   "})
    assert status == 400 and "empty" in json.loads(raw)["error"]
    status, raw, _ = call(url + "/api/chat", {"message": "hi", "persona": "nobody", "stream": True})
    assert status == 400 and "nobody" in json.loads(raw)["error"]


def test_with_logins_the_api_needs_them(tmp_path):
    guarded = start_app(tmp_path / "home", env={"ALTEREGO_TUNING_SCHEDULER": "false",
                                                "ALTEREGO_SERVER_AUTH": "alice:s3cret"})
    url = guarded.url
    try:
        assert call(url + "/api/chat", {"message": "Say hi."})[0] == 401
        assert call(url + "/api/chat", {"message": "Say hi."}, login=("alice", "wrong"))[0] == 401
        assert call(url + "/api/import", *multipart({"a.txt": b"hello there"}))[0] == 401
        # With the login the request reaches the chat (an empty message: a 400 that costs no turn).
        status, raw, _ = call(url + "/api/chat", {"message": " "}, login=("alice", "s3cret"))
        assert status == 400 and "empty" in json.loads(raw)["error"]
    finally:
        guarded.stop()


def test_an_upload_over_the_limit_is_refused_and_not_kept(app):
    url = app.url
    status, raw, _ = call(url + "/api/import", *multipart({"big.txt": b"word " * 300_000}))
    assert status == 413 and "larger than 1 MB" in json.loads(raw)["error"]
    assert not list((app.home / "uploads").glob("api-*"))
