# xlt: every target sets itself up on a fresh machine (venv + pinned ranges).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch: the CPU wheel that lies on disk here; any torch 2.x works on GPUs.
TORCH   ?= torch==2.13.0
# Tests run in TEST_WORKERS pytest-xdist processes, each job on one thread:
# a test's job uses ~1.2 of 2 cores (imports, subprocesses, small matrices),
# and two torch threads per job on a shared 2-core box run several times slower.
TEST_WORKERS ?= 2
# The suite never asks the HuggingFace hub (a test that did would wait on network timeouts).
PYTEST  := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

.PHONY: help install test test-fast demo demo-adjusted demo-sweep bench bench-align clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q "torch>=2.4,<3"
	$(BIN)/pip install -q -e ".[test,tracking]"   # tracking: the tests read what W&B, MLflow, TensorBoard wrote
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install xlt with its dependencies

test: $(STAMP)  ## run the test suite (offline; 10 min on 2 cores)
	$(PYTEST) --durations=15

test-fast: $(STAMP)  ## tests without end-to-end jobs and training runs
	$(PYTEST) -m "not slow"

demo: $(STAMP)  ## fine-tune e5_small on English NLI, evaluate XNLI + mixed XNLI (offline, CPU)
	$(BIN)/python -m xlt.demo

demo-adjusted: $(STAMP)  ## adjust e5_small on en-ru demo pairs, then fine-tune and evaluate (offline, CPU)
	$(BIN)/xlt experiment=demo mode=adjusted lang=ru

demo-sweep: $(STAMP)  ## original/adjusted/continual x ru,hi x 2 seeds (offline, CPU), then the report
	$(BIN)/xlt -m experiment=demo_sweep hydra.sweep.dir=multirun/demo_sweep
	$(BIN)/xlt-report multirun/demo_sweep

bench: $(STAMP)  ## throughput benchmarks (bench/)
	$(BIN)/python -c "import accelerate" 2>/dev/null || $(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/run.py

bench-align: $(STAMP)  ## fast_align port vs the reference tool's output (ru, hi; ~4 min)
	$(BIN)/python bench/golden_align.py

clean:  ## remove caches and outputs (not the venv)
	rm -rf .cache outputs .pytest_cache
