"""``python -m mlzsl_jax.main compile --config CFG[:args] --topology NAME``: compile a
config's programs for a TPU topology on this (CPU) machine and report per chip.

  --topology v5e:16x16   a TPU slice: v4:2x2x2, v5e:2x2 .. v5e:16x16, v5p:4x4x8, v6e:8x8, ...;
                         or GPUs: h100:8 (one host of 8), h200:4x8 (4 hosts of 8)
  --num_slices N         a multi-slice job of N such slices
  --top_bytes N          the N ops that move the most bytes, with the model code they come from
  --max_batch            also search the largest global train batch that fits
  --config.mesh.* / --config.train.batch_size (global) / --config.eval.batch_size as for train

Exit status 1 when a program does not fit a chip's HBM (its largest buffers named).
"""

from __future__ import annotations

from typing import Callable

from mlzsl_jax.compile import chips, programs, report, topology
from mlzsl_jax.data.source import DatasetMeta, dataset_shapes


def protocol_images(spec: str, config, meta: DatasetMeta) -> float:
  """Training images of the config's whole protocol: the phases of its ``get_phases()``
  (each phase's epochs x its training split's images, or its ``train.num_steps`` x the
  global batch), else the config's own (every image counted: an upper bound where images
  are filtered)."""
  from mlzsl_jax import phases  # pylint: disable=import-outside-toplevel
  try:
    configs = [c for _, c, _ in phases.plan(spec, config, "/nonexistent")] if spec else [config]
  except ValueError as e:
    if "get_phases" not in str(e):
      raise
    configs = [config]
  def images(c) -> int:  # train.num_steps, when set, fixes the length instead of epochs
    steps = int(c.train.get("num_steps", 0) or 0)
    if steps > 0:
      return steps * int(config.train.batch_size)
    return int(c.train.num_epochs) * meta.num_examples.get(c.data.train_split, 0)
  return float(sum(images(c) for c in configs))


def _builders(config, meta: DatasetMeta, trainer, compile_it: bool = True) -> dict:
  return {
      "train_step": lambda: programs.train_step(trainer, int(config.train.batch_size),
                                                compile_it),
      "eval_forward": lambda: programs.eval_forward(trainer, int(config.eval.batch_size),
                                                    compile_it),
      "metrics": lambda: programs.test_metrics(
          trainer, int(meta.num_examples.get(config.data.test_split, config.eval.batch_size)),
          tuple(config.eval.ks), compile_it),
  }


def _add_cpu_flops(config, meta: DatasetMeta, compiled: list[programs.Compiled]) -> None:
  """Per-device FLOPs of the programs whose compiled form has no cost analysis (GPU): XLA's
  cost analysis of the same program lowered (not compiled) for one CPU device, divided over
  the devices the program runs on."""
  missing = [p for p in compiled if p.compiled is not None and not p.compiled.cost_analysis()]
  if not missing:
    return
  import jax  # pylint: disable=import-outside-toplevel
  from mlzsl_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.step import Trainer  # pylint: disable=import-outside-toplevel
  twin = Trainer(config, meta, shd.make_mesh(1, 1, jax.devices("cpu")[:1]), 1000)
  lowerers = _builders(config, meta, twin, compile_it=False)
  for program in missing:
    cost = lowerers[program.name]().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    program.flops = float((cost or {}).get("flops", float("nan"))) / program.devices_used
    program.flops_source = ("XLA cost analysis of the same program lowered for the CPU, "
                            "divided over the devices")


def compile_all(config, meta: DatasetMeta, devices, names=programs.PROGRAMS
                ) -> list[programs.Compiled]:
  """The configured programs compiled for ``devices`` (see ``programs``)."""
  builders = _builders(config, meta, programs.make_trainer(config, meta, devices))
  out = [builders[name]() for name in names]
  _add_cpu_flops(config, meta, out)
  return out


