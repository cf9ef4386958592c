"""Large label sets: label-chunked scoring (BiAM, one attention per label) equals the dense
path in value and gradient; the sort-based ranking loss equals the pairwise one; a chunked
train step is the same on 1 device and a 4x2 mesh; 20k labels run in small memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlzsl_jax import step as step_lib
from mlzsl_jax import losses
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.models import attention_per_label as apl
from mlzsl_jax.models import biam, layers
from mlzsl_jax.models.biam import BiAM
from references import ranking_loss_ref, tiny_batch, tiny_biam_config, tiny_meta, train_steps

GRID = (3, 4)


def _biam(label_chunk, seed=0, **kw):
  args = dict(feature_dim=6, emb_dim=5, grid_shape=GRID, scene_dim=7, channels=8, heads=2,
              out_dim=10, top_k=3, label_chunk=label_chunk, rngs=nnx.Rngs(seed))
  args.update(kw)
  return BiAM(**args)


def _randomise_stats(model, rng):
  for bn in (model.stem.bn, model.scene_context.refine.bn):
    bn.mean[...] = jnp.asarray(rng.normal(size=bn.mean[...].shape), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=bn.var[...].shape), jnp.float32)


def _value_and_grads(model, feats, emb, scene, weights):
  """sum(scores * weights) and its gradient w.r.t. (params, feats, label embeddings)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def f(params, feats, emb):
    out = nnx.merge(graphdef, params, rest)(feats, emb, scene, train=False)
    return jnp.sum(out["scores"] * weights), out

  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
      params, feats, emb)
  return out, grads


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------- chunked == dense

def test_map_label_chunks_pads_and_slices():
  """Any chunk size (dividing L or not, larger than L) gives the all-at-once result."""
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
  for chunk in (1, 3, 5, 16):
    got = layers.map_label_chunks(lambda e: x @ e.T, emb, chunk)
    np.testing.assert_allclose(got, x @ emb.T, rtol=1e-6)


def test_chunked_biam_equals_dense_in_value_and_gradient(seed=0, num_labels=10, chunk=3):
  """L not a multiple of the chunk: the last chunk is padded."""
  rng = np.random.default_rng(seed)
  dense, chunked = _biam(0, seed), _biam(chunk, seed)
  for m in (dense, chunked):
    _randomise_stats(m, np.random.default_rng(seed + 10))
  feats = jnp.asarray(rng.normal(size=(3, 12, 6)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(num_labels, 5)), jnp.float32)
  scene = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, num_labels)), jnp.float32)
  out_d, grads_d = _value_and_grads(dense, feats, emb, scene, weights)
  out_c, grads_c = _value_and_grads(chunked, feats, emb, scene, weights)
  assert "region_scores" not in out_c and out_d["region_scores"].shape == (3, 12, num_labels)
  np.testing.assert_allclose(out_c["scores"], out_d["scores"], rtol=1e-5, atol=1e-6)
  _assert_trees_close(grads_c, grads_d)
  # region scores of a label subset (for plots) stay available with chunking on
  subset = chunked.region_scores(feats, emb[:2], scene)
  np.testing.assert_allclose(subset, out_d["region_scores"][..., :2], rtol=1e-5, atol=1e-6)


def test_chunked_attention_per_label_equals_dense_in_value_and_gradient():
  rng = np.random.default_rng(3)
  args = dict(feature_dim=6, emb_dim=5, grid_shape=GRID, conv_channels=7)
  dense = apl.AttentionPerLabel(**args, rngs=nnx.Rngs(3))
  chunked = apl.AttentionPerLabel(**args, label_chunk=4, rngs=nnx.Rngs(3))
  feats = jnp.asarray(rng.normal(size=(3, 12, 6)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(9, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 9)), jnp.float32)
  out_d, grads_d = _value_and_grads(dense, feats, emb, None, weights)
  out_c, grads_c = _value_and_grads(chunked, feats, emb, None, weights)
  assert set(out_c) == {"scores"} and "attention" in out_d
  np.testing.assert_allclose(out_c["scores"], out_d["scores"], rtol=1e-5, atol=1e-6)
  _assert_trees_close(grads_c, grads_d)


