"""LESA (Huynh & Elhamifar, CVPR 2020): shared multi-attention for multi-label zero-shot.

T attention modules share one two-layer MLP over the region features; each module's softmax
over regions gives an attended feature; label classifiers are the projected label embeddings
``W·e_j``; a label's image score is the best module's score (attention selection). Trained
with the ranking loss plus the distribution, relevance and diversity terms of the paper.
Follows ``shared/spec/baselines.md`` (section LESA) and the official TF1 code
(hbdat/cvpr20_LESA: ``core/model_share_attention.py``, NUS-WIDE zero-shot script):

- optional first block: 2x2 conv 'SAME' (TF pads bottom/right), no bias (slim.conv2d with a
  normalizer), Xavier-uniform kernel, BatchNorm (TF defaults: momentum 0.99, eps 1e-3), ReLU;
  one difference kept: TF's fused BatchNorm moves its running variance toward the unbiased
  batch variance, flax toward the biased one (factor n/(n-1), n = batch·regions >= 6272 on
  NUS-WIDE: negligible);
- constant-1 bias trick: ``tanh([F, 1]·W1)``, logits ``[a, 1]·W2``, W1 [D+1, D], W2 [D+1, T];
- W1, W2, W [D, E]: ``tf.contrib.layers.variance_scaling_initializer()`` = He fan-in,
  truncated normal;
- classifiers ``[W·e_j, 0]``: the zero entry faces the features' constant-1 slot, so it adds
  nothing; it is left out here (exactly equal; the tests' reference keeps it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax import losses
from mlzsl_jax.models import layers
from mlzsl_jax import hooks
from mlzsl_jax.models.registry import register_model

# tf.layers.batch_normalization defaults (TF convention = flax convention for momentum).
TF_BN_MOMENTUM = 0.99
TF_BN_EPS = 1e-3
# tf.nn.l2_normalize's epsilon (on the squared norm).
L2_NORMALIZE_EPS = 1e-12


def he_truncated_normal():
  """``tf.contrib.layers.variance_scaling_initializer()``: factor 2, fan-in, truncated normal
  (TF1 scales the truncated normal's stddev by sqrt(1.3); JAX corrects the truncation exactly;
  both give a variance of 2/fan_in)."""
  return jax.nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``tf.nn.l2_normalize``: x / sqrt(max(sum(x^2), 1e-12)) along ``axis``."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, L2_NORMALIZE_EPS))


def augment_one(x: jax.Array) -> jax.Array:
  """Appends a constant 1 to the last axis: [..., D] -> [..., D+1] (the bias trick)."""
  return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


class Matrix(nnx.Module):
  """A bare weight matrix ``kernel`` [rows, cols] (named 'kernel' so the partition rules
  shard its last dimension over 'model')."""

  def __init__(self, rows: int, cols: int, *, init, rngs: nnx.Rngs):
    self.kernel = nnx.Param(init(rngs.params(), (rows, cols), jnp.float32))


class ConvBlock(nnx.Module):
  """LESA's optional first block: 2x2 conv 'SAME' (no bias) -> BatchNorm -> ReLU.

  ``l2()`` is the official ``l2_regularizer(scale)`` of the kernel: scale · ½‖kernel‖².
  """

  def __init__(self, in_ch: int, out_ch: int, *, kernel_size: int, bn_momentum: float,
               dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_ch, out_ch, (kernel_size, kernel_size), padding="SAME",
                         use_bias=False, kernel_init=jax.nn.initializers.glorot_uniform(),
                         dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(out_ch, momentum=bn_momentum, epsilon=TF_BN_EPS, dtype=dtype,
                            rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, h, w, in_ch] -> [batch, h, w, out_ch]."""
    return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))

  def l2(self, scale: float) -> jax.Array:
    """scale · ½‖kernel‖² (TF ``l2_regularizer``: scale · ``tf.nn.l2_loss``)."""
    return scale * 0.5 * jnp.sum(jnp.square(self.conv.kernel[...]))


def single_emb_dim(emb_dim: int | dict, model_name: str) -> int:
  """The one embedding width a single-source model accepts."""
  if isinstance(emb_dim, dict):
    raise ValueError(f"model.name={model_name!r} takes one label-embedding source; "
                     f"config field data.embedding lists {sorted(emb_dim)}")
  return int(emb_dim)


