# syntax=docker/dockerfile:1
# alterego, fully local in a container. Multi-stage: a build stage runs the one install
# script that `make run` and `make test` use (scripts/install.sh: pinned constraints,
# llama-cpp-python built from source with portable CPU flags — no -march=native, no AMX,
# see ARCHITECTURE.md), and the runtime stage copies only the finished virtualenv.
# The embedded models (SmolLM2 GGUF, MiniLM embedder) ship inside installed packages, so
# the container needs no network. All state lives in the volume at ALTEREGO_HOME=/data.
#
#   docker build -t alterego .                  (CPU, the default target)
#   docker build --target gpu -t alterego:gpu .  (CUDA llama.cpp + bitsandbytes QLoRA)
# See README "Run with Docker" and compose.yaml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- CPU build ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/ scripts/
COPY memory/ memory/
COPY personas/ personas/
COPY tuning/ tuning/
COPY webapp/ webapp/
COPY bench/ bench/
# PyTorch's CPU index: PyPI's default Linux torch wheel drags in ~3 GB of CUDA.
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN VENV=/opt/venv EXTRAS='' EDITABLE=0 ALTEREGO_WHEEL_CACHE=/tmp/wheels bash scripts/install.sh \
    && rm -rf /tmp/wheels /root/.cache

# ---- CPU runtime (default target) ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: llama.cpp's OpenMP runtime (the build stage had it through g++).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin alterego \
    && mkdir /data && chown alterego:alterego /data
COPY --from=build /opt/venv /opt/venv
# Inside the container the app binds 0.0.0.0 so a published port reaches it; the
# container's network is its own, and compose publishes on 127.0.0.1 only. To publish
# beyond this machine, set ALTEREGO_SERVER_AUTH=user:password (see README).
ENV PATH=/opt/venv/bin:$PATH \
    ALTEREGO_HOME=/data \
    ALTEREGO_SERVER_HOST=0.0.0.0 \
    ALTEREGO_SERVER_PORT=7860 \
    ALTEREGO_SERVER_ALLOW_UNAUTHENTICATED=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/alterego
VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD ["alterego", "health"]
CMD ["alterego", "run"]

# ---- GPU build: CUDA llama.cpp, CUDA torch (bitsandbytes QLoRA) ------------------------
FROM ${CUDA_DEVEL_IMAGE} AS build-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/ scripts/
COPY memory/ memory/
COPY personas/ personas/
COPY tuning/ tuning/
COPY webapp/ webapp/
COPY bench/ bench/
# The build machine has no GPU driver (libcuda exists only at run time), so the
# install script's one-token check is skipped here; /health checks the model at start.
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
    LLAMA_CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90" \
    SKIP_BUILD_CHECK=1
RUN VENV=/opt/venv EXTRAS='' EDITABLE=0 ALTEREGO_WHEEL_CACHE=/tmp/wheels bash scripts/install.sh \
    && rm -rf /tmp/wheels /root/.cache

# ---- GPU runtime ------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin alterego \
    && mkdir /data && chown alterego:alterego /data
COPY --from=build-gpu /opt/venv /opt/venv
# Same settings as the CPU image, plus every model layer on the GPU.
ENV PATH=/opt/venv/bin:$PATH \
    ALTEREGO_HOME=/data \
    ALTEREGO_ENGINE_N_GPU_LAYERS=-1 \
    ALTEREGO_SERVER_HOST=0.0.0.0 \
    ALTEREGO_SERVER_PORT=7860 \
    ALTEREGO_SERVER_ALLOW_UNAUTHENTICATED=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/alterego
VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 CMD ["alterego", "health"]
CMD ["alterego", "run"]
