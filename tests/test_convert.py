"""Converters of the official checkpoints (BiAM PyTorch, LESA TF1) against NumPy references
computed directly from the official tensors in their own layouts (NCHW / [out, in, kh, kw]
for BiAM, TF names and HWIO for LESA), loop-based and independent of the converters."""

import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlzsl_jax import step as step_lib
from mlzsl_jax import convert
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.config_base import base_config
from mlzsl_jax.convert import biam_torch
from mlzsl_jax.data.source import DatasetMeta
from mlzsl_jax.models import biam as biam_lib
from mlzsl_jax.models import get_model_builder
from mlzsl_jax.models import lesa as lesa_lib

EPS = 1e-3  # BatchNorm eps of both official models
# Small sizes: C channels, F region width, S scene width, E word vectors, D output width.
C, HEADS, F, S, E, D = 16, 2, 8, 24, 6, 10
GRID = (4, 5)
TOP_K = 3


# ============================================================================ BiAM

def official_biam_state(seed=0, c=C, f=F, s=S, e=E, d=D):
  """Random tensors under the names and shapes of the official ``BiAM.state_dict()``
  (akshitac8/BiAM model.py: CONV3_3 body/bn, RCB w_q..w_o + sub_network, SCB w_g (1x1
  conv on [B, 4096, 1, 1]), gcff, channel_conv, W Linear, conv_1X1)."""
  rng = np.random.default_rng(seed)

  def u(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = scale or 1.0 / math.sqrt(fan_in)
    return rng.uniform(-scale, scale, size=shape).astype(np.float32)

  def conv(name, out_ch, in_ch, k):
    return {f"{name}.weight": u(out_ch, in_ch, k, k), f"{name}.bias": u(out_ch, scale=0.3)}

  def bn(name, ch):
    return {f"{name}.weight": rng.uniform(0.5, 1.5, ch).astype(np.float32),
            f"{name}.bias": rng.normal(0, 0.2, ch).astype(np.float32),
            f"{name}.running_mean": rng.normal(0, 0.3, ch).astype(np.float32),
            f"{name}.running_var": rng.uniform(0.3, 2.0, ch).astype(np.float32),
            f"{name}.num_batches_tracked": np.array(1234, np.int64)}

  rcb, scb = "region_context_block", "scene_context_block"
  sd = {**conv("conv_3X3.body", c, f, 3), **bn("conv_3X3.bn", c)}
  for n in ("w_q", "w_k", "w_v", "w_o"):
    sd.update(conv(f"{rcb}.{n}", c, c, 1))
  sd.update(conv(f"{rcb}.sub_network.conv1", 2 * c, c, 1))
  sd.update(conv(f"{rcb}.sub_network.conv2", c, 2 * c, 1))
  sd.update(conv(f"{scb}.w_g", c, s, 1))
  sd.update({**conv(f"{scb}.gcff.body", c, c, 3), **bn(f"{scb}.gcff.bn", c)})
  sd.update(conv(f"{scb}.channel_conv.body", c, c, 1))
  sd.update({"W.weight": u(d, e), "W.bias": u(d, scale=0.3)})
  sd.update(conv("conv_1X1.body", d, 2 * c, 1))
  return sd


def conv_nchw(x, w, b):
  """x [Cin, H, W], torch weight [Cout, Cin, k, k], zero padding (k-1)/2 -> [Cout, H, W]."""
  cout, _, k, _ = w.shape
  _, h, wd = x.shape
  pad = (k - 1) // 2
  out = np.zeros((cout, h, wd))
  for y in range(h):
    for xx in range(wd):
      acc = b.astype(np.float64).copy()
      for i in range(k):
        for j in range(k):
          yy, xj = y + i - pad, xx + j - pad
          if 0 <= yy < h and 0 <= xj < wd:
            acc += w[:, :, i, j] @ x[:, yy, xj]
      out[:, y, xx] = acc
  return out


def bn_nchw(x, sd, name):
  """Eval-mode BatchNorm2d of x [C, H, W] with the running stats of ``name``."""
  col = lambda v: sd[f"{name}.{v}"][:, None, None]  # noqa: E731
  return (x - col("running_mean")) / np.sqrt(col("running_var") + EPS) * col("weight") \
      + col("bias")


def relu(x):
  return np.maximum(x, 0)


def lrelu(x):
  return np.where(x > 0, x, 0.2 * x)


def biam_reference(sd, feats_official, emb, scene, *, heads, top_k, mask_zero=True):
  """The official forward in eval mode, one image at a time, from the state dict.

  feats_official: [B, F, H, W] (the official [512, 196] file layout viewed as a grid),
  emb: [L, E], scene: [B, S] -> scores [B, L], region scores [B, R, L].
  """
  p = lambda name, x: conv_nchw(x, sd[f"{name}.weight"], sd[f"{name}.bias"])  # noqa: E731
  rcb, scb = "region_context_block", "scene_context_block"
  classifiers = emb @ sd["W.weight"].T + sd["W.bias"]  # [L, D]
  scores, regions = [], []
  for x_r, x_g in zip(feats_official, scene):
    h_r = bn_nchw(relu(p("conv_3X3.body", x_r)), sd, "conv_3X3.bn")  # [C, H, W]
    c, gh, gw = h_r.shape
    n, d_k = gh * gw, c // heads
    # region context: heads split the channels as view(heads, d_k, H*W)
    q, k, v = (p(f"{rcb}.{w}", h_r).reshape(heads, d_k, n).transpose(0, 2, 1)
               for w in ("w_q", "w_k", "w_v"))
    alpha = np.zeros((heads, n, d_k))
    for hd in range(heads):
      for i in range(n):
        s = np.array([q[hd, i] @ k[hd, j] for j in range(n)]) / math.sqrt(d_k)
        if mask_zero:
          s = np.where(s == 0, -1e9, s)
        wts = np.exp(s - s.max())
        wts /= wts.sum()
        alpha[hd, i] = sum(wts[j] * v[hd, j] for j in range(n))
    o_r = alpha.transpose(1, 0, 2).reshape(n, c).T.reshape(c, gh, gw)
    o_r = p(f"{rcb}.w_o", o_r) + h_r
    e_r = p(f"{rcb}.sub_network.conv2", relu(p(f"{rcb}.sub_network.conv1", o_r))) + o_r
    # scene context
    q_g = lrelu(p(f"{scb}.channel_conv.body", h_r))
    k_g = sd[f"{scb}.w_g.weight"][:, :, 0, 0] @ x_g + sd[f"{scb}.w_g.bias"]
    r_g = 1 / (1 + np.exp(-(q_g.reshape(c, n).mean(-1) * k_g)))
    c_g = r_g[:, None, None] * q_g
    e_g = c_g + bn_nchw(relu(p(f"{scb}.gcff.body", c_g)), sd, f"{scb}.gcff.bn")
    e_f = lrelu(p("conv_1X1.body", np.concatenate([e_r, e_g], axis=0)))  # [D, H, W]
    e_f = e_f.transpose(1, 2, 0).reshape(n, -1)
    m = e_f @ classifiers.T  # [R, L]
    regions.append(m)
    scores.append(np.array([np.sort(m[:, l])[::-1][:top_k].mean()
                            for l in range(m.shape[1])]))
  return np.stack(scores), np.stack(regions)


def biam_model(c=C, heads=HEADS, f=F, s=S, e=E, d=D):
  return biam_lib.BiAM(feature_dim=f, emb_dim=e, grid_shape=GRID, scene_dim=s, channels=c,
                       heads=heads, out_dim=d, top_k=TOP_K, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def biam_forward():
  """jitted (params, model_state, feats, emb, scene) -> our eval-mode outputs."""
  graphdef = nnx.split(nnx.eval_shape(biam_model), nnx.Param, ...)[0]

  @jax.jit
  def fwd(params, model_state, feats, emb, scene):
    return nnx.merge(graphdef, params, model_state)(feats, emb, scene, train=False)
  return fwd


def inputs(seed=1, b=2, l=5):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(b, GRID[0] * GRID[1], F)).astype(np.float32)
  return (feats, rng.normal(size=(l, E)).astype(np.float32),
          rng.normal(size=(b, S)).astype(np.float32))


def to_official_layout(feats):
  """Our [B, R, F] -> the official [B, F, R] file layout, viewed as [B, F, H, W]."""
  return feats.transpose(0, 2, 1).reshape(feats.shape[0], F, *GRID)


def test_biam_converted_forward_equals_reference_from_state_dict(biam_forward):
  sd = official_biam_state()
  params, model_state = convert.convert_biam_state_dict(sd, channels=C, heads=HEADS)
  feats, emb, scene = inputs()
  out = biam_forward(params, model_state, feats, emb, scene)
  ref_scores, ref_regions = biam_reference(sd, to_official_layout(feats), emb, scene,
                                           heads=HEADS, top_k=TOP_K)
  np.testing.assert_allclose(out["region_scores"], ref_regions, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["scores"], ref_scores, rtol=1e-4, atol=1e-4)


def test_biam_zero_score_mask_is_exercised(biam_forward):
  """Attention scores that are exactly 0 (a region whose h_r is exactly 0 and a zero w_k
  bias) become -1e9 as in the official F_R; the reference with and without the mask
  differ, and ours equals the masked one."""
  sd = official_biam_state(seed=3)
  sd["conv_3X3.body.bias"] = -np.abs(sd["conv_3X3.body.bias"]) - 0.5  # relu(bias) = 0
  sd["conv_3X3.bn.running_mean"][:] = 0  # BN(0) = 0 exactly
  sd["conv_3X3.bn.bias"][:] = 0
  sd["region_context_block.w_k.bias"][:] = 0  # k = 0 exactly where h_r = 0
  feats, emb, scene = inputs(seed=4)
  grid = feats.reshape(2, *GRID, F)
  grid[0, 0:3, 0:3] = 0  # the 3x3 neighbourhood of region (1, 1): conv output = bias < 0
  feats = grid.reshape(2, -1, F)
  params, model_state = convert.convert_biam_state_dict(sd)
  out = biam_forward(params, model_state, feats, emb, scene)
  masked, _ = biam_reference(sd, to_official_layout(feats), emb, scene, heads=HEADS,
                             top_k=TOP_K)
  unmasked, _ = biam_reference(sd, to_official_layout(feats), emb, scene, heads=HEADS,
                               top_k=TOP_K, mask_zero=False)
  assert np.abs(masked[0] - unmasked[0]).max() > 1e-3
  np.testing.assert_allclose(out["scores"], masked, rtol=1e-4, atol=1e-4)


def test_biam_official_sizes_match_our_model_and_parameter_count():
  """channel_dim 256, VGG19 512-d regions, 4096-d scene, 300-d GloVe, D = 512: the
  converted trees have exactly our BiAM's structure and shapes; 3,828,480 parameters."""
  sd = official_biam_state(c=256, f=512, s=4096, e=300, d=512)
  params, model_state = convert.convert_biam_state_dict(sd, channels=256, heads=8,
                                                        feature_dim=512, scene_dim=4096,
                                                        emb_dim=300, out_dim=512)
  model = nnx.eval_shape(lambda: biam_lib.BiAM(feature_dim=512, emb_dim=300,
                                               grid_shape=(14, 14), scene_dim=4096,
                                               rngs=nnx.Rngs(0)))
  _, want_p, want_s = nnx.split(model, nnx.Param, ...)
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)  # noqa: E731
  assert shapes(params) == shapes(nnx.to_pure_dict(want_p))
  assert shapes(model_state) == shapes(nnx.to_pure_dict(want_s))
  assert sum(x.size for x in jax.tree.leaves(params)) == 3_828_480
  assert all(x.dtype == np.float32 for x in jax.tree.leaves((params, model_state)))
  # the layouts: conv [out, in, kh, kw] -> [kh, kw, in, out]; w_g [C, S, 1, 1] -> [S, C]
  np.testing.assert_array_equal(params["stem"]["conv"]["kernel"][2, 1, 7, 5],
                                sd["conv_3X3.body.weight"][5, 7, 2, 1])
  np.testing.assert_array_equal(params["scene_context"]["w_g"]["kernel"][4000, 3],
                                sd["scene_context_block.w_g.weight"][3, 4000, 0, 0])
  np.testing.assert_array_equal(params["label_proj"]["kernel"][299, 511],
                                sd["W.weight"][511, 299])


