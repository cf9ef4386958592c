"""Multi-process (multi-host) start-up: ``initialize`` must run before anything touches devices.

Three ways a run becomes multi-process:
  1. explicit flags (``--coordinator_address``, ``--num_processes``, ``--process_id``), e.g.
     several processes on one machine or hosts started by hand;
  2. a cluster environment that ``jax.distributed.initialize()`` detects by itself (jax
     0.10.2: Open MPI (``OMPI_MCA_orte_hnp_uri``), SLURM (``SLURM_JOB_ID``,
     ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``), a
     GKE TPU slice (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES``), a GCE Cloud TPU VM
     (metadata server), Kubernetes (with the ``kubernetes`` package)) and that reports more
     than one process;
  3. otherwise a single process: nothing is done.

Environment variables JAX reads itself still apply: ``JAX_COORDINATOR_ADDRESS``,
``JAX_COORDINATOR_PORT``, ``JAX_LOCAL_DEVICE_IDS``.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

import jax

T = TypeVar("T")


def detect_cluster() -> tuple[str, int | None] | None:
  """(name, process count) of the cluster environment ``jax.distributed.initialize()`` would
  auto-detect, in JAX's own order; None outside any. The count is None when the environment
  is present but cannot report it (e.g. a Kubernetes pod that is not part of a Job)."""
  try:
    from jax._src import clusters  # the detection JAX itself runs; private, hence guarded
    candidates = [env for env in clusters.ClusterEnv._cluster_types
                  if not env.opt_in_only_method]
  except (ImportError, AttributeError):  # pragma: no cover - other jax versions
    return _detect_cluster_from_env()
  for env in candidates:
    try:
      present = env.is_env_present()
    except Exception:  # noqa: BLE001 - a broken probe means "not this environment"
      present = False
    if not present:
      continue
    try:
      return env.name, int(env.get_process_count())
    except Exception:  # noqa: BLE001
      return env.name, None
  return None


def _detect_cluster_from_env() -> tuple[str, int | None] | None:
  """Fallback when JAX's cluster classes are not importable: the common variables only."""
  if "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ:
    return "slurm", int(os.environ["SLURM_NTASKS"])
  if "OMPI_COMM_WORLD_SIZE" in os.environ:
    return "ompi", int(os.environ["OMPI_COMM_WORLD_SIZE"])
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES")
  if hosts:
    return "gketpu", len(hosts.split(","))
  return None


def _slurm_local_device_ids() -> list[int] | None:
  """SLURM with ``--gpus-per-task``: each task already sees only its own GPU(s) (SLURM sets
  CUDA_VISIBLE_DEVICES per task), while JAX's SLURM default would pick local GPU number
  SLURM_LOCALID, which does not exist for local ids > 0. Use every GPU the task sees."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
  if "SLURM_GPUS_PER_TASK" not in os.environ or not visible.strip():
    return None
  if "JAX_LOCAL_DEVICE_IDS" in os.environ:
    return None  # the user's explicit choice; JAX reads it
  return list(range(len([v for v in visible.split(",") if v.strip()])))


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               cpu_collectives: bool = True) -> bool:
  """Joins this process to a multi-process JAX run when there is one; returns whether it did.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator; '' = auto-detect.
    num_processes: total number of processes; 0 = auto-detect.
    process_id: this process's index in [0, num_processes); -1 = auto-detect.
    cpu_collectives: use gloo for cross-process collectives on CPU devices (needed for CPU
      multi-process runs; harmless on accelerators, whose collectives do not use it).

  Explicit values are passed to ``jax.distributed.initialize``; any left unset there are
  filled in by JAX from the cluster environment. With no explicit value, JAX's
  auto-detection is used only when it finds a cluster with more than one process.
  """
  explicit = bool(coordinator_address) or num_processes > 1 or process_id >= 0
  if num_processes < 0:
    raise ValueError(f"flag --num_processes={num_processes}: expected >= 0 (0 = auto)")
  if explicit and num_processes and not -1 <= process_id < num_processes:
    raise ValueError(f"flag --process_id={process_id}: expected in [0, {num_processes}) "
                     f"for --num_processes={num_processes}")
  kwargs = {}
  if explicit:
    kwargs = {"coordinator_address": coordinator_address or None,
              "num_processes": num_processes or None,
              "process_id": None if process_id < 0 else process_id}
  else:
    cluster = detect_cluster()
    if cluster is not None and cluster[1] is None:
      print(f"cluster environment {cluster[0]!r} detected but its process count is unknown; "
            "running as one process (pass --coordinator_address, --num_processes and "
            "--process_id to join a multi-process run)", file=sys.stderr, flush=True)
    if cluster is None or cluster[1] in (None, 1):
      return False
    if cluster[0] == "slurm":
      ids = _slurm_local_device_ids()
      if ids is not None:
        kwargs["local_device_ids"] = ids
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def process_zero_first(fn: Callable[[], T], name: str) -> T:
  """``fn()`` on process 0, then on the others once process 0 has finished; for work that
  must not run concurrently on a shared filesystem (e.g. building a dataset the first time).
  Single process: just ``fn()``."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(name)
  if jax.process_index() != 0:
    result = fn()
  return result
