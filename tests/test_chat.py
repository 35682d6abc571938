"""ChatService on the real model and a real journal: the turn pipeline, streaming, the
stable prompt prefix, history trimming, and bad input that stores nothing."""

import pytest

from personas.errors import UnknownPersonaError
from webapp.errors import ChatInputError


def test_turn_is_streamed_and_journaled(service):
    updates = list(service.stream_turn("Hello! How are you today?", persona="me"))
    assert len(updates) >= 2 and updates[-1].done and not updates[0].done
    # the reply grows monotonically while streaming
    for a, b in zip(updates, updates[1:-1]):
        assert b.reply.startswith(a.reply)
    final = updates[-1]
    assert final.reply and final.timings["tokens"] > 0 and final.timings["ttft_ms"] > 0
    turn = service.journal.get_turn(final.turn_id)
    assert turn.status == "ok" and turn.reply == final.reply and turn.persona == "me"
    assert turn.user_text == "Hello! How are you today?" and turn.ttft_ms == final.timings["ttft_ms"]


def test_conversation_continues_with_a_stable_prefix(service):
    first = service.send("My cat is called Pixel.", persona="poet")
    second = service.send("What is my cat called?", persona="poet", conversation_id=first.conversation_id)
    assert second.conversation_id == first.conversation_id
    turns = service.history(first.conversation_id)
    assert [t.persona for t in turns] == ["poet", "poet"]
    # Second turn's prompt starts with exactly the first turn's prompt...
    poet = service.catalog.get("poet")
    p1 = service.build_prompt(poet, [], "My cat is called Pixel.").messages
    p2 = service.build_prompt(poet, turns[:1], "What is my cat called?").messages
    assert p2[: len(p1)] == p1
    # ...so llama.cpp evaluated only the new part.
    assert second.timings["prompt_eval_tokens"] < second.timings["prompt_tokens"] / 2


def test_switching_persona_mid_conversation(service):
    a = service.send("Tell me about the moon.", persona="poet")
    b = service.send("Is the moon made of cheese?", persona="logician", conversation_id=a.conversation_id)
    assert [t.persona for t in service.history(a.conversation_id)] == ["poet", "logician"]
    assert b.persona == "logician"


@pytest.mark.parametrize("message", ["", "   \n\t "])
def test_empty_message_stores_nothing(service, message):
    with pytest.raises(ChatInputError, match="empty"):
        service.send(message)
    assert service.journal.count_turns() == 0


def test_one_megabyte_message_is_refused_clearly(service):
    with pytest.raises(ChatInputError, match="limit is 8,000"):
        service.send("x" * 1_000_000)
    assert service.journal.count_turns() == 0


def test_unknown_persona_stores_nothing(service):
    with pytest.raises(UnknownPersonaError, match="Valid personas: me"):
        service.send("hi", persona="pirate")
    assert service.journal.count_turns() == 0


def test_history_is_trimmed_to_the_context(service, settings):
    settings.engine.n_ctx = 4096
    settings.engine.reply_reserve_tokens = 3900  # leaves ~196 tokens of prompt
    me = service.catalog.get("me")
    conv = service.journal.create_conversation()
    for i in range(6):
        t = service.journal.start_turn(conv, f"message number {i} " + "blah " * 20, "me")
        service.journal.finish_turn(t, f"reply {i} " + "ok " * 20)
    prompt = service.build_prompt(me, service.history(conv), "latest").messages
    assert prompt[0]["role"] == "system" and prompt[-1]["content"] == "latest"
    kept = [m["content"] for m in prompt[1:-1]]
    assert 0 < len(kept) < 12 and kept[-1].startswith("reply 5")  # newest kept, oldest dropped
    assert len(kept) % 2 == 0


def test_message_larger_than_context_is_refused(service, settings):
    settings.engine.reply_reserve_tokens = settings.engine.n_ctx - 50
    with pytest.raises(ChatInputError, match="context"):
        service.send("word " * 200)


def test_interrupted_reply_keeps_the_message(service):
    stream = service.stream_turn("Write a long story about a lighthouse keeper.", persona="me")
    first = next(stream)
    stream.close()  # the browser went away mid-reply
    turn = service.journal.get_turn(first.turn_id)
    assert turn.status == "error" and turn.user_text.startswith("Write a long story")
    assert "GeneratorExit" in turn.error
    # the conversation goes on; the broken turn is not replayed into the prompt
    nxt = service.send("Shorter, please.", conversation_id=first.conversation_id)
    assert nxt.reply
