"""Examples/s (and MB/s) of the training input pipeline, read from datasets on local disk.

The pipeline measured is the trainer's own: ``mlzsl_jax.data.pipeline.train_batches``
(positive-label filter, label selection, shuffle(seed, epoch), batch, prefetch, batch checks),
consumed as host numpy batches (no device transfer, no model). Sources:

  digits_mosaic      the shipped tfds dataset (6000 train mosaics, 36 regions x 16), built
                     under --data_dir on first use and reused after
  synthetic (memory) the ``synthetic`` dataset at NUS-WIDE shapes (196 x 512 fp16, 1006
                     labels), generated on the fly: what generation, not reading, costs
  synthetic (disk)   the same examples written once to local disk with tf.data's
                     ``Dataset.save`` (no compression) and read back: NUS-WIDE-sized records
                     from disk, as a built NUS-WIDE dataset is read

Each row: a warm-up (first shuffle-buffer fill, tf.data start-up), then the timed batches,
which run through several epochs (each epoch refills the shuffle buffer, as in training).
No assertions on time.

  .venv/bin/python benchmarks/input_pipeline.py [--batch 32] [--batches 200] [--warmup 20]
      [--data_dir /tmp/mlzsl_bench] [--nus_examples 2048] [--only digits,memory,disk]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
import tensorflow as tf  # noqa: E402

from mlzsl_jax.config_base import base_config, digits_demo_config  # noqa: E402
from mlzsl_jax.data import digits_mosaic, pipeline, synthetic  # noqa: E402
from mlzsl_jax.data.source import DatasetMeta  # noqa: E402


class SavedSource:
  """``DatasetSource`` over a tf.data snapshot (``Dataset.save``) of another source's split."""

  def __init__(self, meta: DatasetMeta, paths: dict[str, str]):
    self.meta, self.paths = meta, paths

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    return tf.data.Dataset.load(self.paths[split])


def saved_synthetic(root: str, num_examples: int, **fields) -> tuple[SavedSource, float]:
  """The synthetic train split (NUS-WIDE shapes, or the synthetic dataset's ``fields``) saved
  under ``root`` (reused when complete); returns (source, seconds spent writing, 0 when
  reused)."""
  data = ml_collections.ConfigDict({"seed": 0, "num_train": num_examples, "num_test": 1,
                                    **fields})
  memory = synthetic.synthetic_factory(data)
  p = memory.params
  name = (f"synthetic_nus_{num_examples}" if not fields else
          f"synthetic_{num_examples}_{p.grid[0]}x{p.grid[1]}x{p.feature_dim}_{p.num_labels}")
  path = os.path.join(root, name, "train")
  done = os.path.join(path, "COMPLETE")
  seconds = 0.0
  if not os.path.exists(done):
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    memory.as_tf_dataset("train").save(path)
    seconds = time.perf_counter() - t0
    open(done, "w").close()
  return SavedSource(memory.meta, {"train": path}), seconds


def dir_megabytes(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
             for f in fs) / 1e6


def measure(source, seen_ids, batch: int, batches: int, warmup: int) -> dict:
  """Runs ``train_batches`` for warmup + batches batches; rates over the timed ones."""
  n = source.meta.num_examples["train"]
  steps = max(1, n // batch)
  it = pipeline.train_batches(
      source, split="train", seen_ids=seen_ids, global_batch=batch, seed=0, start_step=0,
      steps_per_epoch=steps, shuffle_buffer=base_config().train.shuffle_buffer,
      drop_without_positive=True, data_shards=1)
  t0 = time.perf_counter()
  for _ in range(warmup):
    next(it)
  warm_s = time.perf_counter() - t0
  nbytes = 0
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
    nbytes += sum(v.nbytes for v in b.values())
  dt = time.perf_counter() - t0
  return {"examples_per_s": batches * batch / dt, "mb_per_s": nbytes / dt / 1e6,
          "warmup_s": warm_s, "timed_s": dt, "epochs": (warmup + batches) / steps,
          "example_kb": nbytes / (batches * batch) / 1e3}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32, help="batch size (NUS-WIDE: 32)")
  parser.add_argument("--batches", type=int, default=200, help="timed batches per source")
  parser.add_argument("--warmup", type=int, default=20, help="untimed batches first")
  parser.add_argument("--data_dir", default="/tmp/mlzsl_bench",
                      help="local folder for the built datasets (reused across runs)")
  parser.add_argument("--nus_examples", type=int, default=2048,
                      help="examples of the NUS-shaped synthetic split (~200 kB each)")
  parser.add_argument("--only", default="digits,memory,disk",
                      help="comma-separated subset of digits,memory,disk")
  args = parser.parse_args()
  only = set(args.only.split(","))
  os.makedirs(args.data_dir, exist_ok=True)
  print(f"input pipeline, batch {args.batch}, {args.warmup} warm-up + {args.batches} timed "
        f"batches per source; {os.cpu_count()} CPU cores; data under {args.data_dir}",
        flush=True)
  rows = []
  if "digits" in only:
    c = digits_demo_config()
    c.data.data_dir = os.path.join(args.data_dir, "tfds")
    t0 = time.perf_counter()
    source = digits_mosaic.digits_mosaic_factory(c.data)
    note = f"tfds on disk, ready in {time.perf_counter() - t0:.1f} s"
    rows.append(("digits_mosaic", note,
                 measure(source, c.data.seen_labels, args.batch, args.batches, args.warmup)))
  if "memory" in only:
    data = ml_collections.ConfigDict({"seed": 0, "num_train": args.nus_examples,
                                      "num_test": 1})
    source = synthetic.synthetic_factory(data)
    rows.append(("synthetic (memory)", "generated on the fly, NUS shapes",
                 measure(source, range(925), args.batch, args.batches, args.warmup)))
  if "disk" in only:
    source, write_s = saved_synthetic(args.data_dir, args.nus_examples)
    size = dir_megabytes(source.paths["train"])
    note = (f"tf.data snapshot, {size:.0f} MB on disk" +
            (f", written in {write_s:.1f} s" if write_s else ", reused"))
    rows.append(("synthetic (disk)", note,
                 measure(source, range(925), args.batch, args.batches, args.warmup)))

  print(f"{'source':<20} {'examples/s':>11} {'MB/s':>8} {'kB/example':>10} {'epochs':>7} "
        f"{'warm-up s':>9}  notes")
  for name, note, r in rows:
    print(f"{name:<20} {r['examples_per_s']:>11.0f} {r['mb_per_s']:>8.1f} "
          f"{r['example_kb']:>10.1f} {r['epochs']:>7.2f} {r['warmup_s']:>9.2f}  {note}")


if __name__ == "__main__":
  main()
