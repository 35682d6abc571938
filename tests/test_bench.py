"""`alterego bench`: the quick run of every suite, as a subprocess on a fresh data root,
prints one JSON report in which each figure the benchmark promises has a numeric value,
a named baseline measured in the same run and their ratio; writes report.json and a real
PNG chart; leaves the user's data alone. No timing is asserted: only that the figures
exist, are numbers and are consistent with each other."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ALTEREGO, ROOT, cli_env

# The figures of issue 8: chat TTFT and decode vs raw llama-cpp-python, second turn vs
# first (KV reuse), persona switch vs same persona, adapter switch vs model reload,
# ingest scenes/s, training tokens/s vs a plain peft loop (retrieval shares are checked
# apart: their names carry the collection size).
REQUIRED = [
    "chat_ttft", "chat_decode", "second_turn_ttft", "second_turn_prompt_eval", "second_turn_vs_cold",
    "persona_switch_back_ttft", "persona_switch_back_vs_before", "persona_first_switch_ttft",
    "persona_switch_prepared_ttft",
    "adapter_switch", "ingest_scenes_per_s", "training_tokens_per_s",
    # the models suite: Gemma 3 270M next to SmolLM2 (issue 12)
    "bpc_ru", "bpc_en", "ttft", "decode", "fluency_ru", "russian_replies", "train_tokens_per_s",
    "train_s_per_1000_chars",
    # issue 13: evidence recall of hybrid and of today's dense scenes, vs fixed windows
    "recall_hybrid", "recall_dense_scenes",
    # issue 16: the voice benchmark (Falstaff): held-out loss and style vs the base model,
    # prompt-only Me's verbatim copies and meta-commentary vs Me with the adapter
    "voice_heldout_loss", "voice_style_wins", "me_verbatim_copy", "me_meta_commentary",
    # issue 14: the idle app's CPU vs a bare Gradio app, with no client and with a page open
    "idle_cpu", "idle_cpu_page",
]


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_quick_bench_reports_every_figure_with_baseline_and_ratio(tmp_path, hf_base, gemma_hf_base):
    home = tmp_path / "home"
    # The session's HF bases are reused instead of materialising second ones: as the
    # configured base, and in the data root's hf_base/ cache (where the models suite,
    # which trains both models, looks them up by fingerprint).
    env = cli_env(home, ALTEREGO_TUNING_HF_BASE=str(hf_base))
    (home / "hf_base").mkdir(parents=True)
    for base in (hf_base, gemma_hf_base):
        (home / "hf_base" / base.name).symlink_to(base, target_is_directory=True)
    proc = subprocess.run([*ALTEREGO, "bench", "--json", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert report["errors"] == {}
    assert "training: starting" in proc.stderr  # progress goes to stderr

    figures = report["figures"]
    assert [k for k in REQUIRED if k not in figures] == []
    shares = {k: f for k, f in figures.items() if k.startswith("retrieval_share_")}
    assert sorted(f["scenes"] for f in shares.values()) == [1_000, 5_000]
    for key, f in figures.items():
        assert number(f["value"]) and f["value"] >= 0, key
        assert number(f["baseline_value"]) and f["baseline_value"] >= 0, key
        if f["baseline_value"] == 0:  # e.g. SmolLM2 answered no Russian message in Russian
            assert f["ratio"] is None, key
        else:
            assert number(f["ratio"]) and f["ratio"] == pytest.approx(f["value"] / f["baseline_value"], rel=0.01), key
        assert f["baseline"] and f["title"] and isinstance(f["unit"], str) and f["better"] in ("lower", "higher"), key
    # The second turn is the first one plus new tokens: only those are evaluated.
    assert figures["second_turn_prompt_eval"]["value"] < figures["second_turn_prompt_eval"]["baseline_value"]

    assert report["machine"]["cpu_count"] >= 1 and report["versions"]["llama_cpp_python"]
    assert report["models"]["chat"].endswith(".gguf") and report["quick"] is True
    assert report["started_at"] <= report["finished_at"]

    out = home / "bench"
    assert json.loads((out / "report.json").read_text())["figures"] == figures
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # Scratch roots are gone and nothing was written into the user's own data.
    assert not list(out.glob("work-*"))
    assert not (home / "journal.sqlite3").exists() and not (home / "chroma").exists()

    from bench.runner import format_report

    table = format_report(report)
    assert all(f["title"] in table for f in figures.values())


def test_unknown_suite_is_one_clear_line(tmp_path):
    proc = subprocess.run([*ALTEREGO, "bench", "--only", "chat,warp"], cwd=ROOT, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "warp" in proc.stderr and "chat, personas, ingest" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bench" / "report.json").exists()


def test_a_killed_runs_scratch_root_is_swept_by_the_next_run(tmp_path):
    """A bench killed with SIGKILL never cleans up; the next run removes its scratch root
    (imported corpora can be gigabytes), and never a live run's."""
    import signal

    from bench.common import Workspace

    code = ("import sys, time; sys.path.insert(0, '.'); from bench.common import Workspace; "
            f"ws = Workspace({str(tmp_path)!r}); (ws.root / 'corpus').write_text('x'); "
            "print(ws.root, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            text=True)
    try:
        dead = Path(proc.stdout.readline().strip())
        assert (dead / "corpus").exists() and dead.name.startswith(f"work-{proc.pid}-")
        live = Workspace(tmp_path)  # the other run is alive: its root stays
        assert dead.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert dead.exists()  # killed: nothing of its own cleaned up
        again = Workspace(tmp_path)
        assert not dead.exists() and live.root.exists() and again.root.exists()
    finally:
        proc.kill()
        proc.stdout.close()
    live.close()
    again.close()
    assert not live.root.exists() and not again.root.exists()
