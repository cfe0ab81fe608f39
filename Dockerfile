# Multi-stage: wheels are built with the full image, the runtime is slim and runs as non-root.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY adapters adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 voxgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY pipelines pipelines
USER voxgate
EXPOSE 8080
CMD ["voxgate", "serve", "--host", "0.0.0.0", "--port", "8080", "--pipelines", "pipelines"]
