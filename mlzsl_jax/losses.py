"""Losses, masked by label state (1 positive, -1 negative, 0 unknown), and their registry."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mlzsl_jax.registry import Registry

LOSSES: Registry[Callable] = Registry("loss", "loss.name")
# A loss is ``loss(outputs: dict, states [B, L], loss_config) -> (scalar, aux dict)``.
register_loss = LOSSES.register
get_loss = LOSSES.get


def ranking_loss(scores: jax.Array, states: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Pairwise hinge ranking loss of BiAM/LESA.

  Per image, over every (positive p, negative n) pair: ``max(0, 1 + s_n - s_p)``; the image
  loss is the sum of hinges divided by (number of pairs with a positive hinge + eps); the
  batch loss is the mean over images. Unknown (0) states form no pair, which equals the
  official code's dropping of unannotated label columns.

  Args:
    scores: [batch, labels] float.
    states: [batch, labels] int, values in {1, -1, 0}.
  Returns:
    scalar float32.
  """
  scores = scores.astype(jnp.float32)
  hinge = jnp.maximum(0.0, pair_mask(states) * (1.0 + scores[:, :, None] - scores[:, None, :]))
  violations = jnp.sum(jnp.sign(hinge), axis=(1, 2))
  return jnp.mean(jnp.sum(hinge, axis=(1, 2)) / (violations + eps))


def pair_mask(states: jax.Array) -> jax.Array:
  """states: [B, L] in {1, -1, 0} -> float32 [B, negatives n, positives p]: 1 where label n
  is negative and label p positive in the image (unknown states form no pair)."""
  pos = (states > 0).astype(jnp.float32)
  neg = (states < 0).astype(jnp.float32)
  return neg[:, :, None] * pos[:, None, :]


def ranking_loss_sorted(scores: jax.Array, states: jax.Array, eps: float = 1e-8) -> jax.Array:
  """``ranking_loss`` computed by sorting: O(L log L) time and O(B·L) memory, no [B, L, L].

  Per image, the negatives' keys ``u_n = 1 + s_n`` are sorted (other labels at -inf) and
  summed from the right; for each positive p, ``searchsorted`` finds the negatives with
  ``u_n > s_p`` (the pairs with a positive hinge), their count ``c_p`` and the sum of their
  hinges ``Σ u_n - c_p·s_p``. Image loss ``Σ_p hinges / (Σ_p c_p + eps)``; mean over images.

  Equal to ``ranking_loss`` in value, and in gradient wherever no pair sits exactly at
  hinge 0: the count uses the pairwise version's own float32 test (``(1 + s_n) - s_p > 0``
  holds exactly when ``fl(1 + s_n) > s_p``), so pairs with a hinge of exactly 0 neither
  count nor add (as ``sign(0) = 0`` there). At such a pair this function's gradient takes
  the hinge's slope as 0, while ``jax.grad`` of the pairwise version takes 1/2 (how
  ``jnp.maximum`` splits ties); the loss value is the same. The sums are float32 prefix
  sums, centred on the image's mean annotated score (a constant that cancels exactly), so
  the rounding error grows with L·eps·(spread of the scores), not with their offset.

  Args:
    scores: [batch, labels] float.
    states: [batch, labels] int, values in {1, -1, 0}.
  Returns:
    scalar float32.
  """
  scores = scores.astype(jnp.float32)
  pos, neg = states > 0, states < 0
  num_labels = scores.shape[-1]
  keys = jnp.where(neg, 1.0 + scores, -jnp.inf)  # [B, L]
  order = jnp.argsort(keys, axis=-1)  # -inf (not negative) first
  keys_sorted = jnp.take_along_axis(keys, order, axis=-1)
  # first index whose key > s_p: the negatives from there on have a positive hinge
  first = jax.vmap(lambda k, s: jnp.searchsorted(k, s, side="right"))(keys_sorted, scores)
  count = (num_labels - first).astype(jnp.float32)  # [B, L], per label as a positive
  annotated = pos | neg
  centre = jax.lax.stop_gradient(
      jnp.sum(jnp.where(annotated, scores, 0.0), axis=-1, keepdims=True)
      / jnp.maximum(jnp.sum(annotated, axis=-1, keepdims=True), 1))
  neg_sorted = jnp.take_along_axis(neg, order, axis=-1)
  vals = jnp.where(neg_sorted, keys_sorted - centre, 0.0)
  suffix = jnp.cumsum(vals[:, ::-1], axis=-1)[:, ::-1]  # suffix[i] = Σ_{j >= i} vals[j]
  suffix = jnp.concatenate([suffix, jnp.zeros_like(suffix[:, :1])], axis=-1)  # [B, L + 1]
  hinge_sums = jnp.take_along_axis(suffix, first, axis=-1) - count * (scores - centre)
  hinge_total = jnp.sum(jnp.where(pos, hinge_sums, 0.0), axis=-1)
  violations = jnp.sum(jnp.where(pos, count, 0.0), axis=-1)
  return jnp.mean(hinge_total / (violations + eps))


@register_loss("ranking")
def _ranking(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  loss = ranking_loss(outputs["scores"], states)
  return loss, {"ranking_loss": loss}


@register_loss("ranking_sorted")
def _ranking_sorted(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  """The "ranking" loss by sorting (``ranking_loss_sorted``): for large label sets."""
  loss = ranking_loss_sorted(outputs["scores"], states)
  return loss, {"ranking_loss": loss}
