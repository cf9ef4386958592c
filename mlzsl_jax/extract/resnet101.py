"""ResNet-101 (torchvision layout, inference mode) as a Flax NNX module: the layer4 region
grid and the 2048-d average-pooled feature (the feature type of the xlsa17 ``res101.mat``
files: "the 2048-dim top-layer pooling units of the 101-layered ResNet").

Layout (torchvision ``resnet101``, Bottleneck "v1.5"): stem conv 7x7 / 2 (padding 3, no
bias) -> BN -> ReLU -> max-pool 3x3 / 2 (padding 1); four stages of 3, 4, 23, 3 bottlenecks
of widths 64, 128, 256, 512 (output 4x the width); a bottleneck is conv1x1 -> BN -> ReLU ->
conv3x3 (stride 2 in the first block of stages 2-4, padding 1) -> BN -> ReLU -> conv1x1 -> BN,
plus the identity or a downsample (conv1x1 with the block's stride -> BN), then ReLU.
BatchNorm uses the running statistics (eps 1e-5): a frozen extractor, never trained here.
torchvision pads symmetrically, so every conv / pool has explicit padding (JAX's 'SAME'
pads strided layers asymmetrically).

Returns, for images [B, H, W, 3] (H, W multiples of 32; 224 -> a 7x7 grid):
  regions: layer4 output [B, (H/32) * (W/32), 2048], row-major
  pooled:  its mean over the regions [B, 2048] (torchvision's avgpool + flatten)

Preprocessing: the extractor uses ``images.load_image`` (BiAM's: 224x224 bilinear resize, no
crop, ImageNet mean/std) for both backbones.

Parity note: the xlsa17 features were extracted by their authors with the original (Caffe)
ResNet-101, stride in the first 1x1 conv ("v1") and their own preprocessing; converted
torchvision weights give a feature of the same kind, not the same numbers.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mlzsl_jax.extract.vgg19 import check_image_size

RESNET101_BLOCKS = (3, 4, 23, 3)
BASE_WIDTH = 64
EXPANSION = 4
BN_EPS = 1e-5


def _conv(in_ch, out_ch, kernel, stride, pad, *, dtype, rngs) -> nnx.Conv:
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), use_bias=False,
                  kernel_init=jax.nn.initializers.he_normal(), dtype=dtype, rngs=rngs)


def _bn(ch, *, dtype, rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(ch, use_running_average=True, epsilon=BN_EPS, dtype=dtype, rngs=rngs)


def block_names(blocks: Sequence[int]) -> list[tuple[str, int, int]]:
  """[(our name "layer{s}_{i}", stage s (1-based), index i)] in network order."""
  return [(f"layer{s + 1}_{i}", s + 1, i) for s, n in enumerate(blocks) for i in range(n)]


class Bottleneck(nnx.Module):
  """torchvision Bottleneck: [B, H, W, in] -> [B, H/stride, W/stride, 4 * width]."""

  def __init__(self, in_ch: int, width: int, stride: int, *, dtype, rngs: nnx.Rngs):
    out = width * EXPANSION
    self.conv1 = _conv(in_ch, width, 1, 1, 0, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(width, width, 3, stride, 1, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(width, dtype=dtype, rngs=rngs)
    self.conv3 = _conv(width, out, 1, 1, 0, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(out, dtype=dtype, rngs=rngs)
    if stride != 1 or in_ch != out:
      self.downsample_conv = _conv(in_ch, out, 1, stride, 0, dtype=dtype, rngs=rngs)
      self.downsample_bn = _bn(out, dtype=dtype, rngs=rngs)
    else:
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    identity = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
    return jax.nn.relu(y + identity)


class ResNet101(nnx.Module):
  """torchvision ResNet (Bottleneck) without its fc layer, NHWC, inference-mode BatchNorm.

  ``blocks`` and ``width`` are arguments so tests can run the real block structure at small
  sizes; the defaults are ResNet-101's.
  """

  def __init__(self, *, blocks: Sequence[int] = RESNET101_BLOCKS, width: int = BASE_WIDTH,
               image_size: Sequence[int] = (224, 224), dtype=jnp.float32, rngs: nnx.Rngs):
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
      raise ValueError(f"ResNet blocks: expected 4 positive ints, got {blocks!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
      raise ValueError(f"ResNet width: expected a positive int, got {width!r}")
    self.blocks, self.width = blocks, width
    self.image_size = check_image_size(image_size)
    self.dtype = dtype
    self.conv1 = _conv(3, width, 7, 2, 3, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype=dtype, rngs=rngs)
    in_ch = width
    for name, stage, i in block_names(blocks):
      planes = width * 2 ** (stage - 1)
      stride = 2 if stage > 1 and i == 0 else 1
      setattr(self, name, Bottleneck(in_ch, planes, stride, dtype=dtype, rngs=rngs))
      in_ch = planes * EXPANSION

  @property
  def grid_shape(self) -> tuple[int, int]:
    """Region grid (H/32, W/32): (7, 7) for 224x224."""
    return (self.image_size[0] // 32, self.image_size[1] // 32)

  @property
  def region_dim(self) -> int:
    return self.width * 8 * EXPANSION

  def region_grid(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] (normalised) -> layer4 output [B, H/32, W/32, 32 * width]."""
    want = (*self.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
      raise ValueError(f"ResNet images: expected [batch, {want[0]}, {want[1]}, 3], "
                       f"got {list(images.shape)}")
    x = jax.nn.relu(self.bn1(self.conv1(images.astype(self.dtype))))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for name, _, _ in block_names(self.blocks):
      x = getattr(self, name)(x)
    return x

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, H, W, 3] -> {"regions": [B, R, C], "pooled": [B, C]}."""
    grid = self.region_grid(images)
    regions = grid.reshape(grid.shape[0], -1, grid.shape[-1])
    return {"regions": regions, "pooled": regions.mean(axis=1)}
