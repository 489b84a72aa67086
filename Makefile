# The commands of the README: `make run`, `make test` and `make check`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Citizens log in with SPID or CIE through OpenID Connect, as in production;
# the provider is the "IdP di prova" (idp/, the Procfile's idp line), whose
# client secret and signing key `manage.py idp_keys` makes under var/idp/.
IDP_HOST ?= 127.0.0.1
IDP_PORT ?= 8001
IDP_URL := http://$(IDP_HOST):$(IDP_PORT)
OIDC_ENV := PACS_OIDC_ENABLED=1 OIDC_RP_CLIENT_ID=fse-pacs-demo \
	OIDC_RP_CLIENT_SECRET_FILE="$${PACS_VAR_DIR:-$(CURDIR)/var}/idp/client_secret" \
	OIDC_OP_AUTHORIZATION_ENDPOINT=$(IDP_URL)/authorize/ OIDC_OP_TOKEN_ENDPOINT=$(IDP_URL)/token/ \
	OIDC_OP_USER_ENDPOINT=$(IDP_URL)/userinfo/ OIDC_OP_JWKS_ENDPOINT=$(IDP_URL)/jwks.json \
	IDP_HOST=$(IDP_HOST) IDP_PORT=$(IDP_PORT)

# The embedded demo: SQLite and files under var/, a broker that is a folder.
# Cookies over plain http on localhost; any DICOM AE title may echo and store
# (demo only), so the listener binds loopback whatever the environment says.
RUN_ENV := SECURE_COOKIES=0 PACS_DICOM_ACCEPT_UNKNOWN_AE=1 PACS_DICOM_HOST=127.0.0.1 $(OIDC_ENV)

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
	npm ci --no-audit --no-fund --loglevel=error --omit=optional
	touch $@

# The radiologist's diagnostic viewer (Cornerstone3D), bundled by esbuild into
# frontend/dist/viewer3d/ (served under static/viewer3d/, pacs/settings.py).
VIEWER3D := frontend/dist/viewer3d/viewer3d.js
$(VIEWER3D): $(NODE_PACKAGES) frontend/build.mjs $(wildcard frontend/viewer3d/*)
	npm run --silent build

install: $(VENV)/.installed $(NODE_PACKAGES) $(VIEWER3D)
install-test: $(VENV)/.installed-test $(NODE_PACKAGES) $(VIEWER3D)

system-test-deps:
	@command -v storescu >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dcmtk; }
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }
	@command -v isoinfo >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q genisoimage; }

# The Procfile runs under honcho through pacs/procfile.py: Ctrl-C stops every
# process cleanly (SIGTERM to each process, not its group) and exits 0.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py load_demo
	DJANGO_SETTINGS_MODULE=idp.settings $(BIN)/python manage.py idp_keys
	$(RUN_ENV) $(BIN)/python manage.py demo_info
	$(RUN_ENV) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pacs.procfile --procfile Procfile

# The suite runs in one process per core, at most four (pytest-xdist: each has its own test
# database, var folder, Celery queues and Redis database, tests/env_plugin.py).
# TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= auto
test: install-test system-test-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4

# Lint, format and types (mypy reads its configuration, and which code it
# checks, from pyproject.toml).
check: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf var/ .pytest_cache .mypy_cache node_modules frontend/dist
