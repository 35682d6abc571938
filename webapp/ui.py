"""The Gradio web UI: a thin layer over `ChatService`. `ChatUI` holds the callbacks as
plain methods (tests call them directly, without a browser); `build_app` wires them to
components (`webapp.server` serves them). (Gradio is imported at module level because it
resolves event-data type hints like `gr.LikeData` from the module's globals; the CLI
imports this module only for `alterego run`.) No logic lives here that the service or the CLI
could not reach: the UI converts between the journal and Gradio's message dicts, shows
progress and errors, and nothing more."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from personas.router import AUTO

from .chat import ChatService, TurnUpdate
from .errors import USER_ERRORS
from .reports import format_dataset_summary, format_import_summary

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
        # When and who: the passage's date and time, and everyone who speaks in it.
        ts = src.get("timestamp")
        date = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M") if ts and ts > 1e8 else ""
        who = src.get("speakers") or src.get("speaker", "")
        meta = " · ".join(x for x in (Path(src["source"]).name, who, date) if x)
        snippet = " ".join(src["text"].split())
        snippet = snippet if len(snippet) <= 220 else snippet[:219] + "…"
        lines.append(f"- **{meta}** (score {src['score']:.2f})  \n  {snippet}")
    return {
        "role": "assistant",
        "content": "\n".join(lines),
        "metadata": {"title": f"Sources from your memory ({len(sources)})", "status": "done"},
    }


FEEDBACK_BADGES = {"approved": "✅ approved", "edited": "✏️ edited & approved", "rejected": "❌ rejected"}


def reply_message(
    display: str, reply: str, *, adapter: str = "", route_reason: str = "", interrupted: bool = False,
    feedback: str | None = None,
) -> dict:
    """An assistant message labelled with who answered (in Auto mode, why) and the
    user's verdict on it. The label is the first paragraph; `strip_label` removes it."""
    label = f"**{display}**"
    if adapter:
        label += f" · adapter {adapter.split('/')[-1]}"
    if feedback:
        label += f" · {FEEDBACK_BADGES[feedback]}"
    if route_reason:
        label += f" · *auto: {route_reason}*"
    body = reply + ("\n\n*(reply interrupted)*" if interrupted else "")
    return {"role": "assistant", "content": f"{label}\n\n{body}".rstrip()}


