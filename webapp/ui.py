"""The Gradio web UI: a thin layer over `ChatService`. `ChatUI` holds the callbacks as
plain methods (tests call them directly, without a browser); `build_app` wires them to
components and `launch` serves the app. No logic lives here that the service or the CLI
could not reach: the UI converts between the journal and Gradio's message dicts, shows
progress and errors, and nothing more."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from personas.router import AUTO

from .chat import ChatService, TurnUpdate
from .errors import USER_ERRORS
from .settings import Settings

log = logging.getLogger(__name__)

INTRO = (
    "### alterego\n"
    "Talk with a persona that speaks like you — everything runs on this machine, nothing is sent anywhere. "
    "Pick a persona (**Me** answers in your voice), type a message, press Enter."
)


def sources_message(sources: list[dict]) -> dict | None:
    """A collapsible chat message listing the scenes a reply was given."""
    if not sources:
        return None
    from datetime import datetime, timezone

    lines = []
    for src in sources:
        ts = src.get("timestamp")
        date = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d") if ts and ts > 1e8 else ""
        meta = " · ".join(x for x in (Path(src["source"]).name, src.get("speaker", ""), date) if x)
        snippet = " ".join(src["text"].split())
        snippet = snippet if len(snippet) <= 220 else snippet[:219] + "…"
        lines.append(f"- **{meta}** (score {src['score']:.2f})  \n  {snippet}")
    return {
        "role": "assistant",
        "content": "\n".join(lines),
        "metadata": {"title": f"Sources from your memory ({len(sources)})", "status": "done"},
    }


def reply_message(display: str, reply: str, *, adapter: str = "", route_reason: str = "", interrupted: bool = False) -> dict:
    """An assistant message labelled with who answered (and, in Auto mode, why)."""
    label = f"**{display}**"
    if adapter:
        label += f" · adapter {adapter.split('/')[-1]}"
    if route_reason:
        label += f" · *auto: {route_reason}*"
    body = reply + ("\n\n*(reply interrupted)*" if interrupted else "")
    return {"role": "assistant", "content": f"{label}\n\n{body}".rstrip()}


def _status_line(update: TurnUpdate, display: str) -> str:
    t = update.timings
    return (
        f"**{display}** answered · turn {update.turn_id} · first token {t.get('ttft_ms', 0):.0f} ms · "
        f"{t.get('tokens', 0)} tokens at {t.get('tokens_per_s', 0):.0f} tok/s · "
        f"prompt {t.get('prompt_eval_tokens', 0)}/{t.get('prompt_tokens', 0)} tokens evaluated"
    )


class ChatUI:
    """The UI's callbacks, over one ChatService shared by every browser session."""

    def __init__(self, service: ChatService):
        self.service = service

    # -- helpers ------------------------------------------------------------------------
    def persona_choices(self) -> list[tuple[str, str]]:
        return [("Auto", AUTO)] + [(p.display_name, p.name) for p in self.service.personas()]

    def _display(self, name: str) -> str:
        try:
            return self.service.catalog.get(name).display_name
        except USER_ERRORS:  # a persona removed since the turn was journaled
            return name

    def conversation_choices(self) -> list[tuple[str, int]]:
        return [
            (f"{c.title or 'Untitled'} · {c.turns} turns · {c.updated_at[:16].replace('T', ' ')}", c.id)
            for c in self.service.conversations()
        ]

    def messages_for(self, conversation_id: int | None) -> list[dict]:
        if conversation_id is None:
            return []
        messages: list[dict] = []
        for turn in self.service.history(conversation_id):
            messages.append({"role": "user", "content": turn.user_text})
            messages.append(reply_message(
                self._display(turn.persona), turn.reply, adapter=turn.adapter,
                route_reason=turn.route_reason, interrupted=turn.status != "ok",
            ))
            src = sources_message(turn.source_list)
            if src:
                messages.append(src)
        return messages

    # -- callbacks ----------------------------------------------------------------------
    def respond(
        self, message: str, persona: str, conversation_id: int | None, history: list[dict] | None
    ) -> Iterator[tuple[list[dict], str, int | None, str]]:
        """Stream one turn: yields (chat messages, textbox value, conversation id, status)."""
        import gradio as gr

        history = list(history or [])
        try:
            stream = self.service.stream_turn(message, persona=persona, conversation_id=conversation_id)
            first = next(stream)  # validation and model loading errors surface here
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        display = self._display(first.persona)
        reason = first.route.reason if first.route else ""
        base = history + [{"role": "user", "content": message.strip()}]
        typing = f"*{display} is typing…*"

        def shown(update: TurnUpdate) -> dict:
            return reply_message(display, update.reply, adapter=update.adapter, route_reason=reason)

        yield base + [shown(first)], "", first.conversation_id, typing
        for update in stream:
            if not update.done:
                yield base + [shown(update)], "", update.conversation_id, typing
                continue
            final = base + [shown(update)]
            src = sources_message(update.sources)
            if src:
                final.append(src)
            status = _status_line(update, display)
            if update.memory_error:
                status += f"  \n⚠️ Answered without memory: {update.memory_error}"
            yield final, "", update.conversation_id, status

    def import_files(self, files: list[str] | None, me_text: str, progress=None) -> tuple[str, dict]:
        """Import uploaded files. Only paths Gradio wrote for this upload are read; the
        source is named after the uploaded file's name, never a browser-supplied path."""
        import gradio as gr

        paths = [Path(f) for f in (files or [])]
        if not paths:
            raise gr.Error("Choose one or more files to import first.", print_exception=False)
        names = {p: f"upload:{p.name}" for p in paths}
        me = [m.strip() for m in (me_text or "").split(",") if m.strip()]

        def tick(source: str, index: int, count: int, scenes: int) -> None:
            if progress is not None:
                progress((index + 0.5) / count, desc=f"{Path(source).name}: {scenes} scenes")

        summary = self.service.memory.import_paths(paths, me=me, source_names=names, progress=tick).as_dict()
        from .cli import format_import_summary

        return "```\n" + format_import_summary(summary) + "\n```", summary

    def search_memory(self, query: str) -> list[list]:
        import gradio as gr

        try:
            hits = self.service.memory.search(query or "", k=10)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [[round(h.score, 3), Path(h.source).name, h.speaker, " ".join(h.text.split())[:300]] for h in hits]

    def source_rows(self) -> list[list]:
        return [[name, row["kind"], row["scenes"]] for name, row in sorted(self.service.memory.sources().items())]

    def forget_source(self, source: str | None) -> str:
        import gradio as gr

        if not source:
            raise gr.Error("Pick a source to forget.", print_exception=False)
        try:
            name, removed = self.service.memory.forget(source)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Forgot **{name}**: {removed} scenes removed."

    def new_conversation(self) -> tuple[list[dict], None, str]:
        return [], None, "New conversation: your first message starts it."

    def open_conversation(self, conversation_id: int | None) -> tuple[list[dict], int | None, str]:
        if conversation_id is None:
            return self.new_conversation()
        conv = self.service.journal.get_conversation(int(conversation_id))
        if conv is None:
            return [], None, "That conversation no longer exists."
        return self.messages_for(conv.id), conv.id, f"Opened **{conv.title or 'Untitled'}** ({conv.turns} turns)."