def check_inputs(feats: jax.Array, label_emb: jax.Array, feature_dim: int, emb_dim: int,
                 num_regions: int) -> None:
  """ValueError unless feats is [batch, num_regions, feature_dim] and label_emb [L, emb_dim]."""
  if feats.ndim != 3 or feats.shape[1:] != (num_regions, feature_dim):
    raise ValueError(f"features: expected [batch, {num_regions}, {feature_dim}] (regions, "
                     f"dim), got {feats.shape}")
  if isinstance(label_emb, dict) or label_emb.ndim != 2 or label_emb.shape[-1] != emb_dim:
    shape = sorted(label_emb) if isinstance(label_emb, dict) else label_emb.shape
    raise ValueError(f"label embeddings: expected [labels, {emb_dim}], got {shape}")


class RegionEncoder(nnx.Module):
  """Region features of LESA-style models: cast, then the optional first conv block."""

  def __init__(self, *, feature_dim: int, grid_shape: tuple[int, int], conv_block: bool,
               conv_channels: int, conv_kernel: int, bn_momentum: float, dtype,
               rngs: nnx.Rngs):
    self.grid_shape = tuple(grid_shape)
    self.dtype = dtype
    self.conv = (ConvBlock(feature_dim, conv_channels, kernel_size=conv_kernel,
                           bn_momentum=bn_momentum, dtype=dtype, rngs=rngs)
                 if conv_block else None)
    self.out_dim = conv_channels if conv_block else feature_dim

  def __call__(self, feats: jax.Array, *, train: bool) -> jax.Array:
    """feats: [batch, regions, feature_dim] -> [batch, regions, out_dim] (compute dtype)."""
    x = feats.astype(self.dtype)
    if self.conv is None:
      return x
    grid = layers.regions_to_grid(x, self.grid_shape)
    return layers.grid_to_regions(self.conv(grid, train=train))


def check_conv_fields(conv_channels: int, conv_kernel: int, conv_l2_scale: float) -> None:
  if conv_channels < 1:
    raise ValueError(f"model.conv_channels={conv_channels}: expected >= 1")
  if conv_kernel < 1:
    raise ValueError(f"model.conv_kernel={conv_kernel}: expected >= 1")
  if conv_l2_scale < 0:
    raise ValueError(f"model.conv_l2_scale={conv_l2_scale}: expected >= 0")


def check_embedding_fields(trainable_embeddings: bool) -> None:
  if trainable_embeddings:
    raise ValueError("model.trainable_embeddings=True: not supported; label embeddings are "
                     "call inputs (any label set at evaluation), kept constant as in the "
                     "official zero-shot script (trainable_vecs=False)")


