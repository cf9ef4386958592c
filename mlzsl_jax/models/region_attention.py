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

q, k, v and the output are channels-last [batch, regions, heads * d]: head h holds channels
h*d .. (h+1)*d - 1.
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


def attend_xla(q: jax.Array, k: jax.Array, v: jax.Array, seeds: jax.Array | None, *,
               heads: int, rate: float, mask_zero: bool) -> jax.Array:
  """q, k, v: [B, R, heads*d]; seeds [B] uint32 or None (no dropout) -> [B, R, heads*d]."""
  b, r, c = q.shape
  d = c // heads
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


def _forward_kernel(seeds_ref, q_ref, k_ref, v_ref, o_ref, *, heads, rate, mask_zero):
  c = q_ref.shape[-1]
  d = c // heads
  seed = seeds_ref[pl_program_id()].astype(jnp.uint32) if rate > 0 else None
  for h in range(heads):
    cols = slice(h * d, (h + 1) * d)
    q, k, v = q_ref[0, :, cols], k_ref[0, :, cols], v_ref[0, :, cols]
    _, dropped, _, _ = _head_probs(q, k, seed, h, d, rate, mask_zero)
    o_ref[0, :, cols] = jnp.dot(dropped, v, preferred_element_type=jnp.float32
                                ).astype(o_ref.dtype)


def _backward_kernel(seeds_ref, q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *,
                     heads, rate, mask_zero):
  c = q_ref.shape[-1]
  d = c // heads
  seed = seeds_ref[pl_program_id()].astype(jnp.uint32) if rate > 0 else None
  contract_rows = (((0,), (0,)), ((), ()))  # A^T B
  for h in range(heads):
    cols = slice(h * d, (h + 1) * d)
    q, k, v, do = q_ref[0, :, cols], k_ref[0, :, cols], v_ref[0, :, cols], do_ref[0, :, cols]
    p, dropped, keep, zero = _head_probs(q, k, seed, h, d, rate, mask_zero)
    dv_ref[0, :, cols] = jax.lax.dot_general(dropped, do, contract_rows,
                                             preferred_element_type=jnp.float32
                                             ).astype(dv_ref.dtype)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    if keep is not None:
      dp = jnp.where(keep, dp / _keep_prob(rate, q.dtype), 0.0)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    if zero is not None:
      ds = jnp.where(zero, 0.0, ds)
    ds = (ds / math.sqrt(d)).astype(q.dtype)
    dq_ref[0, :, cols] = jnp.dot(ds, k, preferred_element_type=jnp.float32
                                 ).astype(dq_ref.dtype)
    dk_ref[0, :, cols] = jax.lax.dot_general(ds, q, contract_rows,
                                             preferred_element_type=jnp.float32
                                             ).astype(dk_ref.dtype)


def pl_program_id():
  """The kernel's image index (its grid step)."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  return pl.program_id(0)


# Matmul FLOP per (image, head, query, key, channel): the forward's q k^T and p v; the
# backward's recomputed q k^T, dv, dp, dq and dk.
_MATMULS = {"forward": 2, "backward": 5}


def _call(kernel, inputs: list[jax.Array], seeds: jax.Array, num_outputs: int,
          interpret: bool, **params) -> tuple[jax.Array, ...]:
  """One kernel invocation per image: blocks [1, R, C] of every input and output. Its cost
  is given to XLA (``CostEstimate``: FLOP, exp calls, HBM bytes of the blocks), which
  cannot see into a kernel, so that ``main compile`` counts it."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
  b, r, c = inputs[0].shape
  block = pl.BlockSpec((1, r, c), lambda i: (i, 0, 0))
  seeds_spec = pl.BlockSpec(memory_space=pltpu.SMEM)
  out_shape = [jax.ShapeDtypeStruct((b, r, c), inputs[0].dtype)] * num_outputs
  matmuls = _MATMULS["forward" if num_outputs == 1 else "backward"]
  cost = pl.CostEstimate(
      flops=2 * matmuls * b * r * r * c, transcendentals=b * params["heads"] * r * r,
      bytes_accessed=(len(inputs) + num_outputs) * b * r * c * inputs[0].dtype.itemsize
      + seeds.size * 4)
  extra = {} if interpret else {"compiler_params": pltpu.CompilerParams(
      dimension_semantics=("parallel",))}
  return tuple(pl.pallas_call(
      functools.partial(kernel, **params), grid=(b,),
      in_specs=[seeds_spec] + [block] * len(inputs), out_specs=[block] * num_outputs,
      out_shape=out_shape, interpret=interpret, cost_estimate=cost, **extra)(seeds, *inputs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def attend_pallas(q, k, v, seeds, heads: int, rate: float, mask_zero: bool,
                  interpret: bool = False):
  """The Pallas form of ``attend_xla`` (one image per kernel step; seeds [B] uint32, zeros
  when ``rate == 0``). ``interpret=True`` runs the kernels in Pallas' interpreter (any
  platform; tests)."""
  return _call(_forward_kernel, [q, k, v], seeds, 1, interpret, heads=heads, rate=rate,
               mask_zero=mask_zero)[0]


def _pallas_forward(q, k, v, seeds, heads, rate, mask_zero, interpret):
  out = attend_pallas(q, k, v, seeds, heads, rate, mask_zero, interpret)
  return out, (q, k, v, seeds)


def _pallas_backward(heads, rate, mask_zero, interpret, residuals, d_out):
  q, k, v, seeds = residuals
  dq, dk, dv = _call(_backward_kernel, [q, k, v, d_out.astype(q.dtype)], seeds, 3, interpret,
                     heads=heads, rate=rate, mask_zero=mask_zero)
  return dq, dk, dv, np.zeros(seeds.shape, jax.dtypes.float0)


attend_pallas.defvjp(_pallas_forward, _pallas_backward)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, seeds: jax.Array | None, *,
           heads: int, rate: float, mask_zero: bool) -> jax.Array:
  """q, k, v: [B, R, heads*d]; seeds [B] uint32 or None (no dropout) -> [B, R, heads*d].

  On TPU (the platform of the active mesh, else the default backend) the Pallas kernels,
  run per data shard (``shard_map`` over the mesh's 'data' axis); elsewhere ``attend_xla``.
  """
  if q.shape[-1] % heads:
    raise ValueError(f"channels {q.shape[-1]} must be divisible by heads={heads}")
  if not layers.compiling_for_tpu():
    return attend_xla(q, k, v, seeds, heads=heads, rate=rate, mask_zero=mask_zero)
  rate = rate if seeds is not None else 0.0
  if seeds is None:
    seeds = jnp.zeros((q.shape[0],), jnp.uint32)
  run = lambda q, k, v, s: attend_pallas(q, k, v, s, heads, float(rate),  # noqa: E731
                                         bool(mask_zero))
  spec = P(layers.data_axis_for(q.shape[0]))
  return layers.per_shard(run, (spec,) * 4, spec)(q, k, v, seeds.astype(jnp.uint32))
