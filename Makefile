# `make demo` and `make test` each set everything up on a fresh machine: virtualenv, install, run.
PYTHON     ?= python3
VENV       ?= .venv
# CPU build by default; a GPU user sets e.g. TORCH_SPEC="torch==2.13.0" with their CUDA index.
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS  ?= -q
# `ppl-avvp extract` needs torchvision, and PyPI's torchvision imports only beside torch 2.14.1 (a CUDA build
# that also runs on CPU, 5.5 GB): it lives in its own venv so the core stays on the small CPU build.
EXTRACT_VENV      ?= .venv-extract
EXTRACT_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRACT_BIN       := $(EXTRACT_VENV)/bin
BIN        := $(VENV)/bin
DEMO_DIR   ?= demo

# DeepSpeed JIT-builds its CPU comm op once (~35 s); keep it in the checkout. The extraction venv's torch is
# another version, so its tests build into their own folder (one shared folder rebuilds on every switch).
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: install install-extract test test-core test-extract test-all demo sweep-demo bench bench-extract gpu-check clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev]"
	touch $@

install: $(BIN)/.installed

$(EXTRACT_BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(EXTRACT_VENV)
	$(EXTRACT_BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(EXTRACT_BIN)/pip install $(PIP_FLAGS) $(EXTRACT_TORCH_SPEC)
	$(EXTRACT_BIN)/pip install $(PIP_FLAGS) -e ".[dev,extract]"
	touch $@

install-extract: $(EXTRACT_BIN)/.installed

# everything: the core suite, then the extraction tests in their venv (tests/conftest.py: EXTRACT_TEST_FILES)
test: test-core test-extract

test-core: install
	$(BIN)/python -m pytest

test-extract: install-extract
	PPL_AVVP_EXTRACT_TESTS=1 TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR)-extract $(EXTRACT_BIN)/python -m pytest tests/test_extract_frontend.py \
		tests/test_extract_backbones.py tests/test_extract_pipeline.py

test-all: install test-extract
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

bench-extract: install-extract
	$(EXTRACT_BIN)/python bench/bench_extract.py speed
	$(EXTRACT_BIN)/python bench/bench_extract.py memory --counts 100,10000

# The GPU path (1 GPU, DeepSpeed bf16, NCCL, 10,000 synthetic videos, 2 epochs): on a machine with a GPU.
gpu-check: install
	PYTHON=$(BIN)/python bash bench/gpu_check.sh

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache $(EXTRACT_VENV)
