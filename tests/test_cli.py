"""The `alterego` CLI as a subprocess: `chat --json`, `personas`, and clean one-line
errors (exit 2, no traceback) for bad input and a missing model."""

import json
import subprocess

from conftest import ALTEREGO, ROOT, cli_env
from memory.journal import Journal


def run(home, *args, **env):
    return subprocess.run([*ALTEREGO, *args], cwd=ROOT, env=cli_env(home, **env), capture_output=True, text=True, timeout=120)


def test_chat_json_prints_reply_and_journals(tmp_path):
    proc = run(tmp_path, "chat", "--json", "hello")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reply"].strip() and out["persona"] == "me" and isinstance(out["turn_id"], int)
    assert {"ttft_ms", "total_ms", "tokens"} <= set(out["timings"]) and out["timings"]["tokens"] > 0
    turn = Journal(tmp_path / "journal.sqlite3").get_turn(out["turn_id"])
    assert turn.reply == out["reply"] and turn.user_text == "hello"


def test_chat_streams_to_stdout_and_continues_conversation(tmp_path):
    first = json.loads(run(tmp_path, "chat", "--json", "--persona", "poet", "the sea").stdout)
    proc = run(tmp_path, "chat", "--conversation", str(first["conversation_id"]), "and the sky?")
    assert proc.returncode == 0 and proc.stdout.strip()
    assert "tok/s" in proc.stderr
    assert len(Journal(tmp_path / "journal.sqlite3").turns(first["conversation_id"])) == 2


def test_personas_json(tmp_path):
    rows = json.loads(run(tmp_path, "personas", "--json").stdout)
    assert [r["name"] for r in rows][0] == "me"
    assert {"logician", "poet", "philosopher"} <= {r["name"] for r in rows}


def test_unknown_persona_is_one_clear_line(tmp_path):
    proc = run(tmp_path, "chat", "--persona", "pirate", "hi")
    assert proc.returncode == 2
    assert "Unknown persona 'pirate'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_model_is_one_clear_line(tmp_path):
    proc = run(tmp_path, "chat", "hi", ALTEREGO_ENGINE_MODEL_PATH=str(tmp_path / "missing.gguf"))
    assert proc.returncode == 2
    assert "Model file not found" in proc.stderr and "Traceback" not in proc.stderr
    # nothing half-written: no turn without a model to answer it
    assert Journal(tmp_path / "journal.sqlite3").count_turns() == 0


def test_oversized_message_and_bad_setting(tmp_path):
    proc = run(tmp_path, "chat", "x" * 20000)
    assert proc.returncode == 2 and "limit is 8,000" in proc.stderr
    proc = run(tmp_path, "personas", ALTEREGO_ENGINE_NCTX="10")
    assert proc.returncode == 2 and "ALTEREGO_ENGINE_N_CTX" in proc.stderr


def test_help_is_fast_and_lists_commands(tmp_path):
    proc = run(tmp_path, "--help")
    assert proc.returncode == 0 and "chat" in proc.stdout and "personas" in proc.stdout
