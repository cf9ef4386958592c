"""Which accelerator a run must use, and a clear stop when JAX does not see it.

JAX falls back to the CPU with a warning when it finds no GPU or TPU (a CPU-only jaxlib, a
node without GPUs, a driver problem); a training job would then run for hours at CPU speed.
Every command of ``mlzsl_jax.main`` therefore resolves an *expected* platform before JAX
starts, checks it once the devices are known, and names platform, device kind and device
counts in its first line.

The expected platform, first match wins:
  1. config field ``platform`` ('cpu', 'gpu', 'tpu'; 'auto' = not set);
  2. environment ``MLZSL_PLATFORM`` (the launchers set it: launch/slurm.sbatch to 'gpu' when
     the job was given GPUs, launch/tpu_pod.sh to 'tpu');
  3. environment ``JAX_PLATFORMS`` (the user's own choice for JAX; 'cuda'/'rocm' = 'gpu');
  4. SLURM gave the job GPUs (``SLURM_GPUS_PER_TASK``, ``SLURM_GPUS_ON_NODE``, ...): 'gpu';
  5. this host has accelerator device files: NVIDIA (``/dev/nvidia0``) 'gpu', TPU
     (``/dev/accel0``) 'tpu';
  6. otherwise 'auto': whatever JAX finds, no check.
'cpu' is a CPU run on purpose: JAX is told to use the CPU even where accelerators exist.

  python -m mlzsl_jax.accelerator [--expect gpu|tpu|cpu|auto]   # what this process sees
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sys
from typing import Callable, Mapping

PLATFORMS = ("auto", "cpu", "gpu", "tpu")
ENV_VAR = "MLZSL_PLATFORM"
# SLURM variables that are set (and non-zero) when the job or step was given GPUs.
SLURM_GPU_VARS = ("SLURM_GPUS_PER_TASK", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE",
                  "SLURM_GPUS", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
# Device files that mean "this host has such an accelerator".
DEVICE_FILES = (("/dev/nvidia0", "gpu"), ("/dev/accel0", "tpu"))
# pip distributions that give jaxlib each accelerator (make setup ACCEL=...).
PLUGINS = {"gpu": ("jax-cuda12-plugin", "jax-cuda13-plugin"), "tpu": ("libtpu",)}
JAX_PLATFORM_NAMES = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}


@dataclasses.dataclass(frozen=True)
class Expectation:
  """The platform a run must use and what said so."""
  platform: str  # one of PLATFORMS
  source: str  # e.g. "config field platform", "SLURM_GPUS_PER_TASK=1"


class PlatformError(RuntimeError):
  """JAX does not see the platform the run expects."""


def _checked(value: str, where: str) -> str:
  value = value.strip().lower()
  if value not in PLATFORMS:
    raise ValueError(f"{where}={value!r}: expected one of {', '.join(PLATFORMS)}")
  return value


def slurm_gpu_source(environ: Mapping[str, str]) -> str | None:
  """'VAR=value' of the first SLURM variable saying the job has GPUs; None if none does."""
  for var in SLURM_GPU_VARS:
    value = environ.get(var, "").strip()
    if value and value not in ("0", "none", "(null)") and "SLURM_JOB_ID" in environ:
      return f"{var}={value}"
  return None


def host_device_file(exists: Callable[[str], bool] = os.path.exists) -> tuple[str, str] | None:
  """(platform, path) of the first accelerator device file on this host, or None."""
  for path, platform in DEVICE_FILES:
    if exists(path):
      return platform, path
  return None


def expected_platform(config_value: str = "auto",
                      environ: Mapping[str, str] | None = None,
                      exists: Callable[[str], bool] = os.path.exists) -> Expectation:
  """The platform this run must use (see the module docstring for the order)."""
  environ = os.environ if environ is None else environ
  value = _checked(config_value or "auto", "config field platform")
  if value != "auto":
    return Expectation(value, f"config field platform={value}")
  if environ.get(ENV_VAR, "").strip():
    value = _checked(environ[ENV_VAR], f"environment {ENV_VAR}")
    if value != "auto":
      return Expectation(value, f"{ENV_VAR}={value}")
    return Expectation("auto", f"{ENV_VAR}=auto")
  jax_platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if jax_platforms:
    first = jax_platforms.split(",")[0].strip()
    if first in JAX_PLATFORM_NAMES:
      return Expectation(JAX_PLATFORM_NAMES[first], f"JAX_PLATFORMS={jax_platforms}")
  slurm = slurm_gpu_source(environ)
  if slurm:
    return Expectation("gpu", f"SLURM gave this job GPUs ({slurm})")
  found = host_device_file(exists)
  if found:
    return Expectation(found[0], f"this host has {found[1]}")
  return Expectation("auto", "nothing asks for an accelerator")


def select_backend(expect: Expectation) -> None:
  """Before JAX starts its backends: a CPU run on purpose uses the CPU even where a GPU or
  TPU is visible. Other platforms are left to JAX and checked by ``check_platform``."""
  if expect.platform == "cpu":
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_platforms", "cpu")


def installed_plugins(platform: str) -> list[str]:
  """'name version' of the installed pip distributions that give jaxlib ``platform``."""
  found = []
  for name in PLUGINS.get(platform, ()):
    try:
      found.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def _backend_error(platform: str) -> str:
  """JAX's own reason for not starting ``platform`` (first line), or ''."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.devices(platform)
  except RuntimeError as e:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
  return ""


