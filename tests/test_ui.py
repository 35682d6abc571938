"""The Gradio app: built for real, callbacks driven directly (no browser), and one real
server round trip through gradio_client to prove the wiring streams a reply."""

import socket

import gradio as gr
import pytest

from webapp.ui import ChatUI, build_app


def test_app_builds_with_personas_and_conversations(service):
    service.send("hello there")
    app = build_app(service)
    assert isinstance(app, gr.Blocks)
    ui = ChatUI(service)
    assert [v for _, v in ui.persona_choices()][:2] == ["auto", "me"]
    assert len(ui.conversation_choices()) == 1


def test_respond_streams_and_journals(service):
    ui = ChatUI(service)
    outputs = list(ui.respond("What should I cook tonight?", "me", None, []))
    assert len(outputs) >= 2
    chat, textbox, conv_id, status = outputs[-1]
    assert textbox == "" and conv_id is not None
    assert chat[0] == {"role": "user", "content": "What should I cook tonight?"}
    assert chat[1]["role"] == "assistant" and chat[1]["content"].startswith("**Me**\n\n")
    assert "**Me** answered" in status and "tok/s" in status
    # a reload of that conversation shows the same messages, from the journal
    reopened, same_id, _ = ui.open_conversation(conv_id)
    assert same_id == conv_id and reopened == chat


def test_errors_become_gradio_errors_not_tracebacks(service):
    ui = ChatUI(service)
    with pytest.raises(gr.Error, match="empty"):
        list(ui.respond("  ", "me", None, []))
    with pytest.raises(gr.Error, match="Unknown persona"):
        list(ui.respond("hi", "pirate", None, []))
    assert service.journal.count_turns() == 0


def test_new_and_missing_conversation(service):
    ui = ChatUI(service)
    assert ui.new_conversation()[:2] == ([], None)
    chat, conv, status = ui.open_conversation(12345)
    assert chat == [] and conv is None and "no longer exists" in status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_app_streams_a_reply(service):
    from gradio_client import Client

    app = build_app(service)
    app.queue()
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = client.submit("Say hi to the poet.", "poet", [], api_name="/respond")
        partials = list(job)
        chat, textbox, status = job.outputs()[-1]
        assert len(partials) >= 2  # streamed, not one final blob
        assert chat[-1]["role"] == "assistant" and chat[-1]["content"][0]["text"]
        assert "**Poet** answered" in status
        assert service.journal.count_turns() == 1
    finally:
        app.close()


def test_import_search_and_forget_through_the_ui(service, tmp_path):
    import shutil

    from conftest import FIXTURES

    upload = tmp_path / "gradio-upload" / "diary.txt"  # where Gradio puts an upload
    upload.parent.mkdir()
    shutil.copy(FIXTURES / "import" / "diary.txt", upload)
    ui = ChatUI(service)
    ticks = []
    text, summary = ui.import_files([str(upload)], "", progress=lambda frac, desc: ticks.append((frac, desc)))
    assert summary["scenes_added"] >= 1 and "scenes added" in text and ticks
    assert summary["details"][0]["file"] == "upload:diary.txt"  # named by the file, not the temp path
    rows = ui.search_memory("walking to the river")
    assert rows and rows[0][1] == "upload:diary.txt"
    assert ui.source_rows() == [["upload:diary.txt", "text", summary["scenes_added"]]]
    # a reply shows its sources in a collapsible message, also after a reload
    chat = list(ui.respond("Do you remember the river after work and the ice?", "me", None, []))[-1][0]
    assert chat[-1]["metadata"]["title"].startswith("Sources from your memory")
    assert "diary.txt" in chat[-1]["content"]
    conv = service.conversations()[0].id
    assert ui.open_conversation(conv)[0] == chat
    assert "scenes removed" in ui.forget_source("upload:diary.txt")
    assert ui.source_rows() == []
    with pytest.raises(gr.Error, match="Choose one or more files"):
        ui.import_files([], "")
