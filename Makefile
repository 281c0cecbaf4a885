# The two commands the README promises: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install data run test bench ui lint clean

install: $(STAMP)

# Pinned install: pyproject.toml says what, constraints.txt says exactly which versions.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

# The default data set: simulated, bit-identical to what data.dvc records. Existing files are kept.
data: install
	$(BIN)/e2essl simulate

run: data
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/e2essl bench --out benchmarks/results.md

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port 5000

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf outputs reports checkpoints mlruns
