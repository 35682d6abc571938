"""Crash faults against the real app: `alterego run` is killed with SIGKILL (its whole
process group, the training child included) mid-import, mid-reply and mid-training, then
started again on the same data root. After each restart nothing stored is lost or
corrupted: the journal passes `PRAGMA integrity_check`, the scenes of the first import
are all there and none of the killed import's (they are rolled back as soon as the store
opens, so they are never searched), the interrupted reply is marked as such while earlier
turns are intact, the interrupted training run is recorded as interrupted, the active
adapter is the one before and still loads, and the app goes on working (re-import, new
turns). An import still running in another live process is never rolled back."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from appserver import start_app
from conftest import ALTEREGO, FIXTURES, ROOT, TINY, cli_env
from memory.journal import Journal

pytestmark = pytest.mark.slow

NO_SCHEDULER = {"ALTEREGO_TUNING_SCHEDULER": "false"}


def write_persona(home: Path, name: str, system_prompt: str, **generation) -> Path:
    folder = home / "personas" / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", f"display_name: {name.title()}", f"description: The {name} persona of a test.",
             f"system_prompt: {system_prompt}"]
    if generation:
        lines.append("generation:")
        lines += [f"  {key}: {value}" for key, value in generation.items()]
    (folder / "persona.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def journal(home: Path) -> Journal:
    return Journal(home / "journal.sqlite3")


def imports(home: Path) -> list[dict]:
    """The journal's import runs, read-only."""
    db = sqlite3.connect(f"file:{home / 'journal.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT source, status, error FROM imports ORDER BY id")]
    finally:
        db.close()


def wait_for(predicate, timeout: float, what: str, app=None, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if app is not None and app.proc.poll() is not None:
            raise AssertionError(f"the app died while waiting for {what}:\n{app.log()[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{app.log()[-3000:]}" if app else ""))


def reply_text(chat: list[dict]) -> str:
    """The last assistant message of a chat as the API returns it, without the persona label."""
    content = chat[-1]["content"]
    text = "".join(part.get("text", "") for part in content) if isinstance(content, list) else str(content)
    return text.split("\n\n", 1)[1] if text.startswith("**") and "\n\n" in text else text


