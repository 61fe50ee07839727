# `make demo` and `make test` are the only commands a fresh clone needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tidal-installed
# Models and calibrations live here unless the caller says otherwise.
export TIDAL_AGENTS_HOME ?= $(HOME)/.cache/tidal_agents
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint bench model clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

model: install
	$(VENV)/bin/tidal-agents model prepare

demo: install
	$(VENV)/bin/tidal-agents demo

test: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/tidal-agents model prepare
	$(PY) -m pytest -q -rs tests

test-fast: install
	$(PY) -m pytest -q -m "not engine and not slow" tests/unit tests/standard

lint: install
	$(VENV)/bin/ruff check tidal_agents integrations tests examples
	$(VENV)/bin/mypy tidal_agents
	$(VENV)/bin/lint-imports

bench: install
	$(VENV)/bin/tidal-agents bench engine --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
