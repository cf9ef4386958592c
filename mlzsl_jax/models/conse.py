"""ConSE (Norouzi et al., ICLR 2014): a softmax classifier over the SEEN labels on the pooled
feature; a test image is embedded as the convex combination of its top-T seen labels'
embeddings (weights = renormalised probabilities) and every candidate label is scored by
cosine similarity. Follows ``shared/spec/baselines.md`` ("ConSE").

The classifier has ``model.num_seen`` outputs (set by the config file to
``len(data.seen_labels)``). The seen labels' embeddings, needed at test time, are model state
(``SeenEmbeddings``, not trained): every call with ``train=True`` (the trainer passes exactly
the seen embeddings, in seen order) overwrites them with ``label_emb``, so they travel in
``TrainState.model_state`` and are checkpointed with it.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mlzsl_jax.losses import register_loss
from mlzsl_jax.models import pooled
from mlzsl_jax.models.registry import register_model


class SeenEmbeddings(nnx.Variable):
  """The seen labels' embeddings [num_seen, E] last seen in training (not a parameter)."""


class ConSE(nnx.Module):
  """Call: (feats [B, R, C], label_emb [L, E]) -> {'scores': [B, L], 'logits': [B, S], ...}.

  train=True: ``label_emb`` must be the S = num_seen seen embeddings; 'scores' are the seen
  logits (for the softmax loss) and the seen embeddings are stored. train=False: 'scores' are
  the cosine similarities of the ConSE image embedding with each row of ``label_emb`` (any L).
  """

  def __init__(self, *, feature_dim: int, emb_dim: int, num_seen: int, top_t: int = 10,
               hidden_sizes: Sequence[int] = (), dropout: float = 0.0, pooling: str = "mean",
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if not isinstance(num_seen, int) or num_seen < 1:
      raise ValueError(f"model.num_seen={num_seen!r}: expected the number of seen labels "
                       "(len(data.seen_labels)), a positive int")
    if not isinstance(top_t, int) or top_t < 1:
      raise ValueError(f"model.top_t={top_t!r}: expected a positive int")
    self.feature_dim, self.emb_dim, self.num_seen = feature_dim, emb_dim, num_seen
    self.top_t = min(top_t, num_seen)
    self.pooling = pooled.check_pooling(pooling)
    self.dtype = dtype
    self.classifier = pooled.MLP(feature_dim, hidden_sizes, num_seen, dropout=dropout,
                                 dtype=dtype, rngs=rngs)
    self.seen_emb = SeenEmbeddings(jnp.zeros((num_seen, emb_dim), jnp.float32))

  def embed(self, logits: jax.Array) -> jax.Array:
    """logits: [B, S] -> ConSE image embedding [B, E]: sum_t w_t e_(t) over the top-T seen
    labels, w_t = p_(t) / sum_t' p_(t') (softmax probabilities renormalised over the top T)."""
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, top_i = jax.lax.top_k(probs, self.top_t)  # [B, T]
    weights = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
    return jnp.einsum("bt,bte->be", weights, self.seen_emb.value[top_i])

  def __call__(self, feats: jax.Array, label_emb: jax.Array, scene: jax.Array | None = None,
               *, train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    pooled.check_inputs(feats, label_emb, self.feature_dim, self.emb_dim)
    x = pooled.pool_regions(feats, self.pooling, self.dtype)  # [B, C]
    logits = self.classifier(x, train=train, rngs=rngs).astype(jnp.float32)  # [B, S]
    if train:
      if label_emb.shape[0] != self.num_seen:
        raise ValueError(f"model.num_seen={self.num_seen} but the model is trained with "
                         f"{label_emb.shape[0]} label embeddings; set model.num_seen = "
                         "len(data.seen_labels)")
      self.seen_emb.value = label_emb.astype(jnp.float32)
      return {"scores": logits, "logits": logits}
    image_emb = self.embed(logits)  # [B, E]
    scores = pooled.l2_normalize(image_emb) @ pooled.l2_normalize(
        label_emb.astype(jnp.float32)).T
    return {"scores": scores, "logits": logits, "image_embedding": image_emb}


def softmax_cross_entropy(logits: jax.Array, states: jax.Array) -> jax.Array:
  """Multi-label softmax cross-entropy of ConSE's seen-label classifier.

  Per image i: target t_ij = 1/|P_i| on its positives P_i (states 1), 0 elsewhere;
  ``l_i = -sum_j t_ij log softmax(z_i)_j`` where the softmax runs over the image's ANNOTATED
  labels only (states 1 or -1; an unknown label, state 0, is dropped from the normaliser, as
  unannotated columns are dropped elsewhere). An image without positives has l_i = 0. The
  batch loss is the mean of l_i over ALL images of the batch.

  Args:
    logits: [batch, seen labels] float.
    states: [batch, seen labels] int, values in {1, -1, 0}.
  Returns:
    scalar float32.
  """
  logits = logits.astype(jnp.float32)
  pos = (states > 0).astype(jnp.float32)
  known = states != 0
  # A large finite mask (not -inf) keeps a row without annotated labels NaN-free, also in
  # the gradient; exp(-1e30 - max) is exactly 0, so the masked labels leave the softmax.
  log_probs = jax.nn.log_softmax(jnp.where(known, logits, -1e30), axis=-1)
  log_probs = jnp.where(known, log_probs, 0.0)
  n_pos = jnp.sum(pos, axis=-1)
  per_image = -jnp.sum(pos * log_probs, axis=-1) / jnp.maximum(n_pos, 1.0)
  return jnp.mean(per_image)


@register_loss("conse_softmax")
def _conse_softmax(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  if "logits" not in outputs:
    raise ValueError("loss.name='conse_softmax' needs the model output 'logits' (seen-label "
                     "classifier logits); use it with model.name='conse'")
  loss = softmax_cross_entropy(outputs["logits"], states)
  return loss, {"softmax_xent": loss}


def model_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.model`` for ConSE."""
  c = ml_collections.ConfigDict()
  c.name = "conse"
  c.num_seen = 0  # must be set: len(config.data.seen_labels)
  c.top_t = 10  # ConSE's T (the paper's default); clipped to num_seen
  c.hidden_sizes = ()  # () = a linear softmax classifier on the pooled feature
  c.dropout = 0.0  # on the input of the output layer
  c.pooling = "mean"  # 'mean' or 'max' over regions
  return c


def loss_config() -> ml_collections.ConfigDict:
  """Defaults of ``config.loss`` for ConSE."""
  c = ml_collections.ConfigDict()
  c.name = "conse_softmax"
  return c


@register_model("conse")
def build_conse(cfg, *, feature_dim: int, emb_dim: int | dict[str, int],
                grid_shape: tuple[int, int], scene_dim: int, dtype, rngs: nnx.Rngs) -> ConSE:
  """Builds ConSE from ``config.model`` (fields: num_seen, top_t, hidden_sizes, ...)."""
  del grid_shape, scene_dim  # pooled model: no grid, no scene feature
  return ConSE(feature_dim=feature_dim, emb_dim=pooled.single_source_dim(emb_dim, "conse"),
               num_seen=cfg.num_seen, top_t=cfg.top_t, hidden_sizes=tuple(cfg.hidden_sizes),
               dropout=cfg.dropout, pooling=cfg.pooling, dtype=dtype, rngs=rngs)
