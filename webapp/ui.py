"""The Gradio web UI: a thin layer over `ChatService`. `ChatUI` holds the callbacks as
plain methods (tests call them directly, without a browser); `build_app` wires them to
components and `launch` serves the app. No logic lives here that the service or the CLI
could not reach: the UI converts between the journal and Gradio's message dicts, shows
progress and errors, and nothing more."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from .chat import ChatService, TurnUpdate
from .errors import USER_ERRORS
from .settings import Settings

log = logging.getLogger(__name__)

INTRO = (
    "### alterego\n"
    "Talk with a persona that speaks like you — everything runs on this machine, nothing is sent anywhere. "
    "Pick a persona (**Me** answers in your voice), type a message, press Enter."
)


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
        return [(p.display_name, p.name) for p in self.service.personas()]

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
            reply = turn.reply if turn.status == "ok" else (turn.reply + "\n\n*(reply interrupted)*").strip()
            messages.append({"role": "assistant", "content": reply})
        return messages

    # -- callbacks ----------------------------------------------------------------------
    def respond(
        self, message: str, persona: str, conversation_id: int | None, history: list[dict] | None
    ) -> Iterator[tuple[list[dict], str, int | None, str]]:
        """Stream one turn: yields (chat messages, textbox value, conversation id, status)."""
        import gradio as gr

        history = list(history or [])
        try:
            display = self.service.catalog.get(persona).display_name
            stream = self.service.stream_turn(message, persona=persona, conversation_id=conversation_id)
            first = next(stream)  # validation and model loading errors surface here
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        base = history + [{"role": "user", "content": message.strip()}]
        update = first
        yield base + [{"role": "assistant", "content": update.reply}], "", update.conversation_id, f"*{display} is typing…*"
        for update in stream:
            yield base + [{"role": "assistant", "content": update.reply}], "", update.conversation_id, (
                _status_line(update, display) if update.done else f"*{display} is typing…*"
            )

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
        conversation = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                persona = gr.Dropdown(
                    choices=ui.persona_choices(), value="me", label="Persona",
                    info="Who answers the next message.", elem_id="persona",
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

        def refresh_list(conv_id):
            return gr.update(choices=ui.conversation_choices(), value=conv_id)

        message.submit(
            ui.respond, [message, persona, conversation, chatbot], [chatbot, message, conversation, status],
            concurrency_limit=1, api_name="respond",
        ).then(refresh_list, [conversation], [conversations], api_name=False)
        new_btn.click(ui.new_conversation, None, [chatbot, conversation, status], api_name=False).then(
            lambda: gr.update(value=None), None, [conversations], api_name=False
        )
        conversations.input(ui.open_conversation, [conversations], [chatbot, conversation, status], api_name=False)
        app.load(lambda: gr.update(choices=ui.conversation_choices()), None, [conversations], api_name=False)
    return app


def launch(settings: Settings, *, block: bool = True):
    """Build the service and serve the UI on settings.server.host:port."""
    service = ChatService(settings)
    service.engine  # load the model before the first visitor waits for it
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