def message_text(content) -> str:
    """Gradio hands message content back as a string or a list of {type, text} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content or "")


def strip_label(text: str) -> str:
    if text.startswith("**") and "\n\n" in text:
        return text.split("\n\n", 1)[1].strip()
    return text.strip()


def _status_line(update: TurnUpdate, display: str) -> str:
    t = update.timings
    return (
        f"**{display}** answered · turn {update.turn_id} · first token {t.get('ttft_ms', 0):.0f} ms · "
        f"{t.get('tokens', 0)} tokens at {t.get('tokens_per_s', 0):.0f} tok/s · "
        f"prompt {t.get('prompt_eval_tokens', 0)}/{t.get('prompt_tokens', 0)} tokens evaluated"
        + (f" · model {update.model}" if update.model else "")
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
        return [m for m, _ in self._messages_and_turns(conversation_id)]

    def _messages_and_turns(self, conversation_id: int) -> list[tuple[dict, int | None]]:
        """The chat as shown, each message with the turn id it belongs to if it is a reply.
        The UI's chat after a turn is exactly this list, so an event's message index maps
        back to its turn without any per-session state."""
        out: list[tuple[dict, int | None]] = []
        for turn in self.service.history(conversation_id):
            out.append(({"role": "user", "content": turn.user_text}, None))
            shown = turn.edited_text if turn.feedback == "edited" and turn.edited_text else turn.reply
            out.append((reply_message(
                self._display(turn.persona), shown, adapter=turn.adapter, route_reason=turn.route_reason,
                interrupted=turn.status != "ok", feedback=turn.feedback,
            ), turn.id if turn.status == "ok" else None))
            src = sources_message(turn.source_list)
            if src:
                out.append((src, None))
        return out

    def turn_at(self, conversation_id: int | None, index: int) -> int | None:
        if conversation_id is None:
            return None
        rows = self._messages_and_turns(int(conversation_id))
        return rows[index][1] if 0 <= index < len(rows) else None

    def give_feedback(self, conversation_id: int | None, index: int, verdict: str, edited: str | None = None):
        """Approve / reject / edit the reply at `index` of the shown chat; returns the chat
        re-rendered from the journal (so the state shown is the state stored) and a status."""
        turn_id = self.turn_at(conversation_id, index)
        if turn_id is None:
            raise gr.Error("Only replies can be approved, edited or rejected.", print_exception=False)
        try:
            if verdict == "reject":
                turn = self.service.reject(turn_id)
            else:
                turn = self.service.approve(turn_id, edit=edited)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        note = {"approved": "approved: it will teach", "edited": "approved with your edit: it will teach",
                "rejected": "rejected: it will not teach"}[turn.feedback]
        return self.messages_for(int(conversation_id)), f"Turn {turn_id} {note} **{self._display(turn.persona)}**."

    def on_like(self, conversation_id: int | None, index: int, liked) -> tuple[list[dict], str]:
        return self.give_feedback(conversation_id, index, "reject" if liked is False or liked == "Dislike" else "approve")

    def on_edit(self, conversation_id: int | None, index: int, value, previous=None):
        # Gradio shows a reply and its sources as one bubble and submits an edit event
        # for every message in it, changed or not: an unchanged one is no edit at all
        # (without this, every edit of a reply also raised "Only replies can be…").
        if previous is not None and message_text(value).strip() == message_text(previous).strip():
            return gr.skip(), gr.skip()
        return self.give_feedback(conversation_id, index, "approve", edited=strip_label(message_text(value)))

    # -- callbacks ----------------------------------------------------------------------
    def respond(
        self, message: str, persona: str, conversation_id: int | None, history: list[dict] | None
    ) -> Iterator[tuple[list[dict], str, int | None, str]]:
        """Stream one turn: yields (chat messages, textbox value, conversation id, status)."""
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

    def prepare(self, persona: str, conversation_id: int | None) -> None:
        """A persona was picked (or a conversation opened): read the conversation into the
        model under that persona now, while the user types, so the next reply starts
        without re-reading it. Best effort: a failure here only costs that speed-up, and
        the turn itself reports any real problem."""
        try:
            self.service.prepare(persona, conversation_id)
        except Exception as exc:  # noqa: BLE001 — never an error box for a look-ahead
            log.info("prepare %s skipped: %s", persona, exc)

    # -- tuning tab ---------------------------------------------------------------------
    def tuning_overview(self, persona: str) -> str:
        svc = self.service
        counts = svc.journal.feedback_counts().get(persona, {"approved": 0, "edited": 0, "rejected": 0, "pending": 0})
        sched = svc.scheduler
        new, _ = svc.journal.verdicts_since(persona, svc.journal.watermark(persona))
        need = svc.settings.tuning.min_new_approvals
        active = svc.adapters.active(persona)
        lines = [
            f"**{self._display(persona)}** · active adapter: **{active.tag if active else 'none (prompt-only)'}**",
            f"Replies: {counts['approved']} approved · {counts['edited']} edited · {counts['rejected']} rejected · "
            f"{counts['pending']} awaiting your verdict",
            f"New verdicts (👍, ✏️, 👎) since the last run: **{new}** (a run starts at {need})",
        ]
        nxt = sched.next_run()
        lines.append(f"Next scheduled check: {nxt:%Y-%m-%d %H:%M:%S}" if nxt else "Background job: not running")
        progress = sched.progress()
        if progress and progress.get("persona") == persona:
            eta = f", ETA {progress['eta_s']:.0f} s" if progress.get("eta_s") is not None else ""
            loss = f", loss {progress['loss']:.3f}" if progress.get("loss") is not None else ""
            lines.append(f"⏳ **{progress.get('state')}**: step {progress.get('step', 0)}/{progress.get('max_steps')}{loss}{eta}")
        elif progress:
            lines.append(f"⏳ training {self._display(progress['persona'])}…")
        last = next(iter(svc.journal.runs(persona, limit=1)), None)
        if last and not progress:
            lines.append(f"Last run: {last['status']} at {(last['finished_at'] or last['started_at'])[:19]}"
                         + (f" — {last['error']}" if last.get("error") else ""))
        return "  \n".join(lines)

    def loss_curve(self, persona: str):
        import pandas as pd

        progress = self.service.scheduler.progress()
        losses = progress.get("losses") if progress and progress.get("persona") == persona else None
        if not losses:
            versions = self.service.adapters.versions(persona)
            losses = versions[-1].meta.get("losses", []) if versions else []
        return pd.DataFrame(losses or [], columns=["step", "loss"])

    def version_rows(self, persona: str) -> list[list]:
        rows = []
        for v in reversed(self.service.adapters.versions(persona)):
            ev = v.meta.get("eval", {})
            rows.append([f"v{v.version}", "●" if v.active else "", (v.meta.get("created_at") or "")[:19],
                         ev.get("base_loss"), ev.get("current_loss"), ev.get("candidate_loss"),
                         _agreement(ev), "yes" if v.meta.get("promoted") else "no", v.meta.get("gate", "")])
        return rows

    def samples_text(self, persona: str) -> str:
        versions = self.service.adapters.versions(persona)
        if not versions or not versions[-1].meta.get("samples"):
            return ""
        parts = [f"#### Sample generations of v{versions[-1].version} on held-out prompts"]
        for sample in versions[-1].meta["samples"]:
            parts.append(f"**Prompt:** {sample['prompt']}  \n**You wrote:** {sample['reference']}  \n"
                         f"**v{versions[-1].version} says:** {sample['candidate']}")
        return "\n\n".join(parts)

    def training_data(self, persona: str) -> str:
        try:
            summary = self.service.training_data(persona)
        except USER_ERRORS as exc:
            return f"⚠️ {exc}"
        return "```\n" + format_dataset_summary(self._display(persona), summary, show=3) + "\n```"

    def retrain_now(self, persona: str) -> str:
        from tuning.runlock import training_in_progress

        sched = self.service.scheduler
        if sched.progress() is not None or sched.current is not None:
            return "A training run is already in progress."
        if training_in_progress(self.service.settings.home):
            return "Another alterego process (`alterego scheduler` or `alterego train`) is training on this data; try again when it is done."
        threading.Thread(target=sched.run, args=(persona,), kwargs={"trigger": "manual"}, daemon=True).start()
        return f"Retraining **{self._display(persona)}** started; progress appears above."

    def cancel_run(self) -> str:
        return "Cancelling the current run…" if self.service.scheduler.cancel() else "No training run is in progress."

    def rollback(self, persona: str) -> str:
        try:
            version = self.service.adapters.rollback(persona)
        except USER_ERRORS as exc:
            return f"⚠️ {exc}"
        return f"Rolled back: **{self._display(persona)}** uses v{version.version} again from the next turn."

    def import_files(self, files: list[str] | None, me_text: str, progress=None) -> tuple[str, dict]:
        """Import uploaded files. Only paths Gradio wrote for this upload are read; the
        source is named after the uploaded file's name, never a browser-supplied path."""
        paths = [Path(f) for f in (files or [])]
        if not paths:
            raise gr.Error("Choose one or more files to import first.", print_exception=False)
        # Gradio hands over each upload as an absolute path to a plain file it wrote.
        # Anything else (a symlink, a folder, `..` segments, a path that isn't there) did
        # not come from an upload: refuse it rather than follow it out of the upload
        # folder (a folder would even be walked).
        odd = [p.name or str(p) for p in paths
               if not p.is_absolute() or ".." in p.parts or p.is_symlink() or not p.is_file()]
        if odd:
            raise gr.Error(f"Only uploaded files can be imported; refused: {', '.join(odd)}.", print_exception=False)
        names = {p: f"upload:{p.name}" for p in paths}
        me = [m.strip() for m in (me_text or "").split(",") if m.strip()]

        def tick(source: str, index: int, count: int, scenes: int) -> None:
            if progress is not None:
                progress((index + 0.5) / count, desc=f"{Path(source).name}: {scenes} scenes")

        summary = self.service.memory.import_paths(paths, me=me, source_names=names, progress=tick).as_dict()
        summary["advice"] = self.service.import_advice(summary)
        return "```\n" + format_import_summary(summary) + "\n```", summary

    # -- the base model -------------------------------------------------------------------
    def model_choices(self) -> list[tuple[str, str]]:
        rows = self.service.models()["models"]
        return [(f"{r['name']} — {r.get('title', '')}", r["name"]) for r in rows if r["available"]]

    def model_overview(self) -> str:
        listing = self.service.models()
        lines = ["| | model | languages | kind | size | adapters | license |", "|---|---|---|---|---|---|---|"]
        for r in listing["models"]:
            if not r["available"]:
                lines.append(f"| | {r['name']} | — | not available: {r['error']} | | | |")
                continue
            kind = "instruction-tuned" if r.get("instruction_tuned") else "base (transcript prompts)"
            lines.append(
                f"| {'✅' if r['current'] else ''} | **{r['name']}** {r.get('title', '')} | {r['languages']} | {kind} "
                f"| {r['size_mb']} MB | {', '.join(r['adapters']) or 'none'} | {r['license']} |"
            )
        return "\n".join(lines)

    def switch_model(self, name: str | None) -> str:
        """Load the chosen model (the chat waits for it), save the choice, and say which
        personas answer prompt-only until retrained for this base."""
        if not name:
            raise gr.Error("Pick a model first.", print_exception=False)
        try:
            result = self.service.use_model(name)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        row = result["model"]
        text = f"Now answering with **{row['name']}** ({row['languages']}); {'; '.join(result['notes'])}."
        if result["prompt_only"]:
            names = ", ".join(self._display(p) for p in result["prompt_only"])
            text += (f"\n\nPrompt-only until retrained for this base: **{names}** — adapters are trained per "
                     "base model; retrain them in the Tuning tab.")
        return text

    def search_memory(self, query: str) -> list[list]:
        try:
            hits = self.service.memory.search(query or "", k=10)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [[round(h.score, 3), Path(h.source).name, h.speaker, " ".join(h.text.split())[:300]] for h in hits]

    def source_rows(self) -> list[list]:
        try:
            sources = self.service.memory.sources()
        except USER_ERRORS as exc:  # e.g. the Chroma server is down
            raise gr.Error(str(exc), print_exception=False) from None
        return [[name, row["kind"], row["scenes"]] for name, row in sorted(sources.items())]

    def memory_note(self) -> str:
        """What the Memory tab says about background work on the store: the line vectors
        that scenes from before them get after an upgrade, or every scene's new vectors
        after a switch of embedder backend (memory.service)."""
        fill = self.service.memory.line_fill
        if fill is None:
            return ""
        state = fill.as_dict()
        work = "Re-embedding memory" if state["reembed"] else "Making line vectors"
        if state["error"]:
            return (f"⚠️ {work} stopped at {state['done']:,} of {state['scenes']:,} scenes "
                    f"({state['error']}); it resumes at the next start.")
        if state["finished"]:
            return ""
        eta = f", about {max(1, round(state['eta_s'] / 60))} min left" if state["eta_s"] is not None else ""
        pause = " (paused while a reply is written or files are imported)" if state["paused"] else ""
        if state["reembed"]:
            head = (f"⏳ Re-embedding memory for the new embedder backend: {state['done']:,} of "
                    f"{state['scenes']:,} scenes")
        else:
            head = f"⏳ Upgrading memory: line vectors for {state['done']:,} of {state['scenes']:,} older scenes"
        return (f"{head}{eta}{pause}. Search and chat work meanwhile; scenes not done yet are matched by their "
                f"whole text until then.")

    def memory_busy(self) -> bool:
        """Whether background work on the store (the line-vector fill) is still running."""
        fill = self.service.memory.line_fill
        return fill is not None and not fill.finished

    def forget_source(self, source: str | None) -> str:
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
    ui = ChatUI(service)
    with gr.Blocks(title="alterego") as app:
        gr.Markdown(INTRO)
        with gr.Tab("Chat", id="chat-tab") as chat:
            refresh_conversations = chat_tab(ui)
        # Each page load lists the conversations as they are now: the dropdown's choices
        # are otherwise frozen at build time, so after a reload none started since the
        # server came up could be reopened.
        app.load(*refresh_conversations, api_name=False, show_progress="hidden")
        with gr.Tab("Import", id="import-tab") as importing:
            import_tab(ui)
        with gr.Tab("Memory", id="memory-tab") as memory:
            refresh_memory = memory_tab(ui)
        memory.select(*refresh_memory, api_name=False)
        with gr.Tab("Tuning", id="tuning-tab") as tuning:
            timer = tuning_tab(ui)
        with gr.Tab("Settings", id="settings-tab") as settings:
            refresh_settings = settings_tab(ui)
        settings.select(*refresh_settings, api_name=False)
        # The Tuning tab's live view polls only while that tab is open, and so does the
        # Memory tab's note on background work (whose timer is refresh_memory's last output).
        memory_timer = refresh_memory[2][-1]
        tuning.select(lambda: gr.Timer(active=True), None, [timer], api_name=False, show_progress="hidden")
        for other in (chat, importing, memory, settings):
            other.select(lambda: gr.Timer(active=False), None, [timer], api_name=False, show_progress="hidden")
        for other in (chat, importing, tuning, settings):
            other.select(lambda: gr.Timer(active=False), None, [memory_timer], api_name=False,
                         show_progress="hidden")
    return app


