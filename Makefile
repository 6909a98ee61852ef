# Every target builds its own virtualenv from scratch on a fresh machine (only python3 needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
HOST   ?= 127.0.0.1
PORT   ?= 8888

.PHONY: run test lint typecheck unit system-deps bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(BIN)/hostport-extender serve --snapshot config/samples/cluster.yaml --listen $(HOST):$(PORT)

test: system-deps lint typecheck unit

system-deps:
	@scripts/system-deps

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (bench/): ours against a null extender in the same run; see the README's Performance
# section. Reports go to bench/results/ (gitignored); `make bench` also refreshes docs/bench/.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) -e '.[bench]'
	@touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --docs docs/bench

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --quick --docs docs/bench
