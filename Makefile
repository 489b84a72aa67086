# The commands of the README: `make run`, `make test` and `make check`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The embedded demo: SQLite and files under var/, a broker that is a folder.
# Cookies over plain http on localhost; any DICOM AE title may echo and store
# (demo only), so the listener binds loopback whatever the environment says.
RUN_ENV := SECURE_COOKIES=0 PACS_DICOM_ACCEPT_UNKNOWN_AE=1 PACS_DICOM_HOST=127.0.0.1

.PHONY: run test check install install-test system-test-deps clean

# Front-end packages (package.json, its lock file): Node and npm from Debian when
# missing; served as static files from node_modules (pacs/settings.py).
NODE_PACKAGES := node_modules/.installed

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(SUDO) apt-get install -y python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

$(NODE_PACKAGES): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(NODE_PACKAGES)
install-test: $(VENV)/.installed-test $(NODE_PACKAGES)

system-test-deps:
	@command -v storescu >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dcmtk; }
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py load_demo
	$(BIN)/python manage.py demo_info
	$(RUN_ENV) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho --procfile Procfile start

test: install-test system-test-deps
	$(BIN)/python -m pytest

# Lint, format and types (mypy reads its configuration, and which code it
# checks, from pyproject.toml).
check: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf var/ .pytest_cache .mypy_cache node_modules
