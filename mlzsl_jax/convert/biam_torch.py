"""Official BiAM PyTorch checkpoints (akshitac8/BiAM, ``model.py``) -> our NNX BiAM.

The official ``BiAM`` module tree and the names of ``BiAM.state_dict()`` (C = channel_dim,
F = 512 region-feature width, S = 4096 scene width, E = 300 word-vector width, D = 512):

  conv_3X3 = CONV3_3(F -> C)                 conv_3X3.body.{weight [C, F, 3, 3], bias [C]}
                                             conv_3X3.bn.{weight, bias, running_mean,
                                                          running_var [C], num_batches_tracked}
  region_context_block = RCB(C, heads)       region_context_block.w_{q,k,v,o}.{weight
                                               [C, C, 1, 1], bias [C]}
                                             region_context_block.sub_network.conv1
                                               .{weight [2C, C, 1, 1], bias [2C]}
                                             region_context_block.sub_network.conv2
                                               .{weight [C, 2C, 1, 1], bias [C]}
  scene_context_block = SCB                  scene_context_block.w_g.{weight [C, S, 1, 1],
                                               bias [C]}  (a 1x1 conv on [B, S, 1, 1])
                                             scene_context_block.gcff.body / .bn (as conv_3X3,
                                               C -> C)
                                             scene_context_block.channel_conv.body.{weight
                                               [C, C, 1, 1], bias [C]}
  W = nn.Linear(E, D)                        W.{weight [D, E], bias [D]}
  conv_1X1 = CONV1_1(2C -> D)                conv_1X1.body.{weight [D, 2C, 1, 1], bias [D]}

Layouts: a torch conv weight [out, in, kh, kw] becomes a flax kernel [kh, kw, in, out] (both
are cross-correlations; padding 1 for 3x3 = flax 'SAME'); a Linear weight [out, in] becomes a
kernel [in, out]; w_g's [C, S, 1, 1] becomes our Linear kernel [S, C]; BatchNorm
weight/bias -> scale/bias (params), running_mean/running_var -> mean/var (model_state).
``num_batches_tracked`` has no counterpart (it is only used when momentum is None) and is
dropped. The number of heads is not visible in the weights: it must come from the config
(8 for the NUS-WIDE release, 16 for Open Images).

How the official code saves: ``train_nus.py`` / ``train_openimages.py`` save the bare
``model.state_dict()``; ``evaluate_nus.py`` loads through ``util_nus.load_checkpoint``, which
expects ``checkpoint['state_dict']`` with or without the ``module.`` prefix of
``nn.DataParallel``. ``load_torch_checkpoint`` accepts all of these.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import numpy as np

TORCH_EXTRA_HINT = "pip install -e .[torch]"
DATA_PARALLEL_PREFIX = "module."
WRAPPER_KEYS = ("state_dict", "model")
BN_IGNORED_SUFFIX = "num_batches_tracked"


# ----------------------------------------------------------------------------- layouts

def conv_to_flax(w: np.ndarray) -> np.ndarray:
  """torch conv weight [out, in, kh, kw] -> flax kernel [kh, kw, in, out]."""
  return np.transpose(w, (2, 3, 1, 0))


def linear_to_flax(w: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> flax kernel [in, out]."""
  return np.transpose(w, (1, 0))


def conv1x1_to_linear(w: np.ndarray) -> np.ndarray:
  """torch 1x1 conv weight [out, in, 1, 1] -> flax Linear kernel [in, out]."""
  return np.transpose(w[:, :, 0, 0], (1, 0))


def identity(w: np.ndarray) -> np.ndarray:
  return w


@dataclasses.dataclass(frozen=True)
class Entry:
  """One official tensor: its torch name and shape, and where it goes in our trees."""
  torch_name: str
  shape: tuple[int, ...]
  collection: str  # 'params' or 'model_state'
  path: tuple[str, ...]  # path inside that pure dict
  layout: Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class BiAMSizes:
  """Sizes that fix every official tensor shape (heads fixes none of them)."""
  channels: int  # C (opt.channel_dim)
  feature_dim: int  # F, region-feature width (512 for VGG19 conv5_4)
  scene_dim: int  # S, scene-feature width (4096 for VGG19 fc7)
  emb_dim: int  # E, word-vector width (300)
  out_dim: int  # D (512: dim_feature[1] of the official code)


def _conv(torch_prefix: str, path: tuple[str, ...], out_ch: int, in_ch: int,
          k: int) -> list[Entry]:
  return [Entry(f"{torch_prefix}.weight", (out_ch, in_ch, k, k), "params", path + ("kernel",),
                conv_to_flax),
          Entry(f"{torch_prefix}.bias", (out_ch,), "params", path + ("bias",), identity)]


