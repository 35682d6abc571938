"""The approval loop: approve / edit / reject through the service, the CLI and the UI's
chatbot events (state survives a reload), and the background job end to end — chat,
approve, the scheduler harvests and trains a few real steps, the gate decides, the next
turn uses the promoted version; a restart neither loses nor repeats work."""

import json
import subprocess
import time

import gradio as gr
import pytest

from conftest import ALTEREGO, ROOT, cli_env, tuning_config
from memory.errors import JournalError
from webapp.errors import ChatInputError
from webapp.ui import ChatUI


def test_service_verdicts(service):
    a = service.send("hello", persona="me")
    b = service.send("and?", persona="me", conversation_id=a.conversation_id)
    c = service.send("bye", persona="me", conversation_id=a.conversation_id)
    assert service.approve(a.turn_id).feedback == "approved"
    edited = service.approve(b.turn_id, edit="  Fine, thanks — and you?  ")
    assert (edited.feedback, edited.edited_text) == ("edited", "Fine, thanks — and you?")
    assert service.approve(c.turn_id, edit=c.reply).feedback == "approved"  # unchanged edit = approval
    assert service.reject(c.turn_id).feedback == "rejected"  # a verdict can be changed
    assert service.journal.feedback_counts()["me"] == {"approved": 1, "edited": 1, "rejected": 1, "pending": 0}
    with pytest.raises(JournalError, match="No completed turn 999"):
        service.approve(999)
    with pytest.raises(ChatInputError):
        service.approve(a.turn_id, edit="   ")


def test_cli_verdicts(tmp_path):
    run = lambda *a: subprocess.run([*ALTEREGO, *a], cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=180)  # noqa: E731
    first = json.loads(run("chat", "--json", "hi").stdout)
    second = json.loads(run("chat", "--json", "--conversation", str(first["conversation_id"]), "more").stdout)
    pending = json.loads(run("turns", "--pending", "--json").stdout)
    assert {t["turn_id"] for t in pending} == {first["turn_id"], second["turn_id"]}
    assert run("approve", str(first["turn_id"]), "--edit", "Hey! Good to see you.").returncode == 0
    assert run("reject", str(second["turn_id"])).returncode == 0
    rows = {t["turn_id"]: t for t in json.loads(run("turns", "--json").stdout)}
    assert rows[first["turn_id"]]["feedback"] == "edited" and rows[first["turn_id"]]["edited_text"] == "Hey! Good to see you."
    assert rows[second["turn_id"]]["feedback"] == "rejected"
    assert json.loads(run("turns", "--pending", "--json").stdout) == []
    bad = run("approve", "4242")
    assert bad.returncode == 2 and "No completed turn 4242" in bad.stderr


def test_ui_like_dislike_edit_and_reload(service):
    ui = ChatUI(service)
    chat, _, conv, _ = list(ui.respond("Tell me about your morning.", "me", None, []))[-1]
    chat, _, conv, _ = list(ui.respond("And the evening?", "me", conv, chat))[-1]
    assert ui.turn_at(conv, 0) is None and ui.turn_at(conv, 1) is not None
    chat, status = ui.on_like(conv, 1, True)
    assert "✅ approved" in chat[1]["content"] and "approved" in status
    chat, _ = ui.on_like(conv, 3, False)
    assert "❌ rejected" in chat[3]["content"]
    edited_value = [{"type": "text", "text": chat[3]["content"].split("\n\n", 1)[0] + "\n\nQuiet. A book and tea."}]
    chat, _ = ui.on_edit(conv, 3, edited_value)
    assert "✏️ edited" in chat[3]["content"] and chat[3]["content"].endswith("Quiet. A book and tea.")
    turn = service.journal.get_turn(ui.turn_at(conv, 3))
    assert (turn.feedback, turn.edited_text) == ("edited", "Quiet. A book and tea.")
    # the state survives a reload of the conversation
    assert ui.open_conversation(conv)[0] == chat
    with pytest.raises(gr.Error, match="Only replies"):
        ui.on_like(conv, 0, True)


