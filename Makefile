# Two entry points, each sets everything up first (idempotent):
#   make repro   install into .venv, then `dvc repro` on params.yaml
#   make test    install into .venv, then the test suite
#   make test-heavy     whole-pipeline runs: interruptions, several replicas, every export format (.ci/run runs them after make test)
#   make test-cluster   the multi-worker tests (.ci/run runs them after make test)
#   make docs           the docs site into site/ (mkdocs build --strict: a broken link fails); make docs-serve previews
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup repro test test-heavy test-cluster bench docs docs-serve
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,tfds,docs]'
	touch $@

repro: setup
	dvc repro

test: setup
	pytest -q

# Whole-pipeline runs: interruptions (kill -9, Ctrl-C) in fresh DVC repos, the finetune
# script under several replicas and mixed precision, every export format, the slowest
# `dvc exp run` and fine-tuning paths (about 24 minutes).
test-heavy: setup
	pytest -q -m heavy

# Multi-worker training: worker processes on 127.0.0.1 (about 2.5 minutes).
test-cluster: setup
	pytest -q -m cluster

bench: setup
	$(BIN)/python bench/run_all.py

docs: setup
	mkdocs build --strict

docs-serve: setup
	mkdocs serve
