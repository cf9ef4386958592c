"""BiAM forward and ranking loss against loop-based NumPy references of spec/biam.md."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlzsl_jax import losses
from mlzsl_jax.models.biam import BiAM, RegionContextBlock
from references import ranking_loss_ref

EPS = 1e-3


# ----------------------------------------------------------------- NumPy reference (loops)

def conv_ref(x, p):
  """x [H, W, Cin], kernel [k, k, Cin, Cout] 'SAME' cross-correlation, + bias."""
  k = p["kernel"].shape[0]
  h, w, _ = x.shape
  pad = (k - 1) // 2
  out = np.zeros((h, w, p["kernel"].shape[-1]))
  for y in range(h):
    for xx in range(w):
      acc = p["bias"].astype(np.float64).copy()
      for i in range(k):
        for j in range(k):
          yy, xj = y + i - pad, xx + j - pad
          if 0 <= yy < h and 0 <= xj < w:
            acc += x[yy, xj] @ p["kernel"][i, j]
      out[y, xx] = acc
  return out


def bn_ref(xs, p, stats, train):
  """xs: list over the batch of [H, W, C]; BatchNorm with eps 1e-3."""
  if train:
    flat = np.stack(xs).reshape(-1, xs[0].shape[-1])
    mean, var = flat.mean(0), flat.var(0)
  else:
    mean, var = stats["mean"], stats["var"]
  return [(x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"] for x in xs]


def relu(x):
  return np.maximum(x, 0)


def lrelu(x):
  return np.where(x > 0, x, 0.2 * x)


def conv_relu_bn_ref(xs, p, stats, train):
  return bn_ref([relu(conv_ref(x, p["conv"])) for x in xs], p["bn"], stats["bn"], train)


def rcb_ref(h, p, heads, mask_zero):
  """h [H, W, C] -> e_r [H, W, C]; one image."""
  gh, gw, c = h.shape
  d_k = c // heads
  q, k, v = (conv_ref(h, p[n]).reshape(gh * gw, c) for n in ("w_q", "w_k", "w_v"))
  out = np.zeros((gh * gw, c))
  for head in range(heads):
    sl = slice(head * d_k, (head + 1) * d_k)
    for i in range(gh * gw):
      logits = np.array([q[i, sl] @ k[j, sl] / math.sqrt(d_k) for j in range(gh * gw)])
      if mask_zero:
        logits = np.where(logits == 0, -1e9, logits)
      wts = np.exp(logits - logits.max())
      wts /= wts.sum()
      out[i, sl] = sum(wts[j] * v[j, sl] for j in range(gh * gw))
  o = conv_ref(out.reshape(gh, gw, c), p["w_o"]) + h
  return conv_ref(relu(conv_ref(o, p["ff1"])), p["ff2"]) + o


def biam_ref(feats, emb, scene, params, stats, *, grid, heads, top_k, train,
             scene_source="dataset", context="both"):
  """feats [B, R, Cin], emb [L, E], scene [B, S] -> (scores [B, L], region scores [B, R, L]).

  context: which blocks feed the fusion conv ('both', 'region', 'scene', 'none' = h_r).
  """
  b = feats.shape[0]
  xs = [feats[i].reshape(grid[0], grid[1], -1) for i in range(b)]
  hs = conv_relu_bn_ref(xs, params["stem"], stats["stem"], train)
  use_region = context in ("both", "region")
  use_scene = context in ("both", "scene")
  sc = params.get("scene_context")
  cgs = []
  for i in range(b if use_scene else 0):
    x_g = feats[i].mean(0) if scene_source == "mean_region" else scene[i]
    qv = lrelu(conv_ref(hs[i], sc["channel_conv"]))
    k_g = x_g @ sc["w_g"]["kernel"] + sc["w_g"]["bias"]
    r_g = 1 / (1 + np.exp(-(qv.reshape(-1, qv.shape[-1]).mean(0) * k_g)))
    cgs.append(r_g * qv)
  if use_scene:
    refined = conv_relu_bn_ref(cgs, sc["refine"], stats["scene_context"]["refine"], train)
  classifiers = emb @ params["label_proj"]["kernel"] + params["label_proj"]["bias"]
  scores = np.zeros((b, emb.shape[0]))
  region = np.zeros((b, grid[0] * grid[1], emb.shape[0]))
  for i in range(b):
    parts = []
    if use_region:
      parts.append(rcb_ref(hs[i], params["region_context"], heads, mask_zero=True))  # e_r
    if use_scene:
      parts.append(cgs[i] + refined[i])  # e_g
    fused_in = np.concatenate(parts, -1) if parts else hs[i]
    e_f = lrelu(conv_ref(fused_in, params["fuse"]))
    e_f = e_f.reshape(-1, e_f.shape[-1])
    for l in range(emb.shape[0]):
      s = np.array([e_f[r] @ classifiers[l] for r in range(e_f.shape[0])])
      region[i, :, l] = s
      scores[i, l] = np.sort(s)[::-1][:top_k].mean()
  return scores, region


# ----------------------------------------------------------------- tests

def _to_np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _small_biam(scene_source="dataset", seed=0, **kw):
  args = dict(feature_dim=6, emb_dim=5, grid_shape=(3, 4), scene_dim=7, channels=8, heads=2,
              out_dim=10, top_k=3, scene_source=scene_source, rngs=nnx.Rngs(seed))
  args.update(kw)
  return BiAM(**args)


def _randomise_stats(model, rng):
  """Random BatchNorm running stats so eval mode exercises them."""
  bns = [model.stem.bn] + ([model.scene_context.refine.bn]
                           if hasattr(model, "scene_context") else [])
  for bn in bns:
    bn.mean[...] = jnp.asarray(rng.normal(size=bn.mean[...].shape), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=bn.var[...].shape), jnp.float32)


@pytest.mark.parametrize("seed,scene_source,context", [
    (0, "dataset", "both"), (1, "mean_region", "both"), (2, "dataset", "both"),
    (3, "dataset", "region"), (4, "mean_region", "scene"), (5, "dataset", "none")])
def test_forward_eval_matches_numpy_reference(seed, scene_source, context):
  rng = np.random.default_rng(seed)
  model = _small_biam(scene_source, seed, context=context)
  _randomise_stats(model, rng)
  feats = rng.normal(size=(3, 12, 6)).astype(np.float32)
  emb = rng.normal(size=(4, 5)).astype(np.float32)
  scene = rng.normal(size=(3, 7)).astype(np.float32)
  out = model(jnp.asarray(feats), jnp.asarray(emb), jnp.asarray(scene), train=False)
  _, params, stats = nnx.split(model, nnx.Param, ...)
  ref_scores, ref_region = biam_ref(feats.astype(np.float64), emb.astype(np.float64),
                                    scene.astype(np.float64), _to_np(nnx.to_pure_dict(params)),
                                    _to_np(nnx.to_pure_dict(stats)), grid=(3, 4), heads=2,
                                    top_k=3, train=False, scene_source=scene_source,
                                    context=context)
  np.testing.assert_allclose(out["region_scores"], ref_region, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["scores"], ref_scores, rtol=1e-4, atol=1e-4)


def test_forward_train_mode_uses_batch_statistics():
  """Dropout off, train=True: BatchNorm normalises with the batch's own statistics."""
  rng = np.random.default_rng(5)
  model = _small_biam("dataset", 5, attn_dropout=0.0, scene_dropout=0.0)
  _randomise_stats(model, rng)
  feats = rng.normal(size=(4, 12, 6)).astype(np.float32)
  emb = rng.normal(size=(3, 5)).astype(np.float32)
  scene = rng.normal(size=(4, 7)).astype(np.float32)
  _, params, stats = nnx.split(model, nnx.Param, ...)
  params, stats = _to_np(nnx.to_pure_dict(params)), _to_np(nnx.to_pure_dict(stats))
  out = model(jnp.asarray(feats), jnp.asarray(emb), jnp.asarray(scene), train=True,
              rngs=nnx.Rngs(dropout=0))
  ref_scores, _ = biam_ref(feats.astype(np.float64), emb.astype(np.float64),
                           scene.astype(np.float64), params, stats, grid=(3, 4), heads=2,
                           top_k=3, train=True)
  np.testing.assert_allclose(out["scores"], ref_scores, rtol=1e-4, atol=1e-4)
  # Running stats moved 99% toward the batch statistics (torch momentum 0.99).
  x = np.stack([relu(conv_ref(f.reshape(3, 4, 6).astype(np.float64), params["stem"]["conv"]))
                for f in feats]).reshape(-1, 8)
  expected_mean = 0.01 * stats["stem"]["bn"]["mean"] + 0.99 * x.mean(0)
  np.testing.assert_allclose(model.stem.bn.mean[...], expected_mean, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_zero", [True, False])
def test_zero_score_mask_quirk(mask_zero):
  """Regions whose key is exactly 0 get score 0: masked to -1e9 only when the flag is on."""
  rng = np.random.default_rng(3)
  block = RegionContextBlock(4, 2, dropout=0.0, mask_zero_scores=mask_zero,
                             dtype=jnp.float32, rngs=nnx.Rngs(0))
  block.w_k.bias[...] = jnp.zeros_like(block.w_k.bias[...])
  h = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
  h[0, 0, :2] = 0.0  # two regions with zero features -> zero keys -> zero scores
  out = block(jnp.asarray(h), train=False, rngs=None)
  p = _to_np(nnx.to_pure_dict(nnx.split(block, nnx.Param, ...)[1]))
  ref = rcb_ref(h[0].astype(np.float64), p, heads=2, mask_zero=mask_zero)
  np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-5)
  other = rcb_ref(h[0].astype(np.float64), p, heads=2, mask_zero=not mask_zero)
  assert np.abs(ref - other).max() > 1e-3  # the flag changes the result


