"""LESA and one-attention-per-label: forward passes and LESA's loss terms against loop-based
NumPy references of spec/baselines.md (written from the official TF1 code's structure: the
constant-1 augmentation and the zero classifier column are kept literally here), sharded ==
unsharded train steps, and config/input errors."""

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
from mlzsl_jax.models import get_model_builder, lesa
from references import ranking_loss_ref, tiny_batch, tiny_config, tiny_meta, train_steps

BN_EPS = 1e-3
GRID = (3, 4)


# ----------------------------------------------------------------- NumPy references (loops)

def conv_same_ref(x, kernel):
  """x [H, W, Cin], kernel [k, k, Cin, Cout]: TF 'SAME' cross-correlation, no bias (for an
  even k, TF pads (k-1)//2 before and the rest after: a 2x2 kernel pads bottom/right only)."""
  k = kernel.shape[0]
  h, w, _ = x.shape
  before = (k - 1) // 2
  out = np.zeros((h, w, kernel.shape[-1]))
  for y in range(h):
    for xx in range(w):
      for i in range(k):
        for j in range(k):
          yy, xj = y + i - before, xx + j - before
          if 0 <= yy < h and 0 <= xj < w:
            out[y, xx] += x[yy, xj] @ kernel[i, j]
  return out


def conv_block_ref(feats, p, stats, train):
  """feats [B, R, C] -> [B, R, D]: conv -> BatchNorm (eps 1e-3) -> ReLU, per image."""
  convs = [conv_same_ref(f.reshape(GRID + (-1,)), p["conv"]["kernel"]) for f in feats]
  if train:
    flat = np.stack(convs).reshape(-1, convs[0].shape[-1])
    mean, var = flat.mean(0), flat.var(0)
  else:
    mean, var = stats["bn"]["mean"], stats["bn"]["var"]
  out = []
  for c in convs:
    y = (c - mean) / np.sqrt(var + BN_EPS) * p["bn"]["scale"] + p["bn"]["bias"]
    out.append(np.maximum(y, 0).reshape(-1, y.shape[-1]))
  return np.stack(out)


def softmax_ref(v):
  e = np.exp(v - v.max())
  return e / e.sum()


def unit(v):
  return v / np.sqrt(np.sum(v * v))


def lesa_ref(feats, emb, p, stats, *, train, conv=True, pool="mean"):
  """Returns dict of scores [B, L], module_scores [B, T, L], global_scores [B, L],
  attention_logits [B, T, R], following the official graph step by step."""
  f = conv_block_ref(feats, p["encoder"]["conv"], stats["encoder"]["conv"], train) \
      if conv else feats
  b, r, d = f.shape
  w1, w2 = p["att_hidden"]["kernel"], p["att_logits"]["kernel"]
  w = p["label_proj"]["kernel"]  # [D, E]
  t_num, l_num = w2.shape[1], emb.shape[0]
  classifiers = np.zeros((l_num, d + 1))  # [W·e_l, 0]
  for l in range(l_num):
    classifiers[l, :d] = w @ unit(emb[l])
  out = {k: np.zeros(s) for k, s in (("scores", (b, l_num)),
                                     ("module_scores", (b, t_num, l_num)),
                                     ("global_scores", (b, l_num)),
                                     ("attention_logits", (b, t_num, r)))}
  for i in range(b):
    fa = [np.append(f[i, q], 1.0) for q in range(r)]  # [F, 1]
    for q in range(r):
      hidden = np.tanh(fa[q] @ w1)
      out["attention_logits"][i, :, q] = np.append(hidden, 1.0) @ w2
    for t in range(t_num):
      alpha = softmax_ref(out["attention_logits"][i, t])
      f_att = sum(alpha[q] * fa[q] for q in range(r))  # [D+1], last entry 1
      for l in range(l_num):
        out["module_scores"][i, t, l] = f_att @ classifiers[l]
    pooled = np.mean(fa, axis=0) if pool == "mean" else np.max(fa, axis=0)
    for l in range(l_num):
      out["scores"][i, l] = max(out["module_scores"][i, t, l] for t in range(t_num))
      out["global_scores"][i, l] = pooled @ classifiers[l]
  return out


