"""Train-step throughput of every registered model at NUS-WIDE and Open Images shapes.

The step timed is the library's own jitted, sharded train step (``mlzsl_jax.step.Trainer``,
the step training runs, data-parallel over all devices) on random batches already on the
devices (the step's cost does not depend on the values; the input pipeline is measured by
input_pipeline.py). Needs no TensorFlow, tfds or clu: JAX, Flax, Optax, orbax,
ml_collections and NumPy only (tests/test_accelerator.py runs it with TensorFlow
unimportable). Each
model's config comes from its module's ``model_config()`` / ``loss_config()``, with the
shape's own overrides (``SHAPES``). Per run: compile time, step time, images/s, GFLOP per
image (XLA cost analysis), achieved GFLOP/s and % of the device's peak, peak device memory.
No assertions: numbers only; one markdown table at the end.

Shapes:
  nus_wide     196 regions x 512 (VGG19 conv5_4), 925 seen labels, 300-d GloVe, 4096-d scene
               feature (BiAM's official model: scene_source='dataset'), BiAM heads 8
  open_images  196 x 512, 7186 seen labels, 300-d, no stored scene feature (mean_region),
               BiAM heads 16, label_chunk 1024, loss 'ranking' -> 'ranking_sorted'
               (configs/biam_open_images.py)

Peak FLOP/s: ``--peak_gflops``, else a table of dense peaks by device kind (bf16; float32
as TF32 on NVIDIA, where JAX's default matmul precision allows it), else measured with a
large matmul in the run's dtype on one device (this CPU: the whole host).

  .venv/bin/python benchmarks/train_throughput.py [--model biam|all|<name>,...]
      [--shapes nus_wide,open_images] [--dtype float32|bfloat16] [--batch 32] [--steps 10]
      [--warmup 2] [--profile DIR] [--peak_gflops N]

With several (model, shape) runs each runs in its own subprocess, so that its compile cache
and peak-memory counter are its own.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlzsl_jax import sharding as shd
from mlzsl_jax.config_base import base_config
from mlzsl_jax.data.source import DatasetMeta
from mlzsl_jax.models import get_model_builder, registered_models
from mlzsl_jax.step import Trainer
from mlzsl_jax.train import profiler_options


@dataclasses.dataclass(frozen=True)
class Shapes:
  """A dataset's shapes and the per-model config changes it implies."""
  name: str
  grid: tuple[int, int]
  feature_dim: int
  num_seen: int
  num_unseen: int
  emb_dim: int
  scene_dim: int  # 0: no stored scene feature
  model_overrides: dict  # config.model field -> value, applied where the model has the field
  loss_renames: dict  # config.loss.name -> replacement at this size


SHAPES = {
    "nus_wide": Shapes("nus_wide", (14, 14), 512, 925, 81, 300, 4096,
                       model_overrides={"heads": 8, "scene_source": "dataset"},
                       loss_renames={"ranking": "ranking_sorted"}),
    "open_images": Shapes("open_images", (14, 14), 512, 7186, 400, 300, 0,
                          model_overrides={"heads": 16, "scene_source": "mean_region",
                                           "label_chunk": 1024},
                          loss_renames={"ranking": "ranking_sorted"}),
}

# Dense peak TFLOP/s per device: (substring of device_kind, lower case) -> {dtype: TFLOP/s}.
# First match wins. NVIDIA float32 = TF32 tensor cores (JAX's default matmul precision).
PEAK_TFLOPS = (
    ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
    ("h100", {"bfloat16": 989.4, "float32": 494.7}),  # SXM
    ("h200", {"bfloat16": 989.4, "float32": 494.7}),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}),
    ("tpu v4", {"bfloat16": 275.0}),
    ("tpu v5 lite", {"bfloat16": 197.0}),
    ("tpu v5e", {"bfloat16": 197.0}),
    ("tpu v5p", {"bfloat16": 459.0}),
    ("tpu v5", {"bfloat16": 459.0}),
)


def model_module(name: str):
  """The module that registers model ``name`` (it defines model_config / loss_config)."""
  return sys.modules[get_model_builder(name).__module__]


def bench_config(model: str, shapes: Shapes, batch: int, dtype: str
                 ) -> ml_collections.ConfigDict:
  """``base_config()`` with the model's own model_config()/loss_config() and the shapes."""
  module = model_module(model)
  c = base_config()
  c.data.name = f"{shapes.name}_shapes"
  c.data.embedding = "glove"
  c.data.seen_labels = tuple(range(shapes.num_seen))
  c.data.unseen_labels = tuple(range(shapes.num_seen, shapes.num_seen + shapes.num_unseen))
  c.model = module.model_config()
  for field, value in shapes.model_overrides.items():
    if field in c.model:
      c.model[field] = value
  if "num_seen" in c.model:  # e.g. ConSE's seen-class softmax
    c.model.num_seen = shapes.num_seen
  if hasattr(module, "loss_config"):
    c.loss = module.loss_config()
  c.loss.name = shapes.loss_renames.get(c.loss.name, c.loss.name)
  c.train.batch_size = batch
  c.dtype = dtype
  return c


