# alterego, fully local in a container. Multi-stage: a build stage runs the one install
# script that `make run` and `make test` use (scripts/install.sh: pinned constraints,
# llama-cpp-python built from source with portable CPU flags — no -march=native, no AMX,
# see ARCHITECTURE.md), and the runtime stage copies only the finished virtualenv and the
# assembled models. Every model ships inside the image, so the container needs no network.
# All state lives in the volume at ALTEREGO_HOME=/data.
#
#   docker build -t alterego .                       (this file: CPU)
#   docker build -f Dockerfile.gpu -t alterego:gpu .  (CUDA llama.cpp + QLoRA; untested)
# The GPU image has a file of its own: Docker's classic builder (Debian's docker.io,
# docker-compose v1) builds every stage before the one asked for, CUDA bases included.
#
# Optional build inputs, in the folder docker-inputs/ (README "Run with Docker"): wheels
# the install prefers over downloads (torch-2.13.0+cpu; the llama-cpp-python folder that
# `make install` cached, used only when built with this image's flags), and a CA bundle
# named by `--build-arg CA_BUNDLE=FILE` for TLS-intercepting proxies. Only the build
# stages see that folder; the final image holds none of it.
# The base is Debian with its own Python 3.11 (no registry but Debian's is needed to make
# it: the tests create the tag from Debian's packages with mmdebstrap when it is missing).

ARG BASE_IMAGE=debian:bookworm-slim

# ---- base: Python and the run-time libraries, the user, the data folder -----------
FROM ${BASE_IMAGE} AS base
# Every stage and every intermediate image inherits the label, so a test run can remove
# this project's untagged leftovers (older builds, failed ones) and nothing else.
LABEL org.opencontainers.image.title=alterego
# libgomp1: llama.cpp's OpenMP runtime. apt's package caches (80 MB) go too.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin alterego \
    && mkdir /data && chown alterego:alterego /data

# ---- build ------------------------------------------------------------------------------
FROM base AS build
ARG CA_BUNDLE=""
WORKDIR /src
COPY docker-inputs/ docker-inputs/
# PyTorch's CPU index: PyPI's default Linux torch wheel drags in ~3 GB of CUDA; a torch
# wheel in docker-inputs/ wins over the index. The wheel cache stays in this stage, so
# the second install pass finds a llama-cpp-python built by the first. binutils: `strip`.
ENV VENV=/opt/venv EXTRAS="" EDITABLE=0 APT_EXTRA="python3-venv binutils" DROP_MODEL_CHUNKS=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    ALTEREGO_WHEELS=/src/docker-inputs \
    ALTEREGO_WHEEL_CACHE=/opt/wheel-cache \
    ALTEREGO_MODEL_CACHE=/opt/alterego/models
# Dependencies first, in a layer of their own: a code change reuses it.
COPY pyproject.toml constraints.txt ./
COPY scripts/ scripts/
RUN ALTEREGO_CA_BUNDLE="${CA_BUNDLE:+/src/docker-inputs/$CA_BUNDLE}" INSTALL_STEPS=deps bash scripts/install.sh \
    && rm -rf /root/.cache
COPY README.md ./
COPY memory/ memory/
COPY personas/ personas/
COPY tuning/ tuning/
COPY webapp/ webapp/
COPY bench/ bench/
RUN ALTEREGO_CA_BUNDLE="${CA_BUNDLE:+/src/docker-inputs/$CA_BUNDLE}" bash scripts/install.sh \
    && rm -rf /root/.cache
# Never used by a CPU image at run time (~270 MB): torch's C++ test programs, headers and
# protoc (the image has no compiler to build extensions or kernels with), and
# bitsandbytes' CUDA, ROCm and XPU kernels (its CPU library stays). torch's own libraries
# lose their local symbol tables (~95 MB; dynamic linking uses only the dynamic symbols);
# not the other packages' libraries: those that auditwheel patched break when stripped.
# Also the embedder's float32 ONNX export (90 MB): `auto` runs torch-bf16 on CPUs with
# bfloat16, else the int8 export, which stays; the `onnx` backend, if chosen, exports again
# into a temporary folder at first use (the image's model cache is read-only). And the
# kubernetes client (126 MB) with chromadb's own tests: chromadb imports it only for its
# distributed deployment, never in the embedded store or the single-node server we run.
RUN sp=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$sp"/torch/test "$sp"/torch/bin/test_* "$sp"/torch/bin/protoc* "$sp"/torch/include \
       "$sp"/kubernetes "$sp"/chromadb/test \
       "$sp"/bitsandbytes/libbitsandbytes_cuda*.so "$sp"/bitsandbytes/libbitsandbytes_rocm*.so \
       "$sp"/bitsandbytes/libbitsandbytes_xpu*.so \
    && strip --strip-unneeded "$sp"/torch/lib/*.so* \
    && rm -f /opt/alterego/models/onnx/*/model.onnx

# ---- runtime (the final image) --------------------------------------------------------
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/alterego/models /opt/alterego/models
# Inside the container the app binds 0.0.0.0 so a published port reaches it; the
# container's network is its own, and compose publishes on 127.0.0.1 only. To publish
# beyond this machine, set ALTEREGO_SERVER_AUTH=user:password (see README).
ENV PATH=/opt/venv/bin:$PATH \
    ALTEREGO_HOME=/data \
    ALTEREGO_MODEL_CACHE=/opt/alterego/models \
    ALTEREGO_SERVER_HOST=0.0.0.0 \
    ALTEREGO_SERVER_PORT=7860 \
    ALTEREGO_SERVER_ALLOW_UNAUTHENTICATED=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ANONYMIZED_TELEMETRY=False \
    GRADIO_ANALYTICS_ENABLED=False \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/alterego
VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 CMD ["alterego", "health"]
CMD ["alterego", "run"]
