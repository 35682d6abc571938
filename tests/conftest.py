"""Shared fixtures: a fresh data root per test, and one real engine (the embedded
SmolLM2 GGUF) loaded once per session, since every chat test needs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("ALTEREGO_HOME", str(root))
    for name in list(os.environ):
        if name.startswith("ALTEREGO_") and name != "ALTEREGO_HOME":
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
    svc.journal.close()


def cli_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTEREGO_")}
    env["ALTEREGO_HOME"] = str(home)
    env.update(extra)
    return env


ALTEREGO = [sys.executable, "-m", "webapp.cli"]