def test_biam_module_prefix_and_wrappers_are_unwrapped():
  sd = official_biam_state()
  ref = convert.convert_biam_state_dict(sd)
  prefixed = {"module." + k: v for k, v in sd.items()}
  for obj in (prefixed, {"epoch": 7, "state_dict": prefixed}, {"model": sd}):
    got = convert.convert_biam_state_dict(biam_torch.unwrap_checkpoint(obj))
    jax.tree.map(np.testing.assert_array_equal, got, ref)
  jax.tree.map(np.testing.assert_array_equal, convert.convert_biam_state_dict(prefixed), ref)
  with pytest.raises(ValueError, match="expected a state dict"):
    biam_torch.unwrap_checkpoint([1, 2])


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("region_context_block.w_v.bias"),
     r"missing key 'region_context_block\.w_v\.bias'"),
    (lambda sd: sd.pop("conv_3X3.bn.running_var"), r"missing key 'conv_3X3\.bn\.running_var'"),
    (lambda sd: sd.pop("W.weight"), r"missing key 'W\.weight'"),
    (lambda sd: sd.update({"classifier.weight": np.zeros(3, np.float32)}),
     r"unexpected keys 'classifier\.weight'"),
    (lambda sd: sd.update({"region_context_block.sub_network.conv1.weight":
                           np.zeros((2 * C, C, 3, 3), np.float32)}),
     r"'region_context_block\.sub_network\.conv1\.weight' has shape \(32, 16, 3, 3\), "
     r"expected \(32, 16, 1, 1\)"),
    (lambda sd: sd.update({"scene_context_block.gcff.bn.running_mean":
                           np.zeros(C + 1, np.float32)}),
     r"'scene_context_block\.gcff\.bn\.running_mean' has shape \(17,\), expected \(16,\)"),
    (lambda sd: sd.update({"W.bias": np.zeros(D, np.int64)}), r"'W\.bias' has dtype int64"),
])
def test_biam_bad_state_dicts(edit, match):
  sd = official_biam_state()
  edit(sd)
  with pytest.raises(ValueError, match=match):
    convert.convert_biam_state_dict(sd)


