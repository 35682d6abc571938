"""Model choice: the embedded models by name, `engine.model` vs the older `model_path`,
`alterego models [use]`, config.toml written safely, the import summary's advice to switch
for non-English texts, and the UI's switch — on the real embedded models."""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest

from conftest import ALTEREGO, FIXTURES, ROOT, cli_env
from personas.config import EngineConfig
from personas.errors import ModelNotFoundError
from personas.models import CHAT, TRANSCRIPT, chat_format, embedded_chat_model, gemma_model, resolve_chat_model
from personas.prompting import Script, render
from webapp.errors import SettingsError
from webapp.modelchoice import import_advice
from webapp.settings import load_settings, save_setting

IMPORT = FIXTURES / "import"


def test_embedded_names_paths_and_the_older_setting(tmp_path):
    assert resolve_chat_model("") == embedded_chat_model() == resolve_chat_model("SmolLM2-135M")
    assert resolve_chat_model("gemma3-270m") == gemma_model()
    assert resolve_chat_model(str(gemma_model())) == gemma_model()  # any GGUF path
    assert chat_format(embedded_chat_model()) == CHAT and chat_format(gemma_model()) == TRANSCRIPT
    with pytest.raises(ModelNotFoundError, match="Unknown model 'gemma-7b'.*smollm2-135m, gemma3-270m"):
        resolve_chat_model("gemma-7b")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_chat_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "x.gguf").write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match="not a GGUF"):
        resolve_chat_model(str(tmp_path / "x.gguf"))
    assert EngineConfig(model_path="/m/a.gguf").model_spec == "/m/a.gguf"
    assert EngineConfig(model="gemma3-270m", model_path="/m/a.gguf").model_spec == "gemma3-270m"


def test_env_setting_and_reserved_cache_variable(home):
    s = load_settings(env={"ALTEREGO_HOME": str(home), "ALTEREGO_ENGINE_MODEL": "gemma3-270m",
                           "ALTEREGO_MODEL_CACHE": "/tmp/models"})
    assert s.engine.model_spec == "gemma3-270m"


def test_save_setting_keeps_other_settings_and_refuses_bad_values(home):
    (home / "config.toml").write_text('[server]\nport = 9000\n[engine]\nn_ctx = 2048\n')
    save_setting(home, "engine", "model", "gemma3-270m")
    data = tomllib.loads((home / "config.toml").read_text())
    assert data == {"server": {"port": 9000}, "engine": {"n_ctx": 2048, "model": "gemma3-270m"}}
    s = load_settings()
    assert (s.engine.model_spec, s.engine.n_ctx, s.server.port) == ("gemma3-270m", 2048, 9000)
    with pytest.raises(SettingsError, match="unknown setting 'engine.modle'"):
        save_setting(home, "engine", "modle", "x")
    with pytest.raises(SettingsError):
        save_setting(home, "engine", "n_ctx", "lots")
    assert tomllib.loads((home / "config.toml").read_text()) == data  # a refused value changes nothing
    (home / "config.toml").write_text("[engine\nbroken")
    with pytest.raises(SettingsError, match="not valid TOML"):
        save_setting(home, "engine", "model", "gemma3-270m")
    assert (home / "config.toml").read_text() == "[engine\nbroken"  # never overwritten blindly


def test_chat_layout_is_unchanged_and_transcript_layout_for_base_models():
    s = Script(label="Poet", system="You are the Poet.", description="Lyrical.", message="the sea",
               history=[("hi", "hello")], examples=[("q", "a")], notes=["[notes, 2024-01-01]\nAnna: hey"])
    chat = render(s, CHAT).messages
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[-1]["content"].startswith("Notes from the user's own past writing") and chat[-1]["content"].endswith(
        "Message: the sea")
    text = render(s, TRANSCRIPT).text
    assert text == ("Poet — Lyrical.\nUser: q\nPoet: a\n\nUser: hi\nPoet: hello\n"
                    "(From Poet's own past writing:\n[notes, 2024-01-01]\nAnna: hey)\nUser: the sea\nPoet:")
    me = Script(label="Me", system="", description="", message="Привет")
    assert render(me, TRANSCRIPT).text == "User: Привет\nMe:"  # no English header for Me


def test_import_advice_for_mostly_non_english_texts():
    ru = {"languages": {"ru": 40, "en": 5, "und": 30}}
    advice = import_advice(ru, "")
    assert "ru 88%" in advice and "alterego models use gemma3-270m" in advice
    assert import_advice({"languages": {"en": 40, "ru": 5}}, "") is None
    assert import_advice(ru, "gemma3-270m") is None  # already multilingual
    assert import_advice(ru, "/models/qwen.gguf") is None  # the user's own choice
    assert import_advice({"languages": {}}, "") is None


def run_cli(home, *args):
    return subprocess.run([*ALTEREGO, *args], cwd=ROOT, env=cli_env(home), capture_output=True, text=True, timeout=300)


