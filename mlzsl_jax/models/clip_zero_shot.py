"""Zero-shot CLIP as a model: no trainable parameters; label j's score for an image comes
from cosine similarities between the image's CLIP features and label j's CLIP text
embedding (``data.embedding=clip``).

Inputs (``data.backbone=clip_vit_*``): feats [B, N, D] = the projected patch tokens, scene
[B, D] = the projected class token (CLIP's image embedding), label_emb [L, D].

  global  s_g[b, j] = cos(scene_b, e_j)                      (CLIP's own zero-shot score)
  local   s_l[b, j] = mean of the top_k largest cos(token_{b,r}, e_j) over the N tokens
  mkt     MKT's inference (He et al., AAAI'23): each score turned into a distribution over
          the labels, softmax(temperature * s) over j, then combined
          global_weight * softmax(T s_g) + local_weight * softmax(T s_l)
          (both weights 0.5 by default: the average)

Fields (``config.model``): mode ("global" | "local" | "mkt"), top_k (local; clipped to N),
temperature (CLIP's logit scale, 100), global_weight, local_weight. ``main evaluate`` needs no
checkpoint for it (a model without parameters has nothing to restore).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax import hooks
from mlzsl_jax.models.registry import register_model

MODES = ("global", "local", "mkt")


def _unit(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClipZeroShot(nnx.Module):
  """Call: (feats [B, N, D], label_emb [L, D], scene [B, D]) -> {'scores': [B, L]}."""

  def __init__(self, *, emb_dim: int, feature_dim: int, scene_dim: int, mode: str = "mkt",
               top_k: int = 18, temperature: float = 100.0, global_weight: float = 0.5,
               local_weight: float = 0.5):
    if mode not in MODES:
      raise ValueError(f"config field model.mode={mode!r}: expected one of {MODES}")
    if mode != "global" and feature_dim != emb_dim:
      raise ValueError(f"clip_zero_shot: region features are {feature_dim}-d, label "
                       f"embeddings {emb_dim}-d; expected CLIP tokens and CLIP text embeddings "
                       "of one model (data.backbone=clip_vit_*, data.embedding=clip)")
    if mode != "local" and scene_dim != emb_dim:
      raise ValueError(f"clip_zero_shot mode {mode!r} needs the class embedding as the scene "
                       f"feature ({emb_dim}-d), the dataset stores scene_dim={scene_dim} "
                       "(prepare it from an extract folder: data.backbone=clip_vit_*)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
      raise ValueError(f"config field model.top_k={top_k!r}: expected an int >= 1")
    self.mode, self.top_k, self.temperature = mode, top_k, float(temperature)
    self.global_weight, self.local_weight = float(global_weight), float(local_weight)

  def global_scores(self, scene: jax.Array, label_emb: jax.Array) -> jax.Array:
    """[B, D], [L, D] -> cosines [B, L]."""
    return _unit(scene) @ _unit(label_emb).T

  def local_scores(self, feats: jax.Array, label_emb: jax.Array) -> jax.Array:
    """[B, N, D], [L, D] -> mean of the top_k token cosines per label [B, L]."""
    cos = jnp.einsum("bnd,ld->bln", _unit(feats), _unit(label_emb))
    k = min(self.top_k, feats.shape[1])
    return jax.lax.top_k(cos, k)[0].mean(-1)

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    del train, rngs
    if self.mode != "local" and scene is None:
      raise ValueError("clip_zero_shot: no scene feature (the class embedding) in the batch")
    if self.mode == "global":
      return {"scores": self.global_scores(scene, label_emb)}
    local = self.local_scores(feats, label_emb)
    if self.mode == "local":
      return {"scores": local}
    g = jax.nn.softmax(self.temperature * self.global_scores(scene, label_emb), axis=-1)
    s = jax.nn.softmax(self.temperature * local, axis=-1)
    return {"scores": self.global_weight * g + self.local_weight * s}


def model_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "clip_zero_shot"
  c.mode = "mkt"
  c.top_k = 18
  c.temperature = 100.0
  c.global_weight = 0.5
  c.local_weight = 0.5
  return c


@register_model("clip_zero_shot")
def build(config: ml_collections.ConfigDict, *, feature_dim: int, emb_dim: Any,
          grid_shape, scene_dim: int, dtype=jnp.float32, rngs: nnx.Rngs) -> ClipZeroShot:
  """``ClipZeroShot`` from ``config.model`` (no parameters; ``dtype`` / ``rngs`` unused)."""
  del grid_shape, dtype, rngs
  if not isinstance(emb_dim, int):
    raise ValueError("clip_zero_shot: data.embedding must name one source (clip), got "
                     f"{sorted(emb_dim)}")
  return ClipZeroShot(emb_dim=emb_dim, feature_dim=feature_dim, scene_dim=scene_dim,
                      mode=config.mode, top_k=config.top_k, temperature=config.temperature,
                      global_weight=config.global_weight, local_weight=config.local_weight)


@hooks.REGION_MAPS.register("clip_zero_shot")
def region_map(model, feats, label_emb, scene):
  """Each patch token's cosine with the label's text embedding: [B, R, L]."""
  del model, scene
  return jnp.einsum("brd,ld->brl", _unit(feats), _unit(label_emb))
