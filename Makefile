# `make demo` and `make test` set up .venv on first use (pinned requirements), then run.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
RUN := $(VENV)/bin/python

.PHONY: setup setup-torch demo demo-mosaic test bench compare compare-pytorch clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . || \
	  $(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Optional extra: torch 2.13.0 CPU (a wheel on local disk) for the PyTorch equality tests,
# weight conversion from the official checkpoints and benchmarks/compare_pytorch.py.
setup-torch: setup
	$(VENV)/bin/pip install -q torch==2.13.0

demo: setup
	$(RUN) -m mlzsl_jax.main train --config configs/biam_digits.py:data=colours --workdir workdirs/demo_colours

demo-mosaic: setup
	$(RUN) -m mlzsl_jax.main train --config configs/biam_digits.py --workdir workdirs/biam_digits

test: setup
	$(RUN) -m pytest -q tests --durations=15

compare: setup
	$(RUN) scripts/compare_models.py --data colours

bench: setup
	$(RUN) benchmarks/train_throughput.py

# BiAM train step, ours (jit) vs the same model in PyTorch eager, side by side, batch 32.
compare-pytorch: setup-torch
	$(RUN) benchmarks/compare_pytorch.py --batch 32 --steps 10

clean:
	rm -rf workdirs
