# nirwatch developer entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv on first use and install the pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := nirwatch ingest inference training monitoring

.PHONY: demo test lint typecheck unit bench-shootout bench-throughput clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nirwatch demo

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(SRC) tests benchmarks
	$(BIN)/ruff format --check $(SRC) tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not kafka and not slow and not prometheus"

bench-shootout: $(STAMP)
	$(BIN)/python benchmarks/shootout.py

bench-throughput: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
