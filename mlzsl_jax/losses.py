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
  pos = (states > 0).astype(jnp.float32)
  neg = (states < 0).astype(jnp.float32)
  pair_mask = pos[:, None, :] * neg[:, :, None]  # [B, negatives, positives]
  hinge = jnp.maximum(0.0, pair_mask * (1.0 + scores[:, :, None] - scores[:, None, :]))
  violations = jnp.sum(jnp.sign(hinge), axis=(1, 2))
  return jnp.mean(jnp.sum(hinge, axis=(1, 2)) / (violations + eps))


@register_loss("ranking")
def _ranking(outputs: dict, states: jax.Array, cfg) -> tuple[jax.Array, dict]:
  loss = ranking_loss(outputs["scores"], states)
  return loss, {"ranking_loss": loss}
