"""LabelEM / ALE (Akata et al., CVPR 2013 / TPAMI 2016): bilinear compatibility
``s_j = theta(x)^T W e_j`` between the pooled image feature theta(x) and label j's embedding.
Follows ``shared/spec/baselines.md`` ("LabelEM / ALE").

Trained with ALE's weighted approximate ranking (``loss.name = 'wsabie'``, registered here) or
the shared hinge ranking loss (``'ranking'``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax.losses import register_loss
from mlzsl_jax.models import layers, pooled
from mlzsl_jax.models.registry import register_model


class LabelEM(nnx.Module):
  """Call: (feats [B, R, C], label_emb [L, E]) -> {'scores': [B, L]}.

  W [C, E] is stored transposed as ``label_proj.kernel`` [E, C] (a bias-free dense layer
  applied to the label embeddings: W e_j = label_proj(e_j)), so the model axis of the mesh
  can split C; initialised like ``torch.nn.Linear(E, C)``.
  """

  def __init__(self, *, feature_dim: int, emb_dim: int, normalize_feature: bool = False,
               pooling: str = "mean", dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.feature_dim, self.emb_dim = feature_dim, emb_dim
    self.normalize_feature = bool(normalize_feature)
    self.pooling = pooled.check_pooling(pooling)
    self.dtype = dtype
    self.label_proj = nnx.Linear(emb_dim, feature_dim, use_bias=False,
                                 kernel_init=layers.torch_kernel_init(), dtype=dtype,
                                 rngs=rngs)

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """feats: [B, R, C], label_emb: [L, E] -> scores [B, L] = theta(x)^T W e_j."""
    pooled.check_inputs(feats, label_emb, self.feature_dim, self.emb_dim)
    theta = pooled.pool_regions(feats, self.pooling, self.dtype)  # [B, C]
    if self.normalize_feature:
      theta = pooled.l2_normalize(theta)
    classifiers = self.label_proj(label_emb.astype(self.dtype))  # [L, C], rows W e_j
    return {"scores": jnp.einsum("be,le->bl", theta, classifiers,
                                 preferred_element_type=jnp.float32)}


def harmonic_numbers(n: int) -> jax.Array:
  """[n + 1] float32: H(0) = 0, H(k) = sum_{i=1..k} 1/i (ALE's rank weights L(k))."""
  return jnp.concatenate([jnp.zeros([1], jnp.float32),
                          jnp.cumsum(1.0 / jnp.arange(1, n + 1, dtype=jnp.float32))])


def wsabie_loss(scores: jax.Array, states: jax.Array, margin: float = 1.0) -> jax.Array:
  """ALE's weighted approximate ranking loss (WSABIE), exact over all pairs (no sampling).

  For image i and each positive p (state 1), over its negatives n (state -1; unknown 0 takes
  no part): hinge ``h_n = max(0, margin + s_n - s_p)``; rank ``r = #{n : h_n > 0}``;
  ``l_ip = L(r) / r * sum_n h_n`` with ``L(k) = sum_{i<=k} 1/i`` and ``l_ip = 0`` when r = 0.
  The rank weight L(r)/r is a count, so no gradient flows through it. The batch loss is the
  mean of l_ip over all (image, positive) pairs of the batch (ALE's empirical risk is a mean
  over (image, label) samples); a positive without negatives counts with l_ip = 0, and a
  batch without positives has loss 0.

  Args:
    scores: [batch, labels] float.
    states: [batch, labels] int, values in {1, -1, 0}.
    margin: the hinge margin (ALE's Delta for a wrong label, 1).
  Returns:
    scalar float32.
  """
  scores = scores.astype(jnp.float32)
  pos = (states > 0).astype(jnp.float32)
  neg = (states < 0).astype(jnp.float32)
  pair_mask = pos[:, :, None] * neg[:, None, :]  # [B, positives, negatives]
  hinge = pair_mask * jnp.maximum(0.0, margin + scores[:, None, :] - scores[:, :, None])
  rank = jnp.sum(hinge > 0, axis=-1)  # [B, positives] int
  weight = harmonic_numbers(scores.shape[1])[rank] / jnp.maximum(rank, 1)
  per_positive = jax.lax.stop_gradient(weight) * jnp.sum(hinge, axis=-1)
  return jnp.sum(per_positive) / jnp.maximum(jnp.sum(pos), 1.0)


@register_loss("wsabie")
def _wsabie(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  if "margin" not in cfg:
    raise ValueError("loss.name='wsabie' needs the field loss.margin; start config.loss "
                     "from mlzsl_jax.models.labelem.loss_config()")
  loss = wsabie_loss(outputs["scores"], states, cfg.margin)
  return loss, {"wsabie_loss": loss}


def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for LabelEM / ALE."""
  c = ml_collections.ConfigDict()
  c.name = "labelem"
  c.normalize_feature = False  # L2-normalise the pooled feature theta(x) before W
  c.pooling = "mean"  # 'mean' or 'max' over regions
  return c


def loss_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.loss`` for LabelEM: 'wsabie' (ALE) or 'ranking' (shared hinge)."""
  c = ml_collections.ConfigDict()
  c.name = "wsabie"
  c.margin = 1.0  # ALE's Delta(y, y') = 1 for y' != y; used by 'wsabie' only
  return c


@register_model("labelem")
def build_labelem(cfg, *, feature_dim: int, emb_dim: int | dict[str, int],
                  grid_shape: tuple[int, int], scene_dim: int, dtype,
                  rngs: nnx.Rngs) -> LabelEM:
  """Builds LabelEM from ``config.model`` (fields: normalize_feature, pooling)."""
  del grid_shape, scene_dim  # pooled model: no grid, no scene feature
  return LabelEM(feature_dim=feature_dim, emb_dim=pooled.single_source_dim(emb_dim, "labelem"),
                 normalize_feature=cfg.normalize_feature, pooling=cfg.pooling, dtype=dtype,
                 rngs=rngs)
