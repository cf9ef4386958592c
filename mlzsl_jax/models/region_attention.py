"""BiAM's region self-attention, per image and head: softmax(q k^T / sqrt(d)) v, with the
official zero-logit quirk (a logit exactly 0 counts as masked) and dropout on the attention
probabilities.

Two implementations of the same function, picked by the platform the program is compiled
for (``attend``):
  xla     einsums over [batch, heads, regions, regions] maps; every other platform.
  pallas  on TPU: one Pallas kernel per image computes all heads with the maps in on-chip
          memory only, and a second kernel recomputes them for the gradient. XLA's version
          writes the [batch, heads, regions, regions] maps (and their dropout masks and
          gradients) to HBM several times; ``main compile --top_bytes`` counted them as the
          larger part of BiAM's train-step traffic on TPU.
Both draw the dropout mask from the same counter-based hash of (per-image seed, head, query
region, key region), so they agree exactly in what they drop, on any number of devices.

The input is q, k and v side by side, channels-last: qkv [batch, regions, 3 * heads * d]
(one projection matmul); the output [batch, regions, heads * d]. Head h holds channels
h*d .. (h+1)*d - 1 of each.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mlzsl_jax.models import layers

# lowbias32 (Chris Wellons' integer hash): a well-mixed uint32 -> uint32 bijection.
_MIX_1, _MIX_2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)
ZERO_LOGIT = -1e9  # the official code's value for a masked (exactly zero) logit


def _hash(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * _MIX_1
  x = x ^ (x >> 15)
  x = x * _MIX_2
  return x ^ (x >> 16)


def _keep_threshold(rate: float) -> int:
  """Entries whose 31-bit hash is >= this are kept (probability 1 - rate)."""
  return int(round(rate * 2**31))


def _keep(seed: jax.Array, head: int | jax.Array, rows: jax.Array, cols: jax.Array,
          num_regions: int, rate: float) -> jax.Array:
  """bool [..., R, R]: the dropout mask of one image's head (seed: uint32 scalar or [B, 1, 1,
  1]; rows, cols: int32 region indices broadcast to the mask's shape)."""
  counter = ((head * num_regions + rows) * num_regions + cols).astype(jnp.uint32)
  bits = _hash(counter * _GOLDEN + seed)
  return (bits >> 1).astype(jnp.int32) >= _keep_threshold(rate)


def dropout_seeds(key: jax.Array, batch: int) -> jax.Array:
  """[batch] uint32: one dropout seed per image, from a JAX PRNG key."""
  return jax.random.bits(key, (batch,), jnp.uint32)


def _logits(q: jax.Array, k: jax.Array, d: int, mask_zero: bool) -> jax.Array:
  """q, k: [..., R, d] -> logits [..., R, R] in q's dtype (the product rounded to it, then
  scaled, as the official code), exact zeros replaced by ZERO_LOGIT when ``mask_zero``."""
  s = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
  s = s.astype(q.dtype) / math.sqrt(d)
  if mask_zero:
    s = jnp.where(s == 0, jnp.asarray(ZERO_LOGIT, s.dtype), s)
  return s


def attend_xla(qkv: jax.Array, seeds: jax.Array | None, *, heads: int, rate: float,
               mask_zero: bool) -> jax.Array:
  """qkv: [B, R, 3 * heads*d]; seeds [B] uint32 or None (no dropout) -> [B, R, heads*d]."""
  b, r, c3 = qkv.shape
  c = c3 // 3
  d = c // heads
  q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
  split = lambda x: jnp.swapaxes(x.reshape(b, r, heads, d), 1, 2)  # noqa: E731  [B, H, R, d]
  qh, kh, vh = split(q), split(k), split(v)
  attn = jax.nn.softmax(_logits(qh, kh, d, mask_zero).astype(jnp.float32), axis=-1)
  attn = attn.astype(v.dtype)
  if seeds is not None and rate > 0:
    rows = jax.lax.broadcasted_iota(jnp.int32, (1, heads, r, r), 2)
    cols = jax.lax.broadcasted_iota(jnp.int32, (1, heads, r, r), 3)
    head = jax.lax.broadcasted_iota(jnp.int32, (1, heads, r, r), 1)
    keep = _keep(seeds.astype(jnp.uint32)[:, None, None, None], head, rows, cols, r, rate)
    attn = jnp.where(keep, attn / jnp.asarray(1.0 - rate, attn.dtype), jnp.zeros((), attn.dtype))
  out = jnp.einsum("bhqk,bhkd->bhqd", attn, vh)
  return jnp.swapaxes(out, 1, 2).reshape(b, r, c)


