"""BiAM on one accelerator in a few minutes: the GPU table of benchmarks/README.md.

Sections (``--sections``, in this order; each row: compile time, time per step or pass,
images/s, achieved TFLOP/s and the fraction of the chip's dense peak):
  train        BiAM's train step (``mlzsl_jax.step.Trainer``) at NUS-WIDE shapes (196 x 512
               regions, 925 seen labels, 4096-d scene feature), float32 and bfloat16, global
               batch 32, 256, 1024 (``--batches``), then doubling until the device runs out of
               memory or ``--max_batch``: the largest batch that fits
  test_pass    the NUS-WIDE test pass: 107,859 images x 1,006 labels (81 unseen), the eval
               forward in batches (ZSL and GZSL scores, as ``evaluate.py`` runs it) and every
               metric (mAP, P/R/F1@3,5) on device
  open_images  BiAM at Open Images shapes: the train step over 7,186 seen labels scored in
               chunks of ``label_chunk`` = 1024, and the eval forward over all 7,586 labels
  clip_extract CLIP ViT-B/16's image tower as ``extract --backbone clip_vit_b16`` runs it
               (random weights; the patch tokens and class embedding of 224x224 images),
               data-parallel over every device, global batch ``--clip_batch``
  input        only where TensorFlow imports: the train step fed by the library's tf.data
               pipeline from NUS-WIDE-shaped records on local disk, against the same step
               on arrays already on the device: is training input-bound on this host?

Inputs are random arrays already on the device (a step's cost does not depend on the
values). FLOPs: XLA's cost analysis (a chunked model's dense twin, see train_throughput.py).
Peak: ``--peak_gflops``, else the table in train_throughput.py by device kind (float32 as
TF32), else a measured matmul. Sections stop being started once ``--budget_s`` is spent (a
skipped row says so). Needs JAX, Flax, Optax, orbax, ml_collections and NumPy; TensorFlow only
for ``input``.

  python benchmarks/gpu_suite.py [--sections train,test_pass,open_images,input]
      [--dtypes float32,bfloat16] [--batches 32,256,1024] [--max_batch 16384]
      [--budget_s 450] [--out DIR] [--profile DIR] [--smoke]

``--smoke``: tiny shapes, for the CPU test (tests/test_accelerator.py). benchmarks/gpu.sh runs
the full suite on one GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mlzsl_jax import accelerator  # noqa: E402
from mlzsl_jax import metrics_device  # noqa: E402
from mlzsl_jax import sharding as shd  # noqa: E402
from mlzsl_jax.step import Trainer  # noqa: E402
from train_throughput import (SHAPES, Shapes, bench_config, bench_meta,  # noqa: E402
                              compiled_memory, counted_flops, peak_gflops, random_batch,
                              run_one)

NUS_TEST_ROWS = 107_859
SECTIONS = ("train", "test_pass", "open_images", "clip_extract", "input")
# --smoke: the same code paths at shapes a CPU compiles in seconds.
SMOKE_SHAPES = {
    "nus_wide": Shapes("smoke_nus", (3, 3), 16, 12, 4, 8, 8,
                       model_overrides={"heads": 2, "scene_source": "dataset"},
                       loss_renames={"ranking": "ranking_sorted"}),
    "open_images": Shapes("smoke_open_images", (3, 3), 16, 20, 4, 8, 0,
                          model_overrides={"heads": 2, "scene_source": "mean_region",
                                           "label_chunk": 8},
                          loss_renames={"ranking": "ranking_sorted"}),
}


@dataclasses.dataclass
class Row:
  """One line of the table."""
  section: str
  case: str
  dtype: str = ""
  batch: int = 0
  compile_s: float = math.nan
  seconds: float = math.nan  # per step (train) or per pass
  images_per_s: float = math.nan
  tflops: float = math.nan
  pct_peak: float = math.nan
  memory: str = ""
  note: str = ""


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


class Budget:
  """Wall-clock budget: ``left()`` seconds remain; a case starts only if enough is left."""

  def __init__(self, seconds: float):
    self.deadline = time.perf_counter() + seconds

  def left(self) -> float:
    return self.deadline - time.perf_counter()


def train_row(shapes: Shapes, dtype: str, batch: int, args, section: str = "train") -> Row:
  """The train step of BiAM at ``shapes``: one ``train_throughput.run_one`` in this process."""
  profile = os.path.join(args.profile, f"{section}_{dtype}_b{batch}") if args.profile else ""
  peak, peak_source = args.peaks[dtype]
  run_args = argparse.Namespace(batch=batch, dtype=dtype, steps=args.steps,
                                warmup=args.warmup, profile=profile,
                                peak_gflops=peak, peak_source=peak_source)
  r = run_one("biam", shapes, run_args)
  return Row(section, f"train step ({shapes.name})", dtype, batch, r["compile_s"],
             r["step_ms"] / 1e3, r["images_per_s"], r["achieved_gflops"] / 1e3,
             r["pct_peak"], r["step_memory"], f"loss {r['loss_name']} = {r['loss']:.4g}")


def train_section(shapes: Shapes, args, budget: Budget, emit: Callable[[Row], None]) -> None:
  """Listed batches per dtype, then doubling until out of memory (or --max_batch)."""
  for dtype in args.dtypes:
    largest, last_s = 0, 0.0
    batches = list(args.batches)
    while batches:
      batch = batches.pop(0)
      if budget.left() < 2 * last_s:
        emit(Row("train", "train step", dtype, batch, note="skipped: time budget spent"))
        break
      t0 = time.perf_counter()
      try:
        row = train_row(shapes, dtype, batch, args)
      except Exception as e:  # noqa: BLE001
        if not is_out_of_memory(e):
          raise
        emit(Row("train", "train step", dtype, batch,
                 note=(f"out of memory: the largest batch that fits is {largest}" if largest
                       else "out of memory")))
        gc.collect()
        break
      last_s = time.perf_counter() - t0
      largest = batch
      if not batches and batch < args.max_batch:  # past the listed ones: search upwards
        batches.append(min(2 * batch, args.max_batch))
      elif not batches:
        row.note += f"; fits (--max_batch={args.max_batch} reached)"
      emit(row)


def device_batches(shapes: Shapes, batch: int, sharding, count: int = 2) -> list[dict]:
  """``count`` random batches already on the devices (features, scene; labels unused)."""
  rng = np.random.default_rng(0)
  return [shd.host_to_global(random_batch(shapes, batch, rng), sharding)
          for _ in range(count)]


def eval_forward(shapes: Shapes, dtype: str, batch: int, rows: int, args
                 ) -> tuple[Row, jax.Array, jax.Array]:
  """The eval forward over ``rows`` images (ZSL: unseen labels only; GZSL: all labels) in
  batches of ``batch``, scores kept on device. Returns the row and the scores
  (zsl [rows, unseen], gzsl [rows, seen + unseen])."""
  config = bench_config("biam", shapes, batch, dtype)
  meta = bench_meta(shapes)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  trainer = Trainer(config, meta, mesh, steps_per_epoch=1000)
  state = trainer.init_state()
  embs = tuple(jax.device_put(e, trainer.repl) for e in (trainer.emb_unseen, trainer.emb_gzsl))
  pool = device_batches(shapes, batch, trainer.batch_sharding)
  t0 = time.perf_counter()
  lowered = trainer.predict.lower(state.params, state.model_state, pool[0], embs)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0

  def lower_predict(t: Trainer):
    abstract = t.abstract_state()
    return t.predict.lower(abstract.params, abstract.model_state, pool[0],
                           (t.emb_unseen, t.emb_gzsl))
  flops, _ = counted_flops(trainer, lowered, lower_predict)
  jax.block_until_ready(compiled(state.params, state.model_state, pool[1], embs))
  steps = math.ceil(rows / batch)
  t0 = time.perf_counter()
  outs = [compiled(state.params, state.model_state, pool[i % 2], embs) for i in range(steps)]
  jax.block_until_ready(outs)
  seconds = time.perf_counter() - t0
  # Gathered into one array each for the metrics (not timed: evaluate.py gathers as it goes).
  zsl = jnp.concatenate([o[0] for o in outs])[:rows]
  gzsl = jnp.concatenate([o[1] for o in outs])[:rows]
  achieved = flops * steps / seconds / 1e12
  peak, _ = args.peaks[dtype]
  row = Row("", "", dtype, batch, compile_s, seconds, rows / seconds, achieved,
            100.0 * achieved * 1e3 / peak, compiled_memory(compiled),
            f"{steps} batches of {batch}, 2 forwards each (ZSL, GZSL)")
  return row, zsl, gzsl


def test_pass_section(shapes: Shapes, args, budget: Budget, emit) -> None:
  """NUS-WIDE test pass: eval forward over every test image + metrics on device."""
  for dtype in args.dtypes:
    if budget.left() < 30:
      emit(Row("test_pass", "test pass", dtype, note="skipped: time budget spent"))
      continue
    rows = args.test_rows
    row, zsl, gzsl = eval_forward(shapes, dtype, args.test_batch, rows, args)
    row.section, row.case = "test_pass", f"eval forward, {rows} images"
    emit(row)
    num_seen, num_labels = shapes.num_seen, shapes.num_seen + shapes.num_unseen
    rng = np.random.default_rng(1)
    u = rng.random((rows, num_labels), dtype=np.float32)
    states = jax.device_put(np.where(u < 0.01, 1, np.where(u < 0.03, 0, -1)).astype(np.int8))
    seen, unseen = range(num_seen), range(num_seen, num_labels)
    ks = tuple(k for k in (3, 5) if k <= shapes.num_unseen)
    args_of_metrics = (gzsl.astype(jnp.float32), states, seen, unseen, ks)
    zsl_f32 = zsl.astype(jnp.float32)
    times = []
    for _ in range(2):  # the first call compiles
      t0 = time.perf_counter()
      result = metrics_device.evaluate_multilabel_device(*args_of_metrics, zsl_scores=zsl_f32)
      times.append(time.perf_counter() - t0)
    first_s, warm_s = times
    emit(Row("test_pass", f"metrics on device, {rows} x {num_labels}", dtype,
             compile_s=first_s - warm_s, seconds=warm_s, images_per_s=rows / warm_s,
             note=f"GZSL mAP {result['gzsl']['map']:.4f} (random scores)"))
    emit(Row("test_pass", "whole test pass (forward + metrics)", dtype, args.test_batch,
             seconds=row.seconds + warm_s, images_per_s=rows / (row.seconds + warm_s),
             note="target <= 10 s (issue 15)"))
    del zsl, gzsl, states, args_of_metrics, zsl_f32
    gc.collect()


def open_images_section(shapes: Shapes, args, budget: Budget, emit) -> None:
  """Open Images shapes: chunked train step, and the eval forward over all labels."""
  for dtype in args.dtypes:
    if budget.left() < 60:
      emit(Row("open_images", "train step", dtype, note="skipped: time budget spent"))
      continue
    try:
      emit(train_row(shapes, dtype, args.oi_batch, args, section="open_images"))
      row, _, _ = eval_forward(shapes, dtype, args.oi_batch,
                               args.oi_batch * args.oi_eval_batches, args)
    except Exception as e:  # noqa: BLE001
      if not is_out_of_memory(e):
        raise
      emit(Row("open_images", "train step / eval forward", dtype, args.oi_batch,
               note="out of memory"))
      continue
    labels = shapes.num_seen + shapes.num_unseen
    row.section, row.case = "open_images", f"eval forward, {labels} labels"
    emit(row)


def clip_extract_section(args, budget: Budget, emit) -> None:
  """CLIP's image tower (extraction) images/s, float32 and bfloat16, batch over devices."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip as clip_lib  # pylint: disable=import-outside-toplevel
  spec = clip_lib.named_spec("clip_vit_b16")
  if args.smoke:
    spec = clip_lib.ClipSpec(clip_lib.VisionSpec(64, 1, 2, 8, 32), clip_lib.TextSpec(64, 1, 2),
                             embed_dim=32)
  size = spec.vision.image_size
  mesh = Mesh(np.array(jax.devices()), ("data",))
  batch = args.clip_batch - args.clip_batch % jax.device_count() or jax.device_count()
  for dtype in args.dtypes:
    if budget.left() < 30:
      emit(Row("clip_extract", "image tower", dtype, note="skipped: time budget spent"))
      continue
    model = clip_lib.Clip(spec, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model.visual)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    forward = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    images = jax.device_put(np.random.default_rng(0).normal(size=(batch, size, size, 3))
                            .astype(np.float32), NamedSharding(mesh, P("data")))
    t0 = time.perf_counter()
    jax.block_until_ready(forward(state, images))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      jax.block_until_ready(forward(state, images))
      times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    emit(Row("clip_extract", f"ViT-B/16 image tower, {size}x{size}" if not args.smoke
             else "tiny ViT image tower", dtype, batch, compile_s=first - step, seconds=step,
             images_per_s=batch / step, note="forward only; decoding is on the host"))
    del model, state, images
    gc.collect()


