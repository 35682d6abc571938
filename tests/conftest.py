"""Shared fixtures: a fresh data root per test, and one real engine (the embedded
SmolLM2 GGUF) loaded once per session, since every chat test needs it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# The fuzz tests run the same examples on every CI run (a red CI must mean a change broke
# something, not that the dice found an old bug); HYPOTHESIS_PROFILE=explore draws new
# ones — run that locally to hunt for bugs.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("ALTEREGO_HOME", str(root))
    for name in list(os.environ):
        if name.startswith("ALTEREGO_") and name not in ("ALTEREGO_HOME", "ALTEREGO_MODEL_CACHE"):
            monkeypatch.delenv(name)
    return root


@pytest.fixture
def settings(home):
    from webapp.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def engine():
    from personas.config import EngineConfig
    from personas.engine import LlamaEngine

    return LlamaEngine(EngineConfig())


@pytest.fixture(scope="session")
def gemma_engine():
    """The multilingual embedded base (Gemma 3 270M), loaded once per session."""
    from personas.config import EngineConfig
    from personas.engine import LlamaEngine

    engine = LlamaEngine(EngineConfig(model="gemma3-270m"))
    yield engine
    engine.llm.close()


@pytest.fixture(scope="session")
def embedder():
    from memory.embedder import Embedder

    return Embedder()


@pytest.fixture
def service(settings, engine, embedder):
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.chat import ChatService

    journal = Journal(settings.journal_path)
    memory = SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
    svc = ChatService(settings, engine=engine, journal=journal, memory=memory)
    yield svc
    svc.catch_up = False
    svc.wait_for_catch_up()  # a background prefill must not outlive the test's engine use
    svc.journal.close()


@pytest.fixture
def service_factory(settings, engine, embedder, request):
    """ChatServices on a chosen embedded model ("smollm2-135m" or "gemma3-270m"), sharing
    the session's loaded engines and this test's data root."""
    from memory.journal import Journal
    from memory.service import SceneMemory
    from webapp.chat import ChatService

    made = []

    def make(model: str = "smollm2-135m"):
        settings.engine.model = model
        eng = request.getfixturevalue("gemma_engine") if model == "gemma3-270m" else engine
        journal = Journal(settings.journal_path)
        memory = SceneMemory(settings.memory, settings.home, journal, embedder=embedder)
        svc = ChatService(settings, engine=eng, journal=journal, memory=memory)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.catch_up = False
        svc.wait_for_catch_up()
        svc.journal.close()


TINY = {
    "name": "tiny", "display_name": "Tiny", "description": "A test persona that answers in capitals.",
    "system_prompt": "You are Tiny. Answer in capitals.",
}


@pytest.fixture(scope="session")
def hf_base(tmp_path_factory):
    from personas.models import embedded_chat_model, fingerprint, weights_file
    from tuning.base import materialize_hf_base

    gguf = embedded_chat_model()
    return materialize_hf_base(weights_file(gguf), tmp_path_factory.mktemp("hf_base"), fingerprint(gguf))


@pytest.fixture(scope="session")
def gemma_hf_base(tmp_path_factory):
    """The HF-format training base of Gemma 3 270M (materialised once per session: ~1 min)."""
    from personas.models import fingerprint, gemma_model
    from tuning.base import materialize_hf_base

    gguf = gemma_model()
    return materialize_hf_base(gguf, tmp_path_factory.mktemp("gemma_base"), fingerprint(gguf))


@pytest.fixture
def tiny(home):
    """A persona with a small, very regular training set, so a few steps move it."""
    folder = home / "personas" / "tiny"
    folder.mkdir(parents=True)
    (folder / "persona.yaml").write_text("\n".join(f"{k}: {v}" for k, v in TINY.items()) + "\n")
    rows = [
        {"messages": [{"role": "user", "content": f"Tell me about {topic}."},
                      {"role": "assistant", "content": f"{topic.upper()} IS GOOD. I LIKE {topic.upper()} VERY MUCH."}]}
        for topic in ["apples", "rivers", "trains", "cats", "music", "bread", "winter", "books", "the sea", "coffee",
                      "gardens", "bicycles", "stars", "rain", "letters", "mountains", "tea", "dogs", "summer", "maps"]
    ]
    from personas.catalog import PersonaCatalog

    (folder / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return PersonaCatalog.load(home / "personas").get("tiny")


def tuning_config(hf_base, **kw):
    """Small, fast training settings for tests (a few steps on a tiny regular dataset). The
    LoRA is the small attention-only one these tests' learning rate and step counts were
    calibrated on; the default shape (r=32 with the MLP) runs through the pipeline in the
    voice benchmark's quick run (test_bench) and through export in test_gemma."""
    from tuning.config import TuningConfig

    defaults = dict(hf_base=str(hf_base), max_steps=6, batch_size=4, learning_rate=2e-3, min_pairs=4,
                    heldout_fraction=0.2, train_threads=1, lora_r=16, lora_alpha=16,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return TuningConfig(**{**defaults, **kw})


def cli_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTEREGO_")}
    env["ALTEREGO_HOME"] = str(home)
    env.update(extra)
    return env


ALTEREGO = [sys.executable, "-m", "webapp.cli"]
