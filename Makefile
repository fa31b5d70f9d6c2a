# p2p-dist: the two set-up commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch==2.13.0 resolves to the CPU wheel on a CPU-only machine set up like ours and to the
# CUDA build from PyPI on a GPU machine; override with TORCH_SPEC='torch==X' if you need another.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_STEPS ?= 300
# the demo's FCN evaluator: 4 epochs = 200 steps of 8 (per-pixel acc 0.952 on val; 6: 0.955, 12: 0.960 in 3x the time)
DEMO_FCN_EPOCHS ?= 4
DEMO_SIZE ?= 128
# minutes of training steps at most (train.time_limit): 300 steps take ~1 minute on the 2-core machines measured;
# on a slower CPU the demo trains fewer steps instead of running past ten minutes (README.md)
DEMO_TIME_LIMIT ?= 2.5
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint ablation bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PIP) install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Build the `scenes` demo set (128 px), train pix2pix (U-Net 128 + PatchGAN 70) on it with 2 gloo
# processes on a CPU-only machine or 1 process on the first GPU (p2p_dist/train/launch_config.py),
# translate the val split and score it with the paper's metrics.
demo: $(STAMP)
	$(VENV)/bin/p2p-data demo scenes $(DEMO_DIR)/data --size $(DEMO_SIZE) --overwrite
	$(VENV)/bin/accelerate launch --config_file "$$($(PY) -m p2p_dist.train.launch_config)" \
	    -m p2p_dist.train --config recipes/demo.yaml \
	    data.train=$(DEMO_DIR)/data/train \
	    data.val=$(DEMO_DIR)/data/val \
	    train.output_dir=$(DEMO_DIR)/run train.max_steps=$(DEMO_STEPS) train.time_limit=$(DEMO_TIME_LIMIT)
	$(VENV)/bin/p2p-translate --checkpoint $(DEMO_DIR)/run/final \
	    --shards $(DEMO_DIR)/data/val --output $(DEMO_DIR)/translated
	$(VENV)/bin/p2p-eval fcn-train --shards $(DEMO_DIR)/data/train --out $(DEMO_DIR)/fcn --epochs $(DEMO_FCN_EPOCHS)
	$(VENV)/bin/p2p-eval score --pred $(DEMO_DIR)/translated --shards $(DEMO_DIR)/data/val \
	    --fcn $(DEMO_DIR)/fcn --out $(DEMO_DIR)/run/score
	$(VENV)/bin/p2p-eval report $(DEMO_DIR)/run --out $(DEMO_DIR)/report
	@echo "demo done: run in $(DEMO_DIR)/run, images in $(DEMO_DIR)/translated, run report $(DEMO_DIR)/report/index.html, scores $(DEMO_DIR)/run/score/report.html"

# all tests: tests/unit (in-process) and tests/system (subprocesses, several processes, SLURM)
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# the in-process unit tests only (under two minutes on 2 cores)
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# ruff's lint rules and formatting (settings in pyproject.toml); .ci/run runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ablation: $(STAMP)
	bash recipes/ablations/run_demo_ablation.sh $(VENV)

bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/train_throughput.py --batch-size 1 --json bench/train_b1.json
	$(PY) bench/train_throughput.py --batch-size 4 --json bench/train_b4.json

# One CUDA GPU, under 6 minutes: PASS/FAIL per check (correctness, then the speed targets against the
# reference step and real training) and a JSON file each (bench/gpu_check.sh).
# Without CUDA it says so and dry-runs every check on the CPU.
gpu-check: $(STAMP)
	bash bench/gpu_check.sh $(VENV)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