def input_section(shapes: Shapes, args, budget: Budget, emit) -> None:
  """The train step fed from tf.data (records on local disk) vs from device arrays."""
  try:
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    emit(Row("input", "tf.data -> train step", note="skipped: TensorFlow is not installed "
             "here (the step runs without it; the input pipeline needs it)"))
    return
  if budget.left() < 60:
    emit(Row("input", "tf.data -> train step", note="skipped: time budget spent"))
    return
  import input_pipeline  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  source, write_s = input_pipeline.saved_synthetic(args.input_dir, args.input_examples,
                                                   **input_shapes(shapes))
  dtype, batch = args.dtypes[-1], args.input_batch
  config = bench_config("biam", shapes, batch, dtype)
  config.data.embedding = "random"
  config.model.scene_source = "mean_region"  # the snapshot stores no scene feature
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  trainer = Trainer(config, source.meta, mesh, steps_per_epoch=1000)
  state = trainer.init_state()
  emb = jax.device_put(trainer.emb_seen, trainer.repl)
  n = source.meta.num_examples["train"]
  batches = pipeline.prefetch_to_device(pipeline.train_batches(
      source, split="train", seen_ids=trainer.split.seen, global_batch=batch, seed=0,
      start_step=0, steps_per_epoch=max(1, n // batch),
      shuffle_buffer=config.train.shuffle_buffer, drop_without_positive=True,
      data_shards=mesh.shape["data"], sharding=trainer.batch_sharding),
      trainer.batch_sharding)
  fixed = next(batches)
  step = trainer.train_step.lower(state, fixed, emb).compile()
  for _ in range(args.warmup):
    state, m = step(state, next(batches), emb)
  jax.block_until_ready((state, m))

  def timed(get_batch) -> float:
    nonlocal state
    t0 = time.perf_counter()
    for _ in range(args.input_steps):
      state, metrics = step(state, get_batch(), emb)
    jax.block_until_ready((state, metrics))
    return args.input_steps * batch / (time.perf_counter() - t0)
  on_device = timed(lambda: fixed)
  fed = timed(lambda: next(batches))
  bound = fed < 0.9 * on_device
  emit(Row("input", "train step, batches on device", dtype, batch, images_per_s=on_device))
  emit(Row("input", "train step fed by tf.data from disk", dtype, batch, images_per_s=fed,
           note=(f"INPUT-BOUND: the pipeline delivers {fed / on_device:.0%} of the step's rate "
                 f"on {os.cpu_count()} CPU cores" if bound else
                 f"not input-bound ({fed / on_device:.0%} of the on-device rate)") +
           (f"; records written in {write_s:.0f} s" if write_s else "")))


def input_shapes(shapes: Shapes) -> dict:
  """Synthetic-dataset fields for records of ``shapes`` (3 labels per image in 2 regions
  each, as the synthetic default, where the grid has room)."""
  roomy = shapes.grid[0] * shapes.grid[1] >= 6
  return {"grid": shapes.grid, "feature_dim": shapes.feature_dim,
          "num_seen": shapes.num_seen, "num_unseen": shapes.num_unseen,
          "emb_dim": shapes.emb_dim, "labels_per_image": 3 if roomy else 1,
          "regions_per_label": 2 if roomy else 1}


HEADERS = ("section", "case", "dtype", "batch", "compile (s)", "time (s)", "images/s",
           "TFLOP/s", "% of peak", "memory", "note")


SPECS = ("{}", "{}", "{}", "{:d}", "{:.1f}", "{:.4g}", "{:,.0f}", "{:.1f}", "{:.1f}", "{}", "{}")


def cells(row: Row) -> list[str]:
  """The row's values as table cells ('—' for unmeasured)."""
  out = []
  for value, spec in zip(dataclasses.astuple(row), SPECS):
    unset = (isinstance(value, float) and math.isnan(value)) or (
        spec != "{}" and value == 0)
    out.append("—" if unset else spec.format(value))
  return out


def markdown(rows: list[Row]) -> str:
  lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
  lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
  return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"comma list of {', '.join(SECTIONS)}")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--batches", default="32,256,1024", help="global train batches")
  p.add_argument("--max_batch", type=int, default=16384,
                 help="the upward search for the largest batch stops here")
  p.add_argument("--steps", type=int, default=10, help="timed train steps per case")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--test_rows", type=int, default=NUS_TEST_ROWS)
  p.add_argument("--test_batch", type=int, default=1024, help="eval batch of the test pass")
  p.add_argument("--oi_batch", type=int, default=256)
  p.add_argument("--oi_eval_batches", type=int, default=20)
  p.add_argument("--clip_batch", type=int, default=256, help="global batch of clip_extract")
  p.add_argument("--input_batch", type=int, default=256)
  p.add_argument("--input_steps", type=int, default=20)
  p.add_argument("--input_examples", type=int, default=4096,
                 help="NUS-shaped records written to --input_dir (~200 kB each)")
  p.add_argument("--input_dir", default="/tmp/mlzsl_bench")
  p.add_argument("--budget_s", type=float, default=450.0,
                 help="no new case starts after this many seconds")
  p.add_argument("--peak_gflops", type=float, default=None)
  p.add_argument("--profile", default="", help="jax.profiler traces of the train cases here")
  p.add_argument("--out", default="", help="folder for gpu_suite.json and gpu_suite.md")
  p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU test)")
  args = p.parse_args(argv)
  args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = [s for s in args.sections if s not in SECTIONS]
  if unknown:
    p.error(f"--sections: unknown {unknown}; expected a comma list of {', '.join(SECTIONS)}")
  args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
  return args


