"""Model registry: name -> constructor. The trainer never branches on model names.

A constructor is ``build(model_config, *, feature_dim, emb_dim, grid_shape, scene_dim, dtype,
rngs) -> nnx.Module``; the module is called as
``model(feats [B, R, C], label_emb [L, E], scene [B, S] | None, *, train, rngs)`` and returns
a dict with at least ``'scores'`` [B, L].
"""

from __future__ import annotations

from typing import Callable

_MODELS: dict[str, Callable] = {}


def register_model(name: str):
  """Decorator registering a model constructor under ``name``."""
  def wrap(build):
    if name in _MODELS:
      raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = build
    return build
  return wrap


def get_model_builder(name: str) -> Callable:
  """The constructor registered as ``name`` (config field model.name)."""
  import mlzsl_jax.models  # noqa: F401  (registers the built-in models)
  if name not in _MODELS:
    raise ValueError(f"config field model.name={name!r}: unknown model; "
                     f"registered: {sorted(_MODELS)}")
  return _MODELS[name]


def registered_models() -> list[str]:
  import mlzsl_jax.models  # noqa: F401
  return sorted(_MODELS)