def test_bad_label_chunk_names_the_field():
  for bad in (-1, 2.5, True):
    with pytest.raises(ValueError, match=r"model.label_chunk=.*expected an int >= 0"):
      _biam(bad)
  with pytest.raises(ValueError, match=r"model.label_chunk=-3"):
    apl.AttentionPerLabel(feature_dim=6, emb_dim=5, grid_shape=GRID, label_chunk=-3,
                          rngs=nnx.Rngs(0))
  assert biam.model_config().label_chunk == 0 and apl.model_config().label_chunk == 0


# ----------------------------------------------------------------- sorted == pairwise loss


def ranking_grad_ref(scores, states):
  """Loop reference of the gradient with the hinge's slope 0 at exactly 0 (``h > 0``)."""
  grad = np.zeros_like(scores, dtype=np.float64)
  for i, (s, y) in enumerate(zip(scores, states)):
    pairs = [(p, n) for p in range(len(y)) for n in range(len(y))
             if y[p] == 1 and y[n] == -1 and 1 + s[n] - s[p] > 0]
    for p, n in pairs:
      grad[i, p] -= 1 / (len(pairs) + 1e-8)
      grad[i, n] += 1 / (len(pairs) + 1e-8)
  return grad / len(scores)


def _has_exact_ties(scores, states):
  """Any pair with (1 + s_n) - s_p == 0 exactly in float32 (where the gradients differ)."""
  for s, y in zip(scores, states):
    keys = np.float32(1) + s[y < 0]
    if np.isin(s[y > 0], keys).any():
      return True
  return False


def _random_case(seed, b=5, l=33):
  """Fixed shape (one compile for all cases); the first image is special: no pairs / no
  negatives / no positives / random, by seed."""
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(b, l)) * rng.uniform(0.1, 3) + rng.normal() * 5
  states = rng.choice([-1, 0, 1], size=(b, l), p=rng.dirichlet([1, 1, 1])).astype(np.int8)
  states[0] = (0, 1, -1, states[0])[seed % 4]
  return scores.astype(np.float32), states


_pairwise = jax.jit(jax.value_and_grad(losses.ranking_loss))
_sorted = jax.jit(jax.value_and_grad(losses.ranking_loss_sorted))


@pytest.mark.parametrize("seed", range(12))
def test_sorted_ranking_loss_equals_pairwise_in_value_and_gradient(seed):
  scores, states = _random_case(seed)
  assert not _has_exact_ties(scores, states)
  got, g_sorted = _sorted(scores, states)
  want, g_pairwise = _pairwise(scores, states)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, ranking_loss_ref(scores.astype(np.float64), states),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_sorted, g_pairwise, atol=1e-6)
  np.testing.assert_allclose(g_sorted, ranking_grad_ref(scores, states), atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_sorted_ranking_loss_with_exact_ties(seed):
  """Scores on a grid of halves: many pairs with 1 + s_n - s_p exactly 0, and equal scores.
  Values agree; the gradient treats a hinge of exactly 0 as flat (slope 0), where jax.grad
  of the pairwise version gives 1/2 (``jnp.maximum`` splits ties)."""
  rng = np.random.default_rng(100 + seed)
  scores = (rng.integers(-4, 5, size=(5, 33)) / 2).astype(np.float32)
  states = rng.choice([-1, 0, 1], size=(5, 33)).astype(np.int8)
  assert _has_exact_ties(scores, states)
  got, g_sorted = _sorted(scores, states)
  want, g_pairwise = _pairwise(scores, states)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got, ranking_loss_ref(scores.astype(np.float64), states),
                             rtol=1e-6)
  np.testing.assert_allclose(g_sorted, ranking_grad_ref(scores, states), atol=1e-6)
  assert np.abs(g_sorted - g_pairwise).max() > 1e-4  # the 1/2 at hinge exactly 0


def test_sorted_ranking_loss_is_registered_and_exact_at_a_few_thousand_labels():
  """Values with scores offset by 30 (the centring keeps float32 sums exact enough);
  gradients on tie-free scores."""
  rng = np.random.default_rng(7)
  states = rng.choice([-1, 0, 1], size=(2, 2000), p=[0.6, 0.3, 0.1]).astype(np.int8)
  scores = (rng.normal(size=(2, 2000)) * 2).astype(np.float32)
  assert not _has_exact_ties(scores, states)
  for offset in (0.0, 30.0):
    loss, aux = jax.jit(losses.get_loss("ranking_sorted"), static_argnums=2)(
        {"scores": scores + offset}, states, None)
    want = jax.jit(losses.ranking_loss)(scores + offset, states)
    np.testing.assert_allclose(loss, want, rtol=2e-5)
    np.testing.assert_allclose(aux["ranking_loss"], want, rtol=2e-5)
  (_, g_sorted), (_, g_pairwise) = _sorted(scores, states), _pairwise(scores, states)
  np.testing.assert_allclose(g_sorted, g_pairwise, atol=1e-9)