def bench_meta(shapes: Shapes) -> DatasetMeta:
  num_labels = shapes.num_seen + shapes.num_unseen
  emb = np.random.default_rng(0).normal(size=(num_labels, shapes.emb_dim)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return DatasetMeta(name=f"{shapes.name}_shapes",
                     label_names=tuple(map(str, range(num_labels))),
                     embeddings={"glove": emb}, grid_shape=shapes.grid,
                     feature_dim=shapes.feature_dim, scene_dim=shapes.scene_dim,
                     num_examples={})


def random_batch(shapes: Shapes, batch: int, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
  """A host batch as the pipeline yields it: features fp16 [B, R, C], labels int8 [B, S]
  (about 1% positive, at least one per image), scene fp16 [B, S_dim] when stored."""
  regions = shapes.grid[0] * shapes.grid[1]
  labels = np.where(rng.random((batch, shapes.num_seen)) < 0.01, 1, -1).astype(np.int8)
  labels[:, 0] = 1
  out = {"features": rng.random((batch, regions, shapes.feature_dim),
                                np.float32).astype(np.float16),
         "labels": labels}
  if shapes.scene_dim:
    out["scene"] = rng.random((batch, shapes.scene_dim), np.float32).astype(np.float16)
  return out


def flops_of(lowered) -> float:
  """FLOPs of a lowered program by XLA's cost analysis (nan when it gives none)."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", math.nan))


def counted_flops(trainer: Trainer, lowered, lower_on: Callable[[Trainer], Any]
                  ) -> tuple[float, str]:
  """FLOPs of ``lowered`` (a program of ``trainer``, lowered unpartitioned: the whole global
  batch) and where the number came from. ``lower_on(t)`` lowers the same program on trainer
  ``t``.

  XLA counts a loop's body once, so a model that scores labels in chunks
  (``model.label_chunk > 0``, a ``lax.map``) is counted on its dense twin (label_chunk=0,
  lowered only, never compiled or run): the useful FLOPs, without the padding of the last
  chunk.
  """
  if not trainer.config.model.get("label_chunk", 0):
    return flops_of(lowered), "XLA cost analysis"
  config = ml_collections.ConfigDict(trainer.config.to_dict())
  config.model.label_chunk = 0
  twin = Trainer(config, trainer.meta, trainer.mesh, steps_per_epoch=1000)
  return (flops_of(lower_on(twin)),
          "XLA cost analysis of the dense twin (label_chunk=0)")


def measured_peak_gflops(dtype: str, n: int = 4096, repeats: int = 3) -> float:
  """GFLOP/s of an n x n matmul in ``dtype`` on one device (best of ``repeats``)."""
  dev = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), dev)
  mm = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(mm(a, a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best / 1e9


def peak_gflops(dtype: str, override: float | None, override_source: str = ""
                ) -> tuple[float, str]:
  """Peak GFLOP/s of all devices together, and its source."""
  if override:
    return override, override_source or "--peak_gflops"
  dev = jax.devices()[0]
  kind = dev.device_kind.lower()
  if dev.platform != "cpu":
    for key, table in PEAK_TFLOPS:
      if key in kind and dtype in table:
        return table[dtype] * 1e3 * jax.device_count(), f"table ({key}, {dtype} dense)"
  # CPU: simulated devices share the host's cores, so the host's matmul peak is the peak.
  per = measured_peak_gflops(dtype)
  count = 1 if dev.platform == "cpu" else jax.device_count()
  return per * count, f"measured ({dtype} 4096^2 matmul)"


def peak_memory() -> str:
  """Largest 'peak_bytes_in_use' over the local devices, or 'n/a'."""
  peaks = []
  for dev in jax.local_devices():
    try:
      stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 (backends without memory stats)
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return f"{max(peaks) / 2**30:.2f} GiB" if peaks else "n/a"


# Host trace events that are waiting or Python frames ('$file:line'), not computation.
HOST_NOT_WORK = re.compile(r"^\$|wait|Await|^end: ")


def top_ops(trace_dir: str, steps: int, count: int = 10) -> list[str]:
  """The ``count`` event names with the most total time in the newest Perfetto trace under
  ``trace_dir`` (written by ``jax.profiler.start_trace(create_perfetto_trace=True)``), as
  'ms per step, % of the total, name' lines. Device timelines (GPU/TPU kernels) when the
  trace has them; else the host's (on CPU: XLA's fused ops, plus runtime overhead)."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    return ["  (no perfetto_trace.json.gz found)"]
  with gzip.open(paths[-1], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in names.items() if "/device:" in name}
  timed = [e for e in events if "dur" in e and "ts" in e and
           (e.get("pid") in device_pids if device_pids else not HOST_NOT_WORK.search(
               str(e.get("name", ""))))]
  totals: collections.Counter = collections.Counter()
  for e in leaf_events(timed):
    totals[e["name"]] += float(e["dur"])
  whole = sum(totals.values()) or 1.0
  return [f"  {us / 1e3 / steps:9.3f} ms/step {100 * us / whole:5.1f}%  {name[:90]}"
          for name, us in totals.most_common(count)]


def leaf_events(events: list[dict]) -> list[dict]:
  """The events that enclose no other event of their thread (so nested wrappers such as an
  executor around its ops are not counted twice)."""
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[(e.get("pid"), e.get("tid"))].append(e)
  leaves = []
  for thread in by_thread.values():
    thread.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
    stack: list[list] = []  # [event, end, has_child]
    for e in thread:
      start = float(e["ts"])
      while stack and stack[-1][1] <= start:
        top = stack.pop()
        if not top[2]:
          leaves.append(top[0])
      if stack:
        stack[-1][2] = True
      stack.append([e, start + float(e["dur"]), False])
    leaves += [top[0] for top in stack if not top[2]]
  return leaves


def compiled_memory(compiled) -> str:
  """Device memory one call of ``compiled`` needs per device (arguments + outputs +
  temporaries - donated aliases, XLA's memory analysis), or 'n/a'. Unlike the peak counter
  this is the executable's own, so several runs in one process each get theirs."""
  try:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
             m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001 (backends without memory analysis)
    return "n/a"
  return f"{total / 2**30:.2f} GiB"


def run_one(model: str, shapes: Shapes, args) -> dict[str, Any]:
  """Compiles and times ``args.steps`` train steps of ``model``; returns one result row."""
  config = bench_config(model, shapes, args.batch, args.dtype)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  trainer = Trainer(config, bench_meta(shapes), mesh, steps_per_epoch=1000)
  state = trainer.init_state()
  emb = jax.device_put(trainer.emb_seen, trainer.repl)
  rng = np.random.default_rng(0)
  batches = [shd.host_to_global(random_batch(shapes, args.batch, rng), trainer.batch_sharding)
             for _ in range(2)]

  t0 = time.perf_counter()
  lowered = trainer.train_step.lower(state, batches[0], emb)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops, flops_src = counted_flops(
      trainer, lowered, lambda t: t.train_step.lower(t.abstract_state(), batches[0], emb))

  step: Callable = compiled  # the AOT-compiled step: no retracing or cache lookups
  metrics = None
  for i in range(args.warmup):
    state, metrics = step(state, batches[i % 2], emb)
  jax.block_until_ready((state, metrics))
  trace_dir = os.path.join(args.profile, f"{model}_{shapes.name}") if args.profile else ""
  if trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True,
                             profiler_options=profiler_options())
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, metrics = step(state, batches[i % 2], emb)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / args.steps
  if trace_dir:
    jax.profiler.stop_trace()
    print(f"profile of {args.steps} steps in {trace_dir}; where the time went:\n" +
          "\n".join(top_ops(trace_dir, args.steps)), flush=True)
  loss = float(metrics["loss"])

  peak, peak_src = peak_gflops(args.dtype, args.peak_gflops, args.peak_source)
  achieved = flops / step_s / 1e9
  dev = jax.devices()[0]
  return {"model": model, "shapes": shapes.name, "dtype": args.dtype,
          "device": f"{dev.platform}: {dev.device_kind}", "devices": jax.device_count(),
          "batch": args.batch, "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "images_per_s": args.batch / step_s, "gflop_per_image": flops / args.batch / 1e9,
          "flops_source": flops_src, "achieved_gflops": achieved, "peak_gflops": peak,
          "peak_source": peak_src, "pct_peak": 100.0 * achieved / peak,
          "peak_memory": peak_memory(), "step_memory": compiled_memory(compiled), "loss": loss,
          "loss_name": config.loss.name}


