"""Compile-only devices of a TPU slice or of NVIDIA GPUs, on a machine without them.

``devices("v5e:16x16")`` -> the 256 devices XLA's TPU compiler targets for a v5e 16x16 slice
(``jax.experimental.topologies.get_topology_desc``); ``num_slices`` > 1 describes a
multi-slice job (devices carry ``slice_index``). v4 is described with one device per chip
("megacore", as v4 jobs run), so a device is a chip on every generation here.

GPUs: ``devices("h100:8")`` (one host of 8), ``"h200:4x8"`` (4 hosts of 8): the CUDA plugin's
compile-only devices for a card described by ``chips.gpu_target_config`` (no GPU, driver or
CUDA library needed: the plugin's two wheels compile and emit GPU code). The plugin must be
found before JAX starts its backends (it registers then).

libtpu and the CUDA plugin are looked up as installed packages first (a TPU VM, a GPU
machine), then in ``MLZSL_LIBTPU_DIR`` / ``MLZSL_CUDA_PLUGIN_DIR`` (default
``<repo>/.cache/libtpu`` / ``.cache/cuda_plugin``, where ``make setup-compile`` puts them),
so that ordinary CPU commands never load them: with libtpu installed, every ``import jax``
on a machine without TPUs prints libtpu's host warnings.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Any

from mlzsl_jax.compile import chips

LIBTPU_ENV = "MLZSL_LIBTPU_DIR"
# The compilers of each jax this library runs on (a compiler must match its jax): the pinned
# 0.10.2 (requirements-tpu.txt; `make setup-compile`) and the GPU machine's 0.11.2 (what
# `pip install "jax[tpu]==0.11.2"` resolved to on 2026-12-06; scripts/check_newer_jax.sh).
COMPILER_PINS = {
    "0.10.2": ("libtpu==0.0.42.1", "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2"),
    "0.11.2": ("libtpu==0.0.48.1", "jax-cuda13-plugin==0.11.2 jax-cuda13-pjrt==0.11.2"),
}
CUDA_PLUGIN_ENV = "MLZSL_CUDA_PLUGIN_DIR"


class CompilerMissing(RuntimeError):
  """libtpu (XLA's TPU compiler) or JAX's CUDA plugin is not where ``compile`` looks."""


def _cache_dir(env: str, name: str) -> str:
  default = pathlib.Path(__file__).resolve().parents[2] / ".cache" / name
  return os.environ.get(env) or str(default)


def install_hint(folder: str, tpu: bool) -> str:
  """How to put this jax's libtpu (``tpu``) or CUDA plugin into ``folder``."""
  import jax  # pylint: disable=import-outside-toplevel
  pins = COMPILER_PINS.get(jax.__version__)
  if pins is None:
    extra = "tpu" if tpu else "cuda13"
    return (f"the {'libtpu' if tpu else 'CUDA plugin'} that pip install "
            f"\"jax[{extra}]=={jax.__version__}\" selects, with pip install --no-deps "
            f"--target {folder}")
  command = f"pip install --no-deps --target {folder} {pins[0 if tpu else 1]}"
  return f"make setup-compile (= {command})" if jax.__version__ == "0.10.2" else command


def libtpu_dir() -> str:
  return _cache_dir(LIBTPU_ENV, "libtpu")


def cuda_plugin_dir() -> str:
  return _cache_dir(CUDA_PLUGIN_ENV, "cuda_plugin")


CUDA_PLUGIN_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin")  # either compiles for GPUs


def use_cuda_plugin() -> None:
  """Makes JAX's CUDA plugin (CUDA 12's or 13's, whichever jax's version has: a GPU machine
  with jax 0.11 carries jax_cuda13_plugin) discoverable (module docstring); CompilerMissing,
  with the install command, when it is nowhere; RuntimeError when JAX's backends already
  started without it."""
  if not any(importlib.util.find_spec(m) is not None for m in CUDA_PLUGIN_MODULES):
    folder = cuda_plugin_dir()
    if not any(os.path.isdir(os.path.join(folder, m)) for m in CUDA_PLUGIN_MODULES):
      raise CompilerMissing(
          f"compiling for GPUs needs JAX's CUDA plugin, not found as a package nor in "
          f"{folder} (${CUDA_PLUGIN_ENV}); install it there with: "
          f"{install_hint(folder, tpu=False)}")
    if folder not in sys.path:
      sys.path.insert(0, folder)
    importlib.invalidate_caches()
  # No CUDA driver here: the plugin's start-up version check would fail and skip it.
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  from jax._src import xla_bridge as xb  # pylint: disable=import-outside-toplevel
  started = xb._backends  # pylint: disable=protected-access
  if started and "cuda" not in xb._backend_factories:  # pylint: disable=protected-access
    raise RuntimeError("compiling for GPUs: JAX started its backends before the CUDA plugin "
                       "was found; call topology.devices('h100:8') first in the process")


def use_libtpu() -> None:
  """Makes libtpu importable (see the module docstring); CompilerMissing, with the install
  command, when it is nowhere."""
  if importlib.util.find_spec("libtpu") is not None:
    return
  folder = libtpu_dir()
  if os.path.isdir(os.path.join(folder, "libtpu")):
    if folder not in sys.path:
      sys.path.insert(0, folder)
    importlib.invalidate_caches()
    # Off a TPU VM libtpu warns that it cannot find the host's accelerator type and workers;
    # these values silence it and do not change what a topology description compiles for.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu takes /tmp/libtpu_lockfile (one process per TPU host); compiling needs no TPU,
    # so several compiles (tests, a scaling table) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return
  raise CompilerMissing(
      f"compiling for a TPU topology needs libtpu (XLA's TPU compiler), not found as a "
      f"package nor in {folder} (${LIBTPU_ENV}); install it there with: "
      f"{install_hint(folder, tpu=True)}")


def parse_name(name: str) -> tuple[chips.Chip, str]:
  """("v5e:16x16") -> (the v5e Chip, "16x16"); ValueError naming the known generations."""
  generation, sep, shape = name.partition(":")
  known = {c.name: c for c in chips.CHIPS}
  if not sep or generation not in known or not shape:
    raise ValueError(f"--topology={name!r}: expected <generation>:<shape>, e.g. v5e:16x16, "
                     f"v4:2x2x2, v5p:4x4x8, v6e:8x8, h100:8, h200:4x8 (hosts x GPUs); "
                     f"generations: {', '.join(known)}")
  return known[generation], shape


def _gpu_devices(chip: chips.Chip, shape: str, name: str) -> list[Any]:
  """Compile-only GPUs: shape 'G' (one host of G) or 'HxG' (H hosts of G each)."""
  parts = shape.split("x")
  if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) > 2:
    raise ValueError(f"--topology={name!r}: expected {chip.name}:<GPUs> or "
                     f"{chip.name}:<hosts>x<GPUs per host>, e.g. {chip.name}:8")
  hosts, per_host = (1, int(parts[0])) if len(parts) == 1 else map(int, parts)
  use_cuda_plugin()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  desc = topologies.get_topology_desc(platform="cuda", topology=f"1 x {hosts} x {per_host}",
                                      target_config=chips.gpu_target_config(chip))
  return list(desc.devices)