class LESA(nnx.Module):
  """LESA. Call: (feats [B, R, C], label_emb [L, E]) -> dict of scores and loss inputs."""

  def __init__(self, *, feature_dim: int, emb_dim: int, grid_shape: tuple[int, int],
               num_modules: int = 10, conv_block: bool = True, conv_channels: int = 512,
               conv_kernel: int = 2, bn_momentum: float = TF_BN_MOMENTUM,
               conv_l2_scale: float = 5e-4, conv_l2_in_loss: bool = False,
               normalize_embeddings: bool = True, trainable_embeddings: bool = False,
               global_pool: str = "mean", dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if num_modules < 1:
      raise ValueError(f"model.num_modules={num_modules}: expected >= 1 attention modules")
    if global_pool not in ("mean", "max"):
      raise ValueError(f"model.global_pool={global_pool!r}: expected 'mean' or 'max'")
    check_conv_fields(conv_channels, conv_kernel, conv_l2_scale)
    check_embedding_fields(trainable_embeddings)
    self.feature_dim, self.emb_dim = feature_dim, emb_dim
    self.num_regions = grid_shape[0] * grid_shape[1]
    self.num_modules = num_modules
    self.conv_l2_scale, self.conv_l2_in_loss = conv_l2_scale, conv_l2_in_loss
    self.normalize_embeddings = normalize_embeddings
    self.global_pool = global_pool
    self.dtype = dtype
    self.encoder = RegionEncoder(feature_dim=feature_dim, grid_shape=grid_shape,
                                 conv_block=conv_block, conv_channels=conv_channels,
                                 conv_kernel=conv_kernel, bn_momentum=bn_momentum,
                                 dtype=dtype, rngs=rngs)
    d = self.encoder.out_dim
    self.att_hidden = Matrix(d + 1, d, init=he_truncated_normal(), rngs=rngs)  # W1
    self.att_logits = Matrix(d + 1, num_modules, init=he_truncated_normal(), rngs=rngs)  # W2
    self.label_proj = Matrix(d, emb_dim, init=he_truncated_normal(), rngs=rngs)  # W

  def classifiers(self, label_emb: jax.Array) -> jax.Array:
    """label_emb: [L, E] -> classifiers [L, D] = (W·embᵀ)ᵀ (embeddings L2-normalised)."""
    emb = label_emb.astype(self.dtype)
    if self.normalize_embeddings:
      emb = l2_normalize(emb)
    return jnp.einsum("le,de->ld", emb, self.label_proj.kernel[...].astype(self.dtype))

  def attend(self, f: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """f: [B, R, D] -> (attended [B, T, D], attention [B, T, R], attention logits [B, T, R])."""
    w1 = self.att_hidden.kernel[...].astype(self.dtype)
    w2 = self.att_logits.kernel[...].astype(self.dtype)
    hidden = jnp.tanh(jnp.einsum("brc,cd->brd", augment_one(f), w1))  # [B, R, D]
    logits = jnp.einsum("brd,dt->btr", augment_one(hidden), w2)  # [B, T, R]
    attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(f.dtype)
    return jnp.einsum("btr,brd->btd", attention, f), attention, logits

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """feats: [B, R, C] (R = grid regions, row-major), label_emb: [L, E]; scene unused.

    Returns {'scores' [B, L] (max over modules), 'module_scores' [B, T, L],
    'global_scores' [B, L] (classifiers on the pooled region feature), 'attention' [B, T, R],
    'attention_logits' [B, T, R]} and 'regularizer' (conv L2) when model.conv_l2_in_loss.
    """
    check_inputs(feats, label_emb, self.feature_dim, self.emb_dim, self.num_regions)
    f = self.encoder(feats, train=train)  # [B, R, D]
    attended, attention, logits = self.attend(f)
    cls = self.classifiers(label_emb)  # [L, D]
    # scores accumulate and stay float32 (bf16-rounded scores are too coarse for the hinge)
    f32 = jnp.float32
    module_scores = jnp.einsum("btd,ld->btl", attended, cls, preferred_element_type=f32)
    pooled = f.mean(axis=1) if self.global_pool == "mean" else f.max(axis=1)  # [B, D]
    out = {"scores": module_scores.max(axis=1), "module_scores": module_scores,
           "global_scores": jnp.einsum("bd,ld->bl", pooled, cls, preferred_element_type=f32),
           "attention": attention.astype(jnp.float32),
           "attention_logits": logits.astype(jnp.float32)}
    if self.conv_l2_in_loss and self.encoder.conv is not None:
      out["regularizer"] = self.encoder.conv.l2(self.conv_l2_scale)
    return out


# ----------------------------------------------------------------------------- loss

def distribution_loss(module_scores: jax.Array, states: jax.Array) -> jax.Array:
  """Attention distribution term. module_scores: [B, T, L], states: [B, L] -> scalar.

  Softmax over modules, keep positive labels, sum over labels -> [B, T], squared, mean over
  modules, mean over the batch (official: no normalisation by the number of positives).
  """
  p = jax.nn.softmax(module_scores.astype(jnp.float32), axis=1)
  pos = (states > 0).astype(jnp.float32)[:, None, :]
  per_module = jnp.sum(p * pos, axis=2)  # [B, T]
  return jnp.mean(jnp.square(per_module))


def relevance_loss(scores: jax.Array, global_scores: jax.Array, states: jax.Array,
                   margin: float) -> jax.Array:
  """Attention relevance term: sum over (image, label) of max(0, -(s - s_global)·y + margin).

  scores, global_scores: [B, L]; states: [B, L] in {1, -1, 0}. As the official code, an
  unknown (0) label contributes max(0, margin). A sum, not a mean: it grows with B and L.
  """
  y = states.astype(jnp.float32)
  diff = scores.astype(jnp.float32) - global_scores.astype(jnp.float32)
  return jnp.sum(jnp.maximum(-diff * y + margin, 0.0))


def _safe_norm(x: jax.Array) -> jax.Array:
  """sqrt(sum x^2) with a zero (not NaN) gradient at x = 0 (e.g. a single module)."""
  sq = jnp.sum(jnp.square(x))
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def diversity_loss(attention_logits: jax.Array) -> jax.Array:
  """Attention diversity term. attention_logits: [B, T, R] -> scalar.

  L2-normalise each module's logits over regions, Gram matrix [B, T, T] between modules,
  diagonal set to 0, Frobenius norm of the whole [B, T, T] tensor (not a per-image mean).
  """
  a = l2_normalize(attention_logits.astype(jnp.float32), axis=-1)
  gram = jnp.einsum("btr,bsr->bts", a, a)
  t = gram.shape[-1]
  gram = gram * (1.0 - jnp.eye(t, dtype=gram.dtype))
  return _safe_norm(gram)


@losses.register_loss("lesa_ranking")
def lesa_loss(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  """ranking + λ_dist·distribution + λ_rel·relevance + λ_div·diversity (cfg = config.loss)."""
  for field in ("lambda_dist", "lambda_rel", "lambda_div"):
    if cfg[field] < 0:
      raise ValueError(f"loss.{field}={cfg[field]}: expected >= 0")
  rank = losses.ranking_loss(outputs["scores"], states)
  dist = distribution_loss(outputs["module_scores"], states)
  rel = relevance_loss(outputs["scores"], outputs["global_scores"], states,
                       cfg.relevance_margin)
  div = diversity_loss(outputs["attention_logits"])
  total = rank + cfg.lambda_dist * dist + cfg.lambda_rel * rel + cfg.lambda_div * div
  return total, {"ranking_loss": rank, "distribution_loss": dist, "relevance_loss": rel,
                 "diversity_loss": div}


# ----------------------------------------------------------------------------- configs

def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for LESA (official NUS-WIDE zero-shot script)."""
  c = ml_collections.ConfigDict()
  c.name = "lesa"
  c.num_modules = 10  # T, attention modules sharing one MLP
  c.conv_block = True  # first 2x2 conv + BatchNorm + ReLU (is_conv=True in the script)
  c.conv_channels = 512  # the script keeps the VGG width (512 -> 512)
  c.conv_kernel = 2
  c.bn_momentum = TF_BN_MOMENTUM
  c.conv_l2_scale = 5e-4  # the conv kernel's l2_regularizer scale: scale * 1/2 ||w||^2
  # The official script builds that regularizer but never adds it to the loss
  # (AttentionClassifier.is_regularizer defaults to False and the script does not set it;
  # the released run's description.txt has no 'use l2 regularizer' line). True adds it as
  # the model's 'regularizer' output.
  c.conv_l2_in_loss = False
  c.normalize_embeddings = True  # the official code L2-normalises the label vectors
  c.trainable_embeddings = False  # trainable_vecs=False in the script (only False supported)
  c.global_pool = "mean"  # pooled feature of the relevance term: 'mean' or 'max'
  return c


def loss_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.loss`` for LESA (official NUS-WIDE zero-shot script)."""
  c = ml_collections.ConfigDict()
  c.name = "lesa_ranking"
  c.lambda_dist = 0.1  # lamb_att_dist
  c.lambda_rel = 0.001  # lamb_att_global
  c.lambda_div = 0.01  # lamb_att_span
  c.relevance_margin = 0.0  # margin_att_global
  return c


@register_model("lesa")
def build_lesa(cfg, *, feature_dim: int, emb_dim: int | dict, grid_shape: tuple[int, int],
               scene_dim: int, dtype, rngs: nnx.Rngs) -> LESA:
  """Builds LESA from ``config.model`` (fields of ``model_config()``); scene_dim unused."""
  del scene_dim
  return LESA(feature_dim=feature_dim, emb_dim=single_emb_dim(emb_dim, "lesa"),
              grid_shape=grid_shape, num_modules=cfg.num_modules, conv_block=cfg.conv_block,
              conv_channels=cfg.conv_channels, conv_kernel=cfg.conv_kernel,
              bn_momentum=cfg.bn_momentum, conv_l2_scale=cfg.conv_l2_scale,
              conv_l2_in_loss=cfg.conv_l2_in_loss,
              normalize_embeddings=cfg.normalize_embeddings,
              trainable_embeddings=cfg.trainable_embeddings, global_pool=cfg.global_pool,
              dtype=dtype, rngs=rngs)


@hooks.REGION_MAPS.register("lesa")
def region_map(model, feats, label_emb, scene):
  """The attention of the shared module that gives the label its (max) score: [B, R, L]."""
  out = model(feats, label_emb, scene, train=False)
  best = jnp.argmax(out["module_scores"], axis=1)  # [B, L]
  maps = jnp.take_along_axis(out["attention"], best[..., None], axis=1)  # [B, L, R]
  return jnp.swapaxes(maps, 1, 2)