# ---------------------------------------------------------------------------- Pallas (TPU)

def _keep_prob(rate: float, dtype) -> float:
  """1 - rate as the XLA form divides by it: rounded to the compute dtype."""
  return float(np.asarray(1.0 - rate, dtype=dtype))


def _head_probs(q, k, seed, h, d, rate, mask_zero):
  """One head in the kernel: (softmax probabilities f32 [R, R], the same rounded to the
  input dtype with dropout applied, the dropout keep mask or None, the zero-logit mask)."""
  r = q.shape[0]
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  s = s.astype(q.dtype).astype(jnp.float32) / math.sqrt(d)
  s = s.astype(q.dtype).astype(jnp.float32)
  zero = (s == 0) if mask_zero else None
  if zero is not None:
    s = jnp.where(zero, jnp.float32(ZERO_LOGIT), s)
  e = jnp.exp(s - s.max(axis=-1, keepdims=True))
  p = e / e.sum(axis=-1, keepdims=True)
  dropped = p.astype(q.dtype)
  keep = None
  if rate > 0:
    rows = jax.lax.broadcasted_iota(jnp.int32, (r, r), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (r, r), 1)
    keep = _keep(seed, h, rows, cols, r, rate)
    scaled = (dropped.astype(jnp.float32) / _keep_prob(rate, q.dtype)).astype(q.dtype)
    dropped = jnp.where(keep, scaled, jnp.zeros((), q.dtype))
  return p, dropped, keep, zero


def _columns(c: int, d: int, h: int) -> tuple[slice, slice, slice]:
  """Head h's channels of q, k and v in a [.., 3c] qkv block."""
  return tuple(slice(i * c + h * d, i * c + (h + 1) * d) for i in range(3))


def _forward_kernel(seeds_ref, qkv_ref, o_ref, *, heads, rate, mask_zero):
  c = o_ref.shape[-1]
  d = c // heads
  seed = seeds_ref[pl_program_id()].astype(jnp.uint32) if rate > 0 else None
  for h in range(heads):
    cols = slice(h * d, (h + 1) * d)
    q, k, v = (qkv_ref[0, :, x] for x in _columns(c, d, h))
    _, dropped, _, _ = _head_probs(q, k, seed, h, d, rate, mask_zero)
    o_ref[0, :, cols] = jnp.dot(dropped, v, preferred_element_type=jnp.float32
                                ).astype(o_ref.dtype)


def _backward_kernel(seeds_ref, qkv_ref, do_ref, dqkv_ref, *, heads, rate, mask_zero):
  c = do_ref.shape[-1]
  d = c // heads
  seed = seeds_ref[pl_program_id()].astype(jnp.uint32) if rate > 0 else None
  contract_rows = (((0,), (0,)), ((), ()))  # A^T B
  for h in range(heads):
    q_cols, k_cols, v_cols = _columns(c, d, h)
    q, k, v = (qkv_ref[0, :, x] for x in (q_cols, k_cols, v_cols))
    do = do_ref[0, :, slice(h * d, (h + 1) * d)]
    p, dropped, keep, zero = _head_probs(q, k, seed, h, d, rate, mask_zero)
    dqkv_ref[0, :, v_cols] = jax.lax.dot_general(dropped, do, contract_rows,
                                                 preferred_element_type=jnp.float32
                                                 ).astype(dqkv_ref.dtype)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    if keep is not None:
      dp = jnp.where(keep, dp / _keep_prob(rate, q.dtype), 0.0)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    if zero is not None:
      ds = jnp.where(zero, 0.0, ds)
    ds = (ds / math.sqrt(d)).astype(q.dtype)
    dqkv_ref[0, :, q_cols] = jnp.dot(ds, k, preferred_element_type=jnp.float32
                                     ).astype(dqkv_ref.dtype)
    dqkv_ref[0, :, k_cols] = jax.lax.dot_general(ds, q, contract_rows,
                                                 preferred_element_type=jnp.float32
                                                 ).astype(dqkv_ref.dtype)