def test_biam_size_expectations():
  sd = official_biam_state()
  with pytest.raises(ValueError, match="channels=16 but model.channels=8"):
    convert.convert_biam_state_dict(sd, channels=8)
  with pytest.raises(ValueError, match="model.heads=3 must divide"):
    convert.convert_biam_state_dict(sd, heads=3)
  with pytest.raises(ValueError, match="scene_dim=24 but the dataset's scene_dim=4096"):
    convert.convert_biam_state_dict(sd, scene_dim=4096)


def test_load_torch_checkpoint_errors_without_torch(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    convert.load_torch_checkpoint(tmp_path / "nope.pth")
  path = tmp_path / "model_best.pth"
  path.write_bytes(b"not a checkpoint")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(ImportError, match=r"pip install -e \.\[torch\]"):
    convert.load_torch_checkpoint(path)


def test_torch_file_round_trip(tmp_path, biam_forward):
  torch = pytest.importorskip("torch")
  sd = official_biam_state()
  tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
  ref = convert.convert_biam_state_dict(sd)
  files = {"bare.pth": tensors,  # train_nus.py: torch.save(model.state_dict())
           "wrapped.pth": {"epoch": 3, "state_dict": {"module." + k: t  # DataParallel
                                                      for k, t in tensors.items()}},
           "model.pt": {"model": tensors}}
  for name, obj in files.items():
    torch.save(obj, tmp_path / name)
    loaded = convert.load_torch_checkpoint(tmp_path / name)
    assert sorted(loaded) == sorted(sd)
    got = convert.convert_biam_state_dict(loaded)
    jax.tree.map(np.testing.assert_array_equal, got, ref)
  feats, emb, scene = inputs()
  out = biam_forward(*convert.load_biam_checkpoint(tmp_path / "wrapped.pth"), feats, emb,
                     scene)
  ref_scores, _ = biam_reference(sd, to_official_layout(feats), emb, scene, heads=HEADS,
                                 top_k=TOP_K)
  np.testing.assert_allclose(out["scores"], ref_scores, rtol=1e-4, atol=1e-4)
  # truncated file
  data = (tmp_path / "bare.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
    convert.load_torch_checkpoint(tmp_path / "cut.pth")
  # weights_only=True refuses arbitrary objects
  torch.save({"state_dict": tensors, "opt": Unpicklable()}, tmp_path / "obj.pth")
  with pytest.raises(ValueError, match=r"obj\.pth: not a readable PyTorch checkpoint"):
    convert.load_torch_checkpoint(tmp_path / "obj.pth")
  torch.save({"a": torch.zeros(2), "b": 3}, tmp_path / "mixed.pth")
  with pytest.raises(ValueError, match=r"mixed\.pth: entry 'b' is a int"):
    convert.load_torch_checkpoint(tmp_path / "mixed.pth")


class Unpicklable:
  """A plain object: torch.load(weights_only=True) must refuse it."""


# ============================================================================ LESA

# tf.train.list_variables on the released index
# (hbdat/cvpr20_LESA results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/model.ckpt).
RELEASED_LESA_VARIABLES = {
    "Variable": (), "conv/is_train": (),
    "attention_layer/w_att_1": (513, 512), "attention_layer/w_att_2": (513, 10),
    "conv/conv/batch_normalization/beta": (512,),
    "conv/conv/batch_normalization/gamma": (512,),
    "conv/conv/batch_normalization/moving_mean": (512,),
    "conv/conv/batch_normalization/moving_variance": (512,),
    "conv/conv/weights": (2, 2, 512, 512), "prediction_frac/W": (512, 300),
}
for _name in ("attention_layer/w_att_1", "attention_layer/w_att_2",
              "conv/conv/batch_normalization/beta", "conv/conv/batch_normalization/gamma",
              "conv/conv/weights", "prediction_frac/W"):
  RELEASED_LESA_VARIABLES[_name + "/RMSProp"] = RELEASED_LESA_VARIABLES[_name]
  RELEASED_LESA_VARIABLES[_name + "/RMSProp_1"] = RELEASED_LESA_VARIABLES[_name]
LT, LD = 3, 8  # small LESA: modules, conv channels (= D); region width F, word vectors E


def lesa_variables(shapes, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in shapes.items():
    if name == "conv/is_train":
      out[name] = np.array(False)
    elif name.endswith("moving_variance"):
      out[name] = rng.uniform(0.3, 2.0, shape).astype(np.float32)
    elif name.endswith("gamma"):
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      out[name] = (rng.normal(size=shape) / math.sqrt(max(shape[0] if shape else 1, 1))
                   ).astype(np.float32)
  return out


def small_lesa_shapes(f=F, d=LD, t=LT, e=E):
  small = {"Variable": (), "conv/is_train": (), "attention_layer/w_att_1": (d + 1, d),
           "attention_layer/w_att_2": (d + 1, t), "conv/conv/weights": (2, 2, f, d),
           "prediction_frac/W": (d, e)}
  for v in ("beta", "gamma", "moving_mean", "moving_variance"):
    small[f"conv/conv/batch_normalization/{v}"] = (d,)
  small["prediction_frac/W/RMSProp"] = small["prediction_frac/W"]
  small["attention_layer/w_att_1/RMSProp_1"] = small["attention_layer/w_att_1"]
  return small


def save_tf(prefix, variables):
  import tensorflow as tf
  names = sorted(variables)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[variables[n] for n in names])


def lesa_reference(v, feats, emb):
  """The official TF graph (core/model_share_attention.py, is_conv=True) in eval mode.

  feats [B, R, F] (TF reshapes to [B, H, W, F]), emb [L, E] -> logits [B, L].
  """
  gh, gw = GRID
  w = v["conv/conv/weights"]  # [2, 2, F, D] HWIO; 'SAME' pads bottom / right
  bn = lambda n: v[f"conv/conv/batch_normalization/{n}"]  # noqa: E731
  vecs = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # sklearn normalize
  cls = (v["prediction_frac/W"] @ vecs.T).T  # [L, D]
  cls_a = np.concatenate([cls, np.zeros((len(cls), 1))], axis=1)  # _augment_0
  out = []
  for img in feats:
    x = img.reshape(gh, gw, -1)
    conv = np.zeros((gh, gw, w.shape[-1]))
    for y in range(gh):
      for xx in range(gw):
        for i in range(2):
          for j in range(2):
            if y + i < gh and xx + j < gw:
              conv[y, xx] += x[y + i, xx + j] @ w[i, j]
    f = relu((conv - bn("moving_mean")) / np.sqrt(bn("moving_variance") + EPS)
             * bn("gamma") + bn("beta")).reshape(gh * gw, -1)
    f_a = np.concatenate([f, np.ones((len(f), 1))], axis=1)  # _augment_1
    att_h = np.tanh(f_a @ v["attention_layer/w_att_1"])
    att_log = (np.concatenate([att_h, np.ones((len(f), 1))], axis=1)
               @ v["attention_layer/w_att_2"]).T  # [T, R]
    att = np.exp(att_log - att_log.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    f_att = np.stack([sum(att[t, r] * f_a[r] for r in range(len(f)))
                      for t in range(len(att))])  # [T, D+1]
    out.append((f_att @ cls_a.T).max(axis=0))
  return np.stack(out)


def lesa_model():
  return lesa_lib.LESA(feature_dim=F, emb_dim=E, grid_shape=GRID, num_modules=LT,
                       conv_channels=LD, rngs=nnx.Rngs(0))


def test_lesa_tf_checkpoint_forward_equals_reference(tmp_path):
  pytest.importorskip("tensorflow")
  v = lesa_variables(small_lesa_shapes())
  save_tf(tmp_path / "run" / "model.ckpt", v)
  params, model_state = convert.load_lesa_checkpoint(tmp_path / "run", num_modules=LT,
                                                     conv_block=True, conv_kernel=2)
  for p in ("run/model.ckpt", "run/model.ckpt.index", "run/model.ckpt.data-00000-of-00001"):
    got = convert.load_lesa_checkpoint(tmp_path / p)
    jax.tree.map(np.testing.assert_array_equal, got, (params, model_state))
  graphdef = nnx.split(nnx.eval_shape(lesa_model), nnx.Param, ...)[0]
  feats, emb, _ = inputs(seed=5)
  out = nnx.merge(graphdef, params, model_state)(feats, emb, train=False)
  np.testing.assert_allclose(out["scores"], lesa_reference(v, feats, emb), rtol=1e-4,
                             atol=1e-4)


def test_lesa_released_variable_list_matches_our_model():
  v = lesa_variables(RELEASED_LESA_VARIABLES)
  params, model_state = convert.convert_lesa_variables(
      v, num_modules=10, conv_block=True, conv_channels=512, conv_kernel=2, feature_dim=512,
      emb_dim=300)
  model = nnx.eval_shape(lambda: lesa_lib.LESA(feature_dim=512, emb_dim=300,
                                               grid_shape=(14, 14), rngs=nnx.Rngs(0)))
  _, want_p, want_s = nnx.split(model, nnx.Param, ...)
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)  # noqa: E731
  assert shapes(params) == shapes(nnx.to_pure_dict(want_p))
  assert shapes(model_state) == shapes(nnx.to_pure_dict(want_s))
  np.testing.assert_array_equal(model_state["encoder"]["conv"]["bn"]["var"],
                                v["conv/conv/batch_normalization/moving_variance"])


@pytest.mark.parametrize("edit, match", [
    (lambda v: v.pop("attention_layer/w_att_1"), r"missing variable 'attention_layer/w_att_1'"),
    (lambda v: v.pop("conv/conv/batch_normalization/moving_mean"),
     r"missing variable 'conv/conv/batch_normalization/moving_mean'"),
    (lambda v: v.update({"extra/thing": np.zeros(2, np.float32)}),
     r"unexpected variables \['extra/thing'\]"),
    (lambda v: v.update({"prediction_frac/W": np.zeros((LD + 1, E), np.float32)}),
     r"'prediction_frac/W' has shape \(9, 6\), expected \(8, 6\)"),
    (lambda v: v.update({"attention_layer/w_att_1": np.zeros((LT, LD + 1, LD), np.float32)}),
     r"is_separate_W_1"),
    (lambda v: v.update({"conv/conv/biases": np.zeros(LD, np.float32)}), r"is_batchnorm=False"),
])
def test_lesa_bad_variables(edit, match):
  v = lesa_variables(small_lesa_shapes())
  edit(v)
  with pytest.raises(ValueError, match=match):
    convert.convert_lesa_variables(v)


def test_lesa_size_expectations():
  v = lesa_variables(small_lesa_shapes())
  with pytest.raises(ValueError, match="has 3 where model.num_modules=10"):
    convert.convert_lesa_variables(v, num_modules=10)
  with pytest.raises(ValueError, match="model.conv_block=False"):
    convert.convert_lesa_variables(v, conv_block=False)
  no_conv = {k: x for k, x in v.items() if not k.startswith("conv/")}
  no_conv["attention_layer/w_att_1"] = np.zeros((F + 1, F), np.float32)
  no_conv["attention_layer/w_att_2"] = np.zeros((F + 1, LT), np.float32)
  no_conv["prediction_frac/W"] = np.zeros((F, E), np.float32)
  params, state = convert.convert_lesa_variables(no_conv, conv_block=False, feature_dim=F)
  assert sorted(params) == ["att_hidden", "att_logits", "label_proj"] and state == {}


def test_lesa_bad_files(tmp_path):
  pytest.importorskip("tensorflow")
  save_tf(tmp_path / "model.ckpt", lesa_variables(small_lesa_shapes()))
  with pytest.raises(FileNotFoundError, match="other.ckpt"):
    convert.load_tf_checkpoint(tmp_path / "other.ckpt")
  data = tmp_path / "model.ckpt.data-00000-of-00001"
  raw = data.read_bytes()
  data.write_bytes(raw[:len(raw) // 3])
  with pytest.raises(ValueError, match=r"model\.ckpt\.data-00000-of-00001: cannot read"):
    convert.load_tf_checkpoint(tmp_path / "model.ckpt")
  data.unlink()
  with pytest.raises(ValueError, match=r"model\.ckpt\.data-00000-of-00001: cannot read"):
    convert.load_tf_checkpoint(tmp_path / "model.ckpt")
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "model.ckpt.index").write_bytes(b"\x00" * 40)
  with pytest.raises(ValueError, match=r"bad/model\.ckpt\.index: not a readable TF"):
    convert.load_tf_checkpoint(tmp_path / "bad")
  (tmp_path / "bad" / "second.ckpt.index").write_bytes(b"")
  with pytest.raises(ValueError, match="expected one TF checkpoint"):
    convert.load_tf_checkpoint(tmp_path / "bad")


# ============================================================================ init_from

def tiny_meta(scene_dim=S):
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(7, E)).astype(np.float32)
  return DatasetMeta(name="tiny", label_names=tuple(map(str, range(7))),
                     embeddings={"glove": emb}, grid_shape=GRID, feature_dim=F,
                     scene_dim=scene_dim, num_examples={"test": 2})


def tiny_config(model_cfg):
  c = base_config()
  c.data.name = "none"
  c.data.embedding = "glove"
  c.data.seen_labels = (0, 1, 2, 3)
  c.data.unseen_labels = (4, 5, 6)
  c.model = model_cfg
  return c


class ShapeOnlyTrainer:
  """What ``init_from`` reads of a ``step_lib.Trainer`` (config, meta, emb_seen,
  abstract_state), without building the model's weights: for the error cases."""

  def __init__(self, config, meta):
    self.config, self.meta = config, meta
    self.emb_seen = meta.embedding("glove")[list(config.data.seen_labels)]
    build = get_model_builder(config.model.name)
    model = nnx.eval_shape(lambda: build(
        config.model, feature_dim=meta.feature_dim, emb_dim=E, grid_shape=meta.grid_shape,
        scene_dim=meta.scene_dim, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    self._abstract = types.SimpleNamespace(params=nnx.to_pure_dict(params),
                                           model_state=nnx.to_pure_dict(rest))

  def abstract_state(self):
    return self._abstract


def biam_cfg(**overrides):
  m = biam_lib.model_config()
  m.channels, m.heads, m.out_dim, m.top_k = C, HEADS, D, TOP_K
  m.update(overrides)
  return m


def test_init_from_biam_feeds_the_trainer(tmp_path, monkeypatch):
  """The numpy path (no torch needed): load_torch_checkpoint replaced by the state dict."""
  sd = official_biam_state()
  monkeypatch.setattr(biam_torch, "load_torch_checkpoint", lambda path: dict(sd))
  (tmp_path / "model_best.pth").write_bytes(b"")
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  trainer = step_lib.Trainer(tiny_config(biam_cfg()), tiny_meta(), mesh, steps_per_epoch=1)
  state = convert.init_state_from(tmp_path, trainer)  # the folder's one .pth
  assert int(state.step) == 0
  feats, _, scene = inputs()
  zsl, gzsl = trainer.predict(state.params, state.model_state,
                              {"features": feats.astype(np.float16),
                               "scene": scene.astype(np.float16)},
                              (trainer.emb_unseen, trainer.emb_gzsl))
  emb = np.asarray(trainer.emb_gzsl)
  ref, _ = biam_reference(sd, to_official_layout(feats.astype(np.float16).astype(np.float64)),
                          emb, scene.astype(np.float16).astype(np.float64), heads=HEADS,
                          top_k=TOP_K)
  np.testing.assert_allclose(gzsl, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(zsl, ref[:, 4:], rtol=1e-4, atol=1e-4)
  # config / checkpoint disagreements
  for overrides, match in (({"channels": 8}, "channels=16 but model.channels=8"),
                           ({"scene_source": "mean_region"},
                            "model.scene_source='mean_region'")):
    bad = ShapeOnlyTrainer(tiny_config(biam_cfg(**overrides)), tiny_meta())
    with pytest.raises(ValueError, match=match):
      convert.init_from(tmp_path / "model_best.pth", bad)
  (tmp_path / "model_latest.pth").write_bytes(b"")
  with pytest.raises(ValueError, match="expected one PyTorch checkpoint"):
    convert.init_from(tmp_path, trainer)
  trainer.config = tiny_config(biam_cfg(name="dem"))
  with pytest.raises(ValueError, match="no converter of official weights for model.name='dem'"):
    convert.init_from(tmp_path / "model_best.pth", trainer)


def test_init_from_lesa_tf_checkpoint(tmp_path):
  pytest.importorskip("tensorflow")
  v = lesa_variables(small_lesa_shapes())
  save_tf(tmp_path / "model.ckpt", v)
  m = lesa_lib.model_config()
  m.num_modules, m.conv_channels = LT, LD
  trainer = ShapeOnlyTrainer(tiny_config(m), tiny_meta(scene_dim=0))
  params, model_state = convert.init_from(tmp_path / "model.ckpt", trainer)
  np.testing.assert_array_equal(params["label_proj"]["kernel"], v["prediction_frac/W"])
  m.num_modules = 10
  trainer.config = tiny_config(m)
  with pytest.raises(ValueError, match="model.num_modules=10"):
    convert.init_from(tmp_path, trainer)
  with pytest.raises(ValueError, match="takes an official TF checkpoint"):
    convert.init_from(tmp_path / "missing.ckpt", trainer)