def build_app(service: ChatService):
    import gradio as gr

    ui = ChatUI(service)
    with gr.Blocks(title="alterego") as app:
        gr.Markdown(INTRO)
        with gr.Tab("Chat", id="chat-tab"):
            chat_tab(ui)
        with gr.Tab("Import", id="import-tab"):
            import_tab(ui)
        with gr.Tab("Memory", id="memory-tab") as memory:
            refresh_memory = memory_tab(ui)
        memory.select(*refresh_memory, api_name=False)
    return app


def chat_tab(ui: ChatUI) -> None:
    import gradio as gr

    conversation = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            persona = gr.Dropdown(
                choices=ui.persona_choices(), value=AUTO, label="Persona",
                info="Auto lets the router pick who answers each message; pick a persona to choose yourself.",
                elem_id="persona",
            )
            new_btn = gr.Button("New conversation", elem_id="new-conversation")
            conversations = gr.Dropdown(
                choices=ui.conversation_choices(), value=None, label="Conversations",
                info="Everything said is kept in the journal; pick one to continue it.",
                elem_id="conversations",
            )
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(
                label="Chat", height=520, elem_id="chat", feedback_options=None,
                placeholder="Say something — your alter ego is listening.",
            )
            message = gr.Textbox(
                placeholder="Type a message and press Enter", show_label=False, elem_id="message",
                max_lines=8, submit_btn=True,
            )
            status = gr.Markdown("", elem_id="status")

    def refresh_list(conv_id=None):
        return gr.update(choices=ui.conversation_choices(), value=conv_id)

    message.submit(
        ui.respond, [message, persona, conversation, chatbot], [chatbot, message, conversation, status],
        concurrency_limit=1, api_name="respond",
    ).then(refresh_list, [conversation], [conversations], api_name=False)
    new_btn.click(ui.new_conversation, None, [chatbot, conversation, status], api_name=False).then(
        refresh_list, None, [conversations], api_name=False
    )
    conversations.input(ui.open_conversation, [conversations], [chatbot, conversation, status], api_name=False)