COLUMNS = (("model", "{}"), ("shapes", "{}"), ("dtype", "{}"), ("devices", "{}"),
           ("batch", "{}"), ("compile_s", "{:.1f}"), ("step_ms", "{:.1f}"),
           ("images_per_s", "{:.1f}"), ("gflop_per_image", "{:.3g}"),
           ("achieved_gflops", "{:.1f}"), ("pct_peak", "{:.1f}"), ("peak_memory", "{}"))
HEADERS = ("model", "shapes", "dtype", "devices", "batch", "compile (s)", "step (ms)",
           "images/s", "GFLOP/image", "achieved GFLOP/s", "% of peak", "peak device memory")


def print_row(row: dict) -> None:
  print(f"{row['model']} @ {row['shapes']} ({row['dtype']}, loss {row['loss_name']}): "
        f"{row['device']} x{row['devices']}, batch {row['batch']}: compile "
        f"{row['compile_s']:.1f} s, step {row['step_ms']:.1f} ms, "
        f"{row['images_per_s']:.1f} images/s, {row['gflop_per_image']:.3g} GFLOP/image "
        f"({row['flops_source']}), {row['achieved_gflops']:.1f} GFLOP/s = "
        f"{row['pct_peak']:.1f}% of {row['peak_gflops']:.0f} GFLOP/s ({row['peak_source']}), "
        f"peak memory {row['peak_memory']}", flush=True)


