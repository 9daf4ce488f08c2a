# Cairn: `make run` starts a server on an embedded Postgres; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck openapi clean install bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cairn serve

test: $(STAMP)
	$(BIN)/ruff check api db worker_sdk tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check api db worker_sdk tests bench
	$(BIN)/ruff format --check api db worker_sdk

typecheck: $(STAMP)
	$(BIN)/mypy

# Benchmark (not part of `make test`): its own embedded Postgres, Cairn beside its peers.
# Quick run: make bench ARGS="--runs 2000 --depth-max 20000"
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)

openapi: $(STAMP)
	$(BIN)/python -m api.openapi > openapi.json

clean:
	rm -rf $(VENV) .cairn .pytest_cache .mypy_cache .ruff_cache
