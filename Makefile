# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv and
# installs what it needs (again only when pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-demo: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[demo]'
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[test,demo,docs,ray]'
	touch $@

demo: $(VENV)/.stamp-demo
	$(BIN)/stepdown demo

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src
	$(BIN)/mypy

docs: $(VENV)/.stamp-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

test: lint docs
	$(BIN)/python -m pytest

bench: $(VENV)/.stamp-test
	$(BIN)/python -m benchmarks.bench_core

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