def import_tab(ui: ChatUI) -> None:
    import gradio as gr

    gr.Markdown(
        "Import your own words: notes (.txt, .md, Obsidian chat notes), chat exports (ChatGPT "
        "`conversations.json`, Telegram `result.json`, WhatsApp `.txt`) and transcripts (.srt, .vtt). "
        "Re-importing a file adds nothing new; a changed file replaces its old scenes."
    )
    files = gr.File(label="Files to import", file_count="multiple", type="filepath", elem_id="import-files")
    me = gr.Textbox(
        label="Your name in the chats (comma-separated)", elem_id="import-me",
        info="Leave empty to auto-detect: the most frequent sender is taken to be you.",
    )
    button = gr.Button("Import", variant="primary", elem_id="import-button")
    summary = gr.Markdown(elem_id="import-summary")
    details = gr.JSON(label="Details", open=False)

    def run(files_, me_, progress=gr.Progress()):
        return ui.import_files(files_, me_, progress)

    button.click(run, [files, me], [summary, details], api_name="import")


def memory_tab(ui: ChatUI) -> tuple:
    """Search and forget; returns the (fn, inputs, outputs) that refresh the source list."""
    import gradio as gr

    with gr.Row():
        query = gr.Textbox(label="Search your memory", scale=4, elem_id="memory-query")
        go = gr.Button("Search", scale=1)
    results = gr.Dataframe(headers=["score", "source", "speaker", "scene"], interactive=False, wrap=True)
    gr.Markdown("#### Imported sources")
    sources = gr.Dataframe(headers=["source", "kind", "scenes"], interactive=False, elem_id="sources")
    with gr.Row():
        pick = gr.Dropdown(label="Source to forget", choices=[], scale=4, elem_id="forget-source")
        forget = gr.Button("Forget source", variant="stop", scale=1)
    outcome = gr.Markdown()

    def refresh():
        rows = ui.source_rows()
        return rows, gr.update(choices=[r[0] for r in rows], value=None)

    gr.on([query.submit, go.click], ui.search_memory, [query], [results], api_name="search")
    forget.click(ui.forget_source, [pick], [outcome], api_name=False).then(refresh, None, [sources, pick], api_name=False)
    return refresh, None, [sources, pick]


def launch(settings: Settings, *, block: bool = True):
    """Build the service and serve the UI on settings.server.host:port."""
    service = ChatService(settings)
    service.engine  # load the model before the first visitor waits for it
    # The embedder and router load in the background: Auto mode and learning from
    # persona overrides need them, the first plain turn doesn't.
    threading.Thread(target=service.warm_up, name="warm-up", daemon=True).start()
    app = build_app(service)
    app.queue(default_concurrency_limit=4)
    print(f"alterego: serving http://{settings.server.host}:{settings.server.port} (data in {settings.home})", flush=True)
    app.launch(
        server_name=settings.server.host,
        server_port=settings.server.port,
        prevent_thread_lock=not block,
        show_error=True,
        footer_links=[],
        quiet=True,
    )
    return app
