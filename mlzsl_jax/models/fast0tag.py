"""Fast0Tag (Zhang, Gong & Shah, CVPR 2016): a network maps the image's pooled feature to a
"principal direction" ``w(x)`` in the label-embedding space; label j scores ``<w(x), e_j>``.

Follows ``shared/spec/baselines.md`` ("Fast0Tag"). Trained with RankNet (``loss.name =
'ranknet'``, the paper's loss, registered here) or the shared hinge ranking loss
(``'ranking'``, as in LESA's comparison).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax import losses
from mlzsl_jax.losses import register_loss
from mlzsl_jax.models import pooled
from mlzsl_jax.models.registry import register_model


class Fast0Tag(nnx.Module):
  """Call: (feats [B, R, C], label_emb [L, E]) -> {'scores': [B, L], 'direction': [B, E]}."""

  def __init__(self, *, feature_dim: int, emb_dim: int,
               hidden_sizes: Sequence[int] = (8192, 2048), dropout: float = 0.3,
               pooling: str = "mean", dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.feature_dim, self.emb_dim = feature_dim, emb_dim
    self.pooling = pooled.check_pooling(pooling)
    self.dtype = dtype
    self.mlp = pooled.MLP(feature_dim, hidden_sizes, emb_dim, dropout=dropout, dtype=dtype,
                          rngs=rngs)

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """feats: [B, R, C], label_emb: [L, E] -> scores [B, L] = w(x) . e_j, direction w(x) [B, E]."""
    pooled.check_inputs(feats, label_emb, self.feature_dim, self.emb_dim)
    x = pooled.pool_regions(feats, self.pooling, self.dtype)  # [B, C]
    direction = self.mlp(x, train=train, rngs=rngs).astype(jnp.float32)  # [B, E]
    scores = direction @ label_emb.astype(jnp.float32).T
    return {"scores": scores, "direction": direction}


def ranknet_loss(scores: jax.Array, states: jax.Array) -> jax.Array:
  """Fast0Tag's RankNet loss.

  Per image i with positives P_i and negatives N_i (states 1 / -1; unknown 0 forms no pair):
  ``l_i = 1/(|P_i| |N_i|) * sum_{p in P_i, n in N_i} log(1 + exp(s_n - s_p))``, i.e. the mean
  over the image's (positive, negative) pairs, as the paper's per-image normalisation; an
  image without any pair has l_i = 0. The batch loss is the mean of l_i over ALL images of
  the batch (pair-less ones included, as zeros).

  Arguments and result as ``losses.ranking_loss``: scores [batch, labels] float, states
  [batch, labels] int in {1, -1, 0} -> scalar float32.
  """
  scores = scores.astype(jnp.float32)
  pair_mask = losses.pair_mask(states)  # [B, negatives, positives]
  pair_loss = jax.nn.softplus(scores[:, :, None] - scores[:, None, :])  # log(1+e^(s_n-s_p))
  n_pairs = jnp.sum(pair_mask, axis=(1, 2))
  per_image = jnp.sum(pair_mask * pair_loss, axis=(1, 2)) / jnp.maximum(n_pairs, 1.0)
  return jnp.mean(per_image)


@register_loss("ranknet")
def _ranknet(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  loss = ranknet_loss(outputs["scores"], states)
  return loss, {"ranknet_loss": loss}


def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for Fast0Tag."""
  c = ml_collections.ConfigDict()
  c.name = "fast0tag"
  # Fast0Tag (net.) on VGG-16 fc7: two ReLU hidden layers then the E-dim output, dropout
  # before the output layer; sizes as in a public PyTorch reimplementation (the paper text
  # could not be checked here). () gives Fast0Tag (lin.), a linear map.
  c.hidden_sizes = (8192, 2048)
  c.dropout = 0.3  # on the input of the output layer
  c.pooling = "mean"  # region pooling to one global feature: 'mean' or 'max'
  return c


def loss_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.loss`` for Fast0Tag: 'ranknet' (paper) or 'ranking' (LESA's row)."""
  c = ml_collections.ConfigDict()
  c.name = "ranknet"
  return c


@register_model("fast0tag")
def build_fast0tag(cfg, *, feature_dim: int, emb_dim: int | dict[str, int],
                   grid_shape: tuple[int, int], scene_dim: int, dtype,
                   rngs: nnx.Rngs) -> Fast0Tag:
  """Builds Fast0Tag from ``config.model`` (fields: hidden_sizes, dropout, pooling)."""
  del grid_shape, scene_dim  # pooled model: no grid, no scene feature
  return Fast0Tag(feature_dim=feature_dim,
                  emb_dim=pooled.single_source_dim(emb_dim, "fast0tag"),
                  hidden_sizes=tuple(cfg.hidden_sizes), dropout=cfg.dropout,
                  pooling=cfg.pooling, dtype=dtype, rngs=rngs)
