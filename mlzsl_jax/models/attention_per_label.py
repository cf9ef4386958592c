"""One attention per label: LESA's comparison row (CVPR 2020, Table "one attention per
label"). For label j: attention logits over regions ``f_rᵀ·W_a·e_j`` (bilinear), softmax over
regions, attended feature ``Σ_r α_rj f_r`` scored by label j's classifier ``W·e_j`` (as in
LESA). Same region encoder (optional 2x2 conv block), initialisers and label-embedding
handling as ``lesa.py``. Memory is [B, L, R] (attention) and [B, L, D] (attended features);
``model.label_chunk = n > 0`` computes n labels at a time (memory [B, n, R + D], each chunk
recomputed in the backward pass) and returns the scores only. Trained with the plain hinge
"ranking" loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax.models import layers, lesa
from mlzsl_jax import hooks
from mlzsl_jax.models.registry import register_model


class AttentionPerLabel(nnx.Module):
  """Call: (feats [B, R, C], label_emb [L, E]) -> {'scores' [B, L], 'attention_logits' [B, L, R],
  'attention' [B, L, R]} (the last two only with ``label_chunk == 0``)."""

  def __init__(self, *, feature_dim: int, emb_dim: int, grid_shape: tuple[int, int],
               share_projection: bool = False, conv_block: bool = True,
               conv_channels: int = 512, conv_kernel: int = 2,
               bn_momentum: float = lesa.TF_BN_MOMENTUM, conv_l2_scale: float = 5e-4,
               conv_l2_in_loss: bool = False, normalize_embeddings: bool = True,
               trainable_embeddings: bool = False, label_chunk: int = 0,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    lesa.check_conv_fields(conv_channels, conv_kernel, conv_l2_scale)
    lesa.check_embedding_fields(trainable_embeddings)
    self.feature_dim, self.emb_dim = feature_dim, emb_dim
    self.num_regions = grid_shape[0] * grid_shape[1]
    self.conv_l2_scale, self.conv_l2_in_loss = conv_l2_scale, conv_l2_in_loss
    self.normalize_embeddings = normalize_embeddings
    self.label_chunk = layers.check_label_chunk(label_chunk)
    self.dtype = dtype
    self.encoder = lesa.RegionEncoder(feature_dim=feature_dim, grid_shape=grid_shape,
                                      conv_block=conv_block, conv_channels=conv_channels,
                                      conv_kernel=conv_kernel, bn_momentum=bn_momentum,
                                      dtype=dtype, rngs=rngs)
    d = self.encoder.out_dim
    self.label_proj = lesa.Matrix(d, emb_dim, init=lesa.he_truncated_normal(), rngs=rngs)  # W
    # W_a [D, E]; None: the attention uses W (attention logit = the region's label score).
    self.att_proj = (None if share_projection else
                     lesa.Matrix(d, emb_dim, init=lesa.he_truncated_normal(), rngs=rngs))

  def _attend(self, f: jax.Array, label_emb: jax.Array) -> tuple[jax.Array, ...]:
    """f: [B, R, D], label_emb: [L, E] -> scores [B, L], attention and its logits [B, L, R]
    (all float32)."""
    emb = label_emb.astype(self.dtype)
    if self.normalize_embeddings:
      emb = lesa.l2_normalize(emb)
    w = self.label_proj.kernel[...].astype(self.dtype)
    w_a = w if self.att_proj is None else self.att_proj.kernel[...].astype(self.dtype)
    classifiers = jnp.einsum("le,de->ld", emb, w)  # [L, D]
    queries = jnp.einsum("le,de->ld", emb, w_a)  # W_a·e_j: [L, D]
    logits = jnp.einsum("brd,ld->blr", f, queries)  # f_rᵀ·W_a·e_j: [B, L, R]
    attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(f.dtype)
    attended = jnp.einsum("blr,brd->bld", attention, f)  # [B, L, D]
    scores = jnp.einsum("bld,ld->bl", attended, classifiers,  # float32 out: see lesa.py
                        preferred_element_type=jnp.float32)
    return scores, attention.astype(jnp.float32), logits.astype(jnp.float32)

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """feats: [B, R, C] (R = grid regions, row-major), label_emb: [L, E]; scene unused."""
    lesa.check_inputs(feats, label_emb, self.feature_dim, self.emb_dim, self.num_regions)
    f = self.encoder(feats, train=train)  # [B, R, D]
    if self.label_chunk:
      out = {"scores": layers.map_label_chunks(lambda e: self._attend(f, e)[0], label_emb,
                                             self.label_chunk, remat=True)}
    else:
      scores, attention, logits = self._attend(f, label_emb)
      out = {"scores": scores, "attention": attention, "attention_logits": logits}
    if self.conv_l2_in_loss and self.encoder.conv is not None:
      out["regularizer"] = self.encoder.conv.l2(self.conv_l2_scale)
    return out


def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for one attention per label (LESA's backbone settings)."""
  c = ml_collections.ConfigDict()
  c.name = "attention_per_label"
  c.share_projection = False  # True: attention uses the classifier projection W (W_a = W)
  c.conv_block = True  # same first block as LESA, so the two rows differ only in attention
  c.conv_channels = 512
  c.conv_kernel = 2
  c.bn_momentum = lesa.TF_BN_MOMENTUM
  c.conv_l2_scale = 5e-4
  c.conv_l2_in_loss = False  # as LESA's official script (regularizer built, not added)
  c.normalize_embeddings = True
  c.trainable_embeddings = False  # only False supported (embeddings are call inputs)
  c.label_chunk = 0  # n > 0: n labels at a time, scores only (no attention maps output)
  return c


def loss_config() -> ml_collections.ConfigDict:
  """``config.loss`` for this model: the plain hinge ranking loss (mlzsl_jax.losses)."""
  c = ml_collections.ConfigDict()
  c.name = "ranking"
  return c


@register_model("attention_per_label")
def build_attention_per_label(cfg, *, feature_dim: int, emb_dim: int | dict,
                              grid_shape: tuple[int, int], scene_dim: int, dtype,
                              rngs: nnx.Rngs) -> AttentionPerLabel:
  """Builds the model from ``config.model`` (fields of ``model_config()``)."""
  del scene_dim
  return AttentionPerLabel(
      feature_dim=feature_dim, emb_dim=lesa.single_emb_dim(emb_dim, "attention_per_label"),
      grid_shape=grid_shape, share_projection=cfg.share_projection,
      conv_block=cfg.conv_block, conv_channels=cfg.conv_channels,
      conv_kernel=cfg.conv_kernel, bn_momentum=cfg.bn_momentum,
      conv_l2_scale=cfg.conv_l2_scale, conv_l2_in_loss=cfg.conv_l2_in_loss,
      normalize_embeddings=cfg.normalize_embeddings,
      trainable_embeddings=cfg.trainable_embeddings,
      label_chunk=cfg.get("label_chunk", 0), dtype=dtype, rngs=rngs)


@hooks.REGION_MAPS.register("attention_per_label")
def region_map(model, feats, label_emb, scene):
  """Each label's attention weights over the regions: [B, R, L]."""
  return jnp.swapaxes(model(feats, label_emb, scene, train=False)["attention"], 1, 2)