def devices(name: str, num_slices: int = 1) -> tuple[chips.Chip, list[Any]]:
  """(chip, compile-only devices) of topology ``name`` (x ``num_slices`` TPU slices)."""
  chip, shape = parse_name(name)
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: expected >= 1")
  if chip.platform == "gpu":
    if num_slices != 1:
      raise ValueError(f"--num_slices={num_slices}: slices are TPU pods' (for GPUs give "
                       f"hosts: {chip.name}:<hosts>x<GPUs>)")
    return chip, _gpu_devices(chip, shape, name)
  use_libtpu()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  kwargs: dict[str, Any] = {"num_slices": num_slices} if num_slices > 1 else {}
  if chip.name == "v4":
    kwargs["chip_config_name"] = "megacore"  # one device per chip (its two cores fused)
  try:
    desc = topologies.get_topology_desc(name, "tpu", **kwargs)
  except Exception as e:  # noqa: BLE001  (libtpu's errors are RuntimeError / XlaRuntimeError)
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"--topology={name!r}: libtpu cannot describe it ({message}); shapes "
                     f"must be a valid slice of {chip.name}, e.g. 2x2, 4x4, 16x16 "
                     f"(v4/v5p: 2x2x2, 4x4x8)") from None
  found = {d.device_kind for d in desc.devices}
  if found != {chip.device_kind}:
    raise ValueError(f"--topology={name!r}: libtpu describes devices of kind {sorted(found)}, "
                     f"expected {chip.device_kind!r}")
  return chip, list(desc.devices)
