# syntax=docker/dockerfile:1
# Multi-stage: the venv is built from uv.lock with the full toolchain (the same versions and
# hashes `make install` and the tests use), then copied into a slim runtime that runs as
# non-root.
FROM python:3.11-slim AS build
# llama-cpp-python is a source distribution: compiled here once, for any x86-64 CPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# uv itself, pinned by hash as in the Makefile.
COPY uv-requirements.txt ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
COPY gateway gateway
COPY adapters adapters
# Exactly uv.lock (`--locked` fails if it no longer matches pyproject.toml), without the dev
# and bench groups, the project installed as a package rather than linked to /app's sources.
RUN UV_PROJECT_ENVIRONMENT=/app/.venv UV_PYTHON_DOWNLOADS=never \
    uv sync --locked --no-dev --no-editable --no-cache --python /usr/local/bin/python3

FROM python:3.11-slim
# libgomp1: llama.cpp's OpenMP runtime; espeak-ng: the fallback voice of pipelines/local.yaml.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 voxgate
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY pipelines pipelines
USER voxgate
# The models are in site-packages; nothing may be fetched from a model hub at run time.
ENV HF_HUB_OFFLINE=1 PATH=/app/.venv/bin:$PATH
EXPOSE 8080
CMD ["voxgate", "serve", "--host", "0.0.0.0", "--port", "8080", "--pipelines", "pipelines"]
