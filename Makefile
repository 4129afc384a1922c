# lmpipe — the two commands a new user needs are `make run` and `make test`.
# Both create .venv and install the pinned lock file first (about 3 minutes the first time).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Offline and quiet by default: nothing is fetched from a model hub, no telemetry.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export DO_NOT_TRACK ?= 1
export GX_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1

.PHONY: setup run flow test test-fast lint bench lock server pools deploy worker clean-outputs

$(STAMP): requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $(STAMP)

setup: $(STAMP)  ## create .venv from requirements.lock

run: setup  ## the default pipeline end to end (dvc repro), then the summary
	dvc repro
	dvc metrics show

flow: setup  ## the same DAG as a Prefect flow (ephemeral local API)
	$(PY) -m pipelines.flow

test: setup  ## unit, integration (dvc repro on the micro config) and Prefect e2e tests
	$(PY) -m pytest -q

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not integration and not e2e"

lint: setup
	ruff check .

bench: setup  ## side-by-side benchmarks (ratios printed; figures go in the README)
	$(PY) bench/pretrain.py
	$(PY) bench/tokenize.py
	$(PY) bench/world.py
	$(PY) bench/orchestration.py

lock:  ## re-pin requirements.lock from the current .venv
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > requirements.lock
