#!/usr/bin/env bash
# Single-host launcher: trains on every local device (GPUs, TPU cores, or CPU).
#
#   launch/local.sh CONFIG WORKDIR [--config.field=value ...]
#   NUM_CPU_DEVICES=8 launch/local.sh configs/biam_digits.py:smoke=True /tmp/run   # simulate 8
#
# The global batch (train.batch_size) is split over the mesh's 'data' axis; pick it as
# (images per device) x (number of devices), e.g. --config.train.batch_size=256 on 8 GPUs.
# Platform: on a host with NVIDIA GPUs (/dev/nvidia0) or TPU chips (/dev/accel0) the run stops
# at start if JAX sees only the CPU (install the accelerator build: `make setup ACCEL=cuda12`,
# `cuda13` or `tpu`); MLZSL_PLATFORM=cpu (or NUM_CPU_DEVICES=N) runs on the CPU on purpose.
# Multi-host launchers: launch/slurm.sbatch, launch/tpu_pod.sh.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
if [ -n "${NUM_CPU_DEVICES:-}" ]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${NUM_CPU_DEVICES}"
fi
cd "$here"
exec "$python" -m mlzsl_jax.main train --config "$config" --workdir "$workdir" "$@"
