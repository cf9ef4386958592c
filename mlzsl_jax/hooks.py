"""What only a dataset or a model knows, registered by its own module, so that the commands
(``predict``, ``plots``) hold no dataset or model names.

  NAME_EMBEDDERS  '<dataset>:<source>' (or '*:<source>', any dataset) -> (names, config) ->
                  float32 [len(names), dim], rows L2-normalised: new label names embedded as
                  the dataset's labels were (colour_digits / digits_mosaic attributes and
                  sentences, CLIP text for ``data.embedding=clip``, GloVe's refusal)
  IMAGE_READERS   '<dataset>' or 'backbone:<clip|vgg19>' -> (path, config) -> (region
                  features float32 [regions, dim], picture array, scene [scene_dim] or None):
                  an image file turned into features as the dataset's were made
  REGION_MAPS     '<model>' -> (model, feats [B, R, C], label_emb [L, E], scene | None) ->
                  [B, R, L], larger = the region speaks more for the label

Every module that registers here is imported by ``load_all`` (the data builders, the models,
the extract backbones).
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import numpy as np

from mlzsl_jax.registry import Registry

NAME_EMBEDDERS: Registry[Callable] = Registry("label-name embedder", "data.name:data.embedding")
IMAGE_READERS: Registry[Callable] = Registry("image reader", "data.name / data.backbone")
REGION_MAPS: Registry[Callable] = Registry("region map", "model.name")

_OWNERS = ("mlzsl_jax.data.builtin", "mlzsl_jax.data.clip_labels", "mlzsl_jax.data.embeddings",
           "mlzsl_jax.models", "mlzsl_jax.extract.backbones")


def load_all() -> None:
  """Imports every module that registers a hook (idempotent)."""
  for module in _OWNERS:
    importlib.import_module(module)
  from mlzsl_jax.extract import backbones  # pylint: disable=import-outside-toplevel
  backbones.names()  # the extract backbones register their photo readers


def read_picture(path: str, mode: str) -> np.ndarray:
  """A PNG / JPEG as a uint8 array in PIL ``mode`` ('RGB', 'L'); ValueError naming the file."""
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover
    raise ImportError("reading image files needs Pillow (pip install pillow)") from e
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert(mode))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image (PNG / JPEG): {e}") from e


def read_sized_picture(path: str, mode: str, want: Sequence[int], what: str) -> np.ndarray:
  """``read_picture``, then ValueError unless its shape is ``want`` ([H, W] or [H, W, 3]);
  ``what`` describes the image expected ("grey digits_mosaic")."""
  picture = read_picture(path, mode)
  if tuple(picture.shape) != tuple(want):
    raise ValueError(f"{path}: expected a {what} image of shape {list(want)}, got "
                     f"{list(picture.shape)}")
  return picture


_ARTICLES = {"a", "an", "the"}


def name_words(name: str) -> list[str]:
  """A label name's words for word-based embedders: lower case, commas as spaces, articles
  dropped ("a red three" -> ["red", "three"])."""
  return [w for w in name.lower().replace(",", " ").split() if w not in _ARTICLES]


def embed_attribute_words(names: Sequence[str], width: int,
                          add_word: Callable[[np.ndarray, str], bool], expected: str,
                          known: str) -> np.ndarray:
  """An 'attributes' embedder's rows: float32 [len(names), width], zeros, then for each word
  of ``name_words(name)`` ``add_word(row [width], word)`` sets the row (in place; False: a
  word it does not know). Not normalised. ValueError for a name without words ("expected
  <expected>") or with an unknown word ("it knows <known>")."""
  out = np.zeros((len(names), width), np.float32)
  for row, name in enumerate(names):
    words = name_words(name)
    if not words:
      raise ValueError(f"label name {name!r}: empty; expected {expected}")
    for w in words:
      if not add_word(out[row], w):
        raise ValueError(f"label name {name!r}: the 'attributes' source cannot embed the word "
                         f"{w!r}; it knows {known}")
  return out
