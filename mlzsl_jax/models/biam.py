"""BiAM (Narayan et al., ICCV 2021): region features enriched with region- and scene-level
context, mapped to the label-embedding space; a label's image score is the mean of its top-k
region scores. Follows ``shared/spec/biam.md``; PyTorch layouts (NCHW) become NHWC here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax.models import label_top_k, layers, region_attention
from mlzsl_jax import hooks
from mlzsl_jax.models.registry import register_model

# PyTorch BatchNorm2d(momentum=0.99) moves the running stats 99% toward each batch:
# running = 0.01 * running + 0.99 * batch. Flax's convention is
# running = momentum * running + (1 - momentum) * batch, hence 1 - 0.99.
TORCH_BN_MOMENTUM = 0.99
BN_EPS = 1e-3

# The paper's module ablation (``model.context``): which context blocks feed the fusion conv.
# 'none' maps the stem's region features h_r straight to the fusion conv (the paper's
# "baseline without context"); 'region' / 'scene' keep one block; 'both' is BiAM.
CONTEXTS = {"both": ("region", "scene"), "region": ("region",), "scene": ("scene",),
            "none": ()}


def _batch_norm(ch: int, *, momentum: float, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(ch, momentum=momentum, epsilon=BN_EPS, dtype=dtype, rngs=rngs)


class ConvReluBN(nnx.Module):
  """conv3x3 -> ReLU -> BatchNorm (this order, as the official CONV3_3)."""

  def __init__(self, in_ch: int, out_ch: int, *, bn_momentum: float, dtype, rngs: nnx.Rngs):
    self.conv = layers.conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
    self.bn = _batch_norm(out_ch, momentum=bn_momentum, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, h, w, in_ch] -> [batch, h, w, out_ch]."""
    return self.bn(jax.nn.relu(self.conv(x)), use_running_average=not train)


