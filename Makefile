# mlguard: `make serve` to run the guarded credit-risk service (or any plug-in: APP=module:Service),
# `make test` to run every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
WORKERS ?= 1
HOST ?= 127.0.0.1
DEFAULT_APP := apps.credit.app:CreditRiskService
APP ?= $(DEFAULT_APP)

# The model store lives inside the project; one OpenMP thread per worker (see docs/BENCHMARKS.md).
export BENTOML_HOME := $(CURDIR)/.bentoml
export OMP_NUM_THREADS := 1
export BENTOML_DO_NOT_TRACK := true

STAMP := $(VENV)/.installed

.PHONY: install model serve test test-all lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# A plug-in whose package has a train.py (apps/credit, apps/wine, apps/diabetes) is trained when
# the store has no guarded model of it yet; a user's own module is guarded by `guard-model`.
APP_PACKAGE = $(basename $(firstword $(subst :, ,$(APP))))
APP_TRAINER = $(subst .,/,$(APP_PACKAGE))/train.py

model: $(STAMP)
	@if [ -f $(APP_TRAINER) ]; then $(BIN)/python -m $(APP_PACKAGE).train --if-missing; fi

# Each plug-in is served with a BentoML home of its own (BentoML wipes and shares its Prometheus
# multiprocess directory under BENTOML_HOME) that links the one model store: two plug-ins served
# at once keep their own metrics.
APP_HOME = $(BENTOML_HOME)/serving/$(subst :,-,$(APP))

serve: model
	mkdir -p $(BENTOML_HOME)/models $(APP_HOME) && ln -sfn $(BENTOML_HOME)/models $(APP_HOME)/models
	BENTOML_HOME=$(APP_HOME) MLGUARD_SERVER__WORKERS=$(WORKERS) $(BIN)/bentoml serve $(APP) --host $(HOST) --port $(PORT)

# Long drills (marker `drill`: the model lifecycle, refusals, the README walkthrough, two plug-ins
# served at once) run in CI (CI set, as .ci/run has it) and in `make test-all`; a local `make test`
# leaves them out to stay near ten minutes.
TEST_SELECTION = $(if $(CI),,-m "not drill")

test: model
	$(BIN)/pytest $(TEST_SELECTION) $(PYTEST_ARGS)

test-all: model
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service monitors fallbacks training apps tests bench scripts

# The plug-in's Bento, printed as its tag; `bentoml containerize <tag>` makes the image
# (docs/DEPLOY.md). The default app builds from bentofile.yaml (checked to be its bentofile); any
# other APP from the bentofile scripts/bentofile.py derives from it (service, name, package, model).
# Requirements come pre-locked: BentoML's lock step needs the index via uv.
.PHONY: build lock k8s-sync
IS_DEFAULT_APP = $(filter $(DEFAULT_APP),$(APP))
BENTOFILE = $(if $(IS_DEFAULT_APP),bentofile.yaml,$(BENTOML_HOME)/build/$(subst :,-,$(APP))/bentofile.yaml)
build: model
	$(BIN)/python scripts/lock_requirements.py --check
	$(BIN)/python scripts/bentofile.py --app $(APP) $(if $(IS_DEFAULT_APP),--check,--out $(BENTOFILE))
	@set -o pipefail; tag=$$($(BIN)/bentoml build -f $(BENTOFILE) -o tag | sed -n 's/^__tag__://p'); test -n "$$tag" && echo "$$tag"

lock: $(STAMP)
	$(BIN)/python scripts/lock_requirements.py

# The Kubernetes ConfigMap (the plug-in's config: config/<app name>.yaml, else config/mlguard.yaml),
# the kustomization's image (the plug-in's Bento) and the PrometheusRule (deploy/prometheus/alerts.yml)
# are generated for APP (default: the credit app).
k8s-sync: $(STAMP)
	$(BIN)/python scripts/sync_kubernetes.py --app $(APP)

# Guarded vs bare BentoML on loopback (docs/BENCHMARKS.md). bench: ~15 min, writes bench/results.json,
# bench/results.png and the table in docs/BENCHMARKS.md; bench-quick: ~4 min, results.json only.
.PHONY: bench bench-quick
bench: model
	$(BIN)/python -m bench.run --size full --chart bench/results.png --doc docs/BENCHMARKS.md

bench-quick: model
	$(BIN)/python -m bench.run --size quick

# Drift drill: a small window, normal then shifted then normal traffic (docs/DRIFT.md).
.PHONY: drift-demo
drift-demo: model
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/drift_demo.py

# Concept-drift drill: outcomes that follow a changed world while the inputs stay put (docs/PERFORMANCE.md).
.PHONY: feedback-demo
feedback-demo: model
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/feedback_demo.py

# The statistics of live performance measured on the credit plug-in (docs/PERFORMANCE.md).
.PHONY: performance-stats
performance-stats: model
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/performance_stats.py

clean:
	rm -rf $(VENV) $(BENTOML_HOME) .mlguard .pytest_cache .hypothesis