def settings_tab(ui: ChatUI) -> tuple:
    """The model choice; returns the (fn, inputs, outputs) that refresh it."""
    gr.Markdown(
        "### Model\nThe model that writes every reply. **smollm2-135m** is small and fast but writes "
        "English only; **gemma3-270m** is a multilingual base model (140+ languages) — choose it when you "
        "write in another language. Persona adapters are trained per model: after a switch, personas "
        "without an adapter for the new model answer from their prompt alone until retrained."
    )
    table = gr.Markdown(ui.model_overview(), elem_id="model-table")
    current = ui.service.models()["current"]
    with gr.Row():
        choice = gr.Dropdown(ui.model_choices(), value=current, label="Model", elem_id="model-choice")
        button = gr.Button("Use this model", variant="primary", elem_id="model-use")
    status = gr.Markdown(elem_id="model-status")

    def use(name):
        message = ui.switch_model(name)
        return message, ui.model_overview()

    button.click(use, [choice], [status, table], api_name=False)
    return (lambda: ui.model_overview()), None, [table]


def chat_tab(ui: ChatUI) -> tuple:
    """The chat column; returns the (fn, inputs, outputs) that refresh the conversation list."""
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
                label="Chat", height=520, elem_id="chat", feedback_options=("Like", "Dislike"), editable="all",
                placeholder="Say something — your alter ego is listening.",
                # Not Gradio's default "share" button: it posts the chat to Hugging Face.
                buttons=["copy", "copy_all"],
            )
            message = gr.Textbox(
                placeholder="Type a message and press Enter", show_label=False, elem_id="message",
                max_lines=8, submit_btn=True,
            )
            status = gr.Markdown("", elem_id="status")
            gr.Markdown(
                "👍 approve a reply that sounds right · 👎 reject one that doesn't · ✏️ edit a reply to say it "
                "your way (the edit is approved). Approved replies teach the persona in the background — see Tuning.",
                elem_id="feedback-help",
            )

    def refresh_list(conv_id=None):
        return gr.update(choices=ui.conversation_choices(), value=conv_id)

    message.submit(
        ui.respond, [message, persona, conversation, chatbot], [chatbot, message, conversation, status],
        concurrency_limit=1, api_name="respond",
    ).then(refresh_list, [conversation], [conversations], api_name=False)
    new_btn.click(ui.new_conversation, None, [chatbot, conversation, status], api_name=False).then(
        refresh_list, None, [conversations], api_name=False
    )
    conversations.input(ui.open_conversation, [conversations], [chatbot, conversation, status], api_name=False).then(
        ui.prepare, [persona, conversation], None, api_name=False, show_progress="hidden"
    )
    # Picking a persona reads the conversation into the model under it straight away, so
    # the switch costs the reply nothing (the user is still typing); the newest pick wins.
    persona.input(ui.prepare, [persona, conversation], None, api_name=False, show_progress="hidden",
                  trigger_mode="always_last")

    def liked(conv, data: gr.LikeData):
        return ui.on_like(conv, data.index, data.liked)

    def edited(conv, data: gr.EditData):
        return ui.on_edit(conv, data.index, data.value, data.previous_value)

    chatbot.like(liked, [conversation], [chatbot, status], api_name=False)
    chatbot.edit(edited, [conversation], [chatbot, status], api_name=False)
    return refresh_list, None, [conversations]