def markdown_table(rows: list[dict]) -> str:
  lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
  for row in rows:
    if "error" in row:
      lines.append(f"| {row['model']} | {row['shapes']} | {row['dtype']} | " +
                   " | ".join(["—"] * (len(HEADERS) - 4)) + f" | failed: {row['error']} |")
      continue
    lines.append("| " + " | ".join(fmt.format(row[k]) for k, fmt in COLUMNS) + " |")
  return "\n".join(lines)


def parse_models(value: str) -> list[str]:
  names = registered_models() if value == "all" else [v.strip() for v in value.split(",")]
  unknown = [n for n in names if n not in registered_models()]
  if unknown:
    raise SystemExit(f"--model: unknown {unknown}; registered: {registered_models()} or 'all'")
  return names


def parse_shapes(value: str) -> list[Shapes]:
  names = [v.strip() for v in value.split(",") if v.strip()]
  unknown = [n for n in names if n not in SHAPES]
  if unknown or not names:
    raise SystemExit(f"--shapes: unknown {unknown}; expected a comma list of {sorted(SHAPES)}")
  return [SHAPES[n] for n in names]


def run_in_subprocess(model: str, shapes: Shapes, argv: list[str]) -> dict:
  """One (model, shapes) run in a fresh process; its row, or an error row."""
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  cmd = [sys.executable, os.path.abspath(__file__), *argv, "--model", model,
         "--shapes", shapes.name, "--row_json", out]
  proc = subprocess.run(cmd, check=False)
  try:
    with open(out) as f:
      text = f.read()
    return json.loads(text) if text else {
        "model": model, "shapes": shapes.name, "dtype": "", "error": f"exit {proc.returncode}"}
  finally:
    os.unlink(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="biam",
                      help="registered model name(s), comma-separated, or 'all'")
  parser.add_argument("--shapes", default="nus_wide",
                      help=f"comma list of {sorted(SHAPES)}")
  parser.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on GPU/TPU)")
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  parser.add_argument("--profile", default="",
                      help="directory for a jax.profiler trace of the timed steps")
  parser.add_argument("--peak_gflops", type=float, default=None,
                      help="peak GFLOP/s of all devices together (else table / measured)")
  parser.add_argument("--row_json", default="", help=argparse.SUPPRESS)
  parser.add_argument("--peak_source", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()

  models, shapes_list = parse_models(args.model), parse_shapes(args.shapes)
  runs = [(m, s) for s in shapes_list for m in models]
  if len(runs) == 1:
    try:
      row = run_one(*runs[0], args)
    except Exception as e:  # noqa: BLE001 (one failing model must not hide the others)
      if not args.row_json:
        raise
      row = {"model": runs[0][0], "shapes": runs[0][1].name, "dtype": args.dtype,
             "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    if args.row_json:
      with open(args.row_json, "w") as f:
        json.dump(row, f)
    rows = [row]
  else:
    argv = [a for a in sys.argv[1:]]
    for flag in ("--model", "--shapes"):  # drop flag and its value; each child gets its own
      while flag in argv:
        i = argv.index(flag)
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith(("--model=", "--shapes="))]
    if args.peak_gflops is None:  # measure once, so every row has the same denominator
      peak, source = peak_gflops(args.dtype, None)
      argv += ["--peak_gflops", str(peak), "--peak_source", source]
    rows = [run_in_subprocess(m, s, argv) for m, s in runs]
  if len(runs) == 1 and "error" not in rows[0]:
    print_row(rows[0])  # (each subprocess prints its own row)
  if args.row_json:
    return
  dev = jax.devices()[0]
  print(f"\nTrain step, {dev.platform}: {dev.device_kind} x{jax.device_count()}, "
        f"`{' '.join(['benchmarks/train_throughput.py', *sys.argv[1:]])}`\n")
  print(markdown_table(rows))


if __name__ == "__main__":
  main()
