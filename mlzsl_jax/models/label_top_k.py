"""BiAM's image scores: for each image and label, the mean of the k largest region scores
e_f[b, r] . c[l] over the regions r.

  xla     the region scores [batch, regions, labels] as one einsum (float32), then
          ``lax.top_k`` over the regions; every platform but TPU.
  pallas  on TPU: one Pallas kernel per (label tile, image) computes the tile's region scores
          in on-chip memory and takes their top k there, so the [batch, regions, labels]
          scores (25 MB per 1,024 labels at 32 images) are never written to HBM; only the
          means [batch, labels] and the top-k region indices [batch, k, labels] are. The
          gradient is the einsum's, applied to the 1/k-weighted one-hot of those indices,
          which XLA builds inside the matmuls that consume it.
Equal up to float summation order; ties as ``lax.top_k`` (the lower region index first); a
NaN score makes its label's mean NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mlzsl_jax.models import layers

LABEL_TILE = 1024  # labels per kernel step when there are more than MAX_WHOLE_LABELS
MAX_WHOLE_LABELS = 2048


def region_scores(e_f: jax.Array, classifiers: jax.Array) -> jax.Array:
  """e_f: [B, R, D], classifiers: [L, D] -> region scores [B, R, L], float32 (the products
  in the inputs' dtype, accumulated in float32)."""
  return jnp.einsum("brd,ld->brl", e_f, classifiers, preferred_element_type=jnp.float32)


def top_k_mean(region: jax.Array, k: int) -> jax.Array:
  """region scores [B, R, L] -> the mean of each label's k largest [B, L] (float32)."""
  return jax.lax.top_k(jnp.swapaxes(region, 1, 2).astype(jnp.float32), k)[0].mean(axis=-1)


def top_k_scores_xla(e_f: jax.Array, classifiers: jax.Array, k: int) -> jax.Array:
  """e_f: [B, R, D], classifiers: [L, D] -> mean of the top-k region scores [B, L]."""
  return top_k_mean(layers.constrain_label_axis(region_scores(e_f, classifiers)), k)


def _kernel(e_ref, c_ref, mean_ref, index_ref, *, k: int):
  """One image, one label tile: e [R, D], c [T, D] -> mean [1, T], indices [k, T]."""
  s = jax.lax.dot_general(e_ref[0], c_ref[...], (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32)  # [R, T]
  r = s.shape[0]
  rows = jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
  has_nan = jnp.any(s != s, axis=0, keepdims=True)
  total = jnp.zeros((1, s.shape[1]), jnp.float32)
  for j in range(k):
    best = jnp.max(s, axis=0, keepdims=True)
    first = jnp.min(jnp.where(s == best, rows, r), axis=0, keepdims=True)  # lowest index
    total = total + best
    index_ref[0, j:j + 1, :] = first
    s = jnp.where(rows == first, -jnp.inf, s)
  mean_ref[0] = jnp.where(has_nan, jnp.nan, total / k)


def _label_tile(num_labels: int) -> int:
  return num_labels if num_labels <= MAX_WHOLE_LABELS else LABEL_TILE


def _top_k_kernel(e_f: jax.Array, classifiers: jax.Array, k: int, interpret: bool
                  ) -> tuple[jax.Array, jax.Array]:
  """(means [B, L] float32, top-k region indices [B, k, L] int32) of one shard."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
  b, r, d = e_f.shape
  num_labels = classifiers.shape[0]
  tile = _label_tile(num_labels)
  padded = -(-num_labels // tile) * tile
  c = jnp.pad(classifiers, ((0, padded - num_labels), (0, 0))) if padded > num_labels \
      else classifiers
  # label tiles outer, images inner: a tile's classifiers stay on chip while the images pass
  grid = (padded // tile, b)
  extra = {} if interpret else {"compiler_params": pltpu.CompilerParams(
      dimension_semantics=("parallel", "arbitrary"))}
  means, indices = pl.pallas_call(
      functools.partial(_kernel, k=k), grid=grid,
      in_specs=[pl.BlockSpec((1, r, d), lambda t, i: (i, 0, 0)),
                pl.BlockSpec((tile, d), lambda t, i: (t, 0))],
      out_specs=[pl.BlockSpec((1, 1, tile), lambda t, i: (i, 0, t)),
                 pl.BlockSpec((1, k, tile), lambda t, i: (i, 0, t))],
      out_shape=[jax.ShapeDtypeStruct((b, 1, padded), jnp.float32),
                 jax.ShapeDtypeStruct((b, k, padded), jnp.int32)],
      interpret=interpret, cost_estimate=pl.CostEstimate(  # XLA cannot see into a kernel
          flops=2 * b * r * d * padded, transcendentals=0,
          bytes_accessed=(padded // tile) * e_f.size * e_f.dtype.itemsize
          + padded * d * e_f.dtype.itemsize + b * (1 + k) * padded * 4),
      **extra)(e_f, c.astype(e_f.dtype))
  return means[:, 0, :num_labels], indices[:, :, :num_labels]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def top_k_scores_pallas(e_f: jax.Array, classifiers: jax.Array, k: int,
                        interpret: bool = False) -> jax.Array:
  """The Pallas form of ``top_k_scores_xla`` on one shard (``interpret=True``: Pallas'
  interpreter, any platform; tests)."""
  return _top_k_kernel(e_f, classifiers, k, interpret)[0]


def _forward(e_f, classifiers, k, interpret):
  means, indices = _top_k_kernel(e_f, classifiers, k, interpret)
  return means, (e_f, classifiers, indices)


def _backward(k, interpret, residuals, g):
  del interpret
  e_f, classifiers, indices = residuals
  rows = jax.lax.broadcasted_iota(jnp.int32, (e_f.shape[0], e_f.shape[1],
                                              classifiers.shape[0]), 1)
  hit = jnp.zeros(rows.shape, bool)
  for j in range(k):
    hit = hit | (rows == indices[:, j:j + 1, :])
  d_scores = jnp.where(hit, (g / k)[:, None, :], 0.0)  # [B, R, L]
  _, pullback = jax.vjp(region_scores, e_f, classifiers)
  return pullback(d_scores)


top_k_scores_pallas.defvjp(_forward, _backward)


def top_k_scores(e_f: jax.Array, classifiers: jax.Array, k: int) -> jax.Array:
  """e_f: [B, R, D], classifiers: [L, D] -> mean of each label's k largest region scores
  [B, L] (float32). On TPU the Pallas kernel, per shard of the active mesh (images over
  'data', labels over 'model'); elsewhere ``top_k_scores_xla``."""
  if not layers.compiling_for_tpu():
    return top_k_scores_xla(e_f, classifiers, k)
  data, model = layers.mesh_axis_for("data", e_f.shape[0]), layers.mesh_axis_for(
      "model", classifiers.shape[0])
  run = lambda e, c: top_k_scores_pallas(e, c, k)  # noqa: E731
  return layers.per_shard(run, (P(data), P(model)), P(data, model))(e_f, classifiers)
