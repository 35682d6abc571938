"""The meta-adapter prompt router with the real embedder and the shipped exemplars:
clear messages go to the expected persona, short or ambiguous ones stay put, overrides
teach it, and Auto mode through ChatService / the CLI labels who answered and why."""

import json
import subprocess

import pytest

from conftest import ALTEREGO, ROOT, cli_env
from personas.catalog import PersonaCatalog
from personas.router import PromptRouter

CLEAR = {
    "Write me a short poem about autumn rain": "poet",
    "Compose a haiku about my cat": "poet",
    "Напиши стихотворение о море": "poet",
    "Is this argument valid: all cats are mammals, so all mammals are cats?": "logician",
    "Prove that the square root of 2 is irrational": "logician",
    "What is the meaning of a good life?": "philosopher",
    "Do we have free will?": "philosopher",
    "is it wrong to lie to protect a friend?": "philosopher",
    "hey, what did I do last weekend?": "me",
}


@pytest.fixture(scope="module")
def router(embedder):
    return PromptRouter(PersonaCatalog.load(), embedder)


@pytest.mark.parametrize("message, expected", CLEAR.items())
def test_clear_messages_pick_the_expected_persona(router, message, expected):
    current = "me" if expected != "me" else "poet"
    decision = router.route(message, current=current)
    assert decision.persona == expected, decision.reason
    assert decision.switched and set(decision.scores) == set(PersonaCatalog.load().names())
    assert decision.scores[expected] == max(decision.scores.values())


@pytest.mark.parametrize("message", ["ok", "thanks", "hm, and then?", "yes"])
@pytest.mark.parametrize("current", ["poet", "logician"])
def test_short_messages_stay_with_the_current_persona(router, message, current):
    decision = router.route(message, current=current)
    assert decision.persona == current and not decision.switched
    assert decision.reason.startswith("staying with")


def test_overrides_become_exemplars(embedder):
    router = PromptRouter(PersonaCatalog.load(), embedder)
    message = "tell me about the quarterly sales figures of the bakery"
    before = router.scores(message)["poet"]
    router.add_override(message, "poet")
    router.add_override("the bakery's sales this quarter, please", "poet")
    assert router.scores(message)["poet"] > before + 0.2
    assert router.route("what were the bakery's quarterly sales figures?", current="me").persona == "poet"


def test_auto_mode_in_chat_service(service):
    result = service.send("Write me a short poem about the winter sea", persona="auto")
    assert result.persona == "poet" and result.route is not None and "Poet" in result.route.reason
    follow = service.send("ok", persona="auto", conversation_id=result.conversation_id)
    assert follow.persona == "poet" and follow.route.reason.startswith("staying with Poet")
    turns = service.history(result.conversation_id)
    assert [t.persona for t in turns] == ["poet", "poet"] and turns[0].route_reason


def test_manual_choice_against_the_router_is_recorded(service, router):
    message = "Write me a short poem about the winter sea"
    service.send(message, persona="logician")
    assert service.journal.overrides() == []  # the router is not loaded: a one-shot turn pays nothing
    service.warm_up()  # as the UI does at start
    service.send(message, persona="logician")
    assert service.journal.overrides() == [(message, "logician")]
    service.send("Is this argument valid: all cats are mammals, so all mammals are cats?", persona="logician")
    assert len(service.journal.overrides()) == 1  # agreeing with the router teaches nothing
    # a fresh router (e.g. after restart) learns it from the journal
    service._router = None
    assert service.router.scores(message)["logician"] > router.scores(message)["logician"] + 0.15


def test_route_cli_json(tmp_path):
    proc = subprocess.run([*ALTEREGO, "route", "--json", "Compose a haiku about my cat"], cwd=ROOT,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["persona"] == "poet" and out["reason"] and set(out["scores"]) >= {"me", "poet", "logician"}