def apl_ref(feats, emb, p, stats, *, share, conv=True):
  """scores [B, L], attention_logits [B, L, R] of one attention per label."""
  f = conv_block_ref(feats, p["encoder"]["conv"], stats["encoder"]["conv"], False) \
      if conv else feats
  b, r, _ = f.shape
  w = p["label_proj"]["kernel"]
  w_a = w if share else p["att_proj"]["kernel"]
  l_num = emb.shape[0]
  scores, logits = np.zeros((b, l_num)), np.zeros((b, l_num, r))
  for i in range(b):
    for l in range(l_num):
      e = unit(emb[l])
      for q in range(r):
        logits[i, l, q] = f[i, q] @ w_a @ e
      alpha = softmax_ref(logits[i, l])
      attended = sum(alpha[q] * f[i, q] for q in range(r))
      scores[i, l] = attended @ (w @ e)
  return scores, logits


def distribution_ref(module_scores, states):
  b, t_num, l_num = module_scores.shape
  total = 0.0
  for i in range(b):
    for t in range(t_num):
      s = 0.0
      for l in range(l_num):
        if states[i, l] == 1:
          col = module_scores[i, :, l]
          s += np.exp(col[t]) / np.sum(np.exp(col))
      total += s * s
  return total / (b * t_num)


def relevance_ref(scores, global_scores, states, margin):
  total = 0.0
  for i in range(scores.shape[0]):
    for l in range(scores.shape[1]):
      total += max(0.0, -(scores[i, l] - global_scores[i, l]) * states[i, l] + margin)
  return total


def diversity_ref(logits):
  b, t_num, _ = logits.shape
  total = 0.0
  for i in range(b):
    for t in range(t_num):
      for s in range(t_num):
        if t != s:
          total += (unit(logits[i, t]) @ unit(logits[i, s])) ** 2
  return np.sqrt(total)


# ----------------------------------------------------------------- helpers

def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _split(model):
  _, params, stats = nnx.split(model, nnx.Param, ...)
  return _np(nnx.to_pure_dict(params)), _np(nnx.to_pure_dict(stats))


def _randomise(model, rng):
  """Random BatchNorm stats/affine so eval mode exercises them."""
  conv = model.encoder.conv
  if conv is not None:
    d = conv.bn.mean[...].shape
    conv.bn.mean[...] = jnp.asarray(rng.normal(size=d), jnp.float32)
    conv.bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=d), jnp.float32)
    conv.bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=d), jnp.float32)
    conv.bn.bias[...] = jnp.asarray(rng.normal(size=d) * 0.5, jnp.float32)


def _inputs(rng, b=3, c=6, l=4, e=5):
  feats = rng.normal(size=(b, 12, c)).astype(np.float16)
  emb = rng.normal(size=(l, e)).astype(np.float32)
  return feats, emb


def _small_lesa(seed=0, **kw):
  args = dict(feature_dim=6, emb_dim=5, grid_shape=GRID, num_modules=3, conv_channels=7,
              rngs=nnx.Rngs(seed))
  args.update(kw)
  return lesa.LESA(**args)


def _small_apl(seed=0, **kw):
  args = dict(feature_dim=6, emb_dim=5, grid_shape=GRID, conv_channels=7, rngs=nnx.Rngs(seed))
  args.update(kw)
  return apl.AttentionPerLabel(**args)


def _check(got, want):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- LESA forward

@pytest.mark.parametrize("seed,conv,pool", [(0, True, "mean"), (1, False, "mean"),
                                            (2, True, "max")])
def test_lesa_forward_eval_matches_reference(seed, conv, pool):
  rng = np.random.default_rng(seed)
  model = _small_lesa(seed, conv_block=conv, global_pool=pool)
  _randomise(model, rng)
  feats, emb = _inputs(rng, l=4 + seed)  # any number of labels
  out = model(jnp.asarray(feats), jnp.asarray(emb), train=False)
  params, stats = _split(model)
  ref = lesa_ref(feats.astype(np.float64), emb.astype(np.float64), params, stats, train=False,
                 conv=conv, pool=pool)
  for key in ("scores", "module_scores", "global_scores", "attention_logits"):
    _check(out[key], ref[key])
  np.testing.assert_allclose(out["attention"].sum(-1), 1.0, rtol=1e-5)
  assert "regularizer" not in out  # official script: the conv L2 is not in the loss


