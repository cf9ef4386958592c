"""Published per-chip figures of the accelerators ``compile`` targets (by device kind).

Every value is the vendor's own (Cloud TPU system-architecture pages, read 2026-12-06):
  v4   cloud.google.com/tpu/docs/v4:  275 TFLOP/s bf16, HBM2 32 GiB at 1200 GB/s, all-reduce
       bandwidth per 4096-chip pod 1.1 PB/s (-> 268 GB/s per chip)
  v5e  cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, HBM2 16 GB at 819 GB/s, all-reduce
       bandwidth per 256-chip pod 51.2 TB/s (-> 200 GB/s per chip)
  v5p  cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, HBM2e 95 GB at 2765 GB/s, inter-chip
       interconnect 4800 Gbps (-> 600 GB/s per chip)
  v6e  cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, HBM 32 GB at 1638 GB/s, all-reduce
       bandwidth per 256-chip pod 102.4 TB/s (-> 400 GB/s per chip)
The interconnect figure is per chip, for collectives; the roofline that uses it is an
estimate, labelled as one.
"""

from __future__ import annotations

import dataclasses

GB, GIB = 10**9, 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's published figures."""
  name: str  # short name, as in topology names ("v5e")
  device_kind: str  # jax Device.device_kind of its compile-only devices
  hbm_bytes: int
  peak_bf16_flops: float  # dense FLOP/s
  hbm_bytes_per_s: float
  interconnect_bytes_per_s: float  # per chip, for collectives
  source: str

  @property
  def ridge_flop_per_byte(self) -> float:
    """FLOP per HBM byte above which a program is compute-bound."""
    return self.peak_bf16_flops / self.hbm_bytes_per_s


CHIPS = (
    Chip("v4", "TPU v4", 32 * GIB, 275e12, 1200 * GB, 1.1e15 / 4096,
         "cloud.google.com/tpu/docs/v4"),
    Chip("v5e", "TPU v5 lite", 16 * GB, 197e12, 819 * GB, 51.2e12 / 256,
         "cloud.google.com/tpu/docs/v5e"),
    Chip("v5p", "TPU v5", 95 * GB, 459e12, 2765 * GB, 4800e9 / 8,
         "cloud.google.com/tpu/docs/v5p"),
    Chip("v6e", "TPU v6 lite", 32 * GB, 918e12, 1638 * GB, 102.4e12 / 256,
         "cloud.google.com/tpu/docs/v6e"),
)


def chip_for(device_kind: str) -> Chip:
  """The chip whose compile-only devices report ``device_kind``; ValueError naming the
  known kinds otherwise."""
  for chip in CHIPS:
    if chip.device_kind == device_kind:
      return chip
  raise ValueError(f"device kind {device_kind!r}: no published figures in "
                   f"mlzsl_jax/compile/chips.py (known: "
                   f"{', '.join(c.device_kind for c in CHIPS)})")
