"""The real-browser end-to-end test: the real app (`alterego run`, in its own process on a
free localhost port) driven by Playwright through Debian's Chromium, the way a person uses
it — import a small corpus through the Import tab, chat and watch the reply stream in with
its sources, switch persona, approve one reply and edit another, reload the page and find
the verdicts still shown, and find them stored in the journal — while the page requests
nothing from anywhere but the app. Chromium is never downloaded: the test launches
/usr/bin/chromium (scripts/install.sh installs it with the dev extras) and fails, never
skips, when it cannot start — CI must run it. A screenshot of each step (and of the page
at a failure, with the server log) is kept in `tests/artifacts/browser/` or
`$ALTEREGO_TEST_ARTIFACTS/browser/`."""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.appserver import start_app
from conftest import FIXTURES, ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = Path(os.environ.get("ALTEREGO_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts") / "browser"
CORPUS = [FIXTURES / "import" / name for name in ("diary.txt", "whatsapp_us.txt", "notes.md")]
# Two cores shared with other work: the model and the embedder may take a while.
SLOW = 180_000  # ms

pytestmark = pytest.mark.slow


def short_personas(home: Path, names=("me", "poet")) -> None:
    """User copies of built-in personas with short, greedy replies: the user folder
    overrides the built-in (personas/catalog.py), so the test pays for a few dozen tokens
    per turn and gets the same reply on every run."""
    from personas.catalog import BUILTIN_DIR

    for name in names:
        folder = home / "personas" / name
        shutil.copytree(BUILTIN_DIR / name, folder)
        data = yaml.safe_load((folder / "persona.yaml").read_text(encoding="utf-8"))
        data["generation"] = {**(data.get("generation") or {}), "max_tokens": 40, "temperature": 0.0}
        (folder / "persona.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser") / "home"
    short_personas(home)
    # No background retraining: approvals in this test must not start a training run.
    server = start_app(home, env={"ALTEREGO_TUNING_SCHEDULER": "false"})
    server.extra["home"] = home
    yield server
    server.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "app.log").write_text(server.log(), encoding="utf-8")


@pytest.fixture(scope="module")
def page(app):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a dev install always has it (pinned in constraints.txt)
        pytest.fail(f"playwright is not installed ({exc}); run scripts/install.sh with the dev extras")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/install.sh does, with the dev "
                    "extras). The browser test never downloads a browser.")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # any launch failure is environmental: say so, and fail
            pytest.fail(f"Chromium at {CHROMIUM} could not start, so the browser test cannot run: {exc}")
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        # The product promises nothing leaves the machine: note every request the page
        # makes anywhere but this host (fonts, analytics, CDNs would all show up here).
        page.offsite = []
        page.on("request", lambda req: page.offsite.append(req.url) if _offsite(req.url) else None)
        yield page
        context.close()
        browser.close()


def _offsite(url: str) -> bool:
    host = urlsplit(url).hostname
    return url.split(":", 1)[0] not in ("data", "blob") and host not in ("127.0.0.1", "localhost")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def choose(page, dropdown: str, option) -> None:
    """Pick an option (its exact label, or a pattern) of a Gradio dropdown: an ARIA
    combobox whose listbox of options opens on a click."""
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=option, exact=isinstance(option, str)).click()


# Records every text the last reply bubble and the status line show, from inside the
# page: streaming partials last milliseconds, which no polling from outside can be sure
# to see.
RECORD_STREAM = """() => {
  window.__replies = []; window.__statuses = [];
  const chat = document.querySelector('#chat'), status = document.querySelector('#status');
  const push = (list, text) => { if (list[list.length - 1] !== text) list.push(text); };
  const record = () => {
    const rows = chat.querySelectorAll('.bot-row');
    const reply = rows.length ? rows[rows.length - 1].querySelector('[data-testid=bot]') : null;
    push(window.__replies, reply ? reply.innerText : '');
    push(window.__statuses, status.innerText);
  };
  const observer = new MutationObserver(record);
  for (const el of [chat, status]) observer.observe(el, {subtree: true, childList: true, characterData: true});
}"""


