"""torchvision ``vgg19`` state dict -> our ``VGG19`` parameters.

The user provides torchvision's ImageNet VGG19 file themselves (``vgg19-dcbb9e9d.pth``, what
``torchvision.models.vgg19(pretrained=True)`` loads; the official BiAM extraction uses it).
Its keys:
  features.{0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34}.weight  [out, in, 3, 3]  (+ .bias [out])
  classifier.0.weight [4096, 25088] / .bias   (fc6; input in torch's (C, H, W) flatten order)
  classifier.3.weight [4096, 4096]  / .bias   (fc7)
  classifier.6.weight [1000, 4096]  / .bias   (fc8; not used, accepted and ignored)
The feature indices are those of ``nn.Sequential`` with a ReLU after every conv and a
max-pool after every stage (``conv_feature_indices``).

Conversion: conv weight [out, in, kh, kw] -> kernel [kh, kw, in, out]; linear weight
[out, in] -> kernel [in, out]. Our fc6 flattens in the same (C, H, W) order, so fc6 is a plain
transpose too.

Entry points:
  ``load_state_dict_file(path)``: a ``.pth``/``.pt`` file via ``torch.load(weights_only=True)``
      (torch optional: ``pip install -e .[torch]``), or a ``.npz`` of the same keys (no torch).
  ``convert_state_dict(state_dict)``: numpy dict -> (params pure dict, architecture).
  ``vgg19_from_state_dict(state_dict)`` / ``load_vgg19(weights)``: a ready ``VGG19``.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlzsl_jax.extract.vgg19 import STAGE_CONVS, VGG19, conv_names

FC_KEYS = {"fc6": "classifier.0", "fc7": "classifier.3"}
IGNORED_KEYS = ("classifier.6.weight", "classifier.6.bias")


def conv_feature_indices() -> dict[str, int]:
  """Our conv name -> its index in torchvision's ``vgg19.features``
  ({"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, ..., "conv5_4": 34})."""
  out, index, names = {}, 0, iter(conv_names())
  for n in STAGE_CONVS:
    for _ in range(n):
      out[next(names)] = index
      index += 2  # conv, ReLU
    index += 1  # max-pool
  return out


def _label(source: str, key: str) -> str:
  return f"{source}: key {key!r}"


def _checked_arrays(state_dict, shapes: dict, source) -> dict[str, np.ndarray]:
  """float32 copies of ``state_dict[key]`` for every key of ``shapes``; a missing key, wrong
  shape, non-float dtype or NaN/inf is a ValueError naming the file and key."""
  arrays = {}
  for key, shape in shapes.items():
    if key not in state_dict:
      raise ValueError(f"{_label(source, key)} missing (expected shape {list(shape)})")
    value = np.asarray(state_dict[key])
    if value.shape != shape:
      raise ValueError(f"{_label(source, key)}: expected shape {list(shape)}, "
                       f"got {list(value.shape)}")
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"{_label(source, key)}: expected floating-point values, "
                       f"got dtype {value.dtype}")
    if not np.isfinite(value).all():
      raise ValueError(f"{_label(source, key)}: contains NaN/inf")
    arrays[key] = value.astype(np.float32)
  return arrays


def infer_architecture(state_dict: Mapping[str, np.ndarray], source: str = "state dict"
                       ) -> dict[str, Any]:
  """{"channels": (5 stage widths), "fc_dim": int, "image_size": (H, W)} read from the shapes.

  ``image_size`` follows from fc6's input size C5 * p * p (a p x p pooled grid, 7 for the
  ImageNet file) as (32 p, 32 p).
  """
  indices = conv_feature_indices()
  channels = []
  for stage in range(len(STAGE_CONVS)):
    key = f"features.{indices[f'conv{stage + 1}_1']}.weight"
    if key not in state_dict:
      raise ValueError(f"{_label(source, key)} missing: not a torchvision vgg19 state dict "
                       f"(found keys like {sorted(state_dict)[:4]})")
    shape = np.shape(state_dict[key])
    if len(shape) != 4:
      raise ValueError(f"{_label(source, key)}: expected a conv weight [out, in, 3, 3], "
                       f"got shape {list(shape)}")
    channels.append(int(shape[0]))
  key = "classifier.0.weight"
  if key not in state_dict:
    raise ValueError(f"{_label(source, key)} missing (fc6)")
  shape = np.shape(state_dict[key])
  if len(shape) != 2:
    raise ValueError(f"{_label(source, key)}: expected [fc_dim, C5*p*p], got {list(shape)}")
  fc_dim, fc_in = int(shape[0]), int(shape[1])
  side = math.isqrt(fc_in // channels[-1]) if fc_in % channels[-1] == 0 else 0
  if side < 1 or channels[-1] * side * side != fc_in:
    raise ValueError(f"{_label(source, key)}: input size {fc_in} is not {channels[-1]} "
                     "channels x a square pooled grid (25088 = 512 x 7 x 7 for VGG19)")
  return {"channels": tuple(channels), "fc_dim": fc_dim, "image_size": (32 * side, 32 * side)}


def expected_shapes(channels, fc_dim: int, image_size) -> dict[str, tuple[int, ...]]:
  """torchvision key -> shape, for the architecture given (fc8 excluded)."""
  out, in_ch, names = {}, 3, iter(conv_names())
  indices = conv_feature_indices()
  for width, n in zip(channels, STAGE_CONVS):
    for _ in range(n):
      i = indices[next(names)]
      out[f"features.{i}.weight"] = (width, in_ch, 3, 3)
      out[f"features.{i}.bias"] = (width,)
      in_ch = width
  fc_in = channels[-1] * (image_size[0] // 32) * (image_size[1] // 32)
  out["classifier.0.weight"], out["classifier.0.bias"] = (fc_dim, fc_in), (fc_dim,)
  out["classifier.3.weight"], out["classifier.3.bias"] = (fc_dim, fc_dim), (fc_dim,)
  return out


def convert_state_dict(state_dict: Mapping[str, Any], *, source: str = "state dict"
                       ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
  """torchvision vgg19 state dict (numpy arrays) -> (our params pure dict, architecture).

  Every expected key must be present with the expected shape and finite values; unknown keys
  (other than fc8's) are an error, since they mean a different network (e.g. ``vgg19_bn``'s
  BatchNorm entries). Errors name ``source`` and the key, with expected vs got.
  """
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"{source}: expected a dict of parameter name -> array, got "
                     f"{type(state_dict).__name__}")
  arch = infer_architecture(state_dict, source)
  shapes = expected_shapes(**arch)
  unknown = sorted(set(state_dict) - set(shapes) - set(IGNORED_KEYS))
  if unknown:
    hint = (" (BatchNorm entries: this is vgg19_bn; the BiAM features use plain vgg19)"
            if any("running_mean" in k for k in unknown) else "")
    raise ValueError(f"{source}: unexpected keys {unknown[:6]}{hint}; expected torchvision "
                     "vgg19's features.N / classifier.{0,3,6} weights and biases")
  arrays = _checked_arrays(state_dict, shapes, source)
  params = {}
  for name, i in conv_feature_indices().items():
    params[name] = {"kernel": arrays[f"features.{i}.weight"].transpose(2, 3, 1, 0),
                    "bias": arrays[f"features.{i}.bias"]}
  for name, prefix in FC_KEYS.items():
    params[name] = {"kernel": arrays[f"{prefix}.weight"].T, "bias": arrays[f"{prefix}.bias"]}
  return params, arch


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torchvision state dict file (vgg19 or resnet101) -> {key: float32 numpy array}.

  ``.npz``: read with ``np.load(allow_pickle=False)`` (no torch needed). Anything else:
  ``torch.load(path, map_location="cpu", weights_only=True)`` (never unpickles arbitrary
  objects); torch is an optional extra.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs torch: pip install -e .[torch] "
                      "(or convert it once to .npz elsewhere)") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types for corrupt / non-weight files
    raise ValueError(f"weights file {path!r}: torch.load(weights_only=True) failed: "
                     f"{type(e).__name__}: {e}") from e
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"],
                                                                      Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"weights file {path!r}: expected a state dict (name -> tensor), "
                     f"got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"weights file {path!r}: key {key!r} is a "
                       f"{type(value).__name__}, expected a tensor")
    out[key] = value.detach().to(torch.float32).cpu().numpy()
  return out


def vgg19_from_state_dict(state_dict: Mapping[str, Any], *, dtype=jnp.float32,
                          source: str = "state dict") -> VGG19:
  """A ``VGG19`` of the state dict's architecture holding its weights."""
  params, arch = convert_state_dict(state_dict, source=source)
  # Abstract init (shapes only; no random-init compute), then the converted arrays.
  model = nnx.eval_shape(lambda: VGG19(**arch, dtype=dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def load_vgg19(weights, *, dtype=jnp.float32) -> VGG19:
  """``weights``: a ``VGG19`` (returned as is), a state dict of numpy arrays, or a file path
  (``load_state_dict_file``)."""
  if isinstance(weights, VGG19):
    return weights
  if isinstance(weights, Mapping):
    return vgg19_from_state_dict(weights, dtype=dtype)
  if isinstance(weights, (str, os.PathLike)):
    return vgg19_from_state_dict(load_state_dict_file(weights), dtype=dtype,
                                 source=f"VGG19 weights file {os.fspath(weights)!r}")
  raise ValueError(f"VGG19 weights: expected a path, a state dict or a VGG19, "
                   f"got {type(weights).__name__}")


# ------------------------------------------------------------------------------- ResNet-101
# torchvision resnet101 keys: conv1.weight, bn1.{weight,bias,running_mean,running_var,
# num_batches_tracked}, layer{s}.{i}.conv{1,2,3}.weight, layer{s}.{i}.bn{1,2,3}.*,
# layer{s}.{i}.downsample.0.weight (conv1x1), layer{s}.{i}.downsample.1.* (BN), fc.weight/bias
# (not used). BN -> {scale: weight, bias: bias, mean: running_mean, var: running_var}.

RESNET_IGNORED_SUFFIXES = ("num_batches_tracked",)
RESNET_IGNORED_KEYS = ("fc.weight", "fc.bias")
_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean",
              "running_var": "var"}


def infer_resnet_architecture(state_dict: Mapping[str, np.ndarray],
                              source: str = "state dict") -> dict[str, Any]:
  """{"blocks": (4 block counts), "width": stem width} read from the keys and shapes."""
  if "conv1.weight" not in state_dict:
    raise ValueError(f"{_label(source, 'conv1.weight')} missing: not a torchvision ResNet "
                     f"state dict (found keys like {sorted(state_dict)[:4]})")
  shape = np.shape(state_dict["conv1.weight"])
  if len(shape) != 4 or shape[1:] != (3, 7, 7):
    raise ValueError(f"{_label(source, 'conv1.weight')}: expected [width, 3, 7, 7], "
                     f"got {list(shape)}")
  blocks = []
  for stage in range(1, 5):
    n = 0
    while f"layer{stage}.{n}.conv1.weight" in state_dict:
      n += 1
    if n == 0:
      raise ValueError(f"{_label(source, f'layer{stage}.0.conv1.weight')} missing")
    blocks.append(n)
  if any(f"layer{s}.0.conv3.weight" not in state_dict for s in range(1, 5)):
    raise ValueError(f"{source}: no conv3 in the blocks: a BasicBlock ResNet (18/34), "
                     "expected a Bottleneck one (ResNet-101)")
  return {"blocks": tuple(blocks), "width": int(shape[0])}


def resnet_expected_shapes(blocks, width: int) -> dict[str, tuple[int, ...]]:
  """torchvision key -> shape (fc and num_batches_tracked excluded)."""
  from mlzsl_jax.extract.resnet101 import EXPANSION, block_names  # pylint: disable=import-outside-toplevel

  def bn(prefix, ch):
    return {f"{prefix}.{f}": (ch,) for f in _BN_FIELDS}

  out = {"conv1.weight": (width, 3, 7, 7), **bn("bn1", width)}
  in_ch = width
  for _, stage, i in block_names(blocks):
    planes, p = width * 2 ** (stage - 1), f"layer{stage}.{i}"
    out[f"{p}.conv1.weight"] = (planes, in_ch, 1, 1)
    out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
    out[f"{p}.conv3.weight"] = (planes * EXPANSION, planes, 1, 1)
    out.update(bn(f"{p}.bn1", planes) | bn(f"{p}.bn2", planes) |
               bn(f"{p}.bn3", planes * EXPANSION))
    if i == 0:  # first block of every stage changes width (stage 1) or stride (2-4)
      out[f"{p}.downsample.0.weight"] = (planes * EXPANSION, in_ch, 1, 1)
      out.update(bn(f"{p}.downsample.1", planes * EXPANSION))
    in_ch = planes * EXPANSION
  return out


def convert_resnet_state_dict(state_dict: Mapping[str, Any], *, source: str = "state dict"
                              ) -> tuple[dict[str, Any], dict[str, Any]]:
  """torchvision ResNet (Bottleneck) state dict -> (our pure dict, architecture).

  Same checks as ``convert_state_dict``: every key present, shapes, finite floats, no
  unknown keys (fc and num_batches_tracked are accepted and ignored).
  """
  from mlzsl_jax.extract.resnet101 import block_names  # pylint: disable=import-outside-toplevel
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"{source}: expected a dict of parameter name -> array, got "
                     f"{type(state_dict).__name__}")
  arch = infer_resnet_architecture(state_dict, source)
  shapes = resnet_expected_shapes(**arch)
  unknown = sorted(k for k in set(state_dict) - set(shapes) - set(RESNET_IGNORED_KEYS)
                   if not k.endswith(RESNET_IGNORED_SUFFIXES))
  if unknown:
    raise ValueError(f"{source}: unexpected keys {unknown[:6]}; expected torchvision "
                     f"resnet's for blocks {arch['blocks']}")
  arrays = _checked_arrays(state_dict, shapes, source)

  def conv(key):
    return {"kernel": arrays[key].transpose(2, 3, 1, 0)}

  def bn(prefix):
    return {ours: arrays[f"{prefix}.{theirs}"] for theirs, ours in _BN_FIELDS.items()}

  params: dict[str, Any] = {"conv1": conv("conv1.weight"), "bn1": bn("bn1")}
  for name, stage, i in block_names(arch["blocks"]):
    p = f"layer{stage}.{i}"
    block = {f"conv{j}": conv(f"{p}.conv{j}.weight") for j in (1, 2, 3)}
    block.update({f"bn{j}": bn(f"{p}.bn{j}") for j in (1, 2, 3)})
    if i == 0:
      block["downsample_conv"] = conv(f"{p}.downsample.0.weight")
      block["downsample_bn"] = bn(f"{p}.downsample.1")
    params[name] = block
  return params, arch


def resnet101_from_state_dict(state_dict: Mapping[str, Any], *, dtype=jnp.float32,
                              image_size=(224, 224), source: str = "state dict"):
  """A ``ResNet101`` (of the state dict's block counts and width) holding its weights."""
  from mlzsl_jax.extract.resnet101 import ResNet101  # pylint: disable=import-outside-toplevel
  params, arch = convert_resnet_state_dict(state_dict, source=source)
  model = nnx.eval_shape(lambda: ResNet101(**arch, image_size=image_size, dtype=dtype,
                                           rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def load_resnet101(weights, *, dtype=jnp.float32, image_size=(224, 224)):
  """``weights``: a ``ResNet101`` (returned as is), a numpy state dict, or a file path
  (``load_state_dict_file``: .pth via torch.load(weights_only=True), or .npz)."""
  from mlzsl_jax.extract.resnet101 import ResNet101  # pylint: disable=import-outside-toplevel
  if isinstance(weights, ResNet101):
    return weights
  if isinstance(weights, Mapping):
    return resnet101_from_state_dict(weights, dtype=dtype, image_size=image_size)
  if isinstance(weights, (str, os.PathLike)):
    return resnet101_from_state_dict(
        load_state_dict_file(weights), dtype=dtype, image_size=image_size,
        source=f"ResNet weights file {os.fspath(weights)!r}")
  raise ValueError(f"ResNet-101 weights: expected a path, a state dict or a ResNet101, "
                   f"got {type(weights).__name__}")


# ---------------------------------------------------------------- extract backbone entries

def _torchvision_architecture(model) -> str:
  """JSON of what fixes the backbone's shapes (stored in, and checked against, shards)."""
  import json  # pylint: disable=import-outside-toplevel
  fields = ("channels", "fc_dim") if hasattr(model, "fc_dim") else ("blocks", "width")
  return json.dumps({"backbone": type(model).__name__,
                     **{f: getattr(model, f) for f in fields}})


def _official_image(path, size):
  from mlzsl_jax.extract.images import load_image  # pylint: disable=import-outside-toplevel
  return load_image(path, size)


def _register_extract_backbones() -> None:
  from mlzsl_jax.extract import backbones  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.extract.images import PREPROCESSING  # pylint: disable=import-outside-toplevel
  common = dict(load_image=_official_image, preprocessing=PREPROCESSING,
                architecture=_torchvision_architecture)
  backbones.BACKBONES.register("vgg19")(backbones.ExtractBackbone(
      load=lambda weights, dtype: load_vgg19(weights, dtype=jnp.dtype(dtype)),
      global_output="scene", weights_help="torchvision vgg19 state dict (.pth / .npz)",
      **common))
  backbones.BACKBONES.register("resnet101")(backbones.ExtractBackbone(
      load=lambda weights, dtype: load_resnet101(weights, dtype=jnp.dtype(dtype)),
      global_output="pooled", weights_help="torchvision resnet101 state dict (.pth / .npz)",
      **common))


_register_extract_backbones()


# ------------------------------------------------------------------ predict's photo reader

@functools.lru_cache(maxsize=1)
def _cached_vgg19(weights: str) -> VGG19:
  return load_vgg19(weights)


def _register_photo_reader() -> None:
  from mlzsl_jax import hooks  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.extract import images  # pylint: disable=import-outside-toplevel

  @hooks.IMAGE_READERS.register("backbone:vgg19")
  def read_vgg19_photo(path: str, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official BiAM features of a photo: 224x224 bilinear, conv5_4 regions, fc7 scene,
    with the torchvision VGG19 file of data.scene_weights."""
    weights = config.data.get("scene_weights", "") or ""
    if not weights:
      raise ValueError(f"{path}: predict on photos with VGG19 features needs the "
                       "torchvision VGG19 file: --config.data.scene_weights=/path/"
                       "vgg19-dcbb9e9d.pth")
    try:
      x = images.load_image(path, images.IMAGE_SIZE)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: cannot read as an image (PNG / JPEG): {e}") from e
    out = _cached_vgg19(weights)(jnp.asarray(x[None]))
    picture = np.clip(np.round((x * images.IMAGENET_STD + images.IMAGENET_MEAN) * 255), 0,
                      255).astype(np.uint8)
    return (np.asarray(out["regions"][0], np.float32), picture,
            np.asarray(out["scene"][0], np.float32))


_register_photo_reader()
