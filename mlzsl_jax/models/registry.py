"""Model registry: name -> constructor. The trainer never branches on model names.

A constructor is ``build(model_config, *, feature_dim, emb_dim, grid_shape, scene_dim, dtype,
rngs) -> nnx.Module``; the module is called as
``model(feats [B, R, C], label_emb [L, E], scene [B, S] | None, *, train, rngs)`` and returns
a dict with at least ``'scores'`` [B, L].
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
