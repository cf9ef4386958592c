"""CLIP's image and text towers as Flax NNX modules (the ViT image encoder and the causal
text transformer of OpenAI CLIP, open_clip and Hugging Face ``CLIPModel``).

Vision (``VisionTower``): images [B, S, S, 3] (CLIP-normalised, NHWC) -> non-overlapping
P x P patches -> linear patch embedding (no bias) -> [class token; patches] + positional
embedding -> ``ln_pre`` -> pre-norm residual blocks -> ``ln_post`` -> projection. Unlike
CLIP's own image embedding (the class token only), ``__call__`` returns every token through
``ln_post`` and the projection, as MKT does, so the patch tokens land in the joint
image-text space:

  {"class": [B, D], "tokens": [B, (S/P)^2, D]}     e.g. ViT-B/16, S = 224: [B, 196, 512]

Text (``TextTower``): token ids [B, T] (T <= context, CLIP's tokenizer: start token, BPE,
end token, zeros) -> token + positional embedding -> causal pre-norm blocks -> ``ln_final``
-> the vector at the end-of-text token (the largest id in each row, 49407) -> projection
-> [B, D].

Blocks: x += attn(ln_1(x)); x += mlp(ln_2(x)), mlp = fc (width -> 4 width), activation
(QuickGELU x * sigmoid(1.702 x) for OpenAI's releases, exact GELU for most of
open_clip's), proj. Attention: fused q/k/v projection, heads of width / heads,
softmax(q k^T / sqrt(head_dim)) in float32. LayerNorm eps 1e-5, computed in float32.

Parameters are float32; ``dtype`` is the compute dtype (bfloat16 on accelerators).
Architectures are plain data (``ClipSpec``), read from a weight file by
``mlzsl_jax.backbones.clip_weights``; ``NAMED_SPECS`` holds the released sizes by name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-5
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class VisionSpec:
  """A ViT image tower: width, blocks, heads, patch side, image side (pixels)."""
  width: int
  layers: int
  heads: int
  patch: int
  image_size: int

  @property
  def grid(self) -> int:
    """Patches per side: image_size / patch (14 for ViT-B/16 at 224)."""
    return self.image_size // self.patch

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid


@dataclasses.dataclass(frozen=True)
class TextSpec:
  """A causal text transformer: width, blocks, heads, context length, vocabulary size."""
  width: int
  layers: int
  heads: int
  context: int = 77
  vocab: int = 49408


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Both towers, the joint embedding width and the MLP activation."""
  vision: VisionSpec
  text: TextSpec
  embed_dim: int
  activation: str = "quick_gelu"

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"CLIP activation: expected one of {ACTIVATIONS}, "
                       f"got {self.activation!r}")
    for tower in (self.vision, self.text):
      if tower.width % tower.heads:
        raise ValueError(f"CLIP {type(tower).__name__}: width {tower.width} is not a "
                         f"multiple of heads {tower.heads}")
    if self.vision.image_size % self.vision.patch:
      raise ValueError(f"CLIP vision: image_size {self.vision.image_size} is not a multiple "
                       f"of the patch size {self.vision.patch}")

  def with_image_size(self, image_size: int) -> "ClipSpec":
    """The same towers at another image side (positional embedding interpolated)."""
    return dataclasses.replace(self, vision=dataclasses.replace(self.vision,
                                                                image_size=int(image_size)))


