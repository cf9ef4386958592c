"""CLIP image towers as ``extract`` backbones: ``clip_vit_b32``, ``clip_vit_b16``,
``clip_vit_l14``, ``clip_vit_l14_336`` (checked against the file), and ``clip_vit`` (any ViT
the file holds).

What an image becomes (written by ``mlzsl_jax.extract.run`` in the official BiAM h5 layout):
  <key>-features  float16 [D, N]  the N patch tokens through ``ln_post`` and the projection
                                  (MKT's patch embedding), channels x tokens, token
                                  r = row * grid + col: ViT-B/16 at 224 -> [512, 196], the
                                  shape of BiAM's VGG19 regions
  <key>-scene     float32 [D]     the projected class token (CLIP's image embedding), the
                                  scene feature
The architecture comes from the weight file; the name says which release the user means and
is checked against the file (a ViT-L file given as clip_vit_b16 is an error).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from flax import nnx

from mlzsl_jax.backbones import clip as clip_lib
from mlzsl_jax.backbones import clip_preprocess
from mlzsl_jax.extract import backbones


ANY_VIT = "clip_vit"


class ClipImageFeatures(nnx.Module):
  """The image tower of a ``Clip`` as an extractor: images [B, S, S, 3] (CLIP-normalised)
  -> {"regions": patch tokens [B, N, D], "scene": class embedding [B, D]}."""

  def __init__(self, model: clip_lib.Clip):
    self.visual = model.visual
    self.spec = model.spec

  @property
  def image_size(self) -> tuple[int, int]:
    return (self.spec.vision.image_size,) * 2

  @property
  def grid_shape(self) -> tuple[int, int]:
    return (self.spec.vision.grid,) * 2

  def __call__(self, images):
    out = self.visual(images)
    return {"regions": out["tokens"], "scene": out["class"]}


def check_release(name: str, spec: clip_lib.ClipSpec, source: str) -> None:
  """ValueError when the file's image tower is not the release ``name`` stands for."""
  want = clip_lib.named_spec(name).vision
  got = spec.vision
  fields = ("width", "layers", "patch", "image_size")
  if any(getattr(got, f) != getattr(want, f) for f in fields):
    raise ValueError(
        f"{source}: --backbone {name} expects a ViT with "
        + ", ".join(f"{f} {getattr(want, f)}" for f in fields) + "; the file holds "
        + ", ".join(f"{f} {getattr(got, f)}" for f in fields)
        + f" (use the matching clip_vit_* name)")


def load_extractor(name: str, weights, dtype: str = "float32") -> ClipImageFeatures:
  """``ClipImageFeatures`` of the weight file / folder ``weights`` (or a ``Clip``, tests)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel
  if isinstance(weights, ClipImageFeatures):
    return weights
  if isinstance(weights, clip_lib.Clip):
    model = weights
  else:
    file = clip_weights.read_weights(weights)
    if name != ANY_VIT:
      check_release(name, clip_weights.infer_spec(file), file.path)
    model = clip_weights.load_clip(file, dtype=jnp.dtype(dtype))
  return ClipImageFeatures(model)


def architecture(model: ClipImageFeatures) -> str:
  return json.dumps({"backbone": "clip", **dataclasses.asdict(model.spec.vision),
                     "embed_dim": model.spec.embed_dim,
                     "activation": model.spec.activation})


def _image(path, size):
  if size[0] != size[1]:
    raise ValueError(f"CLIP images are square, got size {size}")
  return clip_preprocess.load_image(path, size[0])


def _register() -> None:
  for name in (*clip_lib.NAMED_SPECS, ANY_VIT):
    backbones.BACKBONES.register(name)(backbones.ExtractBackbone(
        load=lambda weights, dtype, name=name: load_extractor(name, weights, dtype),
        load_image=_image, preprocessing=clip_preprocess.PREPROCESSING,
        global_output="scene", store_dtype=np.float16, architecture=architecture,
        weights_help="CLIP weights: OpenAI/open_clip .safetensors/.pt or a Hugging Face "
        "folder"))


_register()


# ------------------------------------------------------------------ predict's photo reader

def clip_image_features(path: str, weights: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(patch tokens float32 [N, D], the centre crop uint8 [S, S, 3] as the image tower saw it,
  class embedding float32 [D]) of a photo of any size (CLIP's preprocessing)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel
  model = clip_weights.cached_clip(weights)
  try:
    x = clip_preprocess.load_image(path, model.image_size)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image (PNG / JPEG): {e}") from e
  out = model.encode_image(jnp.asarray(x[None]))
  crop = np.clip(np.round((x * clip_preprocess.CLIP_STD + clip_preprocess.CLIP_MEAN) * 255),
                 0, 255).astype(np.uint8)
  return (np.asarray(out["tokens"][0], np.float32), crop,
          np.asarray(out["class"][0], np.float32))


def _register_photo_reader() -> None:
  from mlzsl_jax import hooks  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel

  @hooks.IMAGE_READERS.register("backbone:clip")
  def read_clip_photo(path: str, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo through the CLIP image tower of data.clip_weights."""
    return clip_image_features(path, clip_weights.weights_from_config(config))


_register_photo_reader()
