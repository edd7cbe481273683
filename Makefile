# fx: every target is idempotent and says what it does. `make help` lists them.
# The stack itself (start, health, stop by PID) lives in the ops package (`python -m ops`).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
FX := $(VENV)/bin/fx
STACKCTL := $(PY) -m ops
STACK_ENV := .stack/env
DEPS_STAMP := $(VENV)/.deps.sha256
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help setup venv python-deps jars redis-server up down status demo test test-scale test-faults lint clean-stack requirements

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: python-deps jars redis-server ## Create .venv, install fx and its pinned deps, fetch jars, install Redis

venv:
	@if [ -x $(PY) ]; then echo "setup: $(VENV) exists"; \
	elif command -v $(PYTHON) >/dev/null; then echo "setup: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); \
	else echo "setup: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; fi
	@if [ ! -x $(UV) ]; then echo "setup: installing uv into $(VENV)"; $(PY) -m pip install -q uv; fi

# Reinstalls only when requirements.txt or pyproject.toml change (stamp keyed on their hash).
python-deps: venv
	@hash=$$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1); \
	if [ "$$(cat $(DEPS_STAMP) 2>/dev/null)" = "$$hash" ]; then echo "setup: Python dependencies up to date"; \
	else echo "setup: installing requirements.txt, then fx in editable mode with [airflow,dev]"; \
	  $(UV) pip install -q --python $(PY) -r requirements.txt; \
	  $(UV) pip install -q --python $(PY) -e '.[airflow,dev]'; \
	  echo "$$hash" > $(DEPS_STAMP); fi

jars: python-deps
	@$(STACKCTL) fetch

redis-server:
	@if command -v redis-server >/dev/null; then echo "setup: $$(redis-server --version | cut -d' ' -f1-3) found"; \
	else echo "setup: installing redis-server with apt-get (log .stack/logs/apt.log)"; mkdir -p .stack/logs; \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server; } \
	    > .stack/logs/apt.log 2>&1 || { echo "setup: apt-get could not install redis-server; see .stack/logs/apt.log"; exit 1; }; fi

requirements: venv ## Re-pin requirements.txt from pyproject.toml (runtime + airflow extra)
	@echo "requirements: resolving pyproject.toml for Python 3.11 into requirements.txt"
	@$(UV) pip compile -q pyproject.toml --extra airflow --python-version 3.11 -o requirements.txt

up: setup ## Start Kafka, Neo4j and Redis (no-op when they are up) and wait until healthy
	@$(STACKCTL) up

down: ## Stop every process `make up` started, by PID
	@if [ -x $(PY) ]; then $(STACKCTL) down; else echo "down: no $(VENV), nothing was started"; fi

status: ## Show each service: pid, health, port, memory
	@if [ -x $(PY) ]; then $(STACKCTL) status; else echo "status: no $(VENV); run make setup"; fi

demo: up ## Load the sample graph, run fx_extract through Airflow, show the verified result
	@echo "demo: loading data/sample.csv into Neo4j"
	@$(FX) load data/sample.csv --replace
	@echo "demo: checking services, topics and graph"
	@$(FX) doctor
	@source $(STACK_ENV) && $(PY) -m ops.demo

# tests/scale starts clusters of its own (Redis Cluster, three Kafka brokers) next to the stack (about
# 6.5 minutes on 2 cores); `make test-scale` runs only those.
test: up ## Run every test against the running stack: unit, integration, quick faults, scale-out
	@echo "test: running pytest (unit, integration, quick faults, tests/scale)"
	@$(VENV)/bin/pytest

test-scale: up ## Run tests/scale: a Redis Cluster and three Kafka brokers of their own (a node killed mid-run), a worker outside the checkout
	@echo "test-scale: running tests/scale (about 6.5 minutes on 2 cores)"
	@$(VENV)/bin/pytest tests/scale

test-faults: up ## Inject faults into fx_extract runs (20 seeded worker kills and broker restarts, 5 of the rest): the fault table
	@echo "test-faults: running tests/faults with FX_FAULTS=full (about an hour on 2 cores)"
	@FX_FAULTS=full $(VENV)/bin/pytest tests/faults

lint: python-deps ## ruff check
	@echo "lint: ruff check"
	@$(VENV)/bin/ruff check .

clean-stack: down ## Delete the stack's data, logs and password (keeps the jars)
	@$(STACKCTL) clean

.PHONY: bench bench-full
# bench: about 20 minutes on 2 cores (naive only to 10k, 2 and 4 workers); bench-full adds naive at 100k,
# 1 worker and 1M transactions (every mode but naive and dag): about an hour (estimated from single runs).
bench: setup up ## Benchmark local, distributed, dag (Airflow), naive and the I/O floor up to 100k + AMLSim (docs/benchmarks.md)
	@$(PY) -m bench.run --sizes 500,10000,100000,amlsim --workers 2,4 --naive-max 10000

bench-full: setup up ## The same with naive to 100k and 1 worker, plus 1M transactions, distributed included
	@$(PY) -m bench.run --sizes 500,10000,100000,amlsim,1000000

.PHONY: bench-capacity
bench-capacity: setup up ## Measure the capacity model's rates, check it with 1/2/4 workers and 1/3 Redis shards (docs/scaling.md)
	@$(PY) -m bench.capacity

.PHONY: bench-usefulness
bench-usefulness: setup up ## Do fx's features flag laundering? AMLSim, LightGBM, fx vs GFP and counts (docs/usefulness.md)
	@$(PY) -m bench.usefulness