def import_tab(ui: ChatUI) -> None:
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
    """Search and forget; returns the (fn, inputs, outputs) that refresh the source list,
    the note on background work and its timer (the last output: build_app stops it when
    another tab opens)."""
    with gr.Row():
        query = gr.Textbox(label="Search your memory", scale=4, elem_id="memory-query")
        go = gr.Button("Search", scale=1)
    results = gr.Dataframe(headers=["score", "source", "speaker", "scene"], interactive=False, wrap=True)
    gr.Markdown("#### Imported sources")
    note = gr.Markdown(elem_id="memory-note")
    sources = gr.Dataframe(headers=["source", "kind", "scenes"], interactive=False, elem_id="sources")
    with gr.Row():
        pick = gr.Dropdown(label="Source to forget", choices=[], scale=4, elem_id="forget-source")
        forget = gr.Button("Forget source", variant="stop", scale=1)
    outcome = gr.Markdown()

    # Ticks only while background work on the store runs and this tab is open (build_app
    # stops it on other tabs): the note follows the work without keeping an idle app busy.
    ticker = gr.Timer(5.0, active=False)

    def refresh():
        rows = ui.source_rows()
        return (rows, gr.update(choices=[r[0] for r in rows], value=None), ui.memory_note(),
                gr.Timer(active=ui.memory_busy()))

    def tick():
        return ui.memory_note(), gr.Timer(active=ui.memory_busy())

    ticker.tick(tick, None, [note, ticker], api_name=False, show_progress="hidden")
    gr.on([query.submit, go.click], ui.search_memory, [query], [results], api_name="search")
    forget.click(ui.forget_source, [pick], [outcome], api_name=False).then(
        refresh, None, [sources, pick, note, ticker], api_name=False)
    return refresh, None, [sources, pick, note, ticker]


