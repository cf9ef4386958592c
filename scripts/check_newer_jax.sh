#!/usr/bin/env bash
# The TensorFlow-free train step and benchmarks/gpu.sh under jax 0.11.x (the GPU machine's
# jax), on the CPU: a smoke run of gpu_suite.py in a second venv (.cache/venv-jax011, pins of
# requirements-jax011.txt). jax 0.11 needs Python >= 3.12: PYTHON312 or python3.12 on PATH or
# under pyenv; without one this check says so and exits 0 (it cannot run here).
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
echo "check_newer_jax: $("$venv/bin/python" -c 'import jax; print("jax", jax.__version__)'):" \
  "the TensorFlow-free step and benchmarks/gpu.sh --smoke ran (every section measured)"