def _text(width: int, layers: int) -> TextSpec:
  return TextSpec(width=width, layers=layers, heads=width // 64)


# The OpenAI releases (what their weight files hold; the loader reads the same numbers from
# the file and never needs this table). Used for naming backbones and for compile/benchmarks.
NAMED_SPECS: dict[str, ClipSpec] = {
    "clip_vit_b32": ClipSpec(VisionSpec(768, 12, 12, 32, 224), _text(512, 12), 512),
    "clip_vit_b16": ClipSpec(VisionSpec(768, 12, 12, 16, 224), _text(512, 12), 512),
    "clip_vit_l14": ClipSpec(VisionSpec(1024, 24, 16, 14, 224), _text(768, 12), 768),
    "clip_vit_l14_336": ClipSpec(VisionSpec(1024, 24, 16, 14, 336), _text(768, 12), 768),
}


def named_spec(name: str) -> ClipSpec:
  """The architecture of a released CLIP by backbone name (``clip_vit_b16`` ...)."""
  if name not in NAMED_SPECS:
    raise ValueError(f"CLIP backbone {name!r}: expected one of {sorted(NAMED_SPECS)}")
  return NAMED_SPECS[name]


def activation_fn(name: str):
  """QuickGELU (OpenAI) or exact GELU (erf form, as torch.nn.GELU())."""
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  raise ValueError(f"CLIP activation: expected one of {ACTIVATIONS}, got {name!r}")


def _zeros(shape):
  return nnx.Param(jnp.zeros(shape, jnp.float32))


def _normal(rngs: nnx.Rngs, shape, std: float):
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis in float32 (eps 1e-5), result cast back to x's dtype.
  Parameters: scale [width], bias [width]."""

  def __init__(self, width: int):
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
    self.bias = _zeros((width,))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., width] -> [..., width]."""
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + LN_EPS)
    return (h * self.scale[...] + self.bias[...]).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias with kernel [in, out] (torch's weight transposed), computed in
  ``dtype``."""

  def __init__(self, in_dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = _normal(rngs, (in_dim, out_dim), in_dim ** -0.5)
    self.bias = _zeros((out_dim,))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., in] -> [..., out]."""
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class Block(nnx.Module):
  """One pre-norm residual block: x + attn(ln_1 x), then + mlp(ln_2 x)."""

  def __init__(self, width: int, heads: int, activation: str, *, dtype, rngs: nnx.Rngs):
    self.heads = heads
    self.activation = activation
    self.dtype = dtype
    self.ln_1 = LayerNorm(width)
    self.qkv = Dense(width, 3 * width, dtype=dtype, rngs=rngs)
    self.out = Dense(width, width, dtype=dtype, rngs=rngs)
    self.ln_2 = LayerNorm(width)
    self.fc = Dense(width, 4 * width, dtype=dtype, rngs=rngs)
    self.proj = Dense(4 * width, width, dtype=dtype, rngs=rngs)

  def attention(self, x: jax.Array, causal: bool) -> jax.Array:
    """x [B, T, width] -> [B, T, width]; each position attends to all (or, causal, to the
    earlier and itself)."""
    b, t, width = x.shape
    head_dim = width // self.heads
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, head_dim), 3, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    if causal:
      logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(self.dtype))
    return self.out(mixed.reshape(b, t, width))

  def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
    """x [B, T, width] -> [B, T, width]."""
    x = x + self.attention(self.ln_1(x), causal)
    hidden = activation_fn(self.activation)(self.fc(self.ln_2(x)))
    return x + self.proj(hidden)