def test_lesa_forward_train_uses_batch_statistics_and_regularizer():
  rng = np.random.default_rng(7)
  model = _small_lesa(7, conv_l2_in_loss=True)
  _randomise(model, rng)
  feats, emb = _inputs(rng, b=4)
  params, stats = _split(model)
  out = model(jnp.asarray(feats), jnp.asarray(emb), train=True)
  ref = lesa_ref(feats.astype(np.float64), emb.astype(np.float64), params, stats, train=True)
  _check(out["scores"], ref["scores"])
  _check(out["module_scores"], ref["module_scores"])
  # TF l2_regularizer(5e-4): 5e-4 * l2_loss = 5e-4 * 1/2 * sum(w^2)
  kernel = params["encoder"]["conv"]["conv"]["kernel"]
  np.testing.assert_allclose(out["regularizer"], 5e-4 * 0.5 * np.sum(kernel ** 2), rtol=1e-5)
  # running stats move 1% toward the batch (TF momentum 0.99)
  convs = np.stack([conv_same_ref(f.reshape(GRID + (-1,)).astype(np.float64), kernel)
                    for f in feats]).reshape(-1, 7)
  want = 0.99 * stats["encoder"]["conv"]["bn"]["mean"] + 0.01 * convs.mean(0)
  np.testing.assert_allclose(model.encoder.conv.bn.mean[...], want, rtol=1e-4, atol=1e-6)


def test_lesa_initialisers_and_parameter_count_at_nus_wide_shapes():
  model = nnx.eval_shape(lambda: lesa.LESA(feature_dim=512, emb_dim=300, grid_shape=(14, 14),
                                           rngs=nnx.Rngs(0)))
  params = nnx.split(model, nnx.Param, ...)[1]
  # conv 2*2*512*512 + BN 2*512 + W1 513*512 + W2 513*10 + W 512*300
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 1_470_986
  m = lesa.LESA(feature_dim=256, emb_dim=300, grid_shape=GRID, conv_block=False,
                rngs=nnx.Rngs(0))
  w1 = np.asarray(m.att_hidden.kernel[...])  # He fan-in truncated normal: std sqrt(2/257)
  assert abs(w1.std() / np.sqrt(2 / 257) - 1) < 0.03
  assert np.abs(w1).max() <= 2 * np.sqrt(2 / 257) / 0.87962566 + 1e-6


# ----------------------------------------------------------------- LESA loss

