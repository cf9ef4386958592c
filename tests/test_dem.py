"""DEM (single, fusion, text): forward, loss and weight decay against loop-based NumPy
references; the BiLSTM against explicit per-step gate equations; padding invariance; train
step on 1 device vs 8 devices vs a 4x2 mesh; config errors; the hubness diagnostic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from mlzsl_jax import step as step_lib
from mlzsl_jax import losses
from mlzsl_jax import metrics
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.config_base import base_config
from mlzsl_jax.data.source import DatasetMeta
from mlzsl_jax.models import dem, get_model_builder
from references import train_steps

VOCAB = 13


# ----------------------------------------------------------------- NumPy reference (loops)

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def act_ref(name, x, scale=dem.LECUN_TANH_SCALE, slope=dem.LECUN_TANH_SLOPE):
  if name == "relu":
    return np.maximum(x, 0.0)
  if name == "tanh":
    return np.tanh(x)
  return scale * np.tanh(slope * x)


def dense_ref(y, p):
  """y [E], {'kernel' [E, H], 'bias' [H] (optional)} -> [H], one dot product per output."""
  out = np.zeros(p["kernel"].shape[1])
  for h in range(len(out)):
    out[h] = sum(y[e] * p["kernel"][e, h] for e in range(len(y)))
    if "bias" in p:
      out[h] += p["bias"][h]
  return out


def lstm_ref(tokens, table, p):
  """Explicit LSTM gate equations over the real tokens (in the given order) -> final h."""
  w_x, b, w_h = p["input"]["kernel"], p["input"]["bias"], p["recurrent"]["kernel"]
  hid = w_h.shape[0]
  h, c = np.zeros(hid), np.zeros(hid)
  for tok in tokens:
    x = table[tok]
    i_g = np.zeros(hid)
    f_g = np.zeros(hid)
    g_g = np.zeros(hid)
    o_g = np.zeros(hid)
    for u in range(hid):
      pre = [x @ w_x[:, k * hid + u] + b[k * hid + u] + h @ w_h[:, k * hid + u]
             for k in range(4)]
      i_g[u], f_g[u] = sigmoid(pre[0]), sigmoid(pre[1])
      g_g[u], o_g[u] = np.tanh(pre[2]), sigmoid(pre[3])
    c = f_g * c + i_g * g_g
    h = o_g * np.tanh(c)
  return h


def text_ref(ids_row, p, act):
  """One label's token ids [T] (0 = padding, skipped) -> act(W_f h_f + W_b h_b + b)."""
  tokens = [int(t) for t in ids_row if t != 0]
  h_f = lstm_ref(tokens, p["embedding"], p["fwd"])
  h_b = lstm_ref(tokens[::-1], p["embedding"], p["bwd"])
  return act_ref(act, dense_ref(h_f, p["out_fwd"]) + dense_ref(h_b, p["out_bwd"]))


def prototypes_ref(label_inputs, params, *, variant, weights=None, acts=None):
  """label_inputs: {source: [L, ...]} -> prototypes [L, C]."""
  n_labels = len(next(iter(label_inputs.values())))
  protos = []
  for j in range(n_labels):
    sem = 0.0
    for s, x in label_inputs.items():
      p = params.get("branches", {}).get(s)
      if p is None:  # hidden = 0: the output layer reads the embedding
        part = x[j]
      elif "embedding" in p:
        part = text_ref(x[j], p, acts[s])
      else:
        part = act_ref(acts[s], dense_ref(x[j], p["linear"]))
      sem = sem + (1.0 if weights is None else weights[s]) * part
    protos.append(np.maximum(dense_ref(sem, params["output"]), 0.0))
  return np.stack(protos)


def forward_ref(feats, protos, metric, pool="mean"):
  """feats [B, R, C], protos [L, C] -> (scores [B, L], squared distances [B, L], visual)."""
  b, r, _ = feats.shape
  visual = np.stack([sum(feats[i, k] for k in range(r)) / r if pool == "mean"
                     else feats[i].max(0) for i in range(b)])
  scores = np.zeros((b, len(protos)))
  sq = np.zeros((b, len(protos)))
  for i in range(b):
    for j in range(len(protos)):
      sq[i, j] = sum((visual[i, d] - protos[j, d]) ** 2 for d in range(visual.shape[1]))
      if metric == "euclidean":
        scores[i, j] = -sq[i, j]
      else:
        scores[i, j] = (visual[i] @ protos[j] /
                        (np.linalg.norm(visual[i]) * np.linalg.norm(protos[j])))
  return scores, sq, visual