class VisionTower(nnx.Module):
  """CLIP's ViT. Parameters: patch_kernel [P, P, 3, width] (torch's conv1 weight as HWIO),
  class_embedding [width], positional [grid^2 + 1, width], ln_pre, blocks, ln_post,
  proj [width, embed_dim]."""

  def __init__(self, spec: VisionSpec, embed_dim: int, activation: str, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.spec = spec
    self.dtype = dtype
    w = spec.width
    self.patch_kernel = _normal(rngs, (spec.patch, spec.patch, 3, w), (3 * spec.patch ** 2) ** -0.5)
    self.class_embedding = _normal(rngs, (w,), w ** -0.5)
    self.positional = _normal(rngs, (spec.num_patches + 1, w), w ** -0.5)
    self.ln_pre = LayerNorm(w)
    self.blocks = nnx.List([Block(w, spec.heads, activation, dtype=dtype, rngs=rngs)
                            for _ in range(spec.layers)])
    self.ln_post = LayerNorm(w)
    self.proj = _normal(rngs, (w, embed_dim), w ** -0.5)

  def patches(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] -> patch embeddings [B, grid^2, width] (row-major patches): the
    stride-P convolution without bias, as one matmul over each P x P x 3 patch."""
    s, p, g = self.spec.image_size, self.spec.patch, self.spec.grid
    if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3):
      raise ValueError(f"CLIP vision images: expected [batch, {s}, {s}, 3], "
                       f"got {list(images.shape)}")
    b = images.shape[0]
    x = images.astype(self.dtype).reshape(b, g, p, g, p, 3)
    return jnp.einsum("bgpwqc,pqcd->bgwd", x,
                      self.patch_kernel[...].astype(self.dtype)).reshape(b, g * g, -1)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, S, S, 3] -> {"class": [B, D], "tokens": [B, grid^2, D]} (both through
    ln_post and the projection)."""
    x = self.patches(images)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype),
                           (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional[...].astype(self.dtype)
    x = self.ln_pre(x)
    for block in self.blocks:
      x = block(x)
    x = self.ln_post(x)
    out = jnp.einsum("btw,wd->btd", x, self.proj[...].astype(self.dtype))
    return {"class": out[:, 0], "tokens": out[:, 1:]}


class TextTower(nnx.Module):
  """CLIP's text transformer. Parameters: token_embedding [vocab, width], positional
  [context, width], blocks, ln_final, proj [width, embed_dim]."""

  def __init__(self, spec: TextSpec, embed_dim: int, activation: str, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.spec = spec
    self.dtype = dtype
    w = spec.width
    self.token_embedding = _normal(rngs, (spec.vocab, w), 0.02)
    self.positional = _normal(rngs, (spec.context, w), 0.01)
    self.blocks = nnx.List([Block(w, spec.heads, activation, dtype=dtype, rngs=rngs)
                            for _ in range(spec.layers)])
    self.ln_final = LayerNorm(w)
    self.proj = _normal(rngs, (w, embed_dim), w ** -0.5)

  def __call__(self, token_ids: jax.Array) -> jax.Array:
    """token_ids int [B, T] (T <= context) -> text embeddings [B, D], taken at the
    end-of-text token (the row's largest id)."""
    if token_ids.ndim != 2 or not 0 < token_ids.shape[1] <= self.spec.context:
      raise ValueError(f"CLIP text token_ids: expected [batch, <= {self.spec.context}], "
                       f"got {list(token_ids.shape)}")
    t = token_ids.shape[1]
    x = (jnp.take(self.token_embedding[...], token_ids, axis=0)
         + self.positional[...][:t]).astype(self.dtype)
    for block in self.blocks:
      x = block(x, causal=True)
    x = self.ln_final(x)
    end = jnp.argmax(token_ids, axis=-1)
    pooled = jnp.take_along_axis(x, end[:, None, None], axis=1)[:, 0]
    return jnp.einsum("bw,wd->bd", pooled, self.proj[...].astype(self.dtype))


class Clip(nnx.Module):
  """Both towers plus logit_scale (a scalar, the log of the similarity temperature)."""

  def __init__(self, spec: ClipSpec, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.spec = spec
    self.visual = VisionTower(spec.vision, spec.embed_dim, spec.activation, dtype=dtype,
                              rngs=rngs)
    self.text = TextTower(spec.text, spec.embed_dim, spec.activation, dtype=dtype, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

  @property
  def image_size(self) -> int:
    return self.spec.vision.image_size

  @property
  def grid_shape(self) -> tuple[int, int]:
    return (self.spec.vision.grid, self.spec.vision.grid)

  def encode_image(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, S, S, 3] -> {"class": [B, D], "tokens": [B, N, D]}."""
    return self.visual(images)

  def encode_text(self, token_ids: jax.Array) -> jax.Array:
    """token_ids [B, T] -> [B, D]."""
    return self.text(token_ids)


def abstract_clip(spec: ClipSpec, dtype=jnp.float32) -> Clip:
  """A ``Clip`` whose parameters are shapes only (no random init): fill it with
  ``nnx.replace_by_pure_dict`` / ``clip_weights.load_clip``."""
  return nnx.eval_shape(lambda: Clip(spec, dtype=dtype, rngs=nnx.Rngs(0)))


def param_shapes(spec: ClipSpec) -> dict[str, Any]:
  """The nested pure-dict of parameter shapes of ``Clip(spec)`` (what a converter fills)."""
  _, state = nnx.split(abstract_clip(spec))
  return jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(state))
