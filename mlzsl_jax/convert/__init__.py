"""Official pretrained weights -> our parameters.

- BiAM (akshitac8/BiAM, PyTorch): ``biam_torch.load_torch_checkpoint`` (torch.load with
  ``weights_only=True``; torch is the optional extra ``pip install -e .[torch]``) and
  ``biam_torch.convert_biam_state_dict`` (pure NumPy: usable on a state dict from anywhere).
- LESA (hbdat/cvpr20_LESA, TF1): ``lesa_tf.load_tf_checkpoint`` (``tf.train.load_checkpoint``)
  and ``lesa_tf.convert_lesa_variables``; the repository publishes a NUS-WIDE checkpoint.

For the trainer:
- ``init_from(path, trainer) -> (params, model_state)``: host NumPy pure dicts for the
  configured model (``trainer.config.model.name``), checked against the trainer's own state
  (structure, shapes; cast to its dtypes). ``path``: BiAM: a ``.pth`` / ``.pt`` file, or a
  folder holding exactly one; LESA: a TF checkpoint prefix (``.../model.ckpt``), one of its
  files, or its folder.
- ``init_state_from(path, trainer) -> TrainState``: a fresh, sharded state (step 0, fresh
  optimizer state) whose params / model_state are the converted weights.
- ``evaluate_init_from(config, workdir, path)``: ``evaluate`` on converted weights (no
  checkpoint in ``workdir`` needed); prints the paper-style table, writes results.json.
- ``convert_to_workdir(config, workdir, path)``: writes the converted state as an orbax
  checkpoint (step 0) in ``workdir``, so that ``evaluate --workdir`` (or ``train``, which
  then fine-tunes from it) uses it.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable

import jax
import numpy as np

from mlzsl_jax import workdir as wd
from mlzsl_jax.convert import biam_torch, lesa_tf
from mlzsl_jax.convert.biam_torch import (convert_biam_state_dict, load_biam_checkpoint,
                                          load_torch_checkpoint)
from mlzsl_jax.convert.lesa_tf import (convert_lesa_variables, load_lesa_checkpoint,
                                       load_tf_checkpoint)

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar")

__all__ = ["CONVERTERS", "biam_torch", "convert_biam_state_dict", "convert_lesa_variables",
           "convert_to_workdir", "evaluate_init_from", "init_from", "init_state_from",
           "lesa_tf", "load_biam_checkpoint", "load_lesa_checkpoint", "load_tf_checkpoint",
           "load_torch_checkpoint"]


def _emb_width(trainer) -> int:
  emb = trainer.emb_seen
  if isinstance(emb, dict):
    raise ValueError(f"config field data.embedding={trainer.config.data.embedding!r}: "
                     "official weights take one label-embedding source")
  return int(np.shape(emb)[1])


def torch_file(path: str) -> str:
  """A ``.pth`` / ``.pt`` file, or the one such file in a folder -> its path."""
  if os.path.isdir(path):
    found = sorted({f for s in TORCH_SUFFIXES for f in glob.glob(os.path.join(path, "*" + s))})
    if len(found) != 1:
      raise ValueError(f"--init_from {path!r}: expected one PyTorch checkpoint "
                       f"({', '.join(TORCH_SUFFIXES)}) in the folder, found "
                       f"{[os.path.basename(f) for f in found]}; pass the file")
    return found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--init_from {path!r}: no such file or folder")
  return path


def _biam(path: str, trainer) -> tuple[dict, dict]:
  cfg, meta = trainer.config.model, trainer.meta
  if cfg.get("scene_source", "dataset") != "dataset":
    raise ValueError(f"model.scene_source={cfg.scene_source!r}: official BiAM weights take "
                     "the stored 4096-d scene feature; set model.scene_source='dataset' and "
                     "use a dataset with scene features")
  if lesa_tf.is_tf_checkpoint(path) and not os.path.isfile(path):
    raise ValueError(f"--init_from {path!r} is a TF checkpoint; model.name='biam' takes an "
                     "official PyTorch .pth/.pt file")
  return load_biam_checkpoint(torch_file(path), channels=cfg.channels, heads=cfg.heads,
                              out_dim=cfg.out_dim, feature_dim=meta.feature_dim,
                              scene_dim=meta.scene_dim, emb_dim=_emb_width(trainer))


def _lesa(path: str, trainer) -> tuple[dict, dict]:
  cfg, meta = trainer.config.model, trainer.meta
  if not lesa_tf.is_tf_checkpoint(path):
    raise ValueError(f"--init_from {path!r}: model.name='lesa' takes an official TF "
                     "checkpoint (prefix .../model.ckpt, one of its files, or its folder)")
  return load_lesa_checkpoint(path, num_modules=cfg.num_modules, conv_block=cfg.conv_block,
                              conv_channels=cfg.conv_channels, conv_kernel=cfg.conv_kernel,
                              feature_dim=meta.feature_dim, emb_dim=_emb_width(trainer))


# model.name -> (path, trainer) -> (params, model_state) as host NumPy pure dicts.
CONVERTERS: dict[str, Callable[[str, Any], tuple[dict, dict]]] = {"biam": _biam,
                                                                  "lesa": _lesa}


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(_leaves(v, name))
    else:
      out[name] = v
  return out


def match_tree(converted: dict, expected: dict, what: str, path: str) -> dict:
  """``converted`` cast to ``expected``'s dtypes, after checking both have the same leaves
  (names) and shapes; ValueError names the first difference."""
  got, want = _leaves(converted), _leaves(expected)
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise ValueError(f"--init_from {path!r}: converted {what} do not match the configured "
                     f"model: missing {missing[:6]}, unexpected {extra[:6]}")
  for name, w in want.items():
    if tuple(np.shape(got[name])) != tuple(w.shape):
      raise ValueError(f"--init_from {path!r}: {what} {name!r} has shape "
                       f"{tuple(np.shape(got[name]))} in the checkpoint, expected "
                       f"{tuple(w.shape)} by the config")
  return jax.tree.map(lambda c, w: np.asarray(c, dtype=w.dtype), converted, expected)


def init_from(path: str | os.PathLike, trainer) -> tuple[dict, dict]:
  """Official weights at ``path`` -> (params, model_state) for ``trainer`` (host NumPy pure
  dicts with the structure, shapes and dtypes of ``trainer.abstract_state()``)."""
  path = os.fspath(path)
  name = trainer.config.model.name
  if name not in CONVERTERS:
    raise ValueError(f"--init_from: no converter of official weights for model.name="
                     f"{name!r}; available: {sorted(CONVERTERS)}")
  params, model_state = CONVERTERS[name](path, trainer)
  abstract = trainer.abstract_state()
  return (match_tree(params, abstract.params, "params", path),
          match_tree(model_state, abstract.model_state, "model_state", path))


def _put(x: np.ndarray, abstract) -> jax.Array:
  """Host array (the same on every process) -> a global array with ``abstract.sharding``."""
  return jax.make_array_from_callback(abstract.shape, abstract.sharding, lambda idx: x[idx])


def init_state_from(path: str | os.PathLike, trainer):
  """``trainer.init_state()`` (step 0, optimizer state of fresh Adam / RMSProp moments,
  which do not depend on the weights) with params / model_state from ``init_from``,
  sharded as the trainer's state."""
  params, model_state = init_from(path, trainer)
  abstract = trainer.abstract_state()
  state = trainer.init_state()
  return state.replace(params=jax.tree.map(_put, params, abstract.params),
                       model_state=jax.tree.map(_put, model_state, abstract.model_state))


