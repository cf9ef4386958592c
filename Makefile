# `make demo` and `make test` set up .venv on first use (pinned requirements), then run.
# Accelerators: `make setup ACCEL=cuda12` (NVIDIA, CUDA 12), `ACCEL=cuda13`, `ACCEL=tpu` add the
# pinned jax plugin of requirements-$(ACCEL).txt to the same pins; the choice is kept in
# .venv/.accel, so later `make` commands keep it. `ACCEL=cpu` removes the plugins again.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
RUN := $(VENV)/bin/python
ACCELS := cpu cuda12 cuda13 tpu
ACCEL ?= $(shell cat $(VENV)/.accel 2>/dev/null || echo cpu)
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL): expected one of $(ACCELS))
endif
ACCEL_REQS := $(if $(filter-out cpu,$(ACCEL)),requirements-$(ACCEL).txt)
# Plugins of the other accelerators, removed when switching (two would fight over jaxlib).
PLUGINS_cpu :=
PLUGINS_cuda12 := jax-cuda12-plugin jax-cuda12-pjrt
PLUGINS_cuda13 := jax-cuda13-plugin jax-cuda13-pjrt
PLUGINS_tpu := libtpu
OTHER_PLUGINS := $(filter-out $(PLUGINS_$(ACCEL)),$(foreach a,$(ACCELS),$(PLUGINS_$(a))))
STAMP := $(VENV)/.installed-$(ACCEL)

.PHONY: setup setup-torch setup-compile check-newer-jax check-platform demo demo-mosaic test bench bench-gpu \
	compare compare-pytorch clean

$(STAMP): requirements.txt $(ACCEL_REQS) pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip uninstall -q -y $(OTHER_PLUGINS) 2>/dev/null || true
	$(VENV)/bin/pip install -q -r requirements.txt $(addprefix -r ,$(ACCEL_REQS))
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . || \
	  $(VENV)/bin/pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	echo $(ACCEL) > $(VENV)/.accel
	touch $(STAMP)

setup: $(STAMP)

# What JAX sees in this environment (platform, device kind, counts); fails when it is not
# the platform ACCEL installs (run it on a GPU / TPU node after `make setup ACCEL=...`).
check-platform: setup
	$(RUN) -m mlzsl_jax.accelerator --expect $(if $(filter cuda%,$(ACCEL)),gpu,$(ACCEL))

# Optional extra: torch 2.13.0 CPU (a wheel on local disk) for the PyTorch equality tests,
# weight conversion from the official checkpoints and benchmarks/compare_pytorch.py.
# It also installs the torch CLIP references of the parity tests (requirements-clip-ref.txt;
# open_clip_torch without its dependencies, see there).
OPEN_CLIP_PIN := open_clip_torch==3.3.0
setup-torch: setup
	$(VENV)/bin/pip install -q torch==2.13.0 -r requirements-clip-ref.txt
	$(VENV)/bin/pip install -q --no-deps $(OPEN_CLIP_PIN)

# XLA's TPU compiler (libtpu) and JAX's CUDA plugin for `main compile --topology v5e:16x16`
# (or h100:8) on this machine: kept in .cache/, outside the venv, so ordinary commands never
# load them (with libtpu installed, every `import jax` off a TPU VM prints host warnings).
# The CUDA plugin's two wheels (~480 MB) compile for GPUs without CUDA's libraries.
LIBTPU_PIN := $(shell grep -E '^libtpu==' requirements-tpu.txt)
CUDA_PLUGIN_PINS := jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2
setup-compile: setup
	test -d .cache/libtpu/libtpu || $(VENV)/bin/pip install -q --no-deps --target .cache/libtpu $(LIBTPU_PIN)
	test -d .cache/cuda_plugin/jax_cuda12_plugin || $(VENV)/bin/pip install -q --no-deps --target .cache/cuda_plugin $(CUDA_PLUGIN_PINS)

# The TensorFlow-free step and benchmarks/gpu.sh under jax 0.11 (the GPU machine's), in a
# second venv (.cache/venv-jax011; needs Python >= 3.12).
check-newer-jax:
	bash scripts/check_newer_jax.sh

demo: setup
	$(RUN) -m mlzsl_jax.main train --config configs/biam_digits.py:data=colours --workdir workdirs/demo_colours

demo-mosaic: setup
	$(RUN) -m mlzsl_jax.main train --config configs/biam_digits.py --workdir workdirs/biam_digits

# Two workers (CI has 2 cores); a test file's tests stay on one worker (module fixtures).
test: setup
	$(RUN) -m pytest -q -n 2 --dist loadfile tests --durations=15

compare: setup
	$(RUN) scripts/compare_models.py --data colours

bench: setup
	$(RUN) benchmarks/train_throughput.py

# One GPU, at most 8 minutes: the table of benchmarks/README.md's GPU section.
bench-gpu: setup
	PYTHON=$(RUN) bash benchmarks/gpu.sh

# BiAM train step, ours (jit) vs the same model in PyTorch eager, side by side, batch 32.
compare-pytorch: setup-torch
	$(RUN) benchmarks/compare_pytorch.py --batch 32 --steps 10

clean:
	rm -rf workdirs
