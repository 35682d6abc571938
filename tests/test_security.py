"""Uploads and browser-supplied names against the data root, on the real app and the UI's
callbacks: an upload named `../../evil.txt` or `/tmp/evil.txt` lands inside
ALTEREGO_HOME under its bare name and nothing is written anywhere else; a request that
names a server-side file (`/etc/passwd`, the journal, a note inside the data root) instead
of uploading one imports nothing and copies nothing; symlinks and `..` names handed to the
import callback are read, never written through, and get safe source names; `forget` and
`search` with path-like names touch nothing outside the data root."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import gradio as gr
import httpx
import pytest

from appserver import start_app
from conftest import FIXTURES

HOSTILE_NAMES = ["../../evil.txt", "/tmp/alterego-evil.txt", "..\\..\\evil2.txt", "a/../../../evil3.md",
                 "./../evil4.txt", "....//....//evil5.txt", "%2e%2e%2fevil6.txt", "evil\u2215slash.txt"]


def snapshot(root: Path, skip: set[Path] = frozenset()) -> dict[str, str]:
    """Every file and folder under root (content hashes), except the skipped subtrees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            if path in skip:
                continue
            out[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else "dir")
    return out


def escape_targets(bases: list[Path]) -> list[Path]:
    """Where each hostile name would land if it were joined to one of `bases` unsanitised."""
    out = []
    for base in bases:
        for name in HOSTILE_NAMES:
            out.append(Path(os.path.normpath(base / name)))
            out.append(Path(os.path.normpath(base / name.replace("\\", "/"))))
    return [p for p in out if not p.exists()]  # only those we can prove were not created


def test_hostile_upload_names_stay_inside_home(tmp_path):
    home = tmp_path / "home"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("a file next to the data root\n")
    repo = Path(__file__).resolve().parents[1]
    uploads = home / "uploads" / "0" / "1"  # as deep as Gradio's <upload dir>/<hash>/ folders
    candidates = escape_targets([uploads, home, repo, Path("/tmp")])
    app = start_app(home, env={"ALTEREGO_TUNING_SCHEDULER": "false"})
    try:
        before = snapshot(tmp_path, skip={home, app.log_path})
        repo_before = sorted(os.listdir(repo))
        body = (FIXTURES / "import" / "diary.txt").read_bytes()
        with httpx.Client(base_url=app.url, timeout=60) as http:
            files = [("files", (name, body + name.encode() + b"\n", "text/plain")) for name in HOSTILE_NAMES]
            resp = http.post("/gradio_api/upload", files=files)
            assert resp.status_code == 200, resp.text
            stored = [Path(p) for p in resp.json()]
            # Each upload is kept under the data root, by its bare name.
            assert len(stored) == len(HOSTILE_NAMES)
            for path in stored:
                # <data root>/uploads/<hash>/<bare name>: no separator survived in the name.
                assert path.is_file() and path.resolve().parent.parent == (home / "uploads").resolve()
            summary = call(http, "import", [[file_data(p) for p in stored], ""])[1]
        assert summary["scenes_added"] >= 1 and not summary["errors"]
        assert {row["file"] for row in summary["details"]} == {f"upload:{p.name}" for p in stored}
    finally:
        app.stop()
    assert snapshot(tmp_path, skip={home, app.log_path}) == before
    assert sorted(os.listdir(repo)) == repo_before
    assert [p for p in candidates if p.exists()] == []


