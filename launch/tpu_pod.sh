#!/usr/bin/env bash
# Cloud TPU pod launcher: runs the same command on every worker of a TPU VM pod slice;
# jax.distributed.initialize() auto-detects the pod, one process per host.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/biam_synthetic.py gs://bucket/workdirs/biam \
#       --config.train.batch_size=1024 --config.dtype=bfloat16
#
# Global batch = (images per chip) x (chips): e.g. 32 x 32 chips (v4-64) = 1024. The workdir
# must be reachable by every host (a gs:// bucket). The repository and its .venv must exist
# at the same path on every worker (e.g. `gcloud compute tpus tpu-vm scp` or a startup
# script); REPO overrides that path. On preemption the TPU VM sends SIGTERM: the run saves at
# the next step and exits 0; rerun this command to resume.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
tpu=$1
zone=$2
config=$3
workdir=$4
shift 4
repo=${REPO:-\$HOME/mlzsl_jax}
overrides=""
for arg in "$@"; do
  overrides+=" $(printf '%q' "$arg")"
done
# Every worker must see its TPU chips: a worker whose JAX sees only the CPU (no libtpu: run
# `make setup ACCEL=tpu` there; the TPU held by another process) stops at start with a
# one-line error instead of training on the CPU. MLZSL_PLATFORM=cpu overrides (on purpose).
platform=${MLZSL_PLATFORM:-tpu}
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && MLZSL_PLATFORM=$(printf '%q' "$platform") .venv/bin/python -m mlzsl_jax.main train --config $(printf '%q' "$config") \
--workdir $(printf '%q' "$workdir")$overrides"
