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

run: setup  ## the default pipeline end to end (dvc repro), then a short summary (dvc metrics show: every key)
	dvc repro
	$(PY) -m pipelines.summary

flow: setup  ## the same DAG as a Prefect flow (ephemeral local API)
	$(PY) -m pipelines.flow

test: setup  ## unit, integration (dvc repro on the micro config) and Prefect e2e tests
	$(PY) -m pytest -q

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not integration and not e2e"

lint: setup
	ruff check .

bench: setup  ## side-by-side benchmarks (ratios printed; figures go in the README)
	$(PY) -m bench.pretrain
	$(PY) -m bench.tokenize_corpus
	$(PY) -m bench.world
	$(PY) -m bench.clean
	$(PY) -m bench.orchestration

lock:  ## re-pin requirements.lock from the current .venv (closure of pyproject's dependencies)
	{ echo "# Exact versions of every runtime and dev dependency (the closure of pyproject.toml's"; \
	  echo "# dependencies + dev extra). Regenerate with: make lock"; $(PY) .ci/freeze_lock.py; } > requirements.lock

# --- Prefect ---
# A local Prefect server, work pools, the deployments of prefect.yaml and a worker; or `make serve`
# for one process that serves the flows without pools or workers. Nothing listens beyond 127.0.0.1.
#   make server            # terminal 1: API + UI on http://127.0.0.1:4200
#   make pools deploy      # once (and after editing prefect.yaml)
#   make worker POOL=cpu   # terminal 2 (POOL=gpu on the GPU machine)
#   make sweep GRID='{"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]}'
PREFECT_PORT ?= 4200
PREFECT_API ?= http://127.0.0.1:$(PREFECT_PORT)/api
POOL ?= cpu
GRID ?= {"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]}
PREFECT_CLI := PREFECT_API_URL=$(PREFECT_API) $(VENV)/bin/prefect

.PHONY: serve sweep tradeoffs study

server: setup  ## local Prefect server (API + UI) on 127.0.0.1
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

pools: setup  ## process work pools cpu and gpu, and the gpu concurrency limit (one GPU stage at a time)
	$(PREFECT_CLI) work-pool create cpu --type process --overwrite
	$(PREFECT_CLI) work-pool create gpu --type process --overwrite
	$(PREFECT_CLI) gcl create gpu --limit 1 || $(PREFECT_CLI) gcl update gpu --limit 1

deploy: setup  ## the deployments of prefect.yaml (nightly, gpu, sweep, study), run from this checkout
	$(PREFECT_CLI) --no-prompt deploy --all

worker: setup  ## a process worker for POOL (cpu or gpu)
	$(PREFECT_CLI) worker start --pool $(POOL) --type process

serve: setup  ## no server/worker setup: serve the lmpipe and sweep flows from this process
	$(PY) -m pipelines.flow --serve

sweep: setup  ## GRID as JSON; PREFIX=<prefix> resumes that sweep; TIME_LIMIT=<s> per experiment
	$(PY) -m pipelines.sweep --grid '$(GRID)' $(if $(PREFIX),--prefix $(PREFIX)) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT))

tradeoffs: setup  ## reports/experiments/{index.html,table.csv} from dvc exp show
	$(PY) -m pipelines.tradeoffs

study: setup  ## the remedy study (pipelines/study.py): ONLY=a,b GROUPS=<json> PREFIX=<prefix> resumes, TIME_LIMIT=<s> per experiment, DRY_RUN=1 plan + estimate only
	$(PY) -m pipelines.study $(if $(ONLY),--only $(ONLY)) $(if $(GROUPS),--groups '$(GROUPS)') $(if $(PREFIX),--prefix $(PREFIX)) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT)) $(if $(DRY_RUN),--dry-run)