@pytest.mark.parametrize("seed", range(3))
def test_lesa_loss_terms_match_loop_references(seed):
  rng = np.random.default_rng(seed)
  b, t_num, l_num, r = 3 + seed, 2 + seed, 5, 7
  out = {"scores": rng.normal(size=(b, l_num)) * 2,
         "module_scores": rng.normal(size=(b, t_num, l_num)) * 2,
         "global_scores": rng.normal(size=(b, l_num)),
         "attention_logits": rng.normal(size=(b, t_num, r))}
  states = rng.choice([-1, 0, 1], size=(b, l_num)).astype(np.int8)
  cfg = lesa.loss_config()
  cfg.relevance_margin = 0.3 * seed  # margin > 0: unknown labels contribute the margin
  got, aux = losses.get_loss("lesa_ranking")(
      {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}, jnp.asarray(states), cfg)
  want = {"ranking_loss": ranking_loss_ref(out["scores"], states),
          "distribution_loss": distribution_ref(out["module_scores"], states),
          "relevance_loss": relevance_ref(out["scores"], out["global_scores"], states,
                                          cfg.relevance_margin),
          "diversity_loss": diversity_ref(out["attention_logits"])}
  for key, value in want.items():
    np.testing.assert_allclose(aux[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  total = (want["ranking_loss"] + 0.1 * want["distribution_loss"]
           + 0.001 * want["relevance_loss"] + 0.01 * want["diversity_loss"])
  np.testing.assert_allclose(got, total, rtol=1e-5, atol=1e-6)


def test_diversity_of_a_single_module_is_zero_with_finite_gradient():
  grad = jax.grad(lesa.diversity_loss)(jnp.ones((2, 1, 5)))
  assert float(lesa.diversity_loss(jnp.ones((2, 1, 5)))) == 0.0
  assert np.isfinite(np.asarray(grad)).all()


# ----------------------------------------------------------------- one attention per label

@pytest.mark.parametrize("seed,share,conv", [(0, False, True), (1, True, True),
                                             (2, False, False)])
def test_attention_per_label_forward_matches_reference(seed, share, conv):
  rng = np.random.default_rng(seed)
  model = _small_apl(seed, share_projection=share, conv_block=conv)
  _randomise(model, rng)
  feats, emb = _inputs(rng, l=3 + seed)
  out = model(jnp.asarray(feats), jnp.asarray(emb), train=False)
  params, stats = _split(model)
  assert ("att_proj" in params) != share
  scores, logits = apl_ref(feats.astype(np.float64), emb.astype(np.float64), params, stats,
                           share=share, conv=conv)
  _check(out["scores"], scores)
  _check(out["attention_logits"], logits)
  # its loss is the plain ranking loss
  assert apl.loss_config().name == "ranking"
  states = rng.choice([-1, 1], size=scores.shape).astype(np.int8)
  loss, _ = losses.get_loss("ranking")(out, jnp.asarray(states), apl.loss_config())
  np.testing.assert_allclose(loss, ranking_loss_ref(scores, states), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- sharded == unsharded

def _tiny_config(module):
  c = tiny_config()
  c.model = module.model_config()
  c.model.conv_channels = 8
  c.model.conv_l2_in_loss = True  # exercise the regularizer path too
  if module is lesa:
    c.model.num_modules = 4
  c.loss = module.loss_config()
  c.optimizer.name = "rmsprop"  # LESA's TF1 RMSProp
  c.optimizer.lr = 0.05  # large enough that the two steps move the parameters visibly
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.9, 1.0
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  return c


def _run_steps(trainer, n_steps=2):
  state, metrics = train_steps(
      trainer, lambda i: tiny_batch(i, states=(-1, 0, 1), scene_dim=0), n_steps)
  return ([float(m["loss"]) for m in metrics], jax.device_get(state.params),
          jax.device_get(state.model_state), metrics[-1])


@pytest.fixture(scope="module", params=["lesa", "attention_per_label"])
def trainers(request):
  module = {"lesa": lesa, "attention_per_label": apl}[request.param]
  meshes = {"1": shd.make_mesh(devices=jax.devices()[:1]), "8x1": shd.make_mesh(8, 1),
            "4x2": shd.make_mesh(4, 2)}
  return {k: step_lib.Trainer(_tiny_config(module), tiny_meta(scene_dim=0), m,
                              steps_per_epoch=1)
          for k, m in meshes.items()}


def test_one_device_eight_devices_and_4x2_mesh_agree(trainers):
  assert jax.device_count() == 8
  ref_losses, ref_params, ref_stats, metrics = _run_steps(trainers["1"])
  assert ref_losses[0] > 0 and float(metrics["regularizer"]) > 0
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_params,
                       jax.device_get(trainers["1"].init_state().params))
  assert min(jax.tree.leaves(moved)) > 1e-5  # every parameter was trained
  for name in ("8x1", "4x2"):
    losses_, params, stats, _ = _run_steps(trainers[name])
    np.testing.assert_allclose(losses_, ref_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  kernel = trainers["4x2"].init_state().params["label_proj"]["kernel"]  # [D, E=6]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")


# ----------------------------------------------------------------- errors

def test_bad_inputs_and_config_name_the_field():
  model = _small_lesa()
  with pytest.raises(ValueError, match=r"features: expected \[batch, 12, 6\]"):
    model(jnp.zeros((2, 12, 5)), jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"features: expected \[batch, 12, 6\]"):
    model(jnp.zeros((2, 16, 6)), jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"label embeddings: expected \[labels, 5\]"):
    _small_apl()(jnp.zeros((2, 12, 6)), jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match="model.num_modules=0"):
    _small_lesa(num_modules=0)
  with pytest.raises(ValueError, match="model.global_pool='sum'"):
    _small_lesa(global_pool="sum")
  with pytest.raises(ValueError, match="model.conv_channels=0"):
    _small_apl(conv_channels=0)
  with pytest.raises(ValueError, match="model.trainable_embeddings=True"):
    _small_apl(trainable_embeddings=True)
  for name, module in (("lesa", lesa), ("attention_per_label", apl)):
    with pytest.raises(ValueError, match="config field data.embedding lists"):
      get_model_builder(name)(module.model_config(), feature_dim=6,
                              emb_dim={"attributes": 5, "sentence": 8}, grid_shape=GRID,
                              scene_dim=0, dtype=jnp.float32, rngs=nnx.Rngs(0))
  cfg = lesa.loss_config()
  cfg.lambda_div = -1.0
  zeros = {"scores": jnp.zeros((1, 2)), "module_scores": jnp.zeros((1, 2, 2)),
           "global_scores": jnp.zeros((1, 2)), "attention_logits": jnp.ones((1, 2, 3))}
  with pytest.raises(ValueError, match="loss.lambda_div=-1.0"):
    losses.get_loss("lesa_ranking")(zeros, jnp.ones((1, 2), jnp.int8), cfg)
