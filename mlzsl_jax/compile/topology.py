"""Compile-only devices of a TPU topology, on a machine without TPUs (libtpu needed).

``devices("v5e:16x16")`` -> the 256 devices XLA's TPU compiler targets for a v5e 16x16 slice
(``jax.experimental.topologies.get_topology_desc``); ``num_slices`` > 1 describes a
multi-slice job (devices carry ``slice_index``). v4 is described with one device per chip
("megacore", as v4 jobs run), so a device is a chip on every generation here.

libtpu is looked up as an installed package first (a TPU VM), then in ``MLZSL_LIBTPU_DIR``
(default ``<repo>/.cache/libtpu``, where ``make setup-compile`` puts it), so that ordinary
CPU commands never load it: with libtpu installed, every ``import jax`` on a machine without
TPUs prints libtpu's host warnings.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Any

from mlzsl_jax.compile import chips

LIBTPU_ENV = "MLZSL_LIBTPU_DIR"
LIBTPU_PIN = "libtpu==0.0.42.1"  # requirements-tpu.txt's pin, for the same jax


class LibtpuMissing(RuntimeError):
  """libtpu (XLA's TPU compiler) is not installed where ``compile`` looks for it."""


def libtpu_dir() -> str:
  default = pathlib.Path(__file__).resolve().parents[2] / ".cache" / "libtpu"
  return os.environ.get(LIBTPU_ENV) or str(default)


def use_libtpu() -> None:
  """Makes libtpu importable (see the module docstring); LibtpuMissing, with the install
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
  raise LibtpuMissing(
      f"compiling for a TPU topology needs libtpu (XLA's TPU compiler), not found as a "
      f"package nor in {folder} (${LIBTPU_ENV}); install it there with: make setup-compile "
      f"(= pip install --no-deps --target {folder} {LIBTPU_PIN})")


def parse_name(name: str) -> tuple[chips.Chip, str]:
  """("v5e:16x16") -> (the v5e Chip, "16x16"); ValueError naming the known generations."""
  generation, sep, shape = name.partition(":")
  known = {c.name: c for c in chips.CHIPS}
  if not sep or generation not in known or not shape:
    raise ValueError(f"--topology={name!r}: expected <generation>:<shape>, e.g. v5e:16x16, "
                     f"v4:2x2x2, v5p:4x4x8, v6e:8x8; generations: {', '.join(known)}")
  return known[generation], shape


def devices(name: str, num_slices: int = 1) -> tuple[chips.Chip, list[Any]]:
  """(chip, compile-only devices) of TPU topology ``name`` x ``num_slices`` slices."""
  chip, _ = parse_name(name)
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: expected >= 1")
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