def evaluate_init_from(config, workdir: str, path: str | os.PathLike) -> dict:
  """``evaluate`` on the official weights at ``path`` (converted in memory): prints the
  paper-style table (step 0) and writes ``workdir/results.json``."""
  from mlzsl_jax import evaluate, restore  # noqa: PLC0415

  workdir = wd.ensure_workdir(workdir)
  source, trainer = restore.build(config)
  state = init_state_from(path, trainer)
  result = evaluate.evaluate_state(trainer, source, state, config)
  evaluate.report(result, config, workdir, 0)
  return result


def convert_to_workdir(config, workdir: str, path: str | os.PathLike) -> str:
  """Saves the converted official weights as the orbax checkpoint of step 0 in
  ``workdir/checkpoints`` (refuses a workdir that already has checkpoints); returns its
  directory. ``evaluate --workdir`` then evaluates it; ``train --workdir`` fine-tunes it."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  from mlzsl_jax import restore  # noqa: PLC0415

  workdir = wd.ensure_workdir(workdir)
  _, trainer = restore.build(config)
  state = init_state_from(path, trainer)
  mngr = wd.checkpoint_manager(workdir, config)
  if mngr.latest_step() is not None:
    raise ValueError(f"--workdir {workdir!r} already has checkpoints (latest step "
                     f"{mngr.latest_step()}); convert into an empty workdir")
  mngr.save(0, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  mngr.close()
  return os.path.join(workdir, wd.CHECKPOINTS_DIR)