def pl_program_id():
  """The kernel's image index (its grid step)."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  return pl.program_id(0)


# Matmul FLOP per (image, head, query, key, channel): the forward's q k^T and p v; the
# backward's recomputed q k^T, dv, dp, dq and dk.
_MATMULS = {"forward": 2, "backward": 5}


def _call(kernel, qkv: jax.Array, seeds: jax.Array, d_out: jax.Array | None,
          interpret: bool, **params) -> jax.Array:
  """One kernel invocation per image: the forward (qkv [B, R, 3C] -> out [B, R, C]) or,
  given ``d_out`` [B, R, C], the backward (-> d qkv [B, R, 3C]). Its cost is given to XLA
  (``CostEstimate``: FLOP, exp calls, HBM bytes of the blocks), which cannot see into a
  kernel, so that ``main compile`` counts it."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
  b, r, c3 = qkv.shape
  c = c3 // 3
  block = lambda width: pl.BlockSpec((1, r, width), lambda i: (i, 0, 0))  # noqa: E731
  inputs, in_specs = [seeds, qkv], [pl.BlockSpec(memory_space=pltpu.SMEM), block(c3)]
  if d_out is not None:
    inputs.append(d_out.astype(qkv.dtype))
    in_specs.append(block(c))
  width = c if d_out is None else c3
  # matmuls per (image, head, query, key, channel): forward q k^T and p v; backward the
  # recomputed q k^T, dv, dp, dq and dk
  matmuls = 2 if d_out is None else 5
  cost = pl.CostEstimate(
      flops=2 * matmuls * b * r * r * c, transcendentals=b * params["heads"] * r * r,
      bytes_accessed=(c3 + width + (0 if d_out is None else c)) * b * r * qkv.dtype.itemsize
      + seeds.size * 4)
  extra = {} if interpret else {"compiler_params": pltpu.CompilerParams(
      dimension_semantics=("parallel",))}
  return pl.pallas_call(
      functools.partial(kernel, **params), grid=(b,), in_specs=in_specs,
      out_specs=block(width), out_shape=jax.ShapeDtypeStruct((b, r, width), qkv.dtype),
      interpret=interpret, cost_estimate=cost, **extra)(*inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def attend_pallas(qkv, seeds, heads: int, rate: float, mask_zero: bool,
                  interpret: bool = False):
  """The Pallas form of ``attend_xla`` (one image per kernel step; seeds [B] uint32, zeros
  when ``rate == 0``). ``interpret=True`` runs the kernels in Pallas' interpreter (any
  platform; tests)."""
  return _call(_forward_kernel, qkv, seeds, None, interpret, heads=heads, rate=rate,
               mask_zero=mask_zero)


def _pallas_forward(qkv, seeds, heads, rate, mask_zero, interpret):
  return attend_pallas(qkv, seeds, heads, rate, mask_zero, interpret), (qkv, seeds)


def _pallas_backward(heads, rate, mask_zero, interpret, residuals, d_out):
  qkv, seeds = residuals
  d_qkv = _call(_backward_kernel, qkv, seeds, d_out, interpret, heads=heads, rate=rate,
                mask_zero=mask_zero)
  return d_qkv, np.zeros(seeds.shape, jax.dtypes.float0)


attend_pallas.defvjp(_pallas_forward, _pallas_backward)


def attend(qkv: jax.Array, seeds: jax.Array | None, *, heads: int, rate: float,
           mask_zero: bool) -> jax.Array:
  """qkv: [B, R, 3C] (q, k, v: C = heads*d channels each); seeds [B] uint32 or None (no
  dropout) -> [B, R, C].

  On TPU (the platform of the active mesh, else the default backend) the Pallas kernels,
  run per data shard (``shard_map`` over the mesh's 'data' axis); elsewhere ``attend_xla``.
  """
  if qkv.shape[-1] % (3 * heads):
    raise ValueError(f"qkv has {qkv.shape[-1]} channels: expected 3 x heads ({heads}) x d")
  if not layers.compiling_for_tpu():
    return attend_xla(qkv, seeds, heads=heads, rate=rate, mask_zero=mask_zero)
  rate = rate if seeds is not None else 0.0
  if seeds is None:
    seeds = jnp.zeros((qkv.shape[0],), jnp.uint32)
  run = lambda x, s: attend_pallas(x, s, heads, float(rate), bool(mask_zero))  # noqa: E731
  spec = P(layers.mesh_axis_for("data", qkv.shape[0]))
  return layers.per_shard(run, (spec, spec), spec)(qkv, seeds.astype(jnp.uint32))
