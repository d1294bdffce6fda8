# mlguard: `make serve` to run the guarded credit-risk service, `make test` to run every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
WORKERS ?= 1
HOST ?= 127.0.0.1

# The model store lives inside the project; one OpenMP thread per worker (see docs/BENCHMARKS.md).
export BENTOML_HOME := $(CURDIR)/.bentoml
export OMP_NUM_THREADS := 1
export BENTOML_DO_NOT_TRACK := true

STAMP := $(VENV)/.installed

.PHONY: install model serve test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/python -m training.train --if-missing

serve: model
	MLGUARD_SERVER__WORKERS=$(WORKERS) $(BIN)/bentoml serve service.credit_service:CreditRiskService --host $(HOST) --port $(PORT)

test: model
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service monitors fallbacks training tests

clean:
	rm -rf $(VENV) $(BENTOML_HOME) .mlguard .pytest_cache .hypothesis
