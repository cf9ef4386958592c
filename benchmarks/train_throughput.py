"""Images/s of the BiAM train step at NUS-WIDE shapes, on whatever devices exist.

Shapes: 196 regions x 512 channels (VGG19 conv5_4 grid), 925 seen labels, 300-d embeddings,
a 4096-d scene feature (as the official model), channels 256, heads 8. Batches are random
(the step's cost does not depend on values); the step is the library's own jitted, sharded
train step (`mlzsl_jax.train.Trainer`), data-parallel over all devices.

  .venv/bin/python benchmarks/train_throughput.py [--batch 32] [--steps 20] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.config_base import base_config
from mlzsl_jax.data.source import DatasetMeta


def nus_wide_config(batch: int, dtype: str):
  c = base_config()
  c.data.name = "shapes_only"
  c.data.embedding = "glove"
  c.data.seen_labels = tuple(range(925))
  c.data.unseen_labels = tuple(range(925, 1006))
  c.model.scene_source = "dataset"
  c.train.batch_size = batch
  c.dtype = dtype
  return c


def nus_wide_meta() -> DatasetMeta:
  emb = np.random.default_rng(0).normal(size=(1006, 300)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return DatasetMeta(name="nus_wide_shapes", label_names=tuple(map(str, range(1006))),
                     embeddings={"glove": emb}, grid_shape=(14, 14), feature_dim=512,
                     scene_dim=4096, num_examples={})


def random_batch(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  labels = np.where(rng.random((batch, 925)) < 0.01, 1, -1).astype(np.int8)
  labels[:, 0] = 1
  return {"features": rng.random((batch, 196, 512), np.float32).astype(np.float16),
          "labels": labels,
          "scene": rng.random((batch, 4096), np.float32).astype(np.float16)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compile")
  parser.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on GPU/TPU)")
  args = parser.parse_args()

  config = nus_wide_config(args.batch, args.dtype)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  trainer = train.Trainer(config, nus_wide_meta(), mesh, steps_per_epoch=1000)
  state = trainer.init_state()
  emb = jax.device_put(trainer.emb_seen, trainer.repl)
  rng = np.random.default_rng(0)
  batches = [shd.host_to_global(random_batch(args.batch, rng), trainer.batch_sharding)
             for _ in range(2)]

  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, batches[0], emb).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  for i in range(args.warmup):
    state, metrics = trainer.train_step(state, batches[i % 2], emb)
  jax.block_until_ready(metrics["loss"])
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, metrics = trainer.train_step(state, batches[i % 2], emb)
  jax.block_until_ready(metrics["loss"])
  step_s = (time.perf_counter() - t0) / args.steps

  dev = jax.devices()[0]
  rows = [("device", f"{dev.platform}: {dev.device_kind}"), ("devices", jax.device_count()),
          ("dtype", args.dtype), ("global batch", args.batch),
          ("compile (s)", f"{compile_s:.1f}"), ("step time (ms)", f"{1e3 * step_s:.1f}"),
          ("images/s", f"{args.batch / step_s:.1f}"),
          ("GFLOP / image (XLA cost analysis)", f"{flops / args.batch / 1e9:.2f}"),
          ("achieved GFLOP/s", f"{flops / step_s / 1e9:.1f}")]
  width = max(len(k) for k, _ in rows)
  print("BiAM train step, NUS-WIDE shapes (196x512 regions, 925 seen labels, 4096-d scene)")
  for k, v in rows:
    print(f"  {k.ljust(width)}  {v}")


if __name__ == "__main__":
  main()