def _agreement(ev: dict) -> str:
    """Preference accuracy on held-out verdicts, what it replaces → the candidate."""
    cand = ev.get("candidate_pref_accuracy")
    if cand is None:
        return "no held-out verdicts"
    from tuning.evaluate import preference_reference

    before = preference_reference(ev)[1]
    was = f"{before:.0%}" if before is not None else "?"
    return f"{was} → {cand:.0%} ({ev.get('heldout_verdicts', 0)} verdicts)"


def tuning_tab(ui: "ChatUI") -> gr.Timer:
    """The Tuning tab; returns its refresh timer, which build_app runs only while the tab
    is open (a timer ticking in every open browser tab kept an idle app busy)."""
    gr.Markdown(
        "Each persona learns from your verdicts: replies you approve or edit, and replies you reject. A "
        "background job retrains a persona when enough new verdicts have gathered, and promotes the new "
        "adapter only if it beats the current one on held-out data. You can also retrain now, cancel a run, "
        "or roll back to the previous version."
    )
    with gr.Row():
        persona = gr.Dropdown(choices=ui.persona_choices()[1:], value="me", label="Persona", scale=2,
                              elem_id="tuning-persona")
        retrain = gr.Button("Retrain now", variant="primary", scale=1, elem_id="retrain")
        cancel = gr.Button("Cancel run", scale=1, elem_id="cancel-run")
        rollback = gr.Button("Roll back", variant="stop", scale=1, elem_id="rollback")
        preview = gr.Button("Show training data", scale=1, elem_id="training-data")
    overview = gr.Markdown(elem_id="tuning-overview")
    curve = gr.LinePlot(x="step", y="loss", title="Training loss (current or last run)", height=220)
    versions = gr.Dataframe(
        headers=["version", "active", "created", "base loss", "previous loss", "candidate loss",
                 "agrees with your verdicts (before → candidate)", "promoted", "gate"],
        interactive=False, elem_id="versions",
    )
    samples = gr.Markdown(elem_id="samples")
    outcome = gr.Markdown()
    data = gr.Markdown(elem_id="training-data-summary")

    def refresh(name):
        return ui.tuning_overview(name), ui.loss_curve(name), ui.version_rows(name), ui.samples_text(name)

    outputs = [overview, curve, versions, samples]
    timer = gr.Timer(2.0, active=False)
    timer.tick(refresh, [persona], outputs, api_name=False, show_progress="hidden")
    persona.change(refresh, [persona], outputs, api_name=False)
    retrain.click(ui.retrain_now, [persona], [outcome], api_name=False)
    cancel.click(ui.cancel_run, None, [outcome], api_name=False)
    # What the next run would learn from: every line of yours, by frame, and what is left out.
    preview.click(ui.training_data, [persona], [data], api_name=False)
    rollback.click(ui.rollback, [persona], [outcome], api_name=False).then(refresh, [persona], outputs, api_name=False)
    return timer
