"""Time and memory of label scoring and of the ranking loss as the label set grows.

Two tables, each a jitted forward + backward:
1. BiAM scoring, dense (``model.label_chunk = 0``: region scores [B, R, L]) vs chunked
   (``label_chunk = --chunk``: [B, R, chunk] at a time); loss sum(scores * w), gradient
   w.r.t. all parameters.
2. Ranking loss on random scores [B, L] (1% positives, 60% negatives, rest unknown):
   pairwise (``ranking_loss``, [B, L, L]) vs sorted (``ranking_loss_sorted``, O(B·L)).

Memory is XLA's compiled ``memory_analysis()`` temp size (buffers besides arguments and
outputs), plus the device's peak bytes in use where the backend reports it (GPU/TPU; not
CPU). A case whose compiled temp size exceeds ``--mem-cap-gb`` is compiled but not run.

  .venv/bin/python benchmarks/label_scaling.py [--labels 1000,8000,20000] [--batch 4]
      [--grid 7] [--feature-dim 64] [--channels 32] [--out-dim 64] [--chunk 1024]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlzsl_jax import losses
from mlzsl_jax.models.biam import BiAM


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def _measure(fn, args, repeats: int, cap_bytes: float) -> dict:
  """Compiles ``fn(*args)``; runs it ``repeats`` times unless its temp memory > cap."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  row = {"compile_s": time.perf_counter() - t0,
         "temp": compiled.memory_analysis().temp_size_in_bytes}
  if row["temp"] > cap_bytes:
    row["skipped"] = f"temp {row['temp'] / 2**30:.1f} GiB > --mem-cap-gb"
    return row
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  row["ms"] = 1e3 * float(np.median(times))
  row["peak"] = _peak_bytes()
  return row


def scoring_case(args, num_labels: int, chunk: int):
  """(fn, inputs) of BiAM forward + backward with ``label_chunk=chunk``."""
  rng = np.random.default_rng(0)
  model = BiAM(feature_dim=args.feature_dim, emb_dim=args.emb_dim,
               grid_shape=(args.grid, args.grid), scene_dim=0, channels=args.channels,
               heads=args.heads, out_dim=args.out_dim, top_k=args.top_k,
               scene_source="mean_region", label_chunk=chunk, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  regions = args.grid * args.grid
  feats = jnp.asarray(rng.normal(size=(args.batch, regions, args.feature_dim)), jnp.float16)
  emb = jnp.asarray(rng.normal(size=(num_labels, args.emb_dim)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(args.batch, num_labels)), jnp.float32)

  def fwd_bwd(params, feats, emb, weights):
    def objective(params):
      scores = nnx.merge(graphdef, params, rest)(feats, emb, train=False)["scores"]
      return jnp.sum(scores * weights)
    return jax.value_and_grad(objective)(params)

  return fwd_bwd, (params, feats, emb, weights)


def loss_case(args, num_labels: int, loss_fn):
  rng = np.random.default_rng(1)
  scores = jnp.asarray(rng.normal(size=(args.batch, num_labels)), jnp.float32)
  states = jnp.asarray(rng.choice([1, -1, 0], size=(args.batch, num_labels),
                                  p=[0.01, 0.6, 0.39]), jnp.int8)
  return jax.value_and_grad(loss_fn), (scores, states)


def _fmt_bytes(n) -> str:
  return "-" if n is None else f"{n / 2**20:10.1f}"


def print_table(title: str, rows: list[tuple[int, str, dict]], extra_name: str,
                extra) -> None:
  print(f"\n{title}")
  print(f"{'labels':>7} {'variant':>14} {'compile s':>9} {'fwd+bwd ms':>10} "
        f"{'temp MiB':>10} {'peak MiB':>10} {extra_name:>14}")
  for labels, name, row in rows:
    ms = f"{row['ms']:10.2f}" if "ms" in row else f"{'skipped':>10}"
    print(f"{labels:7d} {name:>14} {row['compile_s']:9.2f} {ms} {_fmt_bytes(row['temp'])} "
          f"{_fmt_bytes(row.get('peak'))} {_fmt_bytes(extra(labels)):>14}"
          + (f"  ({row['skipped']})" if "skipped" in row else ""))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--labels", default="1000,8000,20000", help="comma-separated L")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--grid", type=int, default=7, help="regions = grid x grid")
  parser.add_argument("--feature-dim", type=int, default=64, help="region feature C")
  parser.add_argument("--emb-dim", type=int, default=32)
  parser.add_argument("--channels", type=int, default=32)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--out-dim", type=int, default=64)
  parser.add_argument("--top-k", type=int, default=6)
  parser.add_argument("--chunk", type=int, default=1024, help="model.label_chunk")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--mem-cap-gb", type=float, default=4.0,
                      help="skip running a case whose compiled temp memory exceeds this")
  args = parser.parse_args()
  labels = [int(x) for x in args.labels.split(",")]
  cap = args.mem_cap_gb * 2**30
  regions = args.grid * args.grid
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; batch {args.batch}, "
        f"regions {regions}, feature dim {args.feature_dim}, channels {args.channels}, "
        f"out dim {args.out_dim}, top-k {args.top_k}, chunk {args.chunk}")

  rows = []
  for num_labels in labels:
    for name, chunk in (("dense", 0), (f"chunk {args.chunk}", args.chunk)):
      fn, inputs = scoring_case(args, num_labels, chunk)
      rows.append((num_labels, name, _measure(fn, inputs, args.repeats, cap)))
  print_table("BiAM scoring, forward + backward (all parameters)", rows,
              "B*R*L*4 MiB", lambda l: args.batch * regions * l * 4)

  rows = []
  for num_labels in labels:
    for name, fn in (("pairwise", losses.ranking_loss),
                     ("sorted", losses.ranking_loss_sorted)):
      f, inputs = loss_case(args, num_labels, fn)
      rows.append((num_labels, name, _measure(f, inputs, args.repeats, cap)))
  print_table("Ranking loss, value + gradient w.r.t. the scores [B, L]", rows,
              "B*L*L*4 MiB", lambda l: args.batch * l * l * 4)


if __name__ == "__main__":
  main()
