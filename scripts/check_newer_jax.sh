#!/usr/bin/env bash
# The TensorFlow-free train step, benchmarks/gpu.sh and `main compile` under jax 0.11.x (the GPU
# machine's jax), on the CPU, in a second venv without TensorFlow (.cache/venv-jax011, pins of
# requirements-jax011.txt): a smoke run of gpu_suite.py, then a tiny config compiled for a TPU
# v5e 2x2 slice and for 8 H100s with that jax's own libtpu and CUDA 13 plugin
# (topology.COMPILER_PINS; kept in .cache/*-jax011). jax 0.11 needs Python >= 3.12:
# PYTHON312 or python3.12 on PATH or under pyenv; without one this check says so and exits 0
# (it cannot run here).
#
#   bash scripts/check_newer_jax.sh        # or: make check-newer-jax
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py=""
for candidate in ${PYTHON312:-} python3.12 python3.13 "$HOME"/.pyenv/versions/3.12*/bin/python \
    "$HOME"/.pyenv/versions/3.13*/bin/python; do
  if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
    py=$candidate
    break
  fi
done
if [ -z "$py" ]; then
  echo "check_newer_jax: no Python >= 3.12 found (set PYTHON312); jax 0.11 check not run"
  exit 0
fi
venv=.cache/venv-jax011
if [ ! -f "$venv/.installed" ] || [ requirements-jax011.txt -nt "$venv/.installed" ]; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q -r requirements-jax011.txt
  touch "$venv/.installed"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
PYTHON="$here/$venv/bin/python" OUT="$out" MLZSL_PLATFORM=cpu bash benchmarks/gpu.sh \
  --smoke --dtypes bfloat16 --batches 4 --max_batch 4 --steps 1 --warmup 1 --test_rows 40 \
  --test_batch 16 --oi_batch 4 --oi_eval_batches 2 --peak_gflops 100 > "$out/run.log" 2>&1 || {
  tail -40 "$out/run.log"; echo "check_newer_jax: benchmarks/gpu.sh failed under $(
    "$venv/bin/python" -c 'import jax; print("jax", jax.__version__)')"; exit 1; }
grep -q "| train | train step (smoke_nus) | bfloat16 | 4 |" "$out/gpu_suite.md" || {
  cat "$out/gpu_suite.md"; echo "check_newer_jax: no train-step row"; exit 1; }
# `main compile` with this jax's compilers, for a TPU slice and for GPUs (no TensorFlow here).
pins() { PYTHONPATH="$here" "$venv/bin/python" -c "import jax
from mlzsl_jax.compile.topology import COMPILER_PINS
print(COMPILER_PINS[jax.__version__][$1])"; }
libtpu=.cache/libtpu-jax011
cuda=.cache/cuda_plugin-jax011
test -d "$libtpu/libtpu" || "$venv/bin/pip" install -q --no-deps --target "$libtpu" $(pins 0)
test -d "$cuda/jax_cuda13_plugin" || "$venv/bin/pip" install -q --no-deps --target "$cuda" $(pins 1)
for target in v5e:2x2 h100:8; do
  PYTHONPATH="$here" MLZSL_LIBTPU_DIR="$here/$libtpu" MLZSL_CUDA_PLUGIN_DIR="$here/$cuda" \
    "$venv/bin/python" -m mlzsl_jax.main compile --config configs/biam_synthetic.py:small=True \
    --topology "$target" --config.train.batch_size=16 --config.eval.batch_size=16 --top_bytes=1 \
    > "$out/compile_$target.log" 2>&1 || {
    tail -30 "$out/compile_$target.log"; echo "check_newer_jax: compile --topology $target failed"
    exit 1; }
  grep -q "^== train_step" "$out/compile_$target.log" && tail -1 "$out/compile_$target.log" |
    grep -qx "fits: yes" || {
    cat "$out/compile_$target.log"; echo "check_newer_jax: compile --topology $target: no report"
    exit 1; }
done
if "$venv/bin/python" -c "import tensorflow" >/dev/null 2>&1; then
  echo "check_newer_jax: TensorFlow is installed in $venv; the check must run without it"; exit 1
fi
echo "check_newer_jax: $("$venv/bin/python" -c 'import jax; print("jax", jax.__version__)'):" \
  "the TensorFlow-free step, benchmarks/gpu.sh --smoke (every section measured) and" \
  "compile for v5e:2x2 and h100:8 ran, without TensorFlow"
