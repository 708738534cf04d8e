# Two commands do all set-up: `make run` (the whole pipeline) and `make test` (the test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
# dvc.yaml's stage commands call `python`: make it the project's.
export PATH := $(BIN):$(PATH)

.PHONY: help run test test-engines repro install install-dev clean

help:
	@echo "make run      create .venv, install, run the pipeline (Prefect flow over dvc.yaml)"
	@echo "make test     create .venv with dev extras, run the test suite (what CI runs)"
	@echo "make test-engines  the tests on the scale-out stack: Ray cluster, PostgreSQL, S3 API, MLflow server"
	@echo "make repro    run the same DAG with plain 'dvc repro'"
	@echo "make clean    remove generated data, models, reports and the local MLflow store"

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/d2m run

test: install-dev
	$(BIN)/python -m pytest -m "not engines"

test-engines: install-dev
	$(BIN)/python -m pytest -m engines

repro: install
	$(BIN)/dvc repro

clean:
	rm -rf data/raw.parquet data/features.parquet data/split models reports .mlflow .ray_results
