"""Official LESA TF1 checkpoints (hbdat/cvpr20_LESA) -> our NNX LESA.

The repository publishes one checkpoint, the NUS-WIDE zero-shot model
``results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/model.ckpt`` (TF1 ``Saver``
bundle: ``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001``; the ``.meta`` graph is not
needed). Its variables (``tf.train.list_variables`` on the released index; D = 512 region
width, T = 10 attention modules, E = 300 word-vector width), from
``core/model_share_attention.py``:

  attention_layer/w_att_1                       [D+1, D]   -> att_hidden.kernel
  attention_layer/w_att_2                       [D+1, T]   -> att_logits.kernel
  prediction_frac/W                             [D, E]     -> label_proj.kernel
  conv/conv/weights                             [2, 2, F, D] (HWIO, slim.conv2d, no bias)
                                                           -> encoder.conv.conv.kernel
  conv/conv/batch_normalization/gamma, beta     [D]        -> encoder.conv.bn.scale, bias
  conv/conv/batch_normalization/moving_mean,
                                moving_variance [D]        -> encoder.conv.bn.mean, var
                                                              (model_state)

and, not part of the model: ``Variable`` (the script's learning-rate variable),
``conv/is_train`` (BatchNorm mode switch), the RMSProp slots ``<var>/RMSProp``,
``<var>/RMSProp_1``. TF kernels are already [in, out] / HWIO, as flax's: no transposes.
Variants of the official class our LESA does not implement are refused with a ValueError:
``is_separate_W_1`` (a 3-d w_att_1), ``is_batchnorm=False`` (conv with ``biases``),
``trainable_vecs`` (a ``vecs`` variable).
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping

import numpy as np

# Variables of the official graph that carry no model weight.
IGNORED_NAMES = frozenset({"Variable", "global_step", "conv/is_train",
                           "attention_layer/dropout_prob", "beta1_power", "beta2_power"})
OPTIMIZER_SLOTS = ("RMSProp", "RMSProp_1", "Adam", "Adam_1", "Momentum", "Adagrad")
UNSUPPORTED = {
    "conv/conv/biases": "a conv without BatchNorm (official is_batchnorm=False)",
    "vecs": "trainable label vectors (official trainable_vecs=True)",
}

W_ATT_1 = "attention_layer/w_att_1"
W_ATT_2 = "attention_layer/w_att_2"
W_LABEL = "prediction_frac/W"
CONV = "conv/conv/weights"
BN = "conv/conv/batch_normalization/"
# (TF name, collection, path in our pure dict)
BN_ENTRIES = ((BN + "gamma", "params", ("encoder", "conv", "bn", "scale")),
              (BN + "beta", "params", ("encoder", "conv", "bn", "bias")),
              (BN + "moving_mean", "model_state", ("encoder", "conv", "bn", "mean")),
              (BN + "moving_variance", "model_state", ("encoder", "conv", "bn", "var")))


def is_ignored(name: str) -> bool:
  """True for the official graph's non-model variables (step / lr, BN switch, slots)."""
  return name in IGNORED_NAMES or name.rsplit("/", 1)[-1] in OPTIMIZER_SLOTS


def _shape(variables: Mapping[str, Any], name: str) -> tuple[int, ...]:
  if name not in variables:
    raise ValueError(f"LESA checkpoint: missing variable {name!r}")
  return tuple(np.shape(variables[name]))


def _check_shape(variables: Mapping[str, Any], name: str, expected: tuple[int, ...],
                 sizes: str) -> np.ndarray:
  value = np.asarray(variables[name]) if name in variables else None
  if value is None:
    raise ValueError(f"LESA checkpoint: missing variable {name!r}")
  if value.shape != expected:
    raise ValueError(f"LESA checkpoint: variable {name!r} has shape {value.shape}, expected "
                     f"{expected} ({sizes})")
  return value