# ----------------------------------------------------------------- sharding

def tiny_config(label_chunk, loss):
  c = tiny_biam_config()
  c.model.label_chunk = label_chunk
  c.loss.name = loss
  return c


def run_steps(mesh, label_chunk, loss, n_steps=2):
  trainer = step_lib.Trainer(tiny_config(label_chunk, loss), tiny_meta(), mesh, steps_per_epoch=1)
  state, metrics = train_steps(trainer, lambda i: tiny_batch(i, states=(-1, 0, 1)), n_steps)
  return [float(m["loss"]) for m in metrics], jax.device_get(state.params)


def test_chunked_sorted_train_step_same_on_one_device_and_4x2_mesh():
  """label_chunk=3 over 7 labels + loss 'ranking_sorted': 2 train steps, 1 device == 4x2."""
  ref_losses, ref_params = run_steps(shd.make_mesh(devices=jax.devices()[:1]), 3,
                                     "ranking_sorted")
  got_losses, params = run_steps(shd.make_mesh(4, 2), 3, "ranking_sorted")
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5, atol=1e-6)
  _assert_trees_close(params, ref_params, rtol=1e-5, atol=1e-6)
  assert ref_losses[0] > 0


def test_label_axis_sharded_over_model_inside_a_mesh_context():
  """Under ``jax.set_mesh`` the region scores of each chunk are constrained to
  P('data', None, 'model'); the scores equal the 1-device ones."""
  rng = np.random.default_rng(4)
  model = _biam(4, 4)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  feats = rng.normal(size=(8, 12, 6)).astype(np.float32)
  emb = rng.normal(size=(10, 5)).astype(np.float32)
  scene = rng.normal(size=(8, 7)).astype(np.float32)

  def scores(params, feats, emb, scene):
    return nnx.merge(graphdef, params, rest)(feats, emb, scene, train=False)["scores"]

  want = jax.jit(scores)(params, feats, emb, scene)
  assert "sharding_constraint" not in jax.jit(scores).lower(params, feats, emb,
                                                            scene).as_text()
  mesh = shd.make_mesh(4, 2)
  with jax.set_mesh(mesh):
    args = (jax.device_put(params, shd.replicated(mesh)),
            jax.device_put(feats, shd.batch_sharding(mesh)),
            jax.device_put(emb, shd.replicated(mesh)),
            jax.device_put(scene, shd.batch_sharding(mesh)))
    lowered = jax.jit(scores).lower(*args)
    got = jax.jit(scores)(*args)
  text = lowered.as_text()
  assert "sharding_constraint" in text and "model" in text
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- 20k labels

def test_twenty_thousand_labels_forward_loss_and_gradient_in_small_memory():
  num_labels, b = 20_000, 2
  rng = np.random.default_rng(5)
  model = BiAM(feature_dim=4, emb_dim=3, grid_shape=(2, 2), scene_dim=0, channels=4, heads=2,
               out_dim=4, top_k=2, scene_source="mean_region", label_chunk=2048,
               rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  feats = jnp.asarray(rng.normal(size=(b, 4, 4)), jnp.float16)
  emb = jnp.asarray(rng.normal(size=(num_labels, 3)), jnp.float32)
  states = jnp.asarray(rng.choice([-1, 0, 1], size=(b, num_labels), p=[0.5, 0.49, 0.01]),
                       jnp.int8)

  def loss_of(params):
    out = nnx.merge(graphdef, params, rest)(feats, emb, train=False)
    return losses.ranking_loss_sorted(out["scores"], states)

  compiled = jax.jit(jax.value_and_grad(loss_of)).lower(params).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 4 * b * num_labels * 200, temp  # far from [B, L, L] (3.2 GB)
  loss, grads = compiled(params)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