def max_train_batch(config, meta: DatasetMeta, devices, chip: chips.Chip,
                    say: Callable[[str], None], limit: int = 1 << 20,
                    measure: Callable[[int], int | None] | None = None) -> int:
  """The largest global train batch (a multiple of the mesh's data axis) whose train step
  fits a chip, to within 1/64 (0 when one row per data shard does not fit; ``limit`` when
  that fits). Per-chip memory is near-affine in the batch: two compiles predict the limit,
  then bisection confirms it (about 8-10 compiles in all). ``measure(batch)`` -> per-chip
  bytes or None (the compiler ran out of memory) replaces the compiles (tests)."""
  data = len(devices) // int(config.mesh.model)
  trainer = None  # one Trainer for every batch (it does not depend on the batch size)

  def memory(batch: int) -> int | None:
    """Per-chip bytes of the train step at ``batch`` (None: the compiler ran out of memory)."""
    nonlocal trainer
    if measure is not None:
      return measure(batch)
    trainer = trainer or programs.make_trainer(config, meta, devices)
    program = programs.train_step(trainer, batch)
    if program.compiled is None:
      say(f"  batch {batch} ({batch // data} per data shard): does not fit ({program.error})")
      return None
    total = report.analyse(program).total
    say(f"  batch {batch} ({batch // data} per data shard): {total / 2**20:,.0f} MiB per chip, "
        f"{'fits' if total <= chip.hbm_bytes else 'does not fit'}")
    return total

  def fits(batch: int) -> bool:
    used = memory(batch)
    return used is not None and used <= chip.hbm_bytes

  first = memory(data)
  if first is None or first > chip.hbm_bytes:
    return 0
  lo, hi = data, 4 * data
  second = memory(hi)
  if second is not None and second <= chip.hbm_bytes:
    lo = hi
    slope = (second - first) / (3 * data)
    guess = int((chip.hbm_bytes - first) / slope) if slope > 0 else limit
    hi = min(max(guess * 5 // 4 // data * data, 2 * lo), limit)
    while hi < limit and fits(hi):  # the prediction was low: keep doubling
      lo, hi = hi, min(2 * hi, limit)
    if hi >= limit and fits(limit):
      return limit
  while hi - lo > max(data, lo // 64):
    mid = (lo + hi) // 2 // data * data
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def run(config, spec: str, topology_name: str, num_slices: int = 1, top_bytes: int = 0,
        search_max_batch: bool = False, say: Callable[[str], None] = print) -> int:
  """Compiles and reports (module docstring); returns the exit status (0, or 1 when a
  program does not fit)."""
  chip, devices = topology.devices(topology_name, num_slices)
  meta = dataset_shapes(config.data)
  data, model = len(devices) // int(config.mesh.model), int(config.mesh.model)
  say(f"compile for {topology_name}" + (f" x {num_slices} slices" if num_slices > 1 else "")
      + f": {len(devices)} x {chip.device_kind} ({chip.hbm_bytes / 1e9:.0f} GB HBM, "
      f"{chip.peak_bf16_flops / 1e12:.0f} bf16 TFLOP/s, {chip.hbm_bytes_per_s / 1e9:,.0f} GB/s;"
      f" {chip.source}); mesh data={data} x model={model}; {meta.name}: "
      f"{meta.num_labels} labels, regions [{meta.num_regions}, {meta.feature_dim}]"
      f"{f', scene {meta.scene_dim}' if meta.scene_dim else ''}; {config.model.name}, "
      f"dtype {config.dtype}; global train batch {config.train.batch_size}, eval batch "
      f"{config.eval.batch_size}")
  images = protocol_images(spec, config, meta)
  status = 0
  for program in compile_all(config, meta, devices):
    if program.compiled is None:
      status = 1
      say(f"== {program.name}: does not fit {chip.device_kind} HBM "
          f"({chip.hbm_bytes / 1e9:.1f} GB): {program.error}\n  largest arguments per chip:")
      for path, size in program.arguments[:5]:
        say(f"    argument {path}: {size / 2**20:,.1f} MiB")
      say("  fits: no")
      continue
    analysis = report.analyse(program)
    say(report.format_report(analysis, chip, len(devices), top_bytes,
                             images if program.name == "train_step" else 0.0))
    if not report.fits(analysis, chip):
      status = 1
      say(f"  {program.name} does not fit {chip.device_kind} HBM "
          f"({chip.hbm_bytes / 1e9:.1f} GB); largest buffers per chip:")
      for line in report.largest_buffers(analysis):
        say(f"    {line}")
  if search_max_batch:
    say("largest global train batch that fits:")
    best = max_train_batch(config, meta, devices, chip, say)
    say(f"max_batch: {best} ({best // data if data else 0} per data shard)"
        if best else "max_batch: none (one row per data shard does not fit)")
  say(f"fits: {'yes' if status == 0 else 'no'}")
  return status