def test_parameter_count_matches_official_model():
  model = nnx.eval_shape(lambda: BiAM(feature_dim=512, emb_dim=300, grid_shape=(14, 14),
                                      scene_dim=4096, rngs=nnx.Rngs(0)))
  params = nnx.split(model, nnx.Param, ...)[1]
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 3_828_480


def test_bad_inputs_name_the_problem():
  model = _small_biam("dataset")
  with pytest.raises(ValueError, match=r"features: expected \[batch, regions, 6\]"):
    model(jnp.zeros((2, 12, 5)), jnp.zeros((3, 5)), jnp.zeros((2, 7)))
  with pytest.raises(ValueError, match="12 regions"):
    BiAM(feature_dim=6, emb_dim=5, grid_shape=(4, 4), scene_dim=7, channels=8, heads=2,
         rngs=nnx.Rngs(0))(jnp.zeros((2, 12, 6)), jnp.zeros((3, 5)), jnp.zeros((2, 7)))
  with pytest.raises(ValueError, match="scene_source='dataset'"):
    BiAM(feature_dim=6, emb_dim=5, grid_shape=(3, 4), scene_dim=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="divisible by model.heads"):
    BiAM(feature_dim=6, emb_dim=5, grid_shape=(3, 4), scene_dim=7, channels=9, heads=2,
         rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"model.context='regions'.*'both'"):
    _small_biam(context="regions")


@pytest.mark.parametrize("seed", range(6))
def test_ranking_loss_matches_loop_reference(seed):
  rng = np.random.default_rng(seed)
  b, l = rng.integers(1, 6), rng.integers(2, 12)
  scores = rng.normal(size=(b, l)) * rng.uniform(0.1, 3)
  states = rng.choice([-1, 0, 1], size=(b, l)).astype(np.int8)
  states[0] = 0  # an image with no pairs contributes 0 but still counts in the mean
  got = losses.ranking_loss(jnp.asarray(scores, jnp.float32), jnp.asarray(states))
  np.testing.assert_allclose(got, ranking_loss_ref(scores, states), rtol=1e-5, atol=1e-6)
