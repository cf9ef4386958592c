"""What ``extract`` needs to know about a backbone, by name: how to load it from a weight
file, how to read an image for it, and what it writes.

Each backbone registers itself in its own module (``mlzsl_jax.extract.torchvision_weights``:
vgg19, resnet101; ``mlzsl_jax.backbones.clip_extract``: clip_vit_b32 ... ); the extractor
only looks names up here. A loaded model is an ``nnx.Module`` with ``image_size``
(height, width), ``grid_shape`` and ``__call__(images [B, H, W, 3]) -> {"regions": [B, R, C],
<global_output>: [B, D]}``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from mlzsl_jax.registry import Registry

# Modules whose import registers backbones (importing one loads only what it needs).
BACKBONE_MODULES = ("mlzsl_jax.extract.torchvision_weights", "mlzsl_jax.backbones.clip_extract")


@dataclasses.dataclass(frozen=True)
class ExtractBackbone:
  """One backbone as ``extract`` uses it."""
  load: Callable[[Any, str], Any]            # (weights file / folder / module, dtype) -> model
  load_image: Callable[[str, tuple[int, int]], np.ndarray]  # (path, (H, W)) -> float32 [H, W, 3]
  preprocessing: str                         # one line, stored in every shard
  global_output: str                         # "scene" | "pooled": the per-image vector's name
  store_dtype: Any = np.float32              # dtype of the stored region features
  architecture: Callable[[Any], str] = repr  # model -> JSON of what fixes its shapes
  weights_help: str = ""                     # what --weights is, for --help


BACKBONES: Registry = Registry("extract backbone", "--backbone")


def _load_all() -> None:
  for module in BACKBONE_MODULES:
    importlib.import_module(module)


def get(name: str) -> ExtractBackbone:
  """The registered backbone ``name``; ValueError listing the known names otherwise."""
  _load_all()
  return BACKBONES.get(name)


def names() -> list[str]:
  _load_all()
  return BACKBONES.names()
