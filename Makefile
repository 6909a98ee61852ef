# Every target builds its own virtualenv from scratch on a fresh machine (only python3 needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
HOST   ?= 127.0.0.1
PORT   ?= 8888

.PHONY: run test lint typecheck unit system-deps bench bench-quick clean image image-test

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

# The container image with podman (README, "Build and run the image"): `make image` builds it
# (a Debian-made base when the official one cannot be pulled; cache in ~/.cache/hostport-extender),
# `make image-test` runs it as Kubernetes would. Not part of `make test`.
IMAGE ?= localhost/hostport-extender:0.1.0

image: $(VENV)/.installed
	@scripts/system-deps image
	IMAGE=$(IMAGE) PYTHON=$(BIN)/python scripts/image-build

image-test: image
	IMAGE=$(IMAGE) $(BIN)/python scripts/image_test.py