def test_tuning_tab_callbacks(service):
    ui = ChatUI(service)
    overview = ui.tuning_overview("me")
    assert "prompt-only" in overview and "a run starts at" in overview
    assert ui.version_rows("me") == [] and ui.loss_curve("me").empty
    # "Show training data": what the next run would learn from, by frame.
    from conftest import FIXTURES

    service.memory.import_paths([FIXTURES / "import" / "obsidian_chat.md"])
    data = ui.training_data("me")
    assert "opener" in data and "(New conversation: Как выбрать велосипед)" in data and "reply" in data
    assert "No training run" in ui.cancel_run()
    assert "no earlier adapter version" in ui.rollback("poet")



def test_one_training_run_per_data_root_across_processes(tiny, service, hf_base):
    """Another process (here a plain Python holding the lock, as `alterego scheduler` or
    `alterego train` would while training) owns the data root's training lock: this
    process neither starts a run nor marks the other's run interrupted; once the other
    process is gone (killed: the kernel drops its lock), its run is recovered."""
    import sys

    from tuning.errors import TrainingBusyError
    from tuning.pipeline import train_persona
    from tuning.runlock import training_in_progress

    home = service.settings.home
    service.settings.tuning = tuning_config(hf_base, min_new_approvals=1, retry_minutes=0)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tuning.runlock import TrainingLock; "
         f"lock = TrainingLock({str(home)!r}); assert lock.acquire(); print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held" and training_in_progress(home)
        theirs = service.journal.start_run("tiny", 0, "schedule")  # the other process's run
        service._scheduler = None
        sched = service.scheduler  # its start-up recovery must leave the live run alone
        assert service.journal.runs("tiny")[0]["status"] == "running"
        assert sched.run("tiny")["status"] == "busy"
        assert [r["id"] for r in service.journal.runs("tiny")] == [theirs]  # no row for a run never started
        with pytest.raises(TrainingBusyError, match="Another training run is in progress"):
            train_persona(home, service.settings.tuning, tiny, journal=service.journal, store=None,
                          library=service.adapters, max_steps=1)
    finally:
        holder.kill()
        holder.wait()
    assert not training_in_progress(home)
    service._scheduler = None
    assert service.scheduler and service.journal.runs("tiny")[0]["status"] == "interrupted"


@pytest.mark.slow
def test_full_loop_in_process(tiny, service, hf_base):
    service.settings.tuning = tuning_config(hf_base, min_new_approvals=3, retry_minutes=0)
    service._scheduler = None
    replies = [service.send(f"Tell me about {t}.", persona="tiny") for t in ("kites", "owls", "clouds")]
    assert all(r.adapter == "" for r in replies)
    for r in replies[:2]:
        service.approve(r.turn_id)
    sched = service.scheduler
    assert sched.due() == []  # 2 < 3 new approvals
    service.approve(replies[2].turn_id, edit="CLOUDS ARE GOOD. I LIKE CLOUDS VERY MUCH.")
    assert [d[0] for d in sched.due()] == ["tiny"]

    # "Restart" mid-way: a run cut off while running is not lost — it is retried.
    run_id = service.journal.start_run("tiny", replies[2].turn_id, "schedule")
    service._scheduler = None
    sched = service.scheduler
    assert service.journal.runs("tiny")[0]["status"] == "interrupted"
    assert [d[0] for d in sched.due()] == ["tiny"]

    sched.start(interval_s=1)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            done = [r for r in service.journal.runs("tiny") if r["id"] != run_id and r["status"] != "running"]
            if done:
                break
            time.sleep(1)
    finally:
        sched.shutdown()
    run = done[0]
    assert run["status"] == "done", run.get("error")
    summary = json.loads(run["summary"])
    assert summary["data"]["sources"].get("journal:approved") == 2 and summary["data"]["sources"].get("journal:edited") == 1
    assert run["watermark"] == replies[2].turn_id
    if run["promoted"]:
        assert service.send("Tell me about rain.", persona="tiny").adapter == f"tiny/v{run['version']}"
    else:  # the gate refused it: nothing changed
        assert service.adapters.active("tiny") is None
    # Restart after the run: the approvals it covered are not trained on again.
    service._scheduler = None
    assert service.scheduler.due() == []
    assert service.scheduler.tick() == []
