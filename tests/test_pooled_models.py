"""Fast0Tag, ConSE and LabelEM/ALE (pooled-feature baselines) and their losses against
loop-based NumPy references of spec/baselines.md; sharded == unsharded train steps."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from mlzsl_jax import step as step_lib
from mlzsl_jax import losses
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.config_base import base_config
from mlzsl_jax.models import conse, fast0tag, get_model_builder, labelem, pooled
from references import tiny_config as tiny_data_config
from references import tiny_batch, tiny_meta, train_steps

B, R, C, E = 4, 5, 6, 3


# ----------------------------------------------------------------- NumPy reference (loops)

def pool_ref(x, pooling):
  """x [R, C] (one image) -> [C]."""
  out = np.zeros(x.shape[1])
  for c in range(x.shape[1]):
    vals = [float(x[r, c]) for r in range(x.shape[0])]
    out[c] = sum(vals) / len(vals) if pooling == "mean" else max(vals)
  return out


def dense_ref(v, p):
  kernel = p["kernel"]
  out = np.zeros(kernel.shape[1])
  for o in range(kernel.shape[1]):
    out[o] = sum(v[i] * kernel[i, o] for i in range(kernel.shape[0]))
    if "bias" in p:
      out[o] += p["bias"][o]
  return out


def mlp_ref(v, p):
  n = len(p["layers"])
  for k in range(n):
    v = dense_ref(v, p["layers"][k])
    if k < n - 1:
      v = np.maximum(v, 0.0)
  return v


def dot(a, b):
  return sum(float(x) * float(y) for x, y in zip(a, b))


def fast0tag_ref(feats, emb, params, pooling):
  """-> scores [B, L], directions [B, E]."""
  dirs = [mlp_ref(pool_ref(f, pooling), params["mlp"]) for f in feats]
  scores = [[dot(d, e) for e in emb] for d in dirs]
  return np.array(scores), np.array(dirs)


def conse_ref(feats, emb, seen_emb, params, top_t, pooling):
  """-> logits [B, S], image embeddings [B, E], cosine scores [B, L]."""
  all_logits, embs, scores = [], [], []
  for f in feats:
    z = mlp_ref(pool_ref(f, pooling), params["classifier"])
    p = np.exp(z - z.max())
    p /= p.sum()
    order = sorted(range(len(p)), key=lambda j: -p[j])[:min(top_t, len(p))]
    total = sum(p[j] for j in order)
    v = sum((p[j] / total) * seen_emb[j] for j in order)
    all_logits.append(z)
    embs.append(v)
    scores.append([dot(v, e) / (math.sqrt(dot(v, v)) * math.sqrt(dot(e, e))) for e in emb])
  return np.array(all_logits), np.array(embs), np.array(scores)


def labelem_ref(feats, emb, params, normalize, pooling):
  w = params["label_proj"]["kernel"].T  # W [C, E]
  out = np.zeros((len(feats), len(emb)))
  for i, f in enumerate(feats):
    theta = pool_ref(f, pooling)
    if normalize:
      theta = theta / math.sqrt(dot(theta, theta))
    for j, e in enumerate(emb):
      out[i, j] = sum(theta[c] * w[c, k] * e[k] for c in range(w.shape[0])
                      for k in range(w.shape[1]))
  return out


def pairs(row):
  pos = [j for j, s in enumerate(row) if s == 1]
  neg = [j for j, s in enumerate(row) if s == -1]
  return pos, neg


def ranknet_ref(scores, states):
  total = 0.0
  for s, st in zip(scores, states):
    pos, neg = pairs(st)
    terms = [math.log(1 + math.exp(s[n] - s[p])) for p in pos for n in neg]
    total += sum(terms) / len(terms) if terms else 0.0
  return total / len(scores)


def conse_xent_ref(logits, states):
  total = 0.0
  for z, st in zip(logits, states):
    pos, _ = pairs(st)
    if not pos:
      continue
    known = [j for j, s in enumerate(st) if s != 0]
    lse = math.log(sum(math.exp(z[j]) for j in known))
    total += -sum(z[p] - lse for p in pos) / len(pos)
  return total / len(logits)


def wsabie_ref(scores, states, margin):
  total, n_pos = 0.0, 0
  for s, st in zip(scores, states):
    pos, neg = pairs(st)
    for p in pos:
      n_pos += 1
      hinges = [max(0.0, margin + s[n] - s[p]) for n in neg]
      rank = sum(1 for h in hinges if h > 0)
      if rank:
        total += sum(1.0 / k for k in range(1, rank + 1)) / rank * sum(hinges)
  return total / max(n_pos, 1)


# ----------------------------------------------------------------- helpers

def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _params(model):
  return _np(nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1]))


def _inputs(seed, labels=5):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(B, R, C)).astype(np.float16)
  emb = rng.normal(size=(labels, E)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return feats, emb


def _states(rng, shape, p_unknown=0.2):
  states = rng.choice([-1, 1], size=shape).astype(np.int8)
  states[rng.random(shape) < p_unknown] = 0
  states[0] = -1  # an image without positives
  states[1, :] = 0  # an image without any annotated label
  states[1, 0] = 1  # ... except one positive: no pair
  return states


# ----------------------------------------------------------------- forward passes

@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_pool_regions_matches_loop_reference(pooling):
  feats, _ = _inputs(0)
  got = np.asarray(pooled.pool_regions(feats, pooling))
  want = np.array([pool_ref(f.astype(np.float64), pooling) for f in feats])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hidden,pooling", [((7, 4), "mean"), ((), "max")])
def test_fast0tag_forward_matches_numpy_reference(hidden, pooling):
  feats, emb = _inputs(1, labels=7)
  model = fast0tag.Fast0Tag(feature_dim=C, emb_dim=E, hidden_sizes=hidden, dropout=0.5,
                            pooling=pooling, rngs=nnx.Rngs(params=3))
  out = model(feats, emb, train=False)
  want_scores, want_dirs = fast0tag_ref(feats.astype(np.float64), emb, _params(model),
                                        pooling)
  np.testing.assert_allclose(out["direction"], want_dirs, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["scores"], want_scores, rtol=1e-4, atol=1e-5)
  # Dropout acts in training only (a different output, still finite).
  trained = model(feats, emb, train=True, rngs=nnx.Rngs(dropout=0))["scores"]
  assert np.all(np.isfinite(trained)) and not np.allclose(trained, out["scores"])


@pytest.mark.parametrize("normalize,pooling", [(False, "mean"), (True, "max")])
def test_labelem_forward_matches_numpy_reference(normalize, pooling):
  feats, emb = _inputs(2, labels=6)
  model = labelem.LabelEM(feature_dim=C, emb_dim=E, normalize_feature=normalize,
                          pooling=pooling, rngs=nnx.Rngs(params=4))
  params = _params(model)
  assert set(params) == {"label_proj"} and params["label_proj"]["kernel"].shape == (E, C)
  got = model(feats, emb, train=True)["scores"]
  want = labelem_ref(feats.astype(np.float64), emb, params, normalize, pooling)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("top_t,hidden", [(3, (5,)), (10, ())])
def test_conse_train_stores_seen_embeddings_and_eval_matches_reference(top_t, hidden):
  num_seen = 6
  feats, seen = _inputs(3, labels=num_seen)
  _, other = _inputs(4, labels=4)
  model = conse.ConSE(feature_dim=C, emb_dim=E, num_seen=num_seen, top_t=top_t,
                      hidden_sizes=hidden, rngs=nnx.Rngs(params=5))
  assert model.top_t == min(top_t, num_seen)  # T clipped to the number of seen labels
  params = _params(model)
  out = model(feats, seen, train=True)
  want_logits, _, _ = conse_ref(feats.astype(np.float64), other, seen.astype(np.float64),
                                params, top_t, "mean")
  np.testing.assert_allclose(out["scores"], want_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logits"], want_logits, rtol=1e-4, atol=1e-5)
  # The seen embeddings are model state (not a Param) after a training call.
  _, p, rest = nnx.split(model, nnx.Param, ...)
  rest = nnx.to_pure_dict(rest)
  np.testing.assert_array_equal(rest["seen_emb"], seen)
  assert "seen_emb" not in nnx.to_pure_dict(p)
  for labels_emb in (other, np.concatenate([seen, other])):  # ZSL and GZSL label sets
    got = model(feats, labels_emb, train=False)
    _, want_emb, want_scores = conse_ref(feats.astype(np.float64), labels_emb, seen, params,
                                         top_t, "mean")
    np.testing.assert_allclose(got["image_embedding"], want_emb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["scores"], want_scores, rtol=1e-4, atol=1e-5)


def test_conse_eval_uses_the_stored_state_not_the_call_arguments():
  feats, seen = _inputs(5, labels=4)
  model = conse.ConSE(feature_dim=C, emb_dim=E, num_seen=4, top_t=2, rngs=nnx.Rngs(params=0))
  # Before any training call the state is zero: scores are 0, never NaN.
  np.testing.assert_array_equal(model(feats, seen, train=False)["scores"], 0.0)
  model(feats, seen, train=True)
  graphdef, params, state = nnx.split(model, nnx.Param, ...)
  state = nnx.to_pure_dict(state)
  state["seen_emb"] = -state["seen_emb"]  # a restored checkpoint with other embeddings
  flipped = nnx.merge(graphdef, nnx.to_pure_dict(params), state)
  np.testing.assert_allclose(flipped(feats, seen, train=False)["image_embedding"],
                             -model(feats, seen, train=False)["image_embedding"], rtol=1e-6)


# ----------------------------------------------------------------- losses

@pytest.mark.parametrize("seed", [0, 1])
def test_ranknet_loss_matches_loop_reference(seed):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(5, 8)).astype(np.float32) * 3
  states = _states(rng, (5, 8))
  got, aux = losses.get_loss("ranknet")({"scores": scores}, states, fast0tag.loss_config())
  np.testing.assert_allclose(got, ranknet_ref(scores, states), rtol=1e-5)
  assert float(aux["ranknet_loss"]) == float(got)


@pytest.mark.parametrize("seed", [0, 1])
def test_conse_softmax_loss_matches_loop_reference(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(5, 8)).astype(np.float32) * 3
  states = _states(rng, (5, 8))
  states[2, :] = 0  # no annotated label at all: contributes 0, no NaN in the gradient
  loss_fn = losses.get_loss("conse_softmax")
  got, _ = loss_fn({"logits": logits, "scores": logits}, states, conse.loss_config())
  np.testing.assert_allclose(got, conse_xent_ref(logits, states), rtol=1e-5)
  grad = jax.grad(lambda z: loss_fn({"logits": z}, states, None)[0])(logits)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[states == 0], 0.0)


@pytest.mark.parametrize("seed,margin", [(0, 1.0), (1, 0.5)])
def test_wsabie_loss_matches_loop_reference(seed, margin):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(5, 8)).astype(np.float32)
  states = _states(rng, (5, 8))
  cfg = labelem.loss_config()
  cfg.margin = margin
  got, _ = losses.get_loss("wsabie")({"scores": scores}, states, cfg)
  np.testing.assert_allclose(got, wsabie_ref(scores, states, margin), rtol=1e-5)
  # The rank weights are constants: the gradient is that of the weighted hinges.
  grad = np.asarray(jax.grad(lambda s: losses.get_loss("wsabie")({"scores": s}, states,
                                                                 cfg)[0])(scores))
  eps = 1e-3
  for i, j in ((2, 3), (3, 5), (4, 0)):
    d = np.zeros_like(scores)
    d[i, j] = eps
    fd = (wsabie_ref(scores + d, states, margin) - wsabie_ref(scores - d, states, margin))
    np.testing.assert_allclose(grad[i, j], fd / (2 * eps), rtol=1e-2, atol=1e-4)


def test_harmonic_numbers():
  np.testing.assert_allclose(labelem.harmonic_numbers(4), [0, 1, 1.5, 11 / 6, 25 / 12],
                             rtol=1e-6)


# ----------------------------------------------------------------- sharded == unsharded

SEEN = tuple(range(7))  # the seen labels of references.tiny_config


def tiny_config(module):
  c = tiny_data_config()
  c.model = module.model_config()
  c.loss = module.loss_config()
  if module is fast0tag:
    c.model.hidden_sizes = (8,)
  if module is conse:
    c.model.num_seen = len(SEEN)
    c.model.hidden_sizes = (8,)
    c.model.top_t = 3
  return c


def _name(module):
  return module.__name__.rsplit(".", 1)[-1]


MESHES = {"1": lambda: shd.make_mesh(devices=jax.devices()[:1]),
          "8x1": lambda: shd.make_mesh(8, 1), "4x2": lambda: shd.make_mesh(4, 2)}


@pytest.fixture(scope="module")
def runs():
  """(model, mesh) -> (losses, params, model_state, predictions on the unseen labels)."""
  out = {}
  for module in (fast0tag, conse, labelem):
    for mesh_name, make in MESHES.items():
      trainer = step_lib.Trainer(tiny_config(module), tiny_meta(scene_dim=0), make(),
                                 steps_per_epoch=1)
      state, metrics = train_steps(trainer, lambda i: tiny_batch(i, scene_dim=0))
      step_losses = [float(m["loss"]) for m in metrics]
      batch = shd.host_to_global({"features": tiny_batch(5, scene_dim=0)["features"]},
                                 trainer.batch_sharding)
      pred = trainer.predict(state.params, state.model_state, batch,
                             (jax.device_put(trainer.emb_unseen, trainer.repl),))[0]
      out[_name(module), mesh_name] = (step_losses, jax.device_get(state.params),
                                         jax.device_get(state.model_state), np.asarray(pred),
                                         trainer)
  return out


@pytest.mark.parametrize("module", [fast0tag, conse, labelem], ids=lambda m: _name(m))
def test_one_device_eight_devices_and_4x2_mesh_agree(runs, module):
  ref_losses, ref_params, ref_state, ref_pred, _ = runs[_name(module), "1"]
  assert ref_losses[0] > 0 and np.all(np.isfinite(ref_pred))
  for mesh_name in ("8x1", "4x2"):
    got_losses, params, state, pred, _ = runs[_name(module), mesh_name]
    np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5, atol=1e-6)
    for tree, ref in ((params, ref_params), (state, ref_state)):
      assert jax.tree.structure(tree) == jax.tree.structure(ref)
      for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-5, atol=1e-6)


def test_model_axis_splits_the_kernels(runs):
  t = runs["fast0tag", "4x2"][4]
  kernel = t.init_state().params["mlp"]["layers"][0]["kernel"]  # [10, 8]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  t = runs["labelem", "4x2"][4]
  kernel = t.init_state().params["label_proj"]["kernel"]  # [E, C] = [6, 10]
  assert kernel.addressable_shards[0].data.shape == (6, 5)


def test_conse_trainer_keeps_seen_embeddings_in_model_state(runs):
  _, _, state, _, trainer = runs["conse", "8x1"]
  np.testing.assert_array_equal(state["seen_emb"], trainer.emb_seen)


# ----------------------------------------------------------------- configuration errors

def test_every_model_builds_from_its_default_config():
  for module, kwargs in ((fast0tag, {}), (conse, {"num_seen": 4}), (labelem, {})):
    cfg = module.model_config()
    if module is fast0tag:
      cfg.hidden_sizes = (4,)  # the paper-size default is large for a unit test
    for k, v in kwargs.items():
      cfg[k] = v
    model = get_model_builder(cfg.name)(cfg, feature_dim=C, emb_dim=E, grid_shape=(1, R),
                                        scene_dim=0, dtype=np.float32, rngs=nnx.Rngs(0))
    feats, emb = _inputs(6, labels=4)
    assert model(feats, emb, train=False)["scores"].shape == (B, 4)


def test_bad_config_and_inputs_name_the_field():
  rngs = nnx.Rngs(0)
  with pytest.raises(ValueError, match="model.pooling='sum'"):
    labelem.LabelEM(feature_dim=C, emb_dim=E, pooling="sum", rngs=rngs)
  with pytest.raises(ValueError, match="model.hidden_sizes"):
    fast0tag.Fast0Tag(feature_dim=C, emb_dim=E, hidden_sizes=(4, 0), rngs=rngs)
  with pytest.raises(ValueError, match="model.dropout"):
    fast0tag.Fast0Tag(feature_dim=C, emb_dim=E, dropout=1.0, rngs=rngs)
  with pytest.raises(ValueError, match=r"model.num_seen=0: expected the number of seen"):
    conse.build_conse(conse.model_config(), feature_dim=C, emb_dim=E, grid_shape=(1, R),
                      scene_dim=0, dtype=np.float32, rngs=rngs)
  with pytest.raises(ValueError, match="model.top_t=0"):
    conse.ConSE(feature_dim=C, emb_dim=E, num_seen=3, top_t=0, rngs=rngs)
  with pytest.raises(ValueError, match="data.embedding names 2"):
    labelem.build_labelem(labelem.model_config(), feature_dim=C, emb_dim={"a": 3, "b": 4},
                          grid_shape=(1, R), scene_dim=0, dtype=np.float32, rngs=rngs)
  feats, emb = _inputs(7, labels=5)
  model = conse.ConSE(feature_dim=C, emb_dim=E, num_seen=3, rngs=rngs)
  with pytest.raises(ValueError, match=r"model.num_seen=3 but the model is trained with 5"):
    model(feats, emb, train=True)
  with pytest.raises(ValueError, match=r"features: expected \[batch, regions, 6\]"):
    model(feats[..., :4], emb, train=False)
  with pytest.raises(ValueError, match=r"label embeddings: expected \[labels, 3\]"):
    model(feats, emb[:, :2], train=False)
  cfg = base_config().loss
  cfg.name = "wsabie"
  with pytest.raises(ValueError, match="needs the field loss.margin"):
    losses.get_loss("wsabie")({"scores": np.zeros((2, 3))}, np.ones((2, 3), np.int8), cfg)
  with pytest.raises(ValueError, match="needs the model output 'logits'"):
    losses.get_loss("conse_softmax")({"scores": np.zeros((2, 3))}, np.ones((2, 3), np.int8),
                                     None)
