"""Where BiAM's train step spends its time: each piece jitted and timed on its own.

  .venv/bin/python benchmarks/step_breakdown.py [--batch 32] [--repeats 5]

NUS-WIDE shapes (14x14 regions x 512, 925 labels, 4096-d scene, channels 256, heads 8).
Rows: the model (eval forward, train-mode forward + loss, gradient) per context setting and
with attention dropout off; the loss forms; top-k pooling; the attention block's matmuls in
both layouts; a 1x1 conv as a convolution and as a matmul. Best of ``--repeats`` runs each.
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


def best_ms(fn, *args, repeats: int) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * min(times)


def model_rows(batch: int, repeats: int, rng: np.random.Generator) -> list[tuple[str, float]]:
  feats = jnp.asarray(rng.random((batch, 196, 512), np.float32).astype(np.float16))
  scene = jnp.asarray(rng.random((batch, 4096), np.float32).astype(np.float16))
  emb = jnp.asarray(rng.normal(size=(925, 300)).astype(np.float32))
  labels = np.where(rng.random((batch, 925)) < 0.01, 1, -1).astype(np.int8)
  labels[:, 0] = 1
  labels = jnp.asarray(labels)
  loss_fn = losses.get_loss("ranking_sorted")
  rows = []
  for context, dropout in (("both", 0.1), ("both", 0.0), ("region", 0.1), ("scene", 0.1),
                           ("none", 0.1)):
    model = BiAM(feature_dim=512, emb_dim=300, grid_shape=(14, 14), scene_dim=4096,
                 context=context, attn_dropout=dropout, rngs=nnx.Rngs(0))
    graph, params, state = nnx.split(model, nnx.Param, ...)
    params, state = nnx.to_pure_dict(params), nnx.to_pure_dict(state)

    def forward(p, s):
      return nnx.merge(graph, p, s)(feats, emb, scene, train=False)["scores"]

    def train_loss(p, s):
      out = nnx.merge(graph, p, s)(feats, emb, scene, train=True, rngs=nnx.Rngs(dropout=0))
      return loss_fn(out, labels, None)[0]

    name = f"BiAM context={context}, attn_dropout={dropout}"
    rows.append((f"{name}: eval forward", best_ms(forward, params, state, repeats=repeats)))
    rows.append((f"{name}: train forward + loss",
                 best_ms(train_loss, params, state, repeats=repeats)))
    rows.append((f"{name}: gradient (forward + backward)",
                 best_ms(jax.grad(train_loss), params, state, repeats=repeats)))
  scores = jnp.asarray(rng.normal(size=(batch, 925)).astype(np.float32))
  for name in ("ranking", "ranking_sorted"):
    fn = losses.get_loss(name)
    rows.append((f"loss {name!r} gradient, [{batch}, 925]",
                 best_ms(jax.grad(lambda s, fn=fn: fn({"scores": s}, labels, None)[0]), scores,
                         repeats=repeats)))
  region = jnp.asarray(rng.normal(size=(batch, 196, 925)).astype(np.float32))
  rows.append(("top-6 mean pooling gradient, [B, 196, 925]",
               best_ms(jax.grad(lambda r: jax.lax.top_k(jnp.swapaxes(r, 1, 2), 6)[0].sum()),
                       region, repeats=repeats)))
  return rows


def block_rows(batch: int, repeats: int, rng: np.random.Generator) -> list[tuple[str, float]]:
  q = jnp.asarray(rng.random((batch, 196, 8, 32), np.float32))
  qh = jnp.swapaxes(q, 1, 2)
  attn = jnp.asarray(rng.random((batch, 8, 196, 196), np.float32))
  x = jnp.asarray(rng.random((batch, 14, 14, 256), np.float32))
  w = jnp.asarray(rng.random((1, 1, 256, 256), np.float32))

  def conv1x1(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def matmul1x1(x, w):
    return jnp.einsum("bhwc,co->bhwo", x, w[0, 0])

  def grad_of(f):
    return jax.grad(lambda x, w: f(x, w).sum(), argnums=(0, 1))

  return [
      ("attention q.k, [b, r, h, d] layout", best_ms(
          lambda a, b: jnp.einsum("bqhd,bkhd->bhqk", a, b), q, q, repeats=repeats)),
      ("attention q.k, [b, h, r, d] layout", best_ms(
          lambda a, b: jnp.einsum("bhqd,bhkd->bhqk", a, b), qh, qh, repeats=repeats)),
      ("attention weights.v, [b, r, h, d] layout", best_ms(
          lambda a, v: jnp.einsum("bhqk,bkhd->bqhd", a, v), attn, q, repeats=repeats)),
      ("attention weights.v, [b, h, r, d] layout", best_ms(
          lambda a, v: jnp.einsum("bhqk,bhkd->bhqd", a, v), attn, qh, repeats=repeats)),
      ("dropout(0.1) on [b, 8, 196, 196] (threefry bits)", best_ms(
          lambda a: nnx.Dropout(0.1)(a, deterministic=False, rngs=nnx.Rngs(dropout=0)),
          attn, repeats=repeats)),
      ("1x1 conv 256->256 as convolution: forward", best_ms(conv1x1, x, w, repeats=repeats)),
      ("1x1 conv 256->256 as matmul: forward", best_ms(matmul1x1, x, w, repeats=repeats)),
      ("1x1 conv 256->256 as convolution: gradient", best_ms(grad_of(conv1x1), x, w,
                                                             repeats=repeats)),
      ("1x1 conv 256->256 as matmul: gradient", best_ms(grad_of(matmul1x1), x, w,
                                                        repeats=repeats)),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(f"{jax.devices()[0].device_kind} x{len(jax.devices())}, batch {args.batch}, best of "
        f"{args.repeats}\n\n| piece | ms |\n|---|---|", flush=True)
  for name, ms in model_rows(args.batch, args.repeats, rng) + block_rows(
      args.batch, args.repeats, rng):
    print(f"| {name} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
  main()
