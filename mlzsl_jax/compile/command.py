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

from mlzsl_jax import sharding as shd
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
                    say: Callable[[str], None], limit_per_shard: int = 1 << 16,
                    measure: Callable[[int], int | None] | None = None,
                    known: dict[int, int | None] | None = None) -> int:
  """The largest global train batch (a multiple of the mesh's data axis) whose train step
  fits a chip, to within 1/64 (0 when one row per data shard does not fit; the batch of
  ``limit_per_shard`` rows per data shard when that fits). Per-chip memory grows
  near-affinely with the batch, so each compile aims just below the limit the measured points
  predict (a secant through the closest fitting and non-fitting batches, or a line through
  the two largest fitting ones), then just above it: about 4-6 compiles when the prediction
  holds, bisection where the figures draw no rising line (a refusal without a figure, XLA
  recomputing near the HBM). A batch the compiler refuses counts with the bytes its message
  names. ``known``: batch -> per-chip bytes already compiled (None: refused, no figure).
  ``measure(batch)`` -> per-chip bytes or None replaces the compiles (tests)."""
  data = len(devices) // int(config.mesh.model)
  hbm, limit = chip.hbm_bytes, limit_per_shard * data
  trainer = None  # one Trainer for every batch (it does not depend on the batch size)
  points: dict[int, int | None] = dict(known or {})

  def memory(batch: int) -> int | None:
    """Per-chip bytes of the train step at ``batch`` (a refusal: the bytes its message names,
    None when it names none)."""
    nonlocal trainer
    if measure is not None:
      return measure(batch)
    trainer = trainer or programs.make_trainer(config, meta, devices)
    program = programs.train_step(trainer, batch)
    if program.compiled is None:
      say(f"  batch {batch} ({batch // data} per data shard): does not fit ({program.error})")
      figure = programs.required_bytes(program.error)  # XLA may allow less than the HBM
      return None if figure is None else max(figure, hbm + 1)
    total = report.analyse(program).total
    say(f"  batch {batch} ({batch // data} per data shard): {total / 2**20:,.0f} MiB per chip, "
        f"{'fits' if total <= hbm else 'does not fit'}")
    return total

  def fits(batch: int) -> bool:
    if batch not in points:
      points[batch] = memory(batch)
    used = points[batch]
    return used is not None and used <= hbm

  def slope(a: int, b: int) -> float:
    return (points[b] - points[a]) / (b - a)

  def crossing(lo: int, hi: int | None) -> float:
    """Where the measured points put the batch whose memory reaches the chip's HBM. Near
    the HBM XLA trades memory for recomputation, so the figures need not grow there: a
    line through points that do not rise falls back to the first and last fitting points
    (above the limit: bisection)."""
    fitting = sorted(b for b in points if fits(b))
    if hi is not None:
      if points[hi] is None or slope(lo, hi) <= 0:  # no figure from the compiler: bisect
        return (lo + hi) / 2
      a, b = lo, hi
    elif len(fitting) < 2:
      return 4.0 * lo
    else:
      a, b = fitting[-2], fitting[-1]
      if slope(a, b) <= 0:
        a = fitting[0]
      if slope(a, b) <= 0:
        return 2.0 * lo
    return b + (hbm - points[b]) / slope(a, b)

  fitting = [b for b in points if fits(b)]
  if not fitting and not fits(data):
    return 0
  while True:
    lo = max(b for b in points if fits(b))
    hi = min((b for b in points if not fits(b)), default=None)
    tol = max(data, lo // 64)
    if hi is not None and hi - lo <= tol:
      return lo
    if lo >= limit or (hi is None and lo + tol > limit):
      return lo  # the limit (or within 1/64 of it) fits
    low, high = lo + tol, (hi - tol) if hi is not None else limit
    target = crossing(lo, hi) - tol / 2  # just below the predicted limit
    batch = (lo + hi) // 2 if low > high else int(min(max(target, low), high))
    fits(max(batch // data * data, lo + data))


def run(config, spec: str, topology_name: str, num_slices: int = 1, top_bytes: int = 0,
        search_max_batch: bool = False, say: Callable[[str], None] = print) -> int:
  """Compiles and reports (module docstring); returns the exit status (0, or 1 when a
  program does not fit)."""
  chip, devices = topology.devices(topology_name, num_slices)
  meta = dataset_shapes(config.data)
  data, model = len(devices) // int(config.mesh.model), int(config.mesh.model)
  for field, value in (("train.batch_size", config.train.batch_size),
                       ("eval.batch_size", config.eval.batch_size)):  # as a run checks them
    shd.local_batch_size(int(value), field, data, processes=1)
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
  compiled = compile_all(config, meta, devices)
  for program in compiled:
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
    compiled_train = {p.name: p for p in compiled}.get("train_step")
    known = ({int(config.train.batch_size): report.analyse(compiled_train).total}
             if compiled_train is not None and compiled_train.compiled is not None else {})
    best = max_train_batch(config, meta, devices, chip, say, known=known)
    say(f"max_batch: {best} ({best // data if data else 0} per data shard)"
        if best else "max_batch: none (one row per data shard does not fit)")
  say(f"fits: {'yes' if status == 0 else 'no'}")
  return status