def body(text: str) -> str:
    """A reply bubble's text without its label paragraph (persona · verdict)."""
    return text.split("\n\n", 1)[1].strip() if "\n\n" in text else ""


def send(page, message: str, persona_display: str):
    """Send a message and wait for the turn to finish; returns (reply texts seen while
    streaming, status texts seen, the final reply group)."""
    from playwright.sync_api import expect

    page.evaluate(RECORD_STREAM)
    box = page.locator("#message textarea")
    box.fill(message)
    box.press("Enter")
    expect(page.locator("#status")).to_contain_text(f"{persona_display} answered", timeout=SLOW)
    replies, statuses = page.evaluate("() => [window.__replies, window.__statuses]")
    return replies, statuses, page.locator("#chat .bot-row").last


def test_a_person_imports_chats_approves_and_reloads(app, page):
    from playwright.sync_api import expect

    try:
        # 1. The app opens on the chat.
        page.goto(app.url)
        expect(page.locator("#message textarea")).to_be_visible(timeout=60_000)
        shot(page, "01-open")

        # 2. Import a WhatsApp export, a diary and a Markdown note through the Import tab.
        page.get_by_role("tab", name="Import").click()
        page.locator("#import-files input[type=file]").set_input_files([str(p) for p in CORPUS])
        for path in CORPUS:
            expect(page.locator("#import-files")).to_contain_text(path.stem, timeout=60_000)
        page.locator("#import-button").click()
        summary = page.locator("#import-summary")
        expect(summary).to_contain_text("scenes added", timeout=SLOW)
        match = re.search(r"(\d+) file\(s\): (\d+) scenes added", summary.inner_text())
        assert match and match.group(1) == "3" and int(match.group(2)) >= 3, summary.inner_text()
        expect(summary).to_contain_text("Mike")  # the WhatsApp sender taken to be "me"
        shot(page, "02-imported")

        # 3. Chat with Me about something in the diary: the reply streams in, then its
        #    sources from memory show beneath it.
        page.get_by_role("tab", name="Chat").click()
        choose(page, "persona", "Me")
        question = "Do you remember walking to the river after work and watching the ice go?"
        replies, statuses, group = send(page, question, "Me")
        partials = {body(t) for t in replies if t.startswith("Me") and body(t)}
        assert len(partials) >= 2, f"the reply did not stream: the page showed only {replies!r}"
        assert any("Me is typing" in s for s in statuses), statuses
        reply = group.locator("[data-testid=bot]").first
        expect(reply).to_contain_text(re.compile(r"^Me\n"))
        assert body(reply.inner_text()), "the final reply is empty"
        sources = group.get_by_text(re.compile(r"Sources from your memory \(\d+\)"))
        expect(sources).to_be_visible()
        sources.click()  # expand the collapsible block
        expect(group).to_contain_text("upload:diary.txt")
        # The chat's toolbar has no "share" button (Gradio's default posts the chat to
        # Hugging Face; it is the one without a label).
        toolbar = page.locator("#chat .top-panel button")
        assert [b.get_attribute("aria-label") for b in toolbar.all()] == ["Clear", "Copy conversation"]
        shot(page, "03-me-replied-with-sources")

        # 4. Switch to the Poet: the next reply is labelled with the Poet.
        choose(page, "persona", "Poet")
        expect(page.locator("#persona input")).to_have_value("Poet")
        _, _, group = send(page, "Write a few lines about the sea at night.", "Poet")
        expect(group.locator("[data-testid=bot]").first).to_contain_text(re.compile(r"^Poet"))
        expect(page.locator("#chat .bot-row")).to_have_count(2)
        shot(page, "04-poet-replied")

        # 5. ✏️ Edit the Me reply (the edit is approved), then 👍 the Poet reply.
        status = page.locator("#status")
        edited_text = "Yes, the ice went out and nobody else was there. I loved it."
        page.locator("#chat .message-buttons-left").first.get_by_role("button", name="Edit", exact=True).click()
        page.locator("#chat textarea.edit-textarea").first.fill(edited_text)
        page.locator("#chat").get_by_role("button", name="Submit", exact=True).click()
        expect(status).to_contain_text("approved with your edit", timeout=60_000)
        me_reply = page.locator("#chat .bot-row").first.locator("[data-testid=bot]").first
        expect(me_reply).to_contain_text("✏️ edited & approved")
        expect(me_reply).to_contain_text(edited_text)
        page.locator("#chat .message-buttons-left").last.get_by_role("button", name="Like", exact=True).click()
        expect(status).to_contain_text("approved: it will teach Poet", timeout=60_000)
        poet_reply = page.locator("#chat .bot-row").last.locator("[data-testid=bot]").first
        expect(poet_reply).to_contain_text("✅ approved")
        # Gradio submits an edit for every message of the edited bubble (the reply and
        # its sources): the unchanged sources message must not raise an error.
        expect(page.locator(".toast-body", has_text="Only replies")).to_have_count(0)
        shot(page, "05-edited-and-approved")

        # 6. Reload: reopen the conversation from the list; both verdicts are still shown.
        page.reload()
        expect(page.locator("#message textarea")).to_be_visible(timeout=60_000)
        expect(page.locator("#chat .bot-row")).to_have_count(0)
        # Its label starts with the first message (the title) and the turn count.
        choose(page, "conversations", re.compile("^" + re.escape(question[:40]) + r".* · 2 turns"))
        expect(status).to_contain_text("Opened", timeout=60_000)
        rows = page.locator("#chat .bot-row")
        expect(rows).to_have_count(2)
        expect(rows.first.locator("[data-testid=bot]").first).to_contain_text("✏️ edited & approved")
        expect(rows.first).to_contain_text(edited_text)
        expect(rows.last.locator("[data-testid=bot]").first).to_contain_text(re.compile(r"^Poet · ✅ approved"))
        shot(page, "06-reloaded")

        # 7. The Tuning tab shows its live overview; Settings switches the model to the
        #    multilingual base, says which personas answer prompt-only, and the next
        #    Russian message is answered by Gemma.
        page.get_by_role("tab", name="Tuning").click()
        expect(page.locator("#tuning-overview")).not_to_be_empty(timeout=60_000)
        page.get_by_role("tab", name="Settings").click()
        expect(page.locator("#model-table")).to_contain_text("gemma3-270m", timeout=60_000)
        choose(page, "model-choice", re.compile("^gemma3-270m"))
        page.locator("#model-use").click()
        expect(page.locator("#model-status")).to_contain_text("Now answering with gemma3-270m", timeout=SLOW)
        expect(page.locator("#model-status")).to_contain_text("Prompt-only until retrained")
        shot(page, "07-model-switched")
        page.get_by_role("tab", name="Chat").click()
        choose(page, "persona", "Me")
        send(page, "Привет! Как прошли выходные?", "Me")
        expect(status).to_contain_text("model gemma-3-270m-q4_k_m.gguf")
        shot(page, "08-gemma-replied")
        assert page.offsite == [], f"the page sent requests off this machine: {page.offsite}"
    except BaseException:
        if ARTIFACTS.is_dir():
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise

    # 7. The journal holds what the page showed.
    from memory.journal import Journal

    journal = Journal(app.extra["home"] / "journal.sqlite3")
    try:
        [conversation] = journal.list_conversations()
        me, poet, russian = journal.turns(conversation.id)
    finally:
        journal.close()
    assert (me.persona, me.user_text, me.feedback, me.edited_text) == ("me", question, "edited", edited_text)
    assert "diary.txt" in me.sources
    assert (poet.persona, poet.feedback, poet.edited_text) == ("poet", "approved", None)
    assert russian.user_text == "Привет! Как прошли выходные?" and russian.status == "ok"
    assert tomllib.loads((app.extra["home"] / "config.toml").read_text())["engine"]["model"] == "gemma3-270m"