def test_cli_models_list_use_and_import_advice(tmp_path):
    listing = json.loads(run_cli(tmp_path, "models", "--json").stdout)
    rows = {r["name"]: r for r in listing["models"]}
    assert listing["current"] == "smollm2-135m" and rows["smollm2-135m"]["current"]
    assert rows["gemma3-270m"]["chat_format"] == "transcript" and not rows["gemma3-270m"]["instruction_tuned"]
    assert "Gemma Terms of Use" in rows["gemma3-270m"]["license"] and rows["gemma3-270m"]["adapters"] == []

    proc = run_cli(tmp_path, "import", str(IMPORT / "whatsapp_ios.txt"), str(IMPORT / "diary_cp1251.txt"))
    assert proc.returncode == 0, proc.stderr
    assert "alterego models use gemma3-270m" in proc.stdout

    proc = run_cli(tmp_path, "models", "use", "gemma3-270m")
    assert proc.returncode == 0, proc.stderr
    assert "Prompt-only until retrained for this base: me, logician, philosopher, poet" in proc.stdout
    assert tomllib.loads((tmp_path / "config.toml").read_text())["engine"]["model"] == "gemma3-270m"
    assert json.loads(run_cli(tmp_path, "models", "--json").stdout)["current"] == "gemma3-270m"

    bad = run_cli(tmp_path, "models", "use", "llama-70b")
    assert bad.returncode == 2 and "Unknown model 'llama-70b'" in bad.stderr and "Traceback" not in bad.stderr
    assert tomllib.loads((tmp_path / "config.toml").read_text())["engine"]["model"] == "gemma3-270m"


def test_ui_switches_the_model_and_names_prompt_only_personas(service):
    from webapp.ui import ChatUI

    ui = ChatUI(service)
    assert [value for _, value in ui.model_choices()] == ["smollm2-135m", "gemma3-270m"]
    service.engine  # loaded: the switch must replace it
    message = ui.switch_model("gemma3-270m")
    assert "Now answering with **gemma3-270m**" in message and "Prompt-only until retrained" in message
    assert service.engine.model_path.name == "gemma-3-270m-q4_k_m.gguf" and service.engine.chat_format == TRANSCRIPT
    assert service.adapters.fingerprint == service.engine.fingerprint
    reply = service.send("Привет! Как дела?", persona="me")
    assert reply.model == "gemma-3-270m-q4_k_m.gguf"
    assert "✅ | **gemma3-270m**" in ui.model_overview()
    with pytest.raises(Exception, match="Unknown model"):
        ui.switch_model("nope")
    assert service.engine.model_path.name == "gemma-3-270m-q4_k_m.gguf"  # a failed switch changes nothing


def test_the_default_model_is_served_as_a_q8_0_re_encoding_of_the_packaged_file(tmp_path, monkeypatch):
    """SmolLM2 ships as Q4_1; it is served re-encoded as Q8_0 (prompt reading at twice the
    speed on this llama.cpp build), made once into the model cache, with the fingerprint of
    the shipped weights, scoring real text as the shipped file does; a damaged re-encoding
    is made again, and an unwritable cache serves the shipped file; once the shipped file
    is gone (the image drops it), the re-encoding is served and keeps its fingerprint."""
    from llama_cpp import Llama

    from bench.corpora import fortune_texts
    from bench.models import bits_per_char
    from personas.models import fingerprint, gguf_metadata, packaged_chat_model, weights_file

    monkeypatch.setenv("ALTEREGO_MODEL_CACHE", str(tmp_path / "cache"))
    shipped = packaged_chat_model()
    served = embedded_chat_model()
    assert served.parent == tmp_path / "cache" and served.name == "SmolLM2-135M-Instruct.Q8_0.gguf"
    ftype = "general.file_type"  # llama.cpp's enum: 3 = Q4_1, 7 = Q8_0
    assert gguf_metadata(shipped, keys=(ftype,))[ftype] == 3 and gguf_metadata(served, keys=(ftype,))[ftype] == 7
    assert fingerprint(served) == fingerprint(shipped) and weights_file(served) == shipped
    assert chat_format(served) == CHAT and resolve_chat_model("") == served

    made = served.stat().st_mtime_ns
    assert embedded_chat_model() == served and served.stat().st_mtime_ns == made  # made once

    # The same model: bits per character of real English text (Debian's fortunes) within 1%.
    texts = fortune_texts("en", 3000)
    scores = []
    for path in (shipped, served):
        llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, verbose=False)
        scores.append(bits_per_char(llm, texts)[0])
        llm.close()
    assert abs(scores[1] - scores[0]) < 0.01 * scores[0], scores

    import personas.models as models

    def dropped():  # the CPU image deletes the shipped file once it is re-encoded
        raise ModelNotFoundError("dropped")

    with monkeypatch.context() as m:
        m.setattr(models, "packaged_chat_model", dropped)
        assert embedded_chat_model() == served and weights_file(served) == served
        assert fingerprint(served) == fingerprint(shipped)  # the marker keeps it

    size = served.stat().st_size
    with open(served, "r+b") as fh:  # a crash or a full disk cut it short
        fh.truncate(size // 2)
    assert embedded_chat_model() == served and served.stat().st_size == size

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ALTEREGO_MODEL_CACHE", str(blocked / "cache"))
    assert embedded_chat_model() == shipped
