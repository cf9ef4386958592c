"""Losses, masked by label state (1 positive, -1 negative, 0 unknown), and their registry."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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

  Per image, the negatives' keys ``u_n = 1 + s_n`` and the positives' scores ``s_p`` are
  sorted together, largest first (a positive before a negative of equal value); prefix sums
  over that order give each positive the count ``c_p`` of negatives with ``u_n > s_p`` (the
  pairs with a positive hinge) and the sum of their hinges ``Σ u_n - c_p·s_p``. Image loss
  ``Σ_p hinges / (Σ_p c_p + eps)``; mean over images. The gradient is written out (a
  positive's is ``-c_p``, a negative's the count of positives below ``u_n``, over the image's
  ``Σ_p c_p + eps`` and the batch) and put back in label order by a second sort, so the
  step has sorts and prefix sums only: no gather, scatter or binary-search loop, which the
  TPU compile counted at ~120 MB per image at Open Images' 7,586 labels.

  Equal to ``ranking_loss`` in value, and in gradient wherever no pair sits exactly at
  hinge 0: the count uses the pairwise version's own float32 test (``(1 + s_n) - s_p > 0``
  holds exactly when ``fl(1 + s_n) > s_p``), so pairs with a hinge of exactly 0 neither
  count nor add (as ``sign(0) = 0`` there). At such a pair this function's gradient takes
  the hinge's slope as 0, while ``jax.grad`` of the pairwise version takes 1/2 (how
  ``jnp.maximum`` splits ties); the loss value is the same. The sums are float32 prefix
  sums, centred on the image's mean annotated score (a constant that cancels exactly), so
  the rounding error grows with L·eps·(spread of the scores), not with their offset.

  Arguments and result as ``ranking_loss``: scores [batch, labels] float, states [batch,
  labels] int in {1, -1, 0} -> scalar float32.
  """
  return _ranking_sorted_vjp(scores.astype(jnp.float32), states, eps)


_POSITIVE, _NEGATIVE, _UNKNOWN = 0, 1, 2  # the order of equal values in the merged sort


def _merged_order(scores: jax.Array, states: jax.Array):
  """The positives' scores and negatives' keys 1 + s_n of each image in one descending
  order (a positive first among equal values; unknown labels last).

  Returns (values, kinds, label index, prefix count and centred sum of the negatives
  strictly before each place, prefix count of positives up to and including it, centre),
  all [B, L] in that order but the centre [B, 1]."""
  pos, neg = states > 0, states < 0
  annotated = pos | neg
  centre = (jnp.sum(jnp.where(annotated, scores, 0.0), axis=-1, keepdims=True)
            / jnp.maximum(jnp.sum(annotated, axis=-1, keepdims=True), 1))
  values = jnp.where(neg, 1.0 + scores, jnp.where(pos, scores, -jnp.inf))
  kinds = jnp.where(pos, _POSITIVE, jnp.where(neg, _NEGATIVE, _UNKNOWN)).astype(jnp.int32)
  index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  neg_values, kinds, index = jax.lax.sort((-values, kinds, index), dimension=1, num_keys=2)
  values = -neg_values
  is_neg, is_pos = kinds == _NEGATIVE, kinds == _POSITIVE
  neg_count = jnp.cumsum(is_neg.astype(jnp.float32), axis=1) - is_neg
  neg_sum = jnp.cumsum(jnp.where(is_neg, values - centre, 0.0), axis=1)
  neg_sum = neg_sum - jnp.where(is_neg, values - centre, 0.0)
  pos_count = jnp.cumsum(is_pos.astype(jnp.float32), axis=1)
  return values, kinds, index, neg_count, neg_sum, pos_count, centre


def _ranking_sorted_value(scores, states, eps):
  values, kinds, _, neg_count, neg_sum, _, centre = _merged_order(scores, states)
  is_pos = kinds == _POSITIVE
  hinge_total = jnp.sum(jnp.where(is_pos, neg_sum - neg_count * (values - centre), 0.0),
                        axis=-1)
  violations = jnp.sum(jnp.where(is_pos, neg_count, 0.0), axis=-1)
  # a NaN score anywhere in an image's annotated labels makes the loss NaN (the order alone
  # could leave it where no pair reads it)
  poison = 0.0 * jnp.sum(jnp.where((states != 0) & jnp.isnan(scores), scores, 0.0), -1)
  return jnp.mean(hinge_total / (violations + eps) + poison), violations


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _ranking_sorted_vjp(scores, states, eps):
  return _ranking_sorted_value(scores, states, eps)[0]


def _ranking_sorted_forward(scores, states, eps):
  return _ranking_sorted_vjp(scores, states, eps), (scores, states)


def _ranking_sorted_backward(eps, residuals, g):
  scores, states = residuals
  _, kinds, index, neg_count, _, pos_count, _ = _merged_order(scores, states)
  _, violations = _ranking_sorted_value(scores, states, eps)
  total_pos = pos_count[:, -1:]
  # d/ds_p = -c_p; d/ds_n = positives after n in the order (all with s_p < 1 + s_n)
  grad = jnp.where(kinds == _POSITIVE, -neg_count,
                   jnp.where(kinds == _NEGATIVE, total_pos - pos_count, 0.0))
  grad = grad * (g / scores.shape[0]) / (violations[:, None] + eps)
  _, grad = jax.lax.sort((index, grad), dimension=1, num_keys=1)  # back to label order
  return grad, np.zeros(states.shape, jax.dtypes.float0)


_ranking_sorted_vjp.defvjp(_ranking_sorted_forward, _ranking_sorted_backward)


@register_loss("ranking")
def _ranking(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  loss = ranking_loss(outputs["scores"], states)
  return loss, {"ranking_loss": loss}


@register_loss("ranking_sorted")
def _ranking_sorted(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  """The "ranking" loss by sorting (``ranking_loss_sorted``): for large label sets."""
  loss = ranking_loss_sorted(outputs["scores"], states)
  return loss, {"ranking_loss": loss}
