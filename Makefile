# `make demo` and `make test` set up .venv on first use (pinned requirements), then run.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
RUN := $(VENV)/bin/python

.PHONY: setup demo test bench compare clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . || \
	  $(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(RUN) -m mlzsl_jax.main train --config configs/biam_digits.py --workdir workdirs/biam_digits

test: setup
	$(RUN) -m pytest -q tests

compare: setup
	$(RUN) scripts/compare_models.py

bench: setup
	$(RUN) benchmarks/train_throughput.py

clean:
	rm -rf workdirs