def main(argv: list[str] | None = None) -> list[Row]:
  args = parse_args(argv)
  shapes = SMOKE_SHAPES if args.smoke else SHAPES
  budget = Budget(args.budget_s)
  print(accelerator.describe(), flush=True)
  args.peaks = {}  # dtype -> (GFLOP/s, source): measured or looked up once, used by every row
  for dtype in args.dtypes:
    args.peaks[dtype] = peak_gflops(dtype, args.peak_gflops)
    print(f"peak {dtype}: {args.peaks[dtype][0] / 1e3:.1f} TFLOP/s ({args.peaks[dtype][1]})",
          flush=True)
  rows: list[Row] = []

  def emit(row: Row) -> None:
    rows.append(row)
    print(f"[{args.budget_s - budget.left():6.1f} s] " +
          ", ".join(f"{h}: {c}" for h, c in zip(HEADERS, cells(row)) if c not in ("—", "")),
          flush=True)

  runners = {"train": lambda: train_section(shapes["nus_wide"], args, budget, emit),
             "test_pass": lambda: test_pass_section(shapes["nus_wide"], args, budget, emit),
             "open_images": lambda: open_images_section(shapes["open_images"], args, budget,
                                                        emit),
             "clip_extract": lambda: clip_extract_section(args, budget, emit),
             "input": lambda: input_section(shapes["nus_wide"], args, budget, emit)}
  for section in args.sections:
    runners[section]()
  table = markdown(rows)
  dev = jax.devices()[0]
  print(f"\n{dev.device_kind} x{jax.device_count()}, JAX {jax.__version__}, "
        f"`benchmarks/gpu_suite.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
  print(table, flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
      json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
      f.write(table + "\n")
  return rows


if __name__ == "__main__":
  main()
