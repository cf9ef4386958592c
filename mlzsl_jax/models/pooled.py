"""Shared pieces of the pooled-feature baselines (Fast0Tag, ConSE, LabelEM/ALE).

These models see one global feature per image: the region features ``[B, R, C]`` pooled over
regions (mean, as a global average pool of the CNN grid, or max) into ``[B, C]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mlzsl_jax.models import layers

POOLINGS = ("mean", "max")
NORM_EPS = 1e-12


def check_pooling(pooling: str) -> str:
  """Returns ``pooling`` if known; ValueError naming ``model.pooling`` otherwise."""
  if pooling not in POOLINGS:
    raise ValueError(f"model.pooling={pooling!r}: expected one of {POOLINGS}")
  return pooling


def single_source_dim(emb_dim: int | dict[str, int], model_name: str) -> int:
  """The embedding width for models that take one label-embedding source."""
  if isinstance(emb_dim, dict):
    raise ValueError(f"model.name={model_name!r} takes one label-embedding source; "
                     f"config field data.embedding names {len(emb_dim)}: {sorted(emb_dim)}")
  return int(emb_dim)


def pool_regions(feats: jax.Array, pooling: str, dtype: Any = jnp.float32) -> jax.Array:
  """feats: [batch, regions, dim] (any float dtype) -> pooled [batch, dim] in ``dtype``.

  The cast happens before pooling so float16 inputs are summed in the compute dtype.
  """
  x = feats.astype(dtype)
  return x.mean(axis=1) if check_pooling(pooling) == "mean" else x.max(axis=1)


def check_inputs(feats: jax.Array, label_emb: jax.Array, feature_dim: int,
                 emb_dim: int) -> None:
  """ValueError unless feats is [B, R, feature_dim] and label_emb is [L, emb_dim]."""
  if isinstance(label_emb, dict):
    raise ValueError("label embeddings: expected one array [labels, dim], got a dict of "
                     f"sources {sorted(label_emb)} (config field data.embedding)")
  if feats.ndim != 3 or feats.shape[-1] != feature_dim:
    raise ValueError(f"features: expected [batch, regions, {feature_dim}], got {feats.shape}")
  if label_emb.ndim != 2 or label_emb.shape[-1] != emb_dim:
    raise ValueError(f"label embeddings: expected [labels, {emb_dim}], got {label_emb.shape}")


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(||x||, 1e-12) along ``axis`` (a zero vector stays zero)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, NORM_EPS)


def check_hidden_sizes(hidden_sizes: Sequence[int]) -> tuple[int, ...]:
  sizes = tuple(hidden_sizes)
  if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in sizes):
    raise ValueError(f"model.hidden_sizes={sizes!r}: expected a tuple of positive ints "
                     "(() for a linear map)")
  return sizes


class MLP(nnx.Module):
  """in_dim -> [Linear -> ReLU] per hidden size -> Dropout -> Linear -> out_dim.

  Dropout acts on the input of the output layer only (after the last hidden ReLU; on the
  pooled feature itself when ``hidden_sizes`` is empty). Layers are initialised like
  ``torch.nn.Linear``.
  """

  def __init__(self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, *,
               dropout: float, dtype: Any, rngs: nnx.Rngs):
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"model.dropout={dropout!r}: expected a rate in [0, 1)")
    dims = (in_dim, *check_hidden_sizes(hidden_sizes), out_dim)
    self.layers = nnx.List([layers.linear(a, b, dtype=dtype, rngs=rngs)
                            for a, b in zip(dims[:-1], dims[1:])])
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """x: [batch, in_dim] -> [batch, out_dim]."""
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.layers[-1](x)