def regularizer_ref(params, lambdas, l2_lambda):
  """Σ over modules of λ · Σ_leaves ½||θ||² (TF l2_loss on every weight and bias)."""
  def half(tree):
    return sum(0.5 * float(np.sum(x ** 2)) for x in jax.tree.leaves(tree))
  total = l2_lambda * half(params["output"])
  for s, p in params.get("branches", {}).items():
    total += lambdas[s] * half(p)
  return total


def dem_loss_ref(visual, protos, states):
  """Mean over every element of the stacked [positive pairs, C] squared differences."""
  elems = []
  for i in range(len(states)):
    for j in range(states.shape[1]):
      if states[i, j] == 1:
        elems.extend((visual[i] - protos[j]) ** 2)
  return float(np.mean(elems)) if elems else 0.0


# ----------------------------------------------------------------- helpers

def _np_params(model):
  params = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])
  return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def _token_ids(rng, n_labels, max_len, pad_to):
  """Float token ids [L, pad_to] in [1, VOCAB) with trailing padding; row 0 is empty."""
  ids = np.zeros((n_labels, pad_to), np.float32)
  for j in range(1, n_labels):
    length = rng.integers(1, max_len + 1)
    ids[j, :length] = rng.integers(1, VOCAB, size=length)
  return ids


