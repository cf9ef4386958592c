"""Small building blocks shared by the models: PyTorch-default initialisers, grid reshapes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def torch_kernel_init():
  """PyTorch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv(in_ch: int, out_ch: int, kernel: int, *, dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A 'SAME'-padded 2-D conv with bias, initialised like ``torch.nn.Conv2d``."""
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), padding="SAME", use_bias=True,
                  kernel_init=torch_kernel_init(),
                  bias_init=torch_bias_init(in_ch * kernel * kernel),
                  dtype=dtype, rngs=rngs)


def linear(in_dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """A dense layer with bias, initialised like ``torch.nn.Linear``."""
  return nnx.Linear(in_dim, out_dim, use_bias=True, kernel_init=torch_kernel_init(),
                    bias_init=torch_bias_init(in_dim), dtype=dtype, rngs=rngs)


def regions_to_grid(x: jax.Array, grid_shape: tuple[int, int]) -> jax.Array:
  """[batch, regions, ch] (row-major regions) -> [batch, height, width, ch]."""
  b, r, c = x.shape
  h, w = grid_shape
  if r != h * w:
    raise ValueError(f"features have {r} regions; grid_shape {grid_shape} needs {h * w}")
  return x.reshape(b, h, w, c)


def grid_to_regions(x: jax.Array) -> jax.Array:
  """[batch, height, width, ch] -> [batch, height*width, ch]."""
  b, h, w, c = x.shape
  return x.reshape(b, h * w, c)
