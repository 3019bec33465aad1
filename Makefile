# `make demo` and `make test` each set everything up on a fresh machine: virtualenv, install, run.
PYTHON     ?= python3
VENV       ?= .venv
# CPU build by default; a GPU user sets e.g. TORCH_SPEC="torch==2.13.0" with their CUDA index.
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS  ?= -q
BIN        := $(VENV)/bin
DEMO_DIR   ?= demo

# DeepSpeed JIT-builds its CPU comm op once (~35 s); keep it in the checkout.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: install test test-all demo sweep-demo bench gpu-check clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m ""

demo: install
	$(BIN)/python -m distributed.demo --out $(DEMO_DIR)

# tau x EMA sweep on synthetic data (6 in-process trials), then the comparison table.
sweep-demo: install
	test -f $(DEMO_DIR)/sweep-data/synth.json || $(BIN)/python -m distributed.synth --out $(DEMO_DIR)/sweep-data --train 800 --val 150 --test 150
	PPL_SWEEP_DATA=$(DEMO_DIR)/sweep-data $(BIN)/python -m tune.sweep --config tune/sweeps/demo.yaml --resume

bench: install
	$(BIN)/python bench/bench_train_step.py
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_distributed.py

# The GPU path (1 GPU, DeepSpeed bf16, NCCL, 10,000 synthetic videos, 2 epochs): on a machine with a GPU.
gpu-check: install
	PYTHON=$(BIN)/python bash bench/gpu_check.sh

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