def file_data(path: str | Path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def call(http: httpx.Client, api: str, data: list):
    """One call of a named endpoint through Gradio's REST API, as a browser script would
    make it; returns the output data, or raises with the error event."""
    resp = http.post(f"/gradio_api/call/{api}", json={"data": data})
    assert resp.status_code == 200, resp.text
    event_id = resp.json()["event_id"]
    stream = http.get(f"/gradio_api/call/{api}/{event_id}").text
    events = [line.removeprefix("event: ").strip() for line in stream.splitlines() if line.startswith("event:")]
    payloads = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data:")]
    if events[-1] != "complete":
        raise PermissionError(payloads[-1] if payloads else stream)
    return json.loads(payloads[-1])


def test_server_paths_named_by_the_browser_are_refused(tmp_path):
    home = tmp_path / "home"
    app = start_app(home, env={"ALTEREGO_TUNING_SCHEDULER": "false"})
    note = home / "private-note.txt"
    note.write_text("A private note in the data root that was never uploaded.\n")
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n\nA file elsewhere on the server.\n")
    try:
        with httpx.Client(base_url=app.url, timeout=60) as http:
            uploads_before = snapshot(home / "uploads") if (home / "uploads").exists() else {}
            for path in ["/etc/passwd", home / "journal.sqlite3", note, secret, "../private-note.txt",
                         f"{home}/uploads/../private-note.txt"]:
                with pytest.raises(PermissionError):
                    call(http, "import", [[file_data(path)], ""])
            # Nothing was imported and no server file was copied into the upload cache.
            after = snapshot(home / "uploads") if (home / "uploads").exists() else {}
            assert {k: v for k, v in after.items() if v != "dir"} == {k: v for k, v in uploads_before.items() if v != "dir"}
            assert app.health()["store"]["scenes"] == 0
            # A real upload through the same endpoint works.
            (uploaded,) = http.post("/gradio_api/upload", files=[("files", ("ok.txt", b"An honest upload.\n", "text/plain"))]).json()
            assert call(http, "import", [[file_data(uploaded)], ""])[1]["scenes_added"] == 1
    finally:
        app.stop()


def test_import_callback_refuses_what_no_upload_can_be(service, tmp_path):
    """Gradio hands the callback plain files it wrote; a symlink (to a file or a folder
    outside), a dangling one, a folder or a missing path is refused, nothing is read
    through it, and odd-but-plain names are imported under `upload:<name>`."""
    from webapp.ui import ChatUI

    ui = ChatUI(service)
    home = service.settings.home
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("Outside text that a symlink in an upload points to.\n")
    upload = tmp_path / "gradio-upload" / "abc"
    upload.mkdir(parents=True)
    (upload / "link.txt").symlink_to(outside / "target.txt")
    (upload / "dangling.txt").symlink_to(outside / "missing.txt")
    (upload / "dir.txt").symlink_to(outside, target_is_directory=True)
    (upload / "folder.md").mkdir()
    (upload / "folder.md" / "inside.md").write_text("# Not an upload\n\nA file in a folder.\n")
    (upload / "fine.txt").write_text("A plain uploaded file.\n")
    before = snapshot(tmp_path, skip={home})
    bad = [upload / "link.txt", upload / "dangling.txt", upload / "dir.txt", upload / "folder.md",
           upload / "missing.txt", upload / ".." / ".." / "outside" / "target.txt", Path("fine.txt")]
    for path in bad:
        with pytest.raises(gr.Error, match="Only uploaded files"):  # the whole batch, before reading any of it
            ui.import_files([str(upload / "fine.txt"), str(path)], "")
    assert service.memory.sources() == {} and service.memory.store.count() == 0
    assert snapshot(tmp_path, skip={home}) == before

    (upload / "..evil..txt").write_text("Dots in a name are just dots.\n")
    (upload / "-rf *.md").write_text("# A name a shell would not like\n\nStill a note.\n")
    _, summary = ui.import_files([str(upload / "..evil..txt"), str(upload / "-rf *.md")], "")
    assert {row["file"] for row in summary["details"]} == {"upload:..evil..txt", "upload:-rf *.md"}
    assert summary["scenes_added"] == 2 and not summary["errors"]
    assert set(service.memory.sources()) == {"upload:..evil..txt", "upload:-rf *.md"}  # no server path in a source


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", str(Path.home()), "..", "/", "*", "%",
                                  "upload:../../diary.txt", "journal.sqlite3", "chroma"])
def test_forget_and_search_with_path_like_names(service, tmp_path, name):
    from webapp.ui import ChatUI

    ui = ChatUI(service)
    home = service.settings.home
    upload = tmp_path / "up" / "diary.txt"
    upload.parent.mkdir()
    upload.write_bytes((FIXTURES / "import" / "diary.txt").read_bytes())
    ui.import_files([str(upload)], "")
    scenes = service.memory.store.count()
    before_outside = snapshot(tmp_path, skip={home})
    before_home = {k for k in snapshot(home) if not k.startswith("chroma")}
    with pytest.raises(gr.Error):
        ui.forget_source(name)
    rows = ui.search_memory(name)
    assert all(row[1] == "upload:diary.txt" for row in rows)
    assert service.memory.store.count() == scenes and service.memory.sources() == {"upload:diary.txt": {"kind": "text", "scenes": scenes}}
    assert snapshot(tmp_path, skip={home}) == before_outside
    assert {k for k in snapshot(home) if not k.startswith("chroma")} <= before_home | {"locks"}
