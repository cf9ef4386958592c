"""Model registry: name -> constructor. The trainer never branches on model names.

The contract every model keeps:
- constructor ``build(model_config, *, feature_dim, emb_dim, grid_shape, scene_dim, dtype,
  rngs) -> nnx.Module``, registered with ``@register_model(name)``; ``emb_dim`` is an int, or
  a dict source -> int when ``config.data.embedding`` lists several sources;
- call ``model(feats [B, R, C], label_emb, scene [B, S] | None, *, train: bool,
  rngs: nnx.Rngs | None) -> dict`` where ``label_emb`` is [L, E] (or a dict source -> [L, E_s])
  and the dict holds at least ``'scores'`` [B, L] (higher = more likely), plus whatever the
  model's loss needs; an optional scalar ``'regularizer'`` is added to the loss by the trainer;
- the model's module also exposes ``model_config()`` (its ``config.model`` defaults, with
  ``name``) and, if it has its own loss, registers it (``losses.register_loss``) and exposes
  ``loss_config()`` (``config.loss`` defaults, with ``name``).
"""

from __future__ import annotations

from typing import Callable

from mlzsl_jax.registry import Registry

MODELS: Registry[Callable] = Registry("model", "model.name")
register_model = MODELS.register


def get_model_builder(name: str) -> Callable:
  """The constructor registered as ``name`` (config field model.name)."""
  import mlzsl_jax.models  # noqa: F401  (registers the built-in models)
  return MODELS.get(name)


def registered_models() -> list[str]:
  import mlzsl_jax.models  # noqa: F401
  return MODELS.names()