def _randomise_biases(model, rng):
  """Random biases (the official init sets them all to 0.1) so every term is exercised."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)
  pure = jax.tree_util.tree_map_with_path(
      lambda path, x: (jnp.asarray(rng.normal(size=x.shape) * 0.5, x.dtype)
                       if "bias" in jax.tree_util.keystr(path) else x), pure)
  nnx.replace_by_pure_dict(params, pure)
  nnx.update(model, params)


def _text_model(seed, **kw):
  args = dict(feature_dim=6, emb_dim=9, variant="text", hidden=5, vocab_size=VOCAB,
              token_dim=4, lstm_dim=3, l2_lambda=0.03, rngs=nnx.Rngs(seed))
  args.update(kw)
  return dem.DEM(**args)


# ----------------------------------------------------------------- forward

@pytest.mark.parametrize("hidden,metric,pool", [(7, "euclidean", "mean"), (0, "cosine", "mean"),
                                                (7, "cosine", "max")])
def test_single_forward_matches_reference(hidden, metric, pool):
  rng = np.random.default_rng(hidden)
  model = dem.DEM(feature_dim=6, emb_dim=5, variant="single", hidden=hidden, metric=metric,
                  pool=pool, l2_lambda=0.02, rngs=nnx.Rngs(1))
  _randomise_biases(model, rng)
  feats = rng.normal(size=(3, 4, 6)).astype(np.float16)
  emb = rng.normal(size=(4, 5)).astype(np.float32)
  out = model(jnp.asarray(feats), jnp.asarray(emb), train=True, rngs=nnx.Rngs(dropout=0))
  params = _np_params(model)
  protos = prototypes_ref({"semantic": emb.astype(np.float64)}, params, variant="single",
                          acts={"semantic": "relu"})
  scores, sq, visual = forward_ref(feats.astype(np.float64), protos, metric, pool)
  np.testing.assert_allclose(out["prototypes"], protos, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["visual"], visual, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["sq_dist"], sq, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["scores"], scores, rtol=1e-4, atol=1e-4)
  lambdas = {"semantic": 0.02}
  np.testing.assert_allclose(out["regularizer"], regularizer_ref(params, lambdas, 0.02),
                             rtol=1e-5)
  assert out["scores"].shape == (3, 4) and out["prototypes"].shape == (4, 6)


@pytest.mark.parametrize("activation", ["tanh", "scaled_tanh"])
def test_fusion_forward_matches_reference(activation):
  """Two dense branches and one text branch, weighted sum, shared ReLU layer."""
  rng = np.random.default_rng(7)
  weights = {"att": 3.0, "word": 1.0, "txt": 0.5}
  lambdas = {"att": 1e-2, "word": 1e-3, "txt": 2e-3}
  model = dem.DEM(feature_dim=6, emb_dim={"att": 5, "word": 4, "txt": 8}, variant="fusion",
                  hidden=7, fusion_sources=("att", "word", "txt"),
                  fusion_weights=tuple(weights.values()),
                  fusion_l2_lambdas=tuple(lambdas.values()), fusion_activation=activation,
                  text_sources=("txt",), vocab_size=VOCAB, token_dim=4, lstm_dim=3,
                  l2_lambda=0.05, rngs=nnx.Rngs(2))
  _randomise_biases(model, rng)
  feats = rng.normal(size=(2, 3, 6)).astype(np.float16)
  inputs = {"att": rng.normal(size=(4, 5)), "word": rng.normal(size=(4, 4)),
            "txt": _token_ids(rng, 4, 6, 8)}
  out = model(jnp.asarray(feats), {k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()})
  params = _np_params(model)
  protos = prototypes_ref(inputs, params, variant="fusion", weights=weights,
                          acts=dict.fromkeys(weights, activation))
  scores, _, _ = forward_ref(feats.astype(np.float64), protos, "euclidean")
  np.testing.assert_allclose(out["prototypes"], protos, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["scores"], scores, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["regularizer"], regularizer_ref(params, lambdas, 0.05),
                             rtol=1e-5)


def test_text_forward_matches_reference():
  rng = np.random.default_rng(3)
  model = _text_model(3, metric="cosine")
  _randomise_biases(model, rng)
  feats = rng.normal(size=(3, 2, 6)).astype(np.float16)
  ids = _token_ids(rng, 5, 7, 9)
  out = model(jnp.asarray(feats), jnp.asarray(ids))
  params = _np_params(model)
  protos = prototypes_ref({"semantic": ids}, params, variant="text",
                          acts={"semantic": "relu"})
  scores, sq, _ = forward_ref(feats.astype(np.float64), protos, "cosine")
  np.testing.assert_allclose(out["prototypes"], protos, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["scores"], scores, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["sq_dist"], sq, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["regularizer"],
                             regularizer_ref(params, {"semantic": 0.03}, 0.03), rtol=1e-5)


def test_text_encoder_ignores_padding():
  """Extra padding, at the end or between tokens, leaves the semantic vector unchanged."""
  rng = np.random.default_rng(4)
  model = _text_model(4, text_activation="tanh")
  ids = _token_ids(rng, 4, 5, 5)
  base = model.semantic(jnp.asarray(ids))
  longer = np.concatenate([ids, np.zeros((4, 6), np.float32)], axis=1)
  np.testing.assert_allclose(model.semantic(jnp.asarray(longer)), base, rtol=1e-6, atol=1e-6)
  spread = np.zeros((4, 10), np.float32)
  spread[:, 1::2] = ids  # a pad before every token
  np.testing.assert_allclose(model.semantic(jnp.asarray(spread)), base, rtol=1e-6, atol=1e-6)
  reordered = ids.copy()
  reordered[1, :2] = ids[1, 1::-1]
  if ids[1, 0] != ids[1, 1] and ids[1, 1] != 0:  # order matters (a real sequence model)
    assert np.abs(np.asarray(model.semantic(jnp.asarray(reordered)))[1] -
                  np.asarray(base)[1]).max() > 1e-6


def test_out_of_range_token_ids():
  model = _text_model(5)
  with pytest.raises(ValueError, match=r"token ids must be integers in \[0, "
                                       r"model.vocab_size=13\)"):
    model.semantic(jnp.asarray([[1.0, 13.0, 0.0]]))
  with pytest.raises(ValueError, match="token ids must be integers"):
    model.semantic(np.asarray([[1.5, 2.0]]))
  # Under jit no exception is possible: the offending label's prototype becomes NaN.
  graphdef, state = nnx.split(model)
  protos = jax.jit(lambda s, x: nnx.merge(graphdef, s).prototypes(x))(
      state, jnp.asarray([[1.0, 2.0], [1.0, 14.0]]))
  assert np.isfinite(protos[0]).all() and np.isnan(protos[1]).all()


# ----------------------------------------------------------------- loss

@pytest.mark.parametrize("seed", range(4))
def test_loss_matches_reference(seed):
  rng = np.random.default_rng(seed)
  model = dem.DEM(feature_dim=5, emb_dim=4, hidden=6, rngs=nnx.Rngs(seed))
  b, n_labels = int(rng.integers(1, 6)), int(rng.integers(2, 7))
  feats = rng.normal(size=(b, 3, 5)).astype(np.float16)
  emb = rng.normal(size=(n_labels, 4)).astype(np.float32)
  states = rng.choice([-1, 0, 1], size=(b, n_labels)).astype(np.int8)
  states[0] = np.where(states[0] == 1, -1, states[0])  # an image without positives
  out = model(jnp.asarray(feats), jnp.asarray(emb))
  loss, aux = losses.get_loss("dem_embedding")(out, jnp.asarray(states), dem.loss_config())
  ref = dem_loss_ref(np.asarray(out["visual"], np.float64),
                     np.asarray(out["prototypes"], np.float64), states)
  np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux["embedding_loss"], ref, rtol=1e-5, atol=1e-6)
  none, _ = losses.get_loss("dem_embedding")(out, jnp.zeros_like(states), None)
  assert float(none) == 0.0


# ----------------------------------------------------------------- sharded train step

def _fusion_train_config():
  c = base_config()
  c.model = dem.model_config()
  c.loss = dem.loss_config()
  c.data.name = "none"
  c.data.embedding = "attr,tok"
  c.data.seen_labels = tuple(range(7))
  c.data.unseen_labels = (7, 8, 9)
  c.model.variant = "fusion"
  c.model.hidden = 8
  c.model.fusion_sources = ("attr", "tok")
  c.model.fusion_weights = (3.0, 1.0)
  c.model.fusion_l2_lambdas = (1e-2, 1e-3)
  c.model.l2_lambda = 1e-2
  c.model.text_sources = ("tok",)
  c.model.vocab_size = VOCAB
  c.model.token_dim = 4
  c.model.lstm_dim = 4
  c.optimizer.weight_decay = 0.0  # DEM's weight decay is the model's regularizer
  c.train.batch_size = 8
  return c


def _fusion_meta():
  rng = np.random.default_rng(0)
  attr = rng.normal(size=(10, 6)).astype(np.float32)
  attr /= np.linalg.norm(attr, axis=1, keepdims=True)
  return DatasetMeta(name="tiny", label_names=tuple(map(str, range(10))),
                     embeddings={"attr": attr, "tok": _token_ids(rng, 10, 5, 6)},
                     grid_shape=(2, 2), feature_dim=10, scene_dim=0,
                     num_examples={"train": 8})


def _batch(seed):
  rng = np.random.default_rng(seed)
  labels = rng.choice([-1, 1], size=(8, 7)).astype(np.int8)
  labels[:, 0] = 1
  return {"features": np.abs(rng.normal(size=(8, 4, 10))).astype(np.float16),
          "labels": labels}


def _run_steps(mesh, n_steps=2):
  trainer = step_lib.Trainer(_fusion_train_config(), _fusion_meta(), mesh, steps_per_epoch=1)
  state, metrics = train_steps(trainer, _batch, n_steps)
  keys = ("loss", "embedding_loss", "regularizer")
  return [{k: float(m[k]) for k in keys} for m in metrics], jax.device_get(state.params)


def test_fusion_train_step_same_on_one_device_eight_devices_and_4x2_mesh():
  assert jax.device_count() == 8
  ref_metrics, ref_params = _run_steps(shd.make_mesh(devices=jax.devices()[:1]))
  for data, model in ((8, 1), (4, 2)):
    metrics, params = _run_steps(shd.make_mesh(data, model))
    for m, r in zip(metrics, ref_metrics):
      for k in r:
        np.testing.assert_allclose(m[k], r[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  first = ref_metrics[0]
  assert first["regularizer"] > 0
  np.testing.assert_allclose(first["loss"], first["embedding_loss"] + first["regularizer"],
                             rtol=1e-6)


# ----------------------------------------------------------------- config errors, builder

def test_builder_and_config_defaults():
  cfg = dem.model_config()
  cfg.hidden = 6
  model = get_model_builder("dem")(cfg, feature_dim=4, emb_dim=3, grid_shape=(1, 1),
                                   scene_dim=0, dtype=jnp.float32, rngs=nnx.Rngs(0))
  out = model(jnp.ones((2, 1, 4), jnp.float16), jnp.ones((5, 3)))
  assert out["scores"].shape == (2, 5)
  kernel = np.asarray(model.output.kernel[...])
  assert np.abs(kernel).max() <= 2 * dem.OFFICIAL_INIT_STDDEV  # truncated normal
  np.testing.assert_array_equal(model.output.bias[...], np.float32(dem.OFFICIAL_INIT_BIAS))
  assert losses.get_loss(dem.loss_config().name) is not None


def test_bad_config_and_inputs_name_the_field():
  def build(**kw):
    args = dict(feature_dim=4, emb_dim=3, hidden=5, rngs=nnx.Rngs(0))
    args.update(kw)
    return dem.DEM(**args)
  with pytest.raises(ValueError, match=r"model.variant='deep'"):
    build(variant="deep")
  with pytest.raises(ValueError, match=r"model.pool='sum'"):
    build(pool="sum")
  with pytest.raises(ValueError, match=r"model.metric='l1'"):
    build(metric="l1")
  with pytest.raises(ValueError, match=r"model.visual_dim=7"):
    build(visual_dim=7)
  with pytest.raises(ValueError, match=r"model.hidden=0"):
    build(variant="fusion", hidden=0)
  with pytest.raises(ValueError, match=r"model.text_activation='gelu'"):
    build(variant="text", vocab_size=5, text_activation="gelu")
  with pytest.raises(ValueError, match=r"model.vocab_size=0"):
    build(variant="text")
  with pytest.raises(ValueError, match=r"model.variant='single' takes one"):
    build(emb_dim={"a": 3, "b": 2})
  fusion = dict(variant="fusion", fusion_sources=("a", "b"), fusion_weights=(3.0, 1.0),
                fusion_l2_lambdas=(1e-2, 1e-3))
  with pytest.raises(ValueError, match=r"model.fusion_sources=\('a', 'b'\) must name "
                                       r"exactly.*missing \['b'\]"):
    build(emb_dim={"a": 3, "c": 2}, **fusion)
  with pytest.raises(ValueError, match=r"model.variant='fusion' needs the sources"):
    build(**fusion)
  with pytest.raises(ValueError, match=r"model.fusion_weights=\(1.0,\)"):
    build(emb_dim={"a": 3, "b": 2}, **{**fusion, "fusion_weights": (1.0,)})
  with pytest.raises(ValueError, match=r"model.fusion_activation='sigmoid'"):
    build(emb_dim={"a": 3, "b": 2}, **{**fusion, "fusion_activation": "sigmoid"})
  with pytest.raises(ValueError, match=r"model.text_sources=\('z',\)"):
    build(emb_dim={"a": 3, "b": 2}, text_sources=("z",), **fusion)
  model = build(emb_dim={"a": 3, "b": 2}, **fusion)
  feats = jnp.ones((2, 1, 4))
  with pytest.raises(ValueError, match=r"lack the fusion source\(s\) \['b'\]"):
    model(feats, {"a": jnp.ones((4, 3))})
  with pytest.raises(ValueError, match=r"label embeddings 'b': expected \[labels, 2\]"):
    model(feats, {"a": jnp.ones((4, 3)), "b": jnp.ones((4, 5))})
  with pytest.raises(ValueError, match=r"expects label inputs as a dict"):
    model(feats, jnp.ones((4, 3)))
  single = build()
  with pytest.raises(ValueError, match=r"label embeddings 'semantic': expected "
                                       r"\[labels, 3\]"):
    single(feats, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match=r"features: expected \[batch, regions, 4\]"):
    single(jnp.ones((2, 1, 5)), jnp.ones((4, 3)))


# ----------------------------------------------------------------- hubness

def hubness_ref(scores, k):
  counts = [0] * scores.shape[1]
  for row in scores:
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    for j in order[:k]:
      counts[j] += 1
  return scipy.stats.skew(counts)


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 1), (2, 3)])
def test_hubness_skewness_matches_loop_and_scipy(seed, k):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(40, 9))
  scores[:, 2] += 1.0  # a hub
  np.testing.assert_allclose(metrics.hubness_skewness(scores, k), hubness_ref(scores, k),
                             rtol=1e-10)


def test_hubness_skewness_edge_cases():
  assert math.isnan(metrics.hubness_skewness(np.eye(4)))  # every prototype nearest once
  one_hub = np.zeros((5, 3))
  one_hub[:, 1] = 1.0
  np.testing.assert_allclose(metrics.hubness_skewness(one_hub), scipy.stats.skew([0, 5, 0]))
  with pytest.raises(ValueError, match="k=4"):
    metrics.hubness_skewness(np.zeros((2, 3)), k=4)
