#!/usr/bin/env bash
# BiAM on one GPU in at most 8 minutes: the table of benchmarks/README.md's GPU section.
#
#   bash benchmarks/gpu.sh [gpu_suite.py flags]        # or: make bench-gpu
#
# Runs benchmarks/gpu_suite.py (train step at NUS-WIDE shapes, float32 and bfloat16, batch
# 32/256/1024 and the largest that fits; the NUS-WIDE test pass; Open Images shapes; whether
# the tf.data pipeline keeps up, where TensorFlow is installed). Needs only JAX with its GPU
# plugin, Flax, Optax, orbax, ml_collections and NumPy. Environment:
#   PYTHON     interpreter (default python3)
#   OUT        folder for env.txt, gpu_suite.log, gpu_suite.json, gpu_suite.md
#              (default benchmarks/out_gpu)
#   BUDGET_S   no new case starts after this many seconds (default 400)
#   TIMEOUT_S  hard stop of the suite (default 480)
#   MLZSL_PLATFORM  gpu by default: stops at once if JAX sees no GPU (cpu: a CPU run on
#              purpose, e.g. with --smoke)
# A machine that reaches no package registry: put missing pure-Python wheels (e.g.
# ml_collections) in .whl/ at the repository root; they are installed to a temporary folder.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
out=${OUT:-$here/benchmarks/out_gpu}
mkdir -p "$out"
cd "$here"
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export MLZSL_PLATFORM=${MLZSL_PLATFORM:-gpu}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    2>/dev/null || echo "nvidia-smi: not available"
  "$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__)"
} | tee "$out/env.txt"
# Platform, device kind and count; stops here (exit 1, one line) if JAX sees no GPU.
"$python" -m mlzsl_jax.accelerator | tee -a "$out/env.txt"
timeout "${TIMEOUT_S:-480}" "$python" benchmarks/gpu_suite.py --budget_s "${BUDGET_S:-400}" \
  --out "$out" "$@" 2>&1 | tee "$out/gpu_suite.log"
