"""The llama.cpp engine on the real embedded model: streaming, timings, greedy
determinism, KV-cache prefix reuse, and clear errors for a missing or bogus model."""

import pytest

from personas.catalog import GenerationParams
from personas.config import EngineConfig
from personas.engine import LlamaEngine
from personas.errors import ModelNotFoundError

GREEDY = GenerationParams(temperature=0.0, max_tokens=24)


def test_streams_pieces_with_timings(engine):
    gen = engine.stream_chat([{"role": "user", "content": "Name a color."}], GREEDY)
    pieces = list(gen)
    assert len(pieces) >= 2 and "".join(pieces).strip()
    t = gen.timings
    assert t.tokens == len(pieces)
    assert 0 < t.ttft_ms <= t.total_ms
    assert t.tokens_per_s > 0 and t.prompt_tokens > 0


def test_greedy_is_deterministic(engine):
    msgs = [{"role": "user", "content": "Say something about rivers."}]
    assert engine.stream_chat(msgs, GREEDY).text() == engine.stream_chat(msgs, GREEDY).text()


def test_follow_up_reuses_the_cached_prefix(engine):
    first = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi, what is two plus two?"}]
    g1 = engine.stream_chat(first, GREEDY)
    reply = g1.text()
    second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And times three?"}]
    g2 = engine.stream_chat(second, GREEDY)
    g2.text()
    # The whole first prompt came from the KV cache; only the new turn was evaluated.
    assert g2.timings.prompt_tokens > g1.timings.prompt_tokens
    assert g2.timings.prompt_eval_tokens < g2.timings.prompt_tokens - g1.timings.prompt_tokens + 8


def test_abandoned_stream_releases_the_engine(engine):
    gen = iter(engine.stream_chat([{"role": "user", "content": "Count to ten."}], GREEDY))
    next(gen)
    gen.close()
    assert engine.stream_chat([{"role": "user", "content": "ok"}], GREEDY).text() is not None


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        LlamaEngine(EngineConfig(model_path=str(tmp_path / "nope.gguf")))


def test_non_gguf_file(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelNotFoundError, match="not a GGUF"):
        LlamaEngine(EngineConfig(model_path=str(bogus)))


def test_truncated_gguf_is_a_clear_error(tmp_path, engine):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(engine.model_path.read_bytes()[:4096])
    with pytest.raises(ModelNotFoundError, match="Cannot load model"):
        LlamaEngine(EngineConfig(model_path=str(broken)))


def test_an_empty_reply_is_sampled_again_and_then_returned_as_it_is(engine):
    """A reply whose first token ends the turn is sampled again (twice at most) from the
    cached prompt; greedy decoding ends the same way each time, so here it stays empty."""
    from personas.models import TRANSCRIPT
    from personas.prompting import Rendered

    text = "User: Name a color.\nAssistant:"
    spoken = engine.stream_chat(Rendered(TRANSCRIPT, text=text, stop=["\nUser:"]), GREEDY)
    reply = spoken.text()
    assert reply.strip() and spoken.timings.empty_retries == 0
    # Stopping at the reply's own first character ends the turn before anything is said.
    silent = engine.stream_chat(Rendered(TRANSCRIPT, text=text, stop=[reply[0]]), GREEDY)
    assert silent.text() == "" and silent.timings.empty_retries == 2
    assert silent.timings.prompt_eval_tokens <= 1  # the retries reused the cached prompt
    assert engine.stream_chat(Rendered(TRANSCRIPT, text=text, stop=["\nUser:"]), GREEDY).text().strip()