class RegionContextBlock(nnx.Module):
  """Multi-head self-attention over regions (1x1-conv projections) + feed-forward, residuals."""

  def __init__(self, ch: int, heads: int, *, dropout: float, mask_zero_scores: bool,
               dtype, rngs: nnx.Rngs):
    if ch % heads:
      raise ValueError(f"model.channels={ch} must be divisible by model.heads={heads}")
    self.heads = heads
    self.mask_zero_scores = mask_zero_scores
    self.w_q = layers.conv(ch, ch, 1, dtype=dtype, rngs=rngs)
    self.w_k = layers.conv(ch, ch, 1, dtype=dtype, rngs=rngs)
    self.w_v = layers.conv(ch, ch, 1, dtype=dtype, rngs=rngs)
    self.w_o = layers.conv(ch, ch, 1, dtype=dtype, rngs=rngs)
    self.ff1 = layers.conv(ch, 2 * ch, 1, dtype=dtype, rngs=rngs)
    self.ff2 = layers.conv(2 * ch, ch, 1, dtype=dtype, rngs=rngs)
    self.attn_dropout_rate = float(dropout)  # on the attention probabilities
    self.out_dropout = nnx.Dropout(dropout)

  def __call__(self, h_r: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """h_r: [batch, h, w, ch] -> e_r: [batch, h, w, ch]."""
    b, gh, gw, ch = h_r.shape
    qkv = layers.grid_to_regions(layers.pointwise_convs(h_r, (self.w_q, self.w_k, self.w_v)))
    dropout = train and self.attn_dropout_rate > 0
    seeds = region_attention.dropout_seeds(rngs["dropout"](), b) if dropout else None
    o_r = region_attention.attend(qkv, seeds, heads=self.heads,
                                  rate=self.attn_dropout_rate,
                                  mask_zero=self.mask_zero_scores).reshape(b, gh, gw, ch)
    o_r = self.out_dropout(self.w_o(o_r), deterministic=not train, rngs=rngs) + h_r
    return self.ff2(jax.nn.relu(self.ff1(o_r))) + o_r


class SceneContextBlock(nnx.Module):
  """Scene-gated channel reweighting of the region features, plus a conv refinement."""

  def __init__(self, ch: int, scene_dim: int, *, dropout: float, bn_momentum: float,
               dtype, rngs: nnx.Rngs):
    self.channel_conv = layers.conv(ch, ch, 1, dtype=dtype, rngs=rngs)
    self.w_g = layers.linear(scene_dim, ch, dtype=dtype, rngs=rngs)
    self.scene_dropout = nnx.Dropout(dropout)
    self.refine = ConvReluBN(ch, ch, bn_momentum=bn_momentum, dtype=dtype, rngs=rngs)

  def __call__(self, h_r: jax.Array, x_g: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None) -> jax.Array:
    """h_r: [batch, h, w, ch], x_g: [batch, scene_dim] -> e_g: [batch, h, w, ch]."""
    q_g = v_g = jax.nn.leaky_relu(self.channel_conv(h_r), 0.2)
    k_g = self.w_g(self.scene_dropout(x_g, deterministic=not train, rngs=rngs))  # [b, ch]
    r_g = jax.nn.sigmoid(q_g.mean(axis=(1, 2)) * k_g)  # [b, ch]
    c_g = r_g[:, None, None, :] * v_g
    return c_g + self.refine(c_g, train=train)


class BiAM(nnx.Module):
  """BiAM. Call: (feats [B, R, C_in], label_emb [L, E], scene [B, S] | None) -> scores."""

  def __init__(self, *, feature_dim: int, emb_dim: int, grid_shape: tuple[int, int],
               scene_dim: int, channels: int = 256, heads: int = 8, out_dim: int = 512,
               top_k: int = 6, mask_zero_scores: bool = True, attn_dropout: float = 0.1,
               scene_dropout: float = 0.2, bn_momentum: float = 1.0 - TORCH_BN_MOMENTUM,
               scene_source: str = "dataset", label_chunk: int = 0, context: str = "both",
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if context not in CONTEXTS:
      raise ValueError(f"model.context={context!r}: expected one of {sorted(CONTEXTS)}")
    if scene_source not in ("dataset", "mean_region"):
      raise ValueError(f"model.scene_source={scene_source!r}: expected 'dataset' "
                       "(a stored scene feature) or 'mean_region' (learned projection of "
                       "the mean region feature)")
    if "scene" in CONTEXTS[context] and scene_source == "dataset" and scene_dim <= 0:
      raise ValueError("model.scene_source='dataset' but the dataset stores no scene "
                       "feature; set model.scene_source='mean_region'")
    num_regions = grid_shape[0] * grid_shape[1]
    if not 1 <= top_k <= num_regions:
      raise ValueError(f"model.top_k={top_k} must be in [1, {num_regions}] (regions)")
    self.feature_dim, self.emb_dim = feature_dim, emb_dim
    self.grid_shape = tuple(grid_shape)
    self.top_k = top_k
    self.label_chunk = layers.check_label_chunk(label_chunk)
    self.scene_source = scene_source
    self.context = context
    self.dtype = dtype
    self.stem = ConvReluBN(feature_dim, channels, bn_momentum=bn_momentum, dtype=dtype,
                           rngs=rngs)
    blocks = CONTEXTS[context]
    if "region" in blocks:
      self.region_context = RegionContextBlock(channels, heads, dropout=attn_dropout,
                                               mask_zero_scores=mask_zero_scores,
                                               dtype=dtype, rngs=rngs)
    if "scene" in blocks:
      scene_in = scene_dim if scene_source == "dataset" else feature_dim
      self.scene_context = SceneContextBlock(channels, scene_in, dropout=scene_dropout,
                                             bn_momentum=bn_momentum, dtype=dtype, rngs=rngs)
    self.fuse = layers.conv(max(len(blocks), 1) * channels, out_dim, 1, dtype=dtype,
                            rngs=rngs)
    self.label_proj = layers.linear(emb_dim, out_dim, dtype=dtype, rngs=rngs)

  def _check_inputs(self, feats: jax.Array, label_emb: jax.Array) -> None:
    if feats.ndim != 3 or feats.shape[-1] != self.feature_dim:
      raise ValueError(f"features: expected [batch, regions, {self.feature_dim}], "
                       f"got {feats.shape}")
    if label_emb.ndim != 2 or label_emb.shape[-1] != self.emb_dim:
      raise ValueError(f"label embeddings: expected [labels, {self.emb_dim}], "
                       f"got {label_emb.shape}")

  def region_features(self, feats: jax.Array, scene: jax.Array | None = None, *,
                      train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """feats: [B, R, C_in], scene: [B, S] -> fused region features e_f [B, R, D]."""
    x_r = layers.regions_to_grid(feats.astype(self.dtype), self.grid_shape)
    h_r = self.stem(x_r, train=train)
    blocks = CONTEXTS[self.context]
    branches = []
    if "region" in blocks:
      branches.append(self.region_context(h_r, train=train, rngs=rngs))  # e_r
    if "scene" in blocks:
      branches.append(self.scene_context(h_r, self._scene_input(feats, scene), train=train,
                                         rngs=rngs))  # e_g
    fused_in = jnp.concatenate(branches, axis=-1) if branches else h_r
    e_f = jax.nn.leaky_relu(self.fuse(fused_in), 0.2)
    return layers.grid_to_regions(e_f)

  def _scene_input(self, feats: jax.Array, scene: jax.Array | None) -> jax.Array:
    """The scene feature x_g [B, S]: stored with the dataset, or the mean region feature."""
    if self.scene_source == "mean_region":
      return feats.astype(self.dtype).mean(axis=1)
    if scene is None:
      raise ValueError("model.scene_source='dataset' needs the batch field 'scene'")
    return scene.astype(self.dtype)

  def _label_region_scores(self, e_f: jax.Array, label_emb: jax.Array) -> jax.Array:
    """e_f: [B, R, D], label_emb: [L, E] -> region scores [B, R, L], float32.

    The products run in the compute dtype but accumulate and return float32: with bf16
    region scores the ranking loss's margins (1 + s_n - s_p) lose their resolution once
    scores grow, and bf16 training of the demo diverged (loss 0.08 -> 29 by epoch 10).
    """
    return layers.constrain_label_axis(
        label_top_k.region_scores(e_f, self._classifiers(label_emb)))

  def _classifiers(self, label_emb: jax.Array) -> jax.Array:
    """label_emb: [L, E] -> the labels' classifiers in the region-feature space [L, D]."""
    return self.label_proj(label_emb.astype(self.dtype))

  def region_scores(self, feats: jax.Array, label_emb: jax.Array,
                    scene: jax.Array | None = None, *, train: bool = False,
                    rngs: nnx.Rngs | None = None) -> jax.Array:
    """feats: [B, R, C_in], label_emb: [L, E], scene: [B, S] -> region scores [B, R, L].

    Always dense (ignores ``label_chunk``): for plots, call it with a small label subset.
    """
    self._check_inputs(feats, label_emb)
    e_f = self.region_features(feats, scene, train=train, rngs=rngs)
    return self._label_region_scores(e_f, label_emb)

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Returns {'scores': [B, L] (mean of the top-k region scores)} plus, with
    ``label_chunk == 0`` only, 'region_scores' [B, R, L].

    With ``label_chunk = n > 0`` the classifiers, region scores and top-k pooling run n
    labels at a time (``map_label_chunks``): memory O(B·R·D + B·R·n + B·L·k) instead of
    O(B·R·L); the same scores and gradients as the dense path. The full region scores are
    then never built; use ``region_scores`` on a label subset when they are needed.

    On TPU the region attention and the label scores with their top-k are Pallas kernels
    (``region_attention``, ``label_top_k``: the [B, heads, R, R] maps and the [B, R, L]
    scores stay on chip; labels are tiled there, so ``label_chunk`` is not needed).
    """
    self._check_inputs(feats, label_emb)
    e_f = self.region_features(feats, scene, train=train, rngs=rngs)
    on_tpu = layers.compiling_for_tpu()
    if self.label_chunk == 0 and not on_tpu:
      region = self._label_region_scores(e_f, label_emb)
      return {"scores": label_top_k.top_k_mean(region, self.top_k), "region_scores": region}
    if on_tpu:  # one kernel, labels tiled on chip (label_chunk is not needed)
      scores = label_top_k.top_k_scores(e_f, self._classifiers(label_emb), self.top_k)
    else:
      scores = layers.map_label_chunks(
          lambda emb: label_top_k.top_k_scores_xla(e_f, self._classifiers(emb), self.top_k),
          label_emb, self.label_chunk)
    out = {"scores": scores}
    if self.label_chunk == 0:  # on TPU: computed only when a caller uses it
      out["region_scores"] = self._label_region_scores(e_f, label_emb)
    return out


def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for BiAM (NUS-WIDE values of the official code)."""
  c = ml_collections.ConfigDict()
  c.name = "biam"
  c.channels = 256
  c.heads = 8  # 16 for Open Images
  c.out_dim = 512
  c.top_k = 6
  c.mask_zero_scores = True  # official quirk: attention scores exactly 0 become -1e9
  c.attn_dropout = 0.1
  c.scene_dropout = 0.2
  c.bn_momentum = 1.0 - TORCH_BN_MOMENTUM  # flax convention for torch's momentum 0.99
  c.scene_source = "dataset"  # or 'mean_region' (learned projection of the mean region)
  # Module ablation of the paper: 'both' (BiAM), 'region' (RCB only), 'scene' (SCB only),
  # 'none' (no context: the stem's region features go straight to the fusion conv).
  c.context = "both"
  # 0: score all labels at once (region scores [B, R, L] in memory; output 'region_scores').
  # n > 0: n labels at a time (memory O(B·R·n), for 7k+ labels); same scores, no
  # 'region_scores' output (BiAM.region_scores(feats, label_subset) gives them for plots).
  # On TPU neither matters: a Pallas kernel tiles the labels on chip (label_top_k).
  c.label_chunk = 0
  return c


@register_model("biam")
def build_biam(cfg, *, feature_dim: int, emb_dim: int, grid_shape: tuple[int, int],
               scene_dim: int, dtype, rngs: nnx.Rngs) -> BiAM:
  """Builds BiAM from ``config.model`` (fields: channels, heads, out_dim, top_k, ...)."""
  return BiAM(feature_dim=feature_dim, emb_dim=emb_dim, grid_shape=grid_shape,
              scene_dim=scene_dim, channels=cfg.channels, heads=cfg.heads,
              out_dim=cfg.out_dim, top_k=cfg.top_k, mask_zero_scores=cfg.mask_zero_scores,
              attn_dropout=cfg.attn_dropout, scene_dropout=cfg.scene_dropout,
              bn_momentum=cfg.bn_momentum, scene_source=cfg.scene_source,
              label_chunk=cfg.get("label_chunk", 0), context=cfg.get("context", "both"),
              dtype=dtype, rngs=rngs)


@hooks.REGION_MAPS.register("biam")
def region_map(model, feats, label_emb, scene):
  """The region scores whose top-k mean is the image score: [B, R, L]."""
  return model.region_scores(feats, label_emb, scene, train=False)