def _bn(torch_prefix: str, path: tuple[str, ...], ch: int) -> list[Entry]:
  return [Entry(f"{torch_prefix}.weight", (ch,), "params", path + ("scale",), identity),
          Entry(f"{torch_prefix}.bias", (ch,), "params", path + ("bias",), identity),
          Entry(f"{torch_prefix}.running_mean", (ch,), "model_state", path + ("mean",),
                identity),
          Entry(f"{torch_prefix}.running_var", (ch,), "model_state", path + ("var",),
                identity)]


def biam_entries(sizes: BiAMSizes) -> list[Entry]:
  """Every tensor of the official ``BiAM.state_dict()`` (less ``num_batches_tracked``)."""
  c, f, s, e, d = (sizes.channels, sizes.feature_dim, sizes.scene_dim, sizes.emb_dim,
                   sizes.out_dim)
  rcb, scb = "region_context_block", "scene_context_block"
  entries = _conv("conv_3X3.body", ("stem", "conv"), c, f, 3)
  entries += _bn("conv_3X3.bn", ("stem", "bn"), c)
  for name in ("w_q", "w_k", "w_v", "w_o"):
    entries += _conv(f"{rcb}.{name}", ("region_context", name), c, c, 1)
  entries += _conv(f"{rcb}.sub_network.conv1", ("region_context", "ff1"), 2 * c, c, 1)
  entries += _conv(f"{rcb}.sub_network.conv2", ("region_context", "ff2"), c, 2 * c, 1)
  entries += [Entry(f"{scb}.w_g.weight", (c, s, 1, 1), "params",
                    ("scene_context", "w_g", "kernel"), conv1x1_to_linear),
              Entry(f"{scb}.w_g.bias", (c,), "params", ("scene_context", "w_g", "bias"),
                    identity)]
  entries += _conv(f"{scb}.gcff.body", ("scene_context", "refine", "conv"), c, c, 3)
  entries += _bn(f"{scb}.gcff.bn", ("scene_context", "refine", "bn"), c)
  entries += _conv(f"{scb}.channel_conv.body", ("scene_context", "channel_conv"), c, c, 1)
  entries += [Entry("W.weight", (d, e), "params", ("label_proj", "kernel"), linear_to_flax),
              Entry("W.bias", (d,), "params", ("label_proj", "bias"), identity)]
  entries += _conv("conv_1X1.body", ("fuse",), d, 2 * c, 1)
  return entries


# ----------------------------------------------------------------------------- state dicts

def strip_data_parallel(state: Mapping[str, Any]) -> dict[str, Any]:
  """Drops the ``module.`` prefix of ``nn.DataParallel`` when every key has it."""
  keys = list(state)
  if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
    return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
  return dict(state)


def _shape_of(state: Mapping[str, Any], key: str, ndim: int) -> tuple[int, ...]:
  if key not in state:
    raise ValueError(f"BiAM state dict: missing key {key!r} (needed to infer the sizes; "
                     f"keys present: {_preview(state)})")
  shape = tuple(np.shape(state[key]))
  if len(shape) != ndim:
    raise ValueError(f"BiAM state dict: key {key!r} has shape {shape}, expected a "
                     f"{ndim}-d tensor")
  return shape


def _preview(keys, n: int = 8) -> str:
  keys = sorted(keys)
  more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
  return ", ".join(repr(k) for k in keys[:n]) + more


def infer_biam_sizes(state: Mapping[str, Any]) -> BiAMSizes:
  """Sizes read from the official tensors: C and F from conv_3X3, S from w_g, E and D
  from W (all other shapes are then checked against these)."""
  c, f, _, _ = _shape_of(state, "conv_3X3.body.weight", 4)
  _, s, _, _ = _shape_of(state, "scene_context_block.w_g.weight", 4)
  d, e = _shape_of(state, "W.weight", 2)
  return BiAMSizes(channels=c, feature_dim=f, scene_dim=s, emb_dim=e, out_dim=d)