def convert_lesa_variables(variables: Mapping[str, Any], *, num_modules: int | None = None,
                           conv_block: bool | None = None, conv_channels: int | None = None,
                           conv_kernel: int | None = None, feature_dim: int | None = None,
                           emb_dim: int | None = None,
                           dtype: Any = np.float32) -> tuple[dict, dict]:
  """Official LESA variables {TF name: array} -> (params, model_state) pure dicts exactly as
  ``nnx.to_pure_dict(nnx.split(LESA(...), nnx.Param, ...)[1:])``.

  Sizes are inferred (D and T from w_att_2, E from W, F and the kernel from the conv);
  each keyword given (None = anything) must match: num_modules (model.num_modules),
  conv_block (model.conv_block: the conv variables present), conv_channels, conv_kernel,
  feature_dim, emb_dim. Raises ValueError naming a missing variable, the unexpected ones,
  or a variable whose shape is not the one the inferred sizes imply.
  """
  unsupported = [n for n in variables if n in UNSUPPORTED]
  if unsupported:
    raise ValueError(f"LESA checkpoint: variable {unsupported[0]!r} means "
                     f"{UNSUPPORTED[unsupported[0]]}, which our LESA does not implement")
  w2 = _shape(variables, W_ATT_2)
  if len(w2) != 2:
    raise ValueError(f"LESA checkpoint: variable {W_ATT_2!r} has shape {w2}, expected "
                     "[D+1, T]")
  d, t = w2[0] - 1, w2[1]
  w1 = _shape(variables, W_ATT_1)
  if len(w1) == 3:
    raise ValueError(f"LESA checkpoint: variable {W_ATT_1!r} has shape {w1}: one hidden "
                     "layer per module (official is_separate_W_1=True), which our LESA does "
                     "not implement")
  w = _shape(variables, W_LABEL)
  if len(w) != 2:
    raise ValueError(f"LESA checkpoint: variable {W_LABEL!r} has shape {w}, expected [D, E]")
  e = w[1]
  has_conv = CONV in variables
  if has_conv:
    conv_shape = _shape(variables, CONV)
    if len(conv_shape) != 4 or conv_shape[0] != conv_shape[1]:
      raise ValueError(f"LESA checkpoint: variable {CONV!r} has shape {conv_shape}, expected "
                       "[k, k, F, D] (HWIO)")
    k, f = conv_shape[0], conv_shape[2]
  else:
    k, f = None, d
  sizes = f"D={d}, T={t}, E={e}, F={f}" + (f", conv kernel {k}" if has_conv else "")
  for field, expected, got in (("model.num_modules", num_modules, t),
                               ("model.conv_block", conv_block, has_conv),
                               ("model.conv_kernel", conv_kernel if has_conv else None, k),
                               ("model.conv_channels", conv_channels if has_conv else None, d),
                               ("the dataset's feature_dim", feature_dim, f),
                               ("the label-embedding width", emb_dim, e)):
    if expected is not None and expected != got:
      raise ValueError(f"LESA checkpoint has {got} where {field}={expected} was asked for "
                       f"({sizes}); set it to the checkpoint's value")
  expected = [(W_ATT_1, (d + 1, d), "params", ("att_hidden", "kernel")),
              (W_ATT_2, (d + 1, t), "params", ("att_logits", "kernel")),
              (W_LABEL, (d, e), "params", ("label_proj", "kernel"))]
  if has_conv:
    expected.append((CONV, (k, k, f, d), "params", ("encoder", "conv", "conv", "kernel")))
    expected += [(name, (d,), coll, path) for name, coll, path in BN_ENTRIES]
  names = {name for name, *_ in expected}
  unexpected = [n for n in variables if n not in names and not is_ignored(n)]
  if unexpected:
    raise ValueError(f"LESA checkpoint: unexpected variables {sorted(unexpected)[:8]} (not "
                     "in the official core/model_share_attention.py"
                     + ("" if has_conv else f"; BatchNorm without {CONV!r}?") + ")")
  trees: dict[str, dict] = {"params": {}, "model_state": {}}
  for name, shape, coll, path in expected:
    value = _check_shape(variables, name, shape, sizes)
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"LESA checkpoint: variable {name!r} has dtype {value.dtype}, "
                       "expected floating point")
    node = trees[coll]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(value).astype(dtype)
  return trees["params"], trees["model_state"]


# ----------------------------------------------------------------------------- TF files

def checkpoint_prefix(path: str | os.PathLike) -> str:
  """A TF1 checkpoint given as its prefix (``.../model.ckpt``), one of its files
  (``.index``, ``.meta``, ``.data-*``) or the folder holding exactly one ``*.index``
  -> the prefix. FileNotFoundError / ValueError name the path."""
  path = os.fspath(path)
  if os.path.isdir(path):
    found = sorted(glob.glob(os.path.join(path, "*.index")))
    if len(found) != 1:
      raise ValueError(f"{path}: expected one TF checkpoint (*.index) in the folder, found "
                       f"{[os.path.basename(f) for f in found]}; pass the prefix, e.g. "
                       f"{os.path.join(path, 'model.ckpt')}")
    return found[0][:-len(".index")]
  for suffix in (".index", ".meta"):
    if path.endswith(suffix):
      path = path[:-len(suffix)]
  if ".data-" in os.path.basename(path):
    path = path[:path.rindex(".data-")]
  if not os.path.isfile(path + ".index"):
    raise FileNotFoundError(f"TF checkpoint {path!r}: no {path + '.index'}")
  return path


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
  """True if ``path`` names a TF checkpoint prefix, one of its files, or a folder with one."""
  try:
    checkpoint_prefix(path)
  except (FileNotFoundError, ValueError):
    return False
  return True


def load_tf_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every variable of a TF1/TF2 name-based checkpoint bundle -> {name: numpy array}.

  Read with ``tf.train.load_checkpoint`` (no graph, no pickle). A truncated or corrupt
  index or data file -> ValueError naming the file.
  """
  prefix = checkpoint_prefix(path)
  import tensorflow as tf  # noqa: PLC0415  (slow import; only needed here)
  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
  except Exception as err:  # noqa: BLE001  (TF raises several error types)
    raise ValueError(f"{prefix}.index: not a readable TF checkpoint index (truncated or "
                     f"corrupt): {type(err).__name__}: {err}") from err
  out = {}
  for name in sorted(shapes):
    try:
      out[name] = np.asarray(reader.get_tensor(name))
    except Exception as err:  # noqa: BLE001
      data = sorted(glob.glob(prefix + ".data-*")) or [prefix + ".data-00000-of-00001"]
      raise ValueError(f"{', '.join(data)}: cannot read variable {name!r} (data file "
                       f"missing, truncated or corrupt): {type(err).__name__}: "
                       f"{err}") from err
  return out


def load_lesa_checkpoint(path: str | os.PathLike, **sizes) -> tuple[dict, dict]:
  """``load_tf_checkpoint`` + ``convert_lesa_variables`` (keywords: expected sizes)."""
  variables = load_tf_checkpoint(path)
  try:
    return convert_lesa_variables(variables, **sizes)
  except ValueError as err:
    raise ValueError(f"{checkpoint_prefix(path)}: {err}") from err
