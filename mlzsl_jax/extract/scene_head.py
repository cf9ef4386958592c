"""BiAM's scene feature head: VGG19's last max-pool + fc6 -> ReLU -> fc7 -> ReLU, alone.

The official ``vgg_net`` of BiAM's ``model.py`` (``akshitac8/BiAM``) takes the stored region
features as the conv5_4 grid ``x.view(-1, 512, 14, 14)``, applies ``vgg19.features[-1:]`` (the
last 2x2 max-pool, torchvision ``features[36]``) and ``vgg19.classifier[0:-2]`` (fc6, ReLU,
Dropout, fc7, ReLU; eval mode, so the dropout is the identity) on the (C, H, W) flatten:

  regions [B, 196, 512] (row-major over the 14x14 grid) -> grid [B, 14, 14, 512]
  -> max-pool 2x2 -> [B, 7, 7, 512] -> flatten in torch's (C, H, W) order -> [B, 25088]
  -> fc6 -> ReLU -> fc7 -> ReLU -> scene [B, 4096]

``head_forward`` is that computation on any (fc6, fc7) pair; ``VGG19.scene_from_grid`` (the
full network in ``vgg19.py``) and ``VGG19SceneHead`` (only the two layers, ~480 MB of float32
parameters instead of ~550 MB plus the conv stack) both call it.

Weights: a torchvision ``vgg19`` state-dict file (``vgg19-dcbb9e9d.pth``, or a ``.npz`` of the
same keys; read by ``torchvision_weights.load_state_dict_file``: ``torch.load(weights_only=
True)``, never a plain unpickle). Only ``classifier.0.{weight,bias}`` (fc6) and
``classifier.3.{weight,bias}`` (fc7) are used; every other key (the convs, fc8) is ignored.
The fc width is read from the file (``classifier.0.weight`` rows), so tests can use tiny
widths.

  head = load_scene_head("vgg19-dcbb9e9d.pth")                  # [196, 512] regions
  scene = scene_from_regions(head, regions_f32)                  # [B, 4096] float32
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlzsl_jax.models import layers

REGION_DIM = 512
GRID_SHAPE = (14, 14)
FC_DIM = 4096
# torchvision key prefixes of the two layers (``vgg19.classifier`` indices 0 and 3).
FC_KEYS = {"fc6": "classifier.0", "fc7": "classifier.3"}


def pool_and_flatten(grid: jax.Array) -> jax.Array:
  """grid [B, h, w, C] -> VGG19's last 2x2 max-pool (stride 2), flattened in torch's
  (C, H, W) order (``x.view(B, -1)`` of the NCHW tensor) -> [B, C * h/2 * w/2]."""
  x = nnx.max_pool(grid, (2, 2), strides=(2, 2), padding="VALID")
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def head_forward(fc6: nnx.Linear, fc7: nnx.Linear, grid: jax.Array, dtype=jnp.float32
                 ) -> jax.Array:
  """The official ``vgg_net`` (eval mode): grid [B, h, w, C] (conv5_4 after ReLU) ->
  max-pool -> (C, H, W) flatten -> fc6 -> ReLU -> fc7 -> ReLU -> [B, fc_dim]."""
  x = pool_and_flatten(grid.astype(dtype))
  x = jax.nn.relu(fc6(x))
  return jax.nn.relu(fc7(x))


def check_grid(grid: jax.Array, grid_shape: Sequence[int], region_dim: int, who: str) -> None:
  want = (*grid_shape, region_dim)
  if grid.ndim != 4 or tuple(grid.shape[1:]) != want:
    raise ValueError(f"{who} grid: expected [batch, {want[0]}, {want[1]}, {want[2]}], "
                     f"got {list(grid.shape)}")


def _check_grid_shape(grid_shape: Sequence[int]) -> tuple[int, int]:
  try:
    out = tuple(int(v) for v in grid_shape)
  except TypeError:
    out = ()
  if len(out) != 2 or any(v < 2 or v % 2 for v in out):
    raise ValueError(f"VGG19SceneHead grid_shape: expected 2 even sides >= 2 (a 2x2 max-pool "
                     f"follows), got {grid_shape!r}")
  return out


class VGG19SceneHead(nnx.Module):
  """fc6 + fc7 of torchvision's VGG19, applied as BiAM's ``vgg_net`` to region features.

  Parameters (pure dict, the same names and layout as ``VGG19``'s): ``fc6`` {kernel
  [region_dim * (h/2) * (w/2), fc_dim], bias [fc_dim]} with input rows in torch's (C, H, W)
  flatten order, ``fc7`` {kernel [fc_dim, fc_dim], bias [fc_dim]}.
  """

  def __init__(self, *, region_dim: int = REGION_DIM, grid_shape: Sequence[int] = GRID_SHAPE,
               fc_dim: int = FC_DIM, dtype=jnp.float32, rngs: nnx.Rngs):
    if int(region_dim) < 1 or int(fc_dim) < 1:
      raise ValueError(f"VGG19SceneHead: region_dim and fc_dim must be positive, got "
                       f"{region_dim}, {fc_dim}")
    self.region_dim, self.fc_dim = int(region_dim), int(fc_dim)
    self.grid_shape = _check_grid_shape(grid_shape)
    self.dtype = dtype
    self.fc6 = layers.linear(self.fc_in, self.fc_dim, dtype=dtype, rngs=rngs)
    self.fc7 = layers.linear(self.fc_dim, self.fc_dim, dtype=dtype, rngs=rngs)

  @property
  def fc_in(self) -> int:
    """fc6's input size: region_dim x the pooled grid (25088 = 512 x 7 x 7)."""
    return self.region_dim * (self.grid_shape[0] // 2) * (self.grid_shape[1] // 2)

  def from_grid(self, grid: jax.Array) -> jax.Array:
    """grid [B, h, w, C] -> scene [B, fc_dim]."""
    check_grid(grid, self.grid_shape, self.region_dim, "VGG19SceneHead")
    return head_forward(self.fc6, self.fc7, grid, self.dtype)

  def __call__(self, regions: jax.Array) -> jax.Array:
    """regions [B, h*w, C] (row-major over the grid) -> scene [B, fc_dim]."""
    return self.from_grid(layers.regions_to_grid(regions, self.grid_shape))


@nnx.jit
def scene_from_regions(head: VGG19SceneHead, regions: jax.Array) -> jax.Array:
  """Jitted ``head(regions)``: regions [B, h*w, C] -> float32 [B, fc_dim], matmuls at full
  float32 precision (a stored feature; accelerators otherwise may use TF32/bf16 passes)."""
  with jax.default_matmul_precision("float32"):
    return head(regions.astype(jnp.float32)).astype(jnp.float32)


def expected_shapes(fc_dim: int, fc_in: int) -> dict[str, tuple[int, ...]]:
  """torchvision key -> shape of the four arrays the head uses."""
  return {"classifier.0.weight": (fc_dim, fc_in), "classifier.0.bias": (fc_dim,),
          "classifier.3.weight": (fc_dim, fc_dim), "classifier.3.bias": (fc_dim,)}


def scene_head_from_state_dict(state_dict: Mapping[str, Any], *, region_dim: int = REGION_DIM,
                               grid_shape: Sequence[int] = GRID_SHAPE, dtype=jnp.float32,
                               source: str = "state dict") -> VGG19SceneHead:
  """A ``VGG19SceneHead`` holding fc6/fc7 of a torchvision vgg19 state dict (numpy arrays).

  fc_dim = rows of ``classifier.0.weight``; its columns must be region_dim x the pooled grid.
  Other keys are ignored. Errors (ValueError) name ``source`` and the key, expected vs got.
  """
  # Lazy: torchvision_weights imports vgg19, which imports this module.
  from mlzsl_jax.extract import torchvision_weights as tvw  # pylint: disable=import-outside-toplevel
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"{source}: expected a dict of parameter name -> array, got "
                     f"{type(state_dict).__name__}")
  grid_shape = _check_grid_shape(grid_shape)
  fc_in = int(region_dim) * (grid_shape[0] // 2) * (grid_shape[1] // 2)
  key = "classifier.0.weight"
  if key not in state_dict:
    raise ValueError(f"{source}: key {key!r} missing (fc6, expected shape [fc_dim, {fc_in}]); "
                     f"expected a torchvision vgg19 state dict (found keys like "
                     f"{sorted(state_dict)[:4]})")
  shape = np.shape(state_dict[key])
  if len(shape) != 2 or shape[0] < 1:
    raise ValueError(f"{source}: key {key!r}: expected shape [fc_dim, {fc_in}], got "
                     f"{list(shape)}")
  fc_dim = int(shape[0])
  arrays = tvw._checked_arrays(  # pylint: disable=protected-access
      state_dict, expected_shapes(fc_dim, fc_in), source)
  params = {name: {"kernel": arrays[f"{prefix}.weight"].T, "bias": arrays[f"{prefix}.bias"]}
            for name, prefix in FC_KEYS.items()}
  head = nnx.eval_shape(lambda: VGG19SceneHead(region_dim=region_dim, grid_shape=grid_shape,
                                               fc_dim=fc_dim, dtype=dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(head)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def load_scene_head(weights, *, region_dim: int = REGION_DIM,
                    grid_shape: Sequence[int] = GRID_SHAPE, dtype=jnp.float32
                    ) -> VGG19SceneHead:
  """``weights``: a ``VGG19SceneHead`` (returned as is), a numpy state dict, or a torchvision
  vgg19 file path (``.pth`` via ``torch.load(weights_only=True)``, or ``.npz``)."""
  if isinstance(weights, VGG19SceneHead):
    return weights
  if isinstance(weights, Mapping):
    return scene_head_from_state_dict(weights, region_dim=region_dim, grid_shape=grid_shape,
                                      dtype=dtype)
  if isinstance(weights, (str, os.PathLike)):
    from mlzsl_jax.extract import torchvision_weights as tvw  # pylint: disable=import-outside-toplevel
    path = os.fspath(weights)
    return scene_head_from_state_dict(
        tvw.load_state_dict_file(path), region_dim=region_dim, grid_shape=grid_shape,
        dtype=dtype, source=f"VGG19 weights file {path!r}")
  raise ValueError(f"VGG19 scene head weights: expected a path, a state dict or a "
                   f"VGG19SceneHead, got {type(weights).__name__}")


def numpy_scene_fn(head: VGG19SceneHead) -> Callable[[np.ndarray], np.ndarray]:
  """regions float32 [B, h*w, C] (numpy) -> scene float32 [B, fc_dim] (numpy), jitted; for
  dataset builders (one compile per distinct batch size: pad batches to one size)."""
  def fn(regions: np.ndarray) -> np.ndarray:
    return np.asarray(scene_from_regions(head, jnp.asarray(regions, jnp.float32)))
  return fn
