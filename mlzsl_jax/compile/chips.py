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
NVIDIA (nvidia.com/en-us/data-center/h100, /h200, read 2026-12-06):
  H100 SXM  989.4 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s per GPU
            (both directions: 450 GB/s each way), 132 SMs at up to 1.98 GHz, compute
            capability 9.0, 50 MiB L2
  H200 SXM  the same GH100 chip with 141 GB HBM3e at 4.8 TB/s
The interconnect figure is per chip, for collectives; the roofline that uses it is an
estimate, labelled as one. A GPU's compile target is described to XLA by a
``GpuTargetConfigProto`` written from these facts (``gpu_target_config``).
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
  platform: str = "tpu"

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


@dataclasses.dataclass(frozen=True)
class GpuCard:
  """The facts XLA's GPU compiler needs about a card it cannot query."""
  sm_count: int
  clock_ghz: float
  memory_bytes: int  # as the driver reports it (the HBM check uses it)
  l2_bytes: int
  compute_capability: tuple[int, int]


GPU_CARDS = {
    "h100": GpuCard(132, 1.98, 85_520_809_984, 50 * 2**20, (9, 0)),
    "h200": GpuCard(132, 1.98, 150_754_820_096, 50 * 2**20, (9, 0)),
}
CHIPS += (
    Chip("h100", "NVIDIA H100 80GB HBM3", GPU_CARDS["h100"].memory_bytes, 989.4e12,
         3.35e12, 450 * GB, "nvidia.com/en-us/data-center/h100", platform="gpu"),
    Chip("h200", "NVIDIA H200", GPU_CARDS["h200"].memory_bytes, 989.4e12, 4.8e12, 450 * GB,
         "nvidia.com/en-us/data-center/h200", platform="gpu"),
)


def gpu_target_config(chip: Chip) -> str:
  """``stream_executor.GpuTargetConfigProto`` text of a GPU chip (its card's facts; fields of
  XLA's device_description.proto that the jax 0.10 CUDA plugin reads)."""
  card = GPU_CARDS[chip.name]
  major, minor = card.compute_capability
  return f"""gpu_device_info {{
  name: "{chip.device_kind}"
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {card.sm_count}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bytes_per_s)}
  l2_cache_size: {card.l2_bytes}
  clock_rate_ghz: {card.clock_ghz}
  device_memory_size: {card.memory_bytes}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
runtime_version {{ major: 12 minor: 9 patch: 0 }}
device_description_str: "{chip.device_kind}"
"""


def chip_for(device_kind: str) -> Chip:
  """The chip whose compile-only devices report ``device_kind``; ValueError naming the
  known kinds otherwise."""
  for chip in CHIPS:
    if chip.device_kind == device_kind:
      return chip
  raise ValueError(f"device kind {device_kind!r}: no published figures in "
                   f"mlzsl_jax/compile/chips.py (known: "
                   f"{', '.join(c.device_kind for c in CHIPS)})")
