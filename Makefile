# Two commands matter:  `make serve` (the mock, default scenario) and `make test` (everything).
# Both install what they need first; nothing has to be installed by hand.

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PORT    ?= 8080
ARGS    ?=

.PHONY: serve test install install-test system-deps node-deps dashboard lint types pytest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The mock needs no system package.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/cockpit-api serve --port $(PORT) $(ARGS)

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $@

install-test: $(VENV)/.installed-test

# Debian packages for libvirt + QEMU (the lab) and libvirt-python, built against libvirt-dev.
# Needs root; without it the libvirt tests skip and say why.
system-deps: install-test
	@if [ "$$(id -u)" = 0 ]; then VENV=$(abspath $(VENV)) lab/install-deps.sh; \
	 else echo "not root: skipping libvirt/QEMU packages (libvirt tests will be skipped)"; fi

# Spectral, Redocly, openapi-typescript, TypeScript: pinned in package.json.
node-deps:
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --silent; \
	 else echo "no npm: spec linters and TypeScript client tests will be skipped"; fi

# Rebuild the dashboard (TypeScript + vendored uPlot) into cockpit_api/dashboard/; commit the
# result. Only for changing the page: serving it needs no Node.
dashboard: node-deps
	$(PY) dashboard/build.py

lint: install-test
	$(BIN)/ruff check .

types: install-test
	$(BIN)/mypy

pytest: install-test
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest $(ARGS)

test: system-deps node-deps lint types pytest

# wrk (Debian) and Prism (npm, pinned in bench/package.json) are installed here, not by hand.
bench: install-test
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null; } \
	 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
	cd bench && npm ci --no-audit --no-fund --silent
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
