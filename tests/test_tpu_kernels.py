"""BiAM's TPU kernels (``region_attention``, ``label_top_k``) against loop references.

The Pallas kernels run here in Pallas' interpreter (the TPU itself compiles them in
test_compile.py). Each is checked against a NumPy loop reference of spec/biam.md's
attention (with the official zero-logit quirk and dropout) or top-k pooling, and its
gradient against the XLA form's autodiff gradient, which the models use off TPU.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlzsl_jax.models import label_top_k, region_attention as ra


def hash_ref(x: int) -> int:
  """lowbias32 on Python ints (mod 2^32)."""
  m = 0xFFFFFFFF
  x ^= x >> 16
  x = (x * 0x7FEB352D) & m
  x ^= x >> 15
  x = (x * 0x846CA68B) & m
  return x ^ (x >> 16)


def keep_ref(seed: int, head: int, i: int, j: int, regions: int, rate: float) -> bool:
  counter = (head * regions + i) * regions + j
  bits = hash_ref((counter * 0x9E3779B9 + seed) & 0xFFFFFFFF)
  return (bits >> 1) >= round(rate * 2**31)


def attention_ref(qkv, seeds, heads, rate, mask_zero):
  """qkv [B, R, 3C] float64 -> [B, R, C]: per image, head and query region, softmax of the
  scaled logits (exact zeros -> -1e9), dropout by the hash, weighted sum of values."""
  b, r, c3 = qkv.shape
  c = c3 // 3
  d = c // heads
  out = np.zeros((b, r, c))
  for n in range(b):
    for h in range(heads):
      q = qkv[n, :, h * d:(h + 1) * d]
      k = qkv[n, :, c + h * d:c + (h + 1) * d]
      v = qkv[n, :, 2 * c + h * d:2 * c + (h + 1) * d]
      for i in range(r):
        logits = np.array([q[i] @ k[j] / math.sqrt(d) for j in range(r)])
        if mask_zero:
          logits = np.where(logits == 0, -1e9, logits)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for j in range(r):
          if rate > 0:
            p[j] = p[j] / (1 - rate) if keep_ref(int(seeds[n]), h, i, j, r, rate) else 0.0
          out[n, i, h * d:(h + 1) * d] += p[j] * v[j]
  return out


def _qkv(seed, b=3, r=10, heads=2, d=4, dtype=np.float32):
  rng = np.random.default_rng(seed)
  qkv = rng.normal(size=(b, r, 3 * heads * d)).astype(dtype)
  qkv[0, 1, :heads * d] = 0  # a zero query: its logits are exactly 0 (the official quirk)
  return qkv


@pytest.mark.parametrize("rate,mask_zero", [(0.0, True), (0.3, True), (0.3, False)])
def test_region_attention_kernel_matches_loop_reference(rate, mask_zero):
  heads = 2
  qkv = _qkv(0, heads=heads)
  seeds = np.asarray(ra.dropout_seeds(jax.random.key(3), qkv.shape[0]))
  want = attention_ref(qkv.astype(np.float64), seeds, heads, rate, mask_zero)
  got_xla = ra.attend_xla(jnp.asarray(qkv), jnp.asarray(seeds), heads=heads, rate=rate,
                          mask_zero=mask_zero)
  got_kernel = ra.attend_pallas(jnp.asarray(qkv), jnp.asarray(seeds), heads, rate,
                                mask_zero, True)
  np.testing.assert_allclose(got_xla, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_kernel, want, rtol=1e-5, atol=1e-5)
  # gradients: the kernel's hand-written backward == autodiff of the XLA form
  w = np.random.default_rng(1).normal(size=want.shape).astype(np.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(jnp.asarray(qkv))  # noqa: E731
  g_xla = grad(lambda x: ra.attend_xla(x, jnp.asarray(seeds), heads=heads, rate=rate,
                                       mask_zero=mask_zero))
  g_kernel = grad(lambda x: ra.attend_pallas(x, jnp.asarray(seeds), heads, rate, mask_zero,
                                             True))
  np.testing.assert_allclose(g_kernel, g_xla, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(g_xla).max()) > 0


def test_attention_dropout_mask_statistics_and_bfloat16():
  """The hash drops ~rate of the weights, differently per image and head; in bfloat16 the
  kernel agrees with the XLA form to bf16 rounding."""
  seeds = np.asarray(ra.dropout_seeds(jax.random.key(0), 4))
  r = 64
  rows, cols = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
  masks = [np.asarray(ra._keep(jnp.uint32(s), h, jnp.asarray(rows), jnp.asarray(cols), r, 0.1))
           for s in seeds for h in range(2)]
  frac = np.mean([m.mean() for m in masks])
  assert abs(frac - 0.9) < 0.01, frac
  assert len({m.tobytes() for m in masks}) == len(masks)
  assert masks[0][3, 5] == keep_ref(int(seeds[0]), 0, 3, 5, r, 0.1)
  qkv = jnp.asarray(_qkv(2), jnp.bfloat16)
  s = jnp.asarray(seeds[:3])
  a = ra.attend_xla(qkv, s, heads=2, rate=0.1, mask_zero=True).astype(jnp.float32)
  b = ra.attend_pallas(qkv, s, 2, 0.1, True, True).astype(jnp.float32)
  assert float(jnp.abs(a - b).max()) <= 2e-2 * float(jnp.abs(a).max())


def top_k_mean_ref(e_f, classifiers, k):
  """e_f [B, R, D], classifiers [L, D] -> [B, L]: per image and label, the mean of the k
  largest region scores."""
  b, r, _ = e_f.shape
  out = np.zeros((b, classifiers.shape[0]))
  for n in range(b):
    for lab in range(classifiers.shape[0]):
      scores = sorted((float(e_f[n, i] @ classifiers[lab]) for i in range(r)), reverse=True)
      out[n, lab] = sum(scores[:k]) / k
  return out


@pytest.mark.parametrize("labels", [7, label_top_k.MAX_WHOLE_LABELS + 5])
def test_label_top_k_kernel_matches_loop_reference(labels):
  """Labels in one tile, and over the tiled path (padded to whole tiles)."""
  rng = np.random.default_rng(labels)
  e_f = rng.normal(size=(2, 9, 4)).astype(np.float32)
  c = rng.normal(size=(labels, 4)).astype(np.float32)
  want = top_k_mean_ref(e_f.astype(np.float64), c.astype(np.float64), 3)
  got = label_top_k.top_k_scores_pallas(jnp.asarray(e_f), jnp.asarray(c), 3, True)
  np.testing.assert_allclose(label_top_k.top_k_scores_xla(e_f, c, 3), want, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  w = rng.normal(size=want.shape).astype(np.float32)
  grads = lambda f: jax.grad(lambda e, c: jnp.sum(f(e, c) * w), (0, 1))(  # noqa: E731
      jnp.asarray(e_f), jnp.asarray(c))
  for g_kernel, g_xla in zip(grads(lambda e, c: label_top_k.top_k_scores_pallas(e, c, 3, True)),
                             grads(lambda e, c: label_top_k.top_k_scores_xla(e, c, 3))):
    np.testing.assert_allclose(g_kernel, g_xla, rtol=1e-5, atol=1e-6)


def test_label_top_k_kernel_ties_and_nan():
  """Equal region scores: the lower region index is taken first, as lax.top_k (so the
  gradient goes to the same regions); a NaN score makes its label's mean NaN."""
  e_f = np.zeros((1, 5, 1), np.float32)
  e_f[0, :, 0] = [1.0, 2.0, 2.0, 2.0, 0.5]
  c = np.array([[1.0], [-1.0]], np.float32)
  f = lambda e: label_top_k.top_k_scores_pallas(e, jnp.asarray(c), 2, True)  # noqa: E731
  np.testing.assert_allclose(f(jnp.asarray(e_f)), [[2.0, -0.75]])
  g = jax.grad(lambda e: f(e)[0, 0])(jnp.asarray(e_f))
  np.testing.assert_allclose(g[0, :, 0], [0, 0.5, 0.5, 0, 0])  # regions 1 and 2, not 3
  e_f[0, 4, 0] = np.nan
  assert np.isnan(np.asarray(f(jnp.asarray(e_f)))).all()