def _check_expected_size(sizes: BiAMSizes, field: str, expected: int | None,
                         config_name: str) -> None:
  got = getattr(sizes, field)
  if expected is not None and expected != got:
    raise ValueError(f"BiAM state dict has {field}={got} but {config_name}={expected} was "
                     "asked for; set it to the checkpoint's value")


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def convert_biam_state_dict(state: Mapping[str, Any], *, channels: int | None = None,
                            heads: int | None = None, feature_dim: int | None = None,
                            scene_dim: int | None = None, emb_dim: int | None = None,
                            out_dim: int | None = None,
                            dtype: Any = np.float32) -> tuple[dict, dict]:
  """Official BiAM ``state_dict`` (numpy arrays or anything ``np.asarray`` takes, torch
  layouts) -> (params, model_state): pure dicts exactly as
  ``nnx.to_pure_dict(nnx.split(BiAM(...), nnx.Param, ...)[1:])``.

  Sizes are inferred from the tensors; each keyword given (None = anything) must match
  the inferred value (``channels`` = model.channels, ``out_dim`` = model.out_dim, ...).
  ``heads`` (model.heads) is not visible in the weights: given, it must divide channels.
  A ``module.`` prefix (``nn.DataParallel``) on every key is removed.

  Raises ValueError naming: a missing key, the unexpected keys, or a key whose shape
  differs from the one the inferred sizes imply (expected vs got).
  """
  state = strip_data_parallel(state)
  sizes = infer_biam_sizes(state)
  for field, expected, name in (("channels", channels, "model.channels"),
                                ("feature_dim", feature_dim, "the dataset's feature_dim"),
                                ("scene_dim", scene_dim, "the dataset's scene_dim"),
                                ("emb_dim", emb_dim, "the label-embedding width"),
                                ("out_dim", out_dim, "model.out_dim")):
    _check_expected_size(sizes, field, expected, name)
  if heads is not None and (heads < 1 or sizes.channels % heads):
    raise ValueError(f"model.heads={heads} must divide the checkpoint's channel_dim "
                     f"{sizes.channels}")
  entries = biam_entries(sizes)
  expected_names = {e.torch_name for e in entries}
  missing = [e.torch_name for e in entries if e.torch_name not in state]
  if missing:
    raise ValueError(f"BiAM state dict: missing key {missing[0]!r}"
                     + (f" (and {len(missing) - 1} more: {_preview(missing[1:])})"
                        if len(missing) > 1 else ""))
  unexpected = [k for k in state if k not in expected_names
                and not k.endswith("." + BN_IGNORED_SUFFIX)]
  if unexpected:
    raise ValueError(f"BiAM state dict: unexpected keys {_preview(unexpected)} (not in "
                     "the official BiAM model.py)")
  trees: dict[str, dict] = {"params": {}, "model_state": {}}
  for e in entries:
    value = np.asarray(state[e.torch_name])
    if value.shape != e.shape:
      raise ValueError(f"BiAM state dict: key {e.torch_name!r} has shape {value.shape}, "
                       f"expected {e.shape} (channel_dim={sizes.channels}, "
                       f"feature_dim={sizes.feature_dim}, scene_dim={sizes.scene_dim}, "
                       f"emb_dim={sizes.emb_dim}, out_dim={sizes.out_dim})")
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"BiAM state dict: key {e.torch_name!r} has dtype {value.dtype}, "
                       "expected a floating-point tensor")
    _set(trees[e.collection], e.path, np.ascontiguousarray(e.layout(value)).astype(dtype))
  return trees["params"], trees["model_state"]


# ----------------------------------------------------------------------------- torch files

def _import_torch():
  try:
    import torch  # noqa: PLC0415  (optional extra)
  except ImportError as err:
    raise ImportError("reading a PyTorch checkpoint needs torch: "
                      f"{TORCH_EXTRA_HINT}") from err
  return torch


def unwrap_checkpoint(obj: Any, path: str = "<checkpoint>") -> Mapping[str, Any]:
  """A loaded checkpoint -> its state dict: ``obj['state_dict']`` or ``obj['model']`` when
  present (e.g. ``{'epoch', 'state_dict', 'optimizer'}``), else ``obj`` itself; then the
  ``module.`` prefix is removed."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), "
                     f"got {type(obj).__name__}")
  for key in WRAPPER_KEYS:
    inner = obj.get(key)
    if isinstance(inner, Mapping):
      obj = inner
      break
  return strip_data_parallel(obj)


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A ``.pth`` / ``.pt`` file -> {name: numpy array} (CPU, float tensors as saved).

  Loads with ``torch.load(path, map_location='cpu', weights_only=True)`` (no arbitrary
  pickled objects), unwraps ``state_dict`` / ``model`` and the ``module.`` prefix.
  Raises FileNotFoundError (no file), ImportError (no torch: ``pip install -e .[torch]``),
  ValueError naming the file (truncated / corrupt / not a state dict / a non-tensor entry).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PyTorch checkpoint {path!r}: no such file")
  torch = _import_torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:  # noqa: BLE001  (torch raises many types for a bad file)
    raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt, or "
                     f"it holds objects other than tensors): {type(err).__name__}: "
                     f"{err}") from err
  state = unwrap_checkpoint(obj, path)
  out = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, expected a "
                       "tensor (is this a model state dict?)")
    value = value.detach().cpu()
    if value.dtype in (torch.bfloat16, torch.float16):
      value = value.float()
    out[name] = value.numpy()
  return out


def load_biam_checkpoint(path: str | os.PathLike, **sizes) -> tuple[dict, dict]:
  """``load_torch_checkpoint`` + ``convert_biam_state_dict`` (keywords: expected sizes)."""
  state = load_torch_checkpoint(path)
  try:
    return convert_biam_state_dict(state, **sizes)
  except ValueError as err:
    raise ValueError(f"{os.fspath(path)}: {err}") from err