# -- mid-import ---------------------------------------------------------------------------
def big_notes(path: Path, sections: int) -> Path:
    """A Markdown diary with one scene per heading (every heading starts a new scene)."""
    places = ["river", "market", "station", "library", "harbour", "forest", "bakery", "bridge"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(sections):
            fh.write(f"## Day {i}\n\nOn day {i} I walked to the {places[i % len(places)]} and counted "
                     f"{i * 7 % 113} gulls; entry number {i} of the long diary.\n\n")
    return path


RAW_COUNT = """
import json, sys
from pathlib import Path
from memory.store import SceneStore
store = SceneStore(Path(sys.argv[1]))
print(json.dumps({"total": store.count(), "big": len(store.ids_where({"source": sys.argv[2]}))}))
"""


def raw_scene_counts(home: Path, source: str) -> dict:
    """Count scenes straight from Chroma in a separate process (no recovery runs there;
    a second Chroma client must not live on in this process beside the app's)."""
    out = subprocess.run([sys.executable, "-c", RAW_COUNT, str(home / "chroma"), source], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def store_scenes(app) -> int:
    def reachable():
        store = app.health(timeout=30)["store"]
        return store if store["reachable"] else None

    return wait_for(reachable, 120, "the scene store to answer /health", app)["scenes"]


def test_kill_mid_import(tmp_path):
    home = tmp_path / "home"
    big = big_notes(tmp_path / "big.md", 400)
    app = start_app(home, env=NO_SCHEDULER)
    try:
        client = Client(app.url, verbose=False)
        _, first = client.predict([handle_file(str(FIXTURES / "import" / "diary.txt"))], "", api_name="/import")
        first_scenes = first["scenes_added"]
        assert first_scenes >= 1 and not first["errors"]

        job = client.submit([handle_file(str(big))], "", api_name="/import")

        def scenes_stored():
            # The import reports after each inserted batch: "upload:big.md: N scenes".
            for unit in job.status().progress_data or []:
                if (m := re.search(r"big\.md: (\d+) scenes", unit.desc or "")) and int(m.group(1)) > 0:
                    return int(m.group(1))
            assert not job.done(), f"the import finished before it could be killed: {job.outputs()}"
            return None

        wait_for(scenes_stored, 240, "the big import to store its first scenes", app, poll=0.05)
        app.kill9()
    finally:
        app.kill9()

    # What the kill left behind: a `running` import with some of its scenes in Chroma.
    with_partial = raw_scene_counts(home, "upload:big.md")
    assert 0 < with_partial["big"] < 400 and with_partial["total"] == first_scenes + with_partial["big"]
    assert [r["status"] for r in imports(home)] == ["ok", "running"]

    app = start_app(home, env=NO_SCHEDULER)
    try:
        # Rolled back when the store opened, before anyone could search the half import.
        assert store_scenes(app) == first_scenes
        client = Client(app.url, verbose=False)
        hits = client.predict("On day 12 I walked to the market and counted gulls", api_name="/search")["data"]
        assert hits and all(row[1] != "upload:big.md" for row in hits)
        j = journal(home)
        assert j.integrity_check() == "ok"
        j.close()
        rows = imports(home)
        assert [(r["source"], r["status"]) for r in rows] == [("upload:diary.txt", "ok"), ("upload:big.md", "interrupted")]
        assert "rolled back" in rows[1]["error"]

        # Importing the same file again works and stores all of it.
        _, again = client.predict([handle_file(str(big))], "", api_name="/import")
        assert again["scenes_added"] == 400 and not again["errors"]
        assert store_scenes(app) == first_scenes + 400
    finally:
        app.stop()


HOLDER = """
import sys, time
from pathlib import Path
from memory.journal import Journal
from memory.recovery import ImportLock
lock = ImportLock(Journal(Path(sys.argv[1])), int(sys.argv[2]))
print("holding", flush=True)
time.sleep(600)
"""


def test_only_imports_of_dead_processes_are_rolled_back(service):
    """The CLI importing beside the running app: whoever opens the store next must leave
    a live import alone, and roll it back once its process is killed."""
    from memory.service import SceneMemory

    journal_ = service.journal
    run = journal_.begin_import("upload:live.txt", "text")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(journal_.path), str(run)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        text = "a scene of an import still running in another process"
        service.memory.store.add(["live-1"], service.memory.embedder.encode([text]), [text],
                                 [{"source": "upload:live.txt", "import_id": run}])

        def reopen() -> int:  # what any other alterego process does when it opens the store
            memory = SceneMemory(service.settings.memory, service.settings.home, journal_,
                                 embedder=service.memory.embedder)
            return memory.store.count()

        assert reopen() == 1 and journal_.running_imports() == [run]  # alive: left alone
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
        assert reopen() == 0 and journal_.running_imports() == []
        assert [r["status"] for r in imports(service.settings.home)] == ["interrupted"]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


# -- mid-reply ----------------------------------------------------------------------------
def test_kill_mid_reply(tmp_path):
    home = tmp_path / "home"
    write_persona(home, "me", "You are the user. Answer in one short sentence.", max_tokens=12)
    write_persona(home, "rambler", "You never stop writing.", max_tokens=2000, repeat_penalty=1.0)
    app = start_app(home, env=NO_SCHEDULER)
    try:
        client = Client(app.url, verbose=False)
        chat, _, _ = client.predict("Say hello, this is turn one.", "me", [], api_name="/respond")
        job = client.submit("Write a very long story about a dragon, at least ten chapters.", "rambler", chat,
                            api_name="/respond")
        streamed = ""
        for chat_so_far, _, _ in job:
            if len(chat_so_far) == 4 and len(reply_text(chat_so_far)) >= 20:
                streamed = reply_text(chat_so_far)
                app.kill9()  # mid-stream: the reply has begun and is far from its 2,000 tokens
                break
        assert streamed, "the long reply never streamed"
    finally:
        app.kill9()

    j = journal(home)
    first, second = j.recent_turns()[::-1]
    assert (first.status, second.status) == ("ok", "pending") and first.reply
    assert second.user_text.startswith("Write a very long story") and second.persona == "rambler"
    j.close()

    app = start_app(home, env=NO_SCHEDULER)
    try:
        j = journal(home)
        assert j.integrity_check() == "ok"
        before, after = first, j.get_turn(second.id)
        assert j.get_turn(first.id) == before  # the earlier turn is untouched
        assert after.status == "error" and "interrupted" in after.error and after.completed_at
        assert after.user_text == second.user_text  # the message survived the crash
        j.close()
    finally:
        app.stop()
    # New turns work, in the interrupted conversation too (its prompt leaves the cut-off turn out).
    out = chat_cli(home, "--conversation", str(first.conversation_id), "Are you back?")
    assert out["conversation_id"] == first.conversation_id and out["reply"]
    j = journal(home)
    assert [t.status for t in j.turns(first.conversation_id)] == ["ok", "error", "ok"]
    j.close()


def chat_cli(home: Path, *args: str) -> dict:
    """One turn through `alterego chat --json` (a one-shot turn needs no router warm-up)."""
    proc = subprocess.run([*ALTEREGO, "chat", "--json", *args], cwd=ROOT, env=cli_env(home), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


# -- mid-training -------------------------------------------------------------------------
def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_kill_mid_training(tmp_path, hf_base, engine):
    from personas.adapters import AdapterLibrary
    from tuning.export import llama_dims, random_lora, write_gguf_lora

    home = tmp_path / "home"
    folder = write_persona(home, "tiny", TINY["system_prompt"], max_tokens=8)
    rows = [{"messages": [{"role": "user", "content": f"Tell me about {t}."},
                          {"role": "assistant", "content": f"{t.upper()} IS GOOD. I LIKE {t.upper()} VERY MUCH."}]}
            for t in ["apples", "rivers", "trains", "cats", "music", "bread", "winter", "books", "tea", "maps"]]
    (folder / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")

    # tiny/v1 is the active adapter before the crash.
    library = AdapterLibrary(home / "adapters", engine.fingerprint)
    layers, dims = llama_dims(engine.llm.metadata)
    v1 = library.add_version("tiny", write_gguf_lora(tmp_path / "v1.gguf", random_lora(layers, dims, rank=4), alpha=8))
    library.activate("tiny", v1.version)
    adapters_before = _tree(library.persona_dir("tiny"))

    # Two approved tiny replies make the background job retrain tiny right after start.
    j = journal(home)
    conv = j.create_conversation()
    for topic in ("kites", "boats"):
        turn = j.start_turn(conv, f"Tell me about {topic}.", "tiny")
        j.finish_turn(turn, f"{topic.upper()} ARE GOOD.")
        j.set_feedback(turn, "approved")
    # A run killed before it had a run folder (e.g. while the HF base was materialised)
    # leaves a 'running' row with no run_dir; restarts must survive that too.
    early = j.start_run("poet", 0, "manual")
    j.close()

    env = {"ALTEREGO_TUNING_SCHEDULE_MINUTES": "0.02", "ALTEREGO_TUNING_MIN_NEW_APPROVALS": "2",
           "ALTEREGO_TUNING_HF_BASE": str(hf_base), "ALTEREGO_TUNING_MAX_STEPS": "500",
           "ALTEREGO_TUNING_MIN_PAIRS": "4", "ALTEREGO_TUNING_HELDOUT_FRACTION": "0.2",
           "ALTEREGO_TUNING_TRAIN_THREADS": "1"}
    app = start_app(home, env=env)
    try:
        def training_step():
            j = journal(home)
            try:
                run = next(iter(j.runs("tiny", limit=1)), None)
            finally:
                j.close()
            if not run or not run["run_dir"]:
                return None
            assert run["status"] == "running", run
            try:
                status = json.loads((Path(run["run_dir"]) / "status.json").read_text())
            except (OSError, ValueError):
                return None
            return run if status.get("step", 0) >= 1 else None

        run = wait_for(training_step, 400, "the retraining job to reach step 1", app, poll=0.5)
        trainer = int((Path(run["run_dir"]) / "pid").read_text())
        assert not _process_gone(trainer)
        app.kill9()
    finally:
        app.kill9()
    wait_for(lambda: _process_gone(trainer), 30, "the training process to die with its app")

    app = start_app(home, env=env)
    try:
        j = journal(home)
        assert j.integrity_check() == "ok"
        runs = {r["id"]: r for r in j.runs(limit=10)}
        assert runs[run["id"]]["status"] == "interrupted" and runs[run["id"]]["finished_at"]
        assert runs[early]["status"] == "interrupted"
        j.close()
        # The active adapter is still v1, byte for byte, with no half-written v2 beside it...
        assert library.active("tiny").version == v1.version
        assert _tree(library.persona_dir("tiny")) == adapters_before
        # ...and the restarted app loaded it.
        assert app.health()["model"]["adapters"] == ["tiny"]
    finally:
        app.stop()
    j = journal(home)
    assert [r["id"] for r in j.runs("tiny")] == [run["id"]]  # not retried in a loop right away (it backs off)
    j.close()
    # It answers: a turn as tiny goes through v1.
    out = chat_cli(home, "--persona", "tiny", "Tell me about kites.")
    assert out["adapter"] == "tiny/v1" and out["persona"] == "tiny"
