"""Scene cutting: chats by conversation and time gap, transcripts by speaker turns and
pauses, prose by headings; token budgets; stable ids; the user's own lines."""

from memory.documents import Utterance
from memory.scenes import cut_scenes, estimate_tokens, my_lines


def chat(*rows):
    return [Utterance(text=t, speaker=s, timestamp=ts, conversation=c) for s, t, ts, c in rows]


def test_chat_cut_by_gap_and_conversation():
    utts = chat(
        ("Anna", "are you coming tonight?", 0, "c1"),
        ("Ivan", "yes, after work", 60, "c1"),
        ("Ivan", "bringing wine", 120, "c1"),
        ("Anna", "next morning: thanks for yesterday!", 120 + 10 * 3600, "c1"),  # long gap
        ("Anna", "other chat", 130 + 10 * 3600, "c2"),  # other conversation
    )
    scenes = list(cut_scenes(utts, source="s", kind="whatsapp", me_names={"Ivan"}, chat_gap_s=3600))
    assert [s.text for s in scenes] == [
        "Anna: are you coming tonight?\nIvan: yes, after work\nIvan: bringing wine",
        "Anna: next morning: thanks for yesterday!",
        "Anna: other chat",
    ]
    assert scenes[0].is_me and scenes[0].me_speaker == "Ivan" and not scenes[1].is_me
    assert [s.position for s in scenes] == [0, 1, 2]
    assert my_lines(scenes[0].text, "Ivan", "whatsapp") == ["yes, after work", "bringing wine"]


def test_budget_is_respected_and_long_messages_split():
    long = " ".join(f"Sentence number {i} is here." for i in range(200))
    utts = chat(*[("Me", f"short message {i}", i, "c") for i in range(100)], ("Me", long, 200, "c"))
    scenes = list(cut_scenes(utts, source="s", kind="telegram", me_names={"Me"}, budget=60))
    assert len(scenes) > 5
    assert all(estimate_tokens(s.text) <= 60 + 10 for s in scenes)
    joined = " ".join(s.text for s in scenes)
    assert "Sentence number 199 is here." in joined and "short message 99" in joined


def test_prose_cut_by_heading():
    utts = [
        Utterance("Intro paragraph.", heading="Diary"),
        Utterance("Second paragraph.", heading="Diary"),
        Utterance("About the sea.", heading="Diary / Summer"),
    ]
    scenes = list(cut_scenes(utts, source="d.md", kind="markdown", me_names=set()))
    assert [s.text for s in scenes] == ["Intro paragraph.\n\nSecond paragraph.", "About the sea."]
    assert [s.heading for s in scenes] == ["Diary", "Diary / Summer"]
    assert all(s.is_me for s in scenes)  # prose is the user's own writing


def test_transcript_merges_speaker_cues_and_cuts_at_pauses():
    utts = [
        Utterance("so the plan", speaker="SPEAKER_00", timestamp=0, end_timestamp=2),
        Utterance("is simple", speaker="SPEAKER_00", timestamp=2, end_timestamp=4),
        Utterance("go on", speaker="SPEAKER_01", timestamp=4, end_timestamp=5),
        Utterance("after the break", speaker="SPEAKER_01", timestamp=300, end_timestamp=302),
    ]
    scenes = list(cut_scenes(utts, source="t.srt", kind="srt", me_names={"SPEAKER_00"}))
    assert scenes[0].text == "SPEAKER_00: so the plan is simple\nSPEAKER_01: go on"
    assert scenes[1].text == "SPEAKER_01: after the break"


def test_ids_are_stable_and_source_specific():
    utts = chat(("A", "hello", 0, "c"))
    a1 = next(cut_scenes(utts, source="one", kind="whatsapp", me_names=set()))
    a2 = next(cut_scenes(utts, source="one", kind="whatsapp", me_names=set()))
    b = next(cut_scenes(utts, source="two", kind="whatsapp", me_names=set()))
    assert a1.id == a2.id != b.id


def test_metadata_has_no_none_and_records_language():
    utts = [Utterance("Привет! Как у тебя дела сегодня? Я думаю о море и солнце.", speaker="Вася", timestamp=1.7e9, conversation="c")]
    scene = next(cut_scenes(utts, source="s", kind="telegram", me_names={"Вася"}))
    meta = scene.metadata(import_id=3)
    assert meta["language"] == "ru" and meta["is_me"] and meta["import_id"] == 3
    assert meta["timestamp"] == 1.7e9 and None not in meta.values()
