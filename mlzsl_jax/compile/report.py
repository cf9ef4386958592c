"""Per-chip report of a compiled program: memory against HBM, FLOP and bytes, collectives,
the heaviest ops, and a roofline estimate (labelled as one)."""

from __future__ import annotations

import dataclasses
import math

from mlzsl_jax.compile import chips, hlo
from mlzsl_jax.compile.programs import Compiled

MIB = 2**20
# Bytes each device sends per collective byte counted in ``hlo.collectives`` (ring
# algorithms): an all-reduce is a reduce-scatter plus an all-gather.
COLLECTIVE_FACTOR = {"all-reduce": 2.0, "all-gather": 1.0, "reduce-scatter": 1.0,
                     "all-to-all": 1.0, "collective-permute": 1.0}


@dataclasses.dataclass
class Analysis:
  """XLA's figures for one program, per chip."""
  name: str
  arguments: int
  outputs: int
  temporaries: int
  aliased: int
  generated_code: int
  flops: float
  bytes_accessed: float
  collectives: list[hlo.Collective]
  ops: list[hlo.Op]
  program: Compiled
  xla_cost: bool = True  # FLOP and bytes from XLA's cost analysis of this program

  @property
  def total(self) -> int:
    """Bytes one call needs on a chip: arguments + outputs + temporaries + code - donated."""
    return (self.arguments + self.outputs + self.temporaries + self.generated_code
            - self.aliased)


def analyse(program: Compiled) -> Analysis:
  compiled = program.compiled
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ops = hlo.parse_ops(compiled.as_text())
  flops = float(cost.get("flops", program.flops if program.flops is not None else math.nan))
  # No cost analysis (GPU programs): the bytes of the top-level ops' operands and outputs.
  moved = cost.get("bytes accessed", sum(op.bytes for op in ops if op.entry
                                         and op.opcode not in hlo.FREE_OPS))
  return Analysis(program.name, int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes),
                  int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes),
                  int(mem.generated_code_size_in_bytes), flops, float(moved),
                  hlo.collectives(ops), ops, program, bool(cost))


def fits(a: Analysis, chip: chips.Chip) -> bool:
  return a.total <= chip.hbm_bytes


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Roofline seconds per call on one chip (an estimate, not a measurement)."""
  compute_s: float
  memory_s: float
  collective_s: float

  @property
  def step_s(self) -> float:
    return max(self.compute_s, self.memory_s) + self.collective_s

  @property
  def bound(self) -> str:
    return "compute" if self.compute_s >= self.memory_s else "memory"


def estimate(a: Analysis, chip: chips.Chip) -> Estimate:
  moved = sum(COLLECTIVE_FACTOR[c.kind] * c.bytes for c in a.collectives)
  return Estimate(a.flops / chip.peak_bf16_flops, a.bytes_accessed / chip.hbm_bytes_per_s,
                  moved / chip.interconnect_bytes_per_s)


def duration(seconds: float) -> str:
  """'42 s', '3.5 min', '2.25 h'."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _mib(x: float) -> str:
  return f"{x / MIB:,.1f} MiB"


def largest_buffers(a: Analysis, count: int = 5) -> list[str]:
  """The largest per-chip arguments and the largest op outputs (temporaries)."""
  args = [f"argument {path}: {_mib(size)}" for path, size in a.program.arguments[:count]]
  outputs = sorted((op for op in a.ops if op.entry and op.opcode != "parameter"),
                   key=lambda op: -op.output_bytes)[:count]
  temps = [f"{op.opcode} {op.name} {hlo.short_shape(op.shape)}: {_mib(op.output_bytes)}"
           f"{' (' + op.op_name + ')' if op.op_name else ''}" for op in outputs]
  return args + temps


def format_report(a: Analysis, chip: chips.Chip, num_chips: int, top_bytes: int = 0,
                  protocol_images: float = 0.0) -> str:
  """The per-chip report of one program (see the package docstring)."""
  lines = [f"== {a.name} ({a.program.devices_used} device(s); compiled in "
           f"{a.program.compile_seconds:.1f} s)"]
  pct = 100.0 * a.total / chip.hbm_bytes
  lines.append(f"  memory per chip: arguments {_mib(a.arguments)}, outputs {_mib(a.outputs)}, "
               f"temporaries {_mib(a.temporaries)}, code {_mib(a.generated_code)}, donated "
               f"-{_mib(a.aliased)} = {_mib(a.total)} of {chip.hbm_bytes / 1e9:.1f} GB HBM "
               f"({pct:.1f}%; {chip.device_kind}, {chip.source})")
  per_image = ""
  if a.program.images_per_call:
    per_chip_images = a.program.images_per_call / max(a.program.devices_used, 1)
    per_image = (f" (per image: {a.flops / per_chip_images / 1e9:,.2f} GFLOP, "
                 f"{a.bytes_accessed / per_chip_images / 1e6:,.1f} MB)")
  intensity = a.flops / a.bytes_accessed if a.bytes_accessed else math.nan
  lines.append(f"  per chip per call: {a.flops / 1e9:,.1f} GFLOP, {a.bytes_accessed / 1e9:,.3f}"
               f" GB accessed, {intensity:,.1f} FLOP/byte (ridge "
               f"{chip.ridge_flop_per_byte:,.0f}){per_image}")
  if not a.xla_cost:
    lines.append(f"  (no XLA cost analysis for this platform: FLOP from the "
                 f"{a.program.flops_source}; bytes = the top-level ops' operands + outputs)")
  moves = hlo.async_move_bytes(a.ops)
  if moves and a.bytes_accessed:
    share = 100 * moves / a.bytes_accessed
    lines.append(f"  of the bytes accessed: {moves / 1e9:,.3f} GB ({share:.0f}%) in async "
                 f"copies/slices between HBM and on-chip memory (copy-start, slice-start; "
                 f"each counted with its operand twice)")
  if a.collectives:
    parts = [f"{c.kind} x{c.count} ({_mib(c.bytes)})" for c in a.collectives]
    lines.append("  collectives: " + ", ".join(parts))
  else:
    lines.append("  collectives: none")
  est = estimate(a, chip)
  row = (f"  estimate (roofline, not measured): compute {est.compute_s * 1e3:,.3f} ms, memory "
         f"{est.memory_s * 1e3:,.3f} ms, collectives {est.collective_s * 1e3:,.3f} ms -> "
         f"{est.step_s * 1e3:,.3f} ms per call, {est.bound}-bound")
  if a.program.images_per_call and est.step_s > 0:
    pod = a.program.images_per_call / est.step_s
    row += f"; {pod / num_chips:,.0f} images/s per chip, {pod:,.0f} images/s for the pod"
    if protocol_images:
      row += (f"; the config's protocol ({protocol_images:,.0f} training images): "
              f"{duration(protocol_images / pod)}")
  lines.append(row)
  if top_bytes:
    lines.append(f"  top {top_bytes} ops by bytes moved (operands + output, logical sizes):")
    for op in hlo.top_ops(a.ops, top_bytes):
      lines.append(f"    {_mib(op.bytes):>14} {op.opcode:<16} {hlo.short_shape(op.shape):<40} "
                   f"{op.op_name}")
  lines.append(f"  fits: {'yes' if fits(a, chip) else 'no'}")
  return "\n".join(lines)
