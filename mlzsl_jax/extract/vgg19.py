"""VGG19 (torchvision layout) as a Flax NNX module: the region grid and the scene feature
the official BiAM features are made of.

Layout (torchvision ``vgg19``, configuration "E"): five stages of 3x3 convs (padding 1),
each followed by ReLU: 2, 2, 4, 4, 4 convs of 64, 128, 256, 512, 512 channels; a 2x2 max-pool
(stride 2) after every stage. Then ``fc6`` (25088 -> 4096), ReLU, Dropout, ``fc7``
(4096 -> 4096), ReLU, Dropout, ``fc8`` (-> 1000 classes; not used here).

What we return (``shared/spec/biam.md``; official ``akshitac8/BiAM``):
  regions: conv5_4 after its ReLU, BEFORE the last max-pool: a [H/16, W/16] grid
           ([14, 14] for 224x224 input) of 512-d vectors, as [B, regions, C] with
           region r = row * grid_w + col (row-major; the official files store the transpose
           [C, regions] = ``x.view(512, 196)`` of torch's [C, H, W]).
  scene:   the last max-pool of that grid ([7, 7, 512]), flattened in torch's (C, H, W)
           order, fc6 -> ReLU -> fc7 -> ReLU (dropout off: evaluation mode) -> [B, 4096].
           This is the official ``vgg_net`` of BiAM's ``model.py``: it applies
           ``vgg19.features[-1:]`` (the last max-pool) to the stored region features and then
           ``vgg19.classifier[0:-2]``. torchvision's ``AdaptiveAvgPool2d((7, 7))`` between
           the two is the identity for 224x224 input, and BiAM skips it, so do we: fc6's
           input size is C5 * (H/32) * (W/32).

The stage widths and fc width are constructor arguments so tests can run the real layer
structure at small widths and sizes; ``image_size`` must be a multiple of 32 per side.
Images arrive NHWC, already normalised (see ``mlzsl_jax.extract.images``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mlzsl_jax.extract import scene_head
from mlzsl_jax.models import layers

STAGE_CONVS = (2, 2, 4, 4, 4)          # convs per stage (VGG19)
VGG19_CHANNELS = (64, 128, 256, 512, 512)
FC_DIM = 4096
IMAGE_SIZE = (224, 224)


def conv_names() -> list[str]:
  """["conv1_1", "conv1_2", "conv2_1", ..., "conv5_4"] (16 names, network order)."""
  return [f"conv{s + 1}_{i + 1}" for s, n in enumerate(STAGE_CONVS) for i in range(n)]


def _check_positive_ints(value, field: str, length: int) -> tuple[int, ...]:
  try:
    out = tuple(int(v) for v in value)
  except TypeError:
    out = ()
  if len(out) != length or any(v < 1 or v != w for v, w in zip(out, value)):
    raise ValueError(f"VGG19 {field}: expected {length} positive ints, got {value!r}")
  return out


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
  """(height, width), each a positive multiple of 32 (five 2x2 pools); else ValueError."""
  size = _check_positive_ints(image_size, "image_size", 2)
  if size[0] % 32 or size[1] % 32:
    raise ValueError(f"VGG19 image_size: expected multiples of 32 per side (five 2x2 "
                     f"max-pools), got {size}")
  return size


class VGG19(nnx.Module):
  """VGG19 conv stack + fc6/fc7 (torchvision layout), NHWC.

  Parameters (pure dict): ``conv1_1``..``conv5_4`` each {kernel [3, 3, in, out], bias [out]},
  ``fc6`` {kernel [C5 * (H/32) * (W/32), fc_dim], bias}, ``fc7`` {kernel [fc_dim, fc_dim],
  bias}; fc6's input rows are in torch's (C, H, W) flatten order.
  """

  def __init__(self, *, channels: Sequence[int] = VGG19_CHANNELS, fc_dim: int = FC_DIM,
               image_size: Sequence[int] = IMAGE_SIZE, dtype=jnp.float32, rngs: nnx.Rngs):
    self.channels = _check_positive_ints(channels, "channels", len(STAGE_CONVS))
    self.fc_dim = _check_positive_ints([fc_dim], "fc_dim", 1)[0]
    self.image_size = check_image_size(image_size)
    self.dtype = dtype
    in_ch = 3
    names = iter(conv_names())
    for width, n in zip(self.channels, STAGE_CONVS):
      for _ in range(n):
        setattr(self, next(names), layers.conv(in_ch, width, 3, dtype=dtype, rngs=rngs))
        in_ch = width
    pooled = (self.image_size[0] // 32) * (self.image_size[1] // 32)
    self.fc6 = layers.linear(self.channels[-1] * pooled, self.fc_dim, dtype=dtype, rngs=rngs)
    self.fc7 = layers.linear(self.fc_dim, self.fc_dim, dtype=dtype, rngs=rngs)

  @property
  def grid_shape(self) -> tuple[int, int]:
    """Region grid (H/16, W/16): (14, 14) for 224x224."""
    return (self.image_size[0] // 16, self.image_size[1] // 16)

  @property
  def region_dim(self) -> int:
    return self.channels[-1]

  def region_grid(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] (normalised) -> conv5_4 after ReLU [B, H/16, W/16, C5]."""
    want = (*self.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
      raise ValueError(f"VGG19 images: expected [batch, {want[0]}, {want[1]}, 3], "
                       f"got {list(images.shape)}")
    x = images.astype(self.dtype)
    names = iter(conv_names())
    for stage, n in enumerate(STAGE_CONVS):
      for _ in range(n):
        x = jax.nn.relu(getattr(self, next(names))(x))
      if stage < len(STAGE_CONVS) - 1:  # no pool after stage 5: that grid is the output
        x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return x

  def scene_from_grid(self, grid: jax.Array) -> jax.Array:
    """grid [B, h, w, C5] (conv5_4 after ReLU) -> scene feature [B, fc_dim].

    Last max-pool -> [B, h/2, w/2, C5] -> (C, H, W) flatten (torch order) -> fc6 -> ReLU ->
    fc7 -> ReLU: ``scene_head.head_forward``, the code ``VGG19SceneHead`` runs too.
    """
    scene_head.check_grid(grid, self.grid_shape, self.region_dim, "VGG19")
    return scene_head.head_forward(self.fc6, self.fc7, grid, self.dtype)

  def scene_from_regions(self, regions: jax.Array) -> jax.Array:
    """regions [B, h*w, C5] (row-major, e.g. the official features transposed) -> [B, fc_dim].

    Lets a dataset builder compute the scene feature from stored region features and
    user-provided VGG19 weights, exactly as the official ``vgg_net`` does.
    """
    return self.scene_from_grid(layers.regions_to_grid(regions, self.grid_shape))

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, H, W, 3] -> {"regions": [B, H/16 * W/16, C5], "scene": [B, fc_dim]}."""
    grid = self.region_grid(images)
    return {"regions": layers.grid_to_regions(grid), "scene": self.scene_from_grid(grid)}
