"""Settings: defaults, config.toml, ALTEREGO_* env vars, and unknown keys as errors."""

from pathlib import Path

import pytest

from webapp.errors import SettingsError
from webapp.settings import load_settings


def test_defaults_point_at_embedded_models_and_localhost(home):
    s = load_settings()
    assert s.home == home.resolve()
    assert (s.server.host, s.server.port) == ("127.0.0.1", 7860)
    assert s.engine.model_path == "" and s.memory.embedder == ""
    assert s.journal_path.parent == s.home


def test_toml_then_env_override(home):
    (home / "config.toml").write_text('[server]\nport = 9000\n[engine]\nn_ctx = 1024\n[tuning]\ntarget_modules = ["q_proj"]\n')
    s = load_settings(env={"ALTEREGO_HOME": str(home), "ALTEREGO_SERVER_PORT": "9100"})
    assert s.server.port == 9100  # env wins over the file
    assert s.engine.n_ctx == 1024
    assert s.tuning.target_modules == ["q_proj"]
    s = load_settings(env={"ALTEREGO_HOME": str(home), "ALTEREGO_TUNING_TARGET_MODULES": "q_proj, v_proj"})
    assert s.tuning.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_lists_valid_ones(home):
    (home / "config.toml").write_text("[server]\nprot = 1\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "server.prot" in str(err.value) and "server.port," in str(err.value)


def test_unknown_section_and_env_var(home):
    (home / "config.toml").write_text("[serevr]\nport = 1\n")
    with pytest.raises(SettingsError, match="Valid sections: server, engine, memory, router, tuning"):
        load_settings()
    (home / "config.toml").unlink()
    with pytest.raises(SettingsError, match="ALTEREGO_SERVER_PORT"):
        load_settings(env={"ALTEREGO_HOME": str(home), "ALTEREGO_SERVR_PORT": "1"})
    # Not settings, but not typos either: the model cache (the Docker image sets it) and
    # the install script's variables.
    load_settings(env={"ALTEREGO_HOME": str(home), "ALTEREGO_MODEL_CACHE": "/opt/alterego/models",
                       "ALTEREGO_WHEELS": "/src/docker-inputs", "ALTEREGO_CA_BUNDLE": "/x/ca.crt"})


@pytest.mark.parametrize("toml", ['[server]\nport = "abc"\n', "[server]\nport = true\n", "not toml ["])
def test_bad_values_are_clear_errors(home, toml):
    (home / "config.toml").write_text(toml)
    with pytest.raises(SettingsError):
        load_settings()


def test_default_home_is_per_user_data_dir(monkeypatch):
    monkeypatch.delenv("ALTEREGO_HOME", raising=False)
    s = load_settings(env={})
    assert s.home.name == "alterego" and Path.home() in s.home.parents