def _install_hint(platform: str) -> str:
  plugins = installed_plugins(platform)
  if platform == "gpu":
    if not plugins:
      return ("this environment has JAX's CPU build only (no jax-cuda12-plugin or "
              "jax-cuda13-plugin): run `make setup ACCEL=cuda12` (NVIDIA driver >= 525) or "
              "`make setup ACCEL=cuda13` (driver >= 580) on the GPU node")
    hint = (f"{', '.join(plugins)} is installed but found no usable GPU: check "
            "`nvidia-smi` on this node and that the job asked for GPUs")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return hint if visible is None else f"{hint} (CUDA_VISIBLE_DEVICES={visible!r})"
  if platform == "tpu":
    if not plugins:
      return "libtpu is not installed: run `make setup ACCEL=tpu` on every TPU VM worker"
    return (f"{', '.join(plugins)} is installed but found no TPU: check that this is a TPU "
            "VM and that no other process holds the TPU (`sudo lsof -w /dev/accel*`)")
  return ""


def check_platform(expect: Expectation) -> None:
  """Raises ``PlatformError`` when JAX's default backend is not ``expect.platform``."""
  if expect.platform == "auto":
    return
  import jax  # pylint: disable=import-outside-toplevel
  seen = jax.default_backend()
  if seen == expect.platform:
    return
  reason = _backend_error(expect.platform)
  parts = [f"this run expects platform {expect.platform} ({expect.source}) but JAX "
           f"{jax.__version__} sees only {seen} devices ({jax.local_device_count()} local)"]
  if reason:
    parts.append(f"JAX says: {reason}")
  hint = _install_hint(expect.platform)
  if hint:
    parts.append(hint)
  parts.append(f"to run on the {seen} on purpose, pass --config.platform={seen} or set "
               f"{ENV_VAR}={seen}")
  raise PlatformError("; ".join(parts))


def describe(expect: Expectation | None = None) -> str:
  """One line: process index/count, platform, device kind, local and global device counts
  (and the expectation, when given). Touches the devices."""
  import jax  # pylint: disable=import-outside-toplevel
  local = jax.local_devices()
  kinds = sorted({d.device_kind for d in local})
  line = (f"process {jax.process_index()}/{jax.process_count()}: platform "
          f"{jax.default_backend()}, {' + '.join(kinds)} x{len(local)} local, "
          f"{jax.device_count()} global devices")
  if expect is not None and expect.platform != "auto":
    line += f" (expected {expect.platform}: {expect.source})"
  return line


def main(argv: list[str]) -> int:
  """``python -m mlzsl_jax.accelerator [--expect P]``: prints ``describe`` and checks P."""
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--expect", default="auto", choices=PLATFORMS,
                      help="platform to require (default: resolved as training does)")
  args = parser.parse_args(argv)
  expect = (Expectation(args.expect, f"--expect {args.expect}") if args.expect != "auto"
            else expected_platform())
  select_backend(expect)
  try:
    check_platform(expect)
  except PlatformError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(describe(expect))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
