# The README's two commands: `make run` and `make test`. Both start from `make install`,
# which is idempotent: it rebuilds the venv only when pyproject.toml changed, and reinstalls
# the JS SDK's dev dependencies (`npm ci`, from the committed lockfile) only when
# sdk-js/package-lock.json changed; Debian's chromium and sox are installed when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install run test lint bench
install: $(VENV)/.installed sdk-js/node_modules/.installed browser-test-deps

# tests/test_browser.py drives Debian's /usr/bin/chromium with playwright-core (an sdk-js dev
# dependency, from the lockfile: it never downloads a browser) and makes its WAV with sox.
# Checked on every run, installed only when missing, so `make install` stays idempotent.
.PHONY: browser-test-deps
browser-test-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: the browser test needs:$$missing (sudo apt-get install$$missing)"; fi; \
	fi

sdk-js/node_modules/.installed: sdk-js/package-lock.json sdk-js/package.json
	cd sdk-js && npm ci --no-audit --no-fund
	touch $@

$(VENV)/.installed: pyproject.toml
	@if ! command -v espeak-ng >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	  else echo "note: the tests make speech with espeak-ng: sudo apt-get install espeak-ng"; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

run: install
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
