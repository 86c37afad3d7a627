# Everything runs from this folder; `make run` and `make test` set up the virtualenv first.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(CURDIR)/.data
export DAGSTER_HOME ?= $(DATA)/dagster_home
export LOCAL_BLOB_ROOT ?= $(DATA)/blobs

.PHONY: install run test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

run: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m gateway.stack

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check jewel_dagster gateway tests benchmarks

clean:
	rm -rf $(DATA)
