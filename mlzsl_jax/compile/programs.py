"""The programs a run executes, lowered on abstract arrays over a device mesh and compiled.

The same ``step.Trainer`` a run builds (config, dataset shapes, the config's mesh and
partition rules) over compile-only devices; its arguments are ``ShapeDtypeStruct``s carrying
the shardings a run gives them, so nothing is allocated and nothing runs:
  train_step   state, batch {features f16 [B, R, C], labels int8 [B, seen], scene f16
               [B, S] when stored}, seen label embeddings [seen, E] (replicated)
  eval_forward the evaluation forward: ZSL [B, unseen] and GZSL [B, seen + unseen] scores of
               an evaluation batch (eval.batch_size)
  metrics      the on-device metrics (``metrics_device``) of the whole test split's scores
               [N, seen + unseen], on one device as ``evaluate`` runs them
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, SingleDeviceSharding

from mlzsl_jax import metrics, metrics_device
from mlzsl_jax import sharding as shd
from mlzsl_jax.data.source import DatasetMeta
from mlzsl_jax.step import Trainer

PROGRAMS = ("train_step", "eval_forward", "metrics")
# XLA options per platform: GPU autotuning and Triton GEMM tiling need a real GPU.
COMPILER_OPTIONS = {"gpu": {"xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": 0}}


@dataclasses.dataclass
class Compiled:
  """One compiled program and what its per-chip report needs."""
  name: str
  compiled: Any  # jax.stages.Compiled; None when the compiler ran out of device memory
  images_per_call: int  # global images one call processes (0: not per image)
  arguments: list[tuple[str, int]]  # (argument path, bytes per chip), largest first
  compile_seconds: float
  devices_used: int  # devices the program runs on
  error: str = ""  # the compiler's out-of-memory message when ``compiled`` is None
  flops: float | None = None  # per device, when XLA's cost analysis of ``compiled`` has none
  flops_source: str = "XLA cost analysis"


def required_bytes(error: str) -> int | None:
  """The bytes XLA's out-of-memory message says the program needs ("the total memory
  required for HLO temporaries (30.91G) exceeds available HBM (15.75G)": a lower bound of
  its total, in GiB), or None when the message gives no figure."""
  found = re.search(r"required for [^(]*\(([\d.]+)([KMGT])\)", error)
  if not found:
    return None
  return int(float(found.group(1)) * 2 ** (10 * "KMGT".index(found.group(2)) + 10))


def is_out_of_memory(error: Exception) -> bool:
  """XLA's way of saying a program does not fit the device (RESOURCE_EXHAUSTED)."""
  text = str(error).lower()
  return "resource_exhausted" in text or "out of memory" in text or "ran out of" in text


def make_trainer(config, meta: DatasetMeta, devices: Sequence[Any]) -> Trainer:
  """The run's Trainer over a ('data', 'model') mesh of ``devices`` (config.mesh)."""
  mesh = shd.make_mesh(int(config.mesh.data), int(config.mesh.model), devices)
  return Trainer(config, meta, mesh, steps_per_epoch=1000)


def _struct(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def abstract_batch(meta: DatasetMeta, batch: int, num_labels: int | None,
                   sharding: NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
  """A pipeline batch's fields (labels only when ``num_labels`` is given)."""
  out = {"features": _struct((batch, meta.num_regions, meta.feature_dim), jnp.float16,
                             sharding)}
  if num_labels is not None:
    out["labels"] = _struct((batch, num_labels), jnp.int8, sharding)
  if meta.scene_dim:
    out["scene"] = _struct((batch, meta.scene_dim), jnp.float16, sharding)
  return out


def _replicated(tree, sharding) -> Any:
  return jax.tree.map(lambda a: _struct(np.shape(a), jnp.float32, sharding), tree)


def per_chip_bytes(tree, prefix: str = "") -> list[tuple[str, int]]:
  """(path, bytes of one device's shard) of every ShapeDtypeStruct leaf of ``tree``."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    out.append((prefix + shd._path_str(path),  # pylint: disable=protected-access
                int(np.prod(shard, dtype=np.int64)) * leaf.dtype.itemsize))
  return sorted(out, key=lambda x: -x[1])


def _compile(name: str, lower: Callable[[], Any], images: int, args: dict[str, Any],
             trainer: Trainer, devices_used: int, compile_it: bool = True) -> Compiled | Any:
  """The compiled program (``compile_it``), else just the lowered one (for its FLOPs)."""
  if not compile_it:
    return lower()
  start = time.perf_counter()
  platform = trainer.mesh.devices.flat[0].platform
  arguments = []
  for key, tree in args.items():
    arguments += per_chip_bytes(tree, key + "/")
  arguments.sort(key=lambda x: -x[1])
  try:
    compiled, error = lower().compile(COMPILER_OPTIONS.get(platform)), ""
  except Exception as e:  # noqa: BLE001 (XLA raises XlaRuntimeError)
    if not is_out_of_memory(e):
      raise
    compiled, error = None, str(e).strip().splitlines()[0][:300]
  return Compiled(name, compiled, images, arguments, time.perf_counter() - start,
                  devices_used, error)


def train_step(trainer: Trainer, batch_size: int, compile_it: bool = True) -> Compiled:
  """The jitted train step, global batch ``batch_size``."""
  state = trainer.abstract_state()
  batch = abstract_batch(trainer.meta, batch_size, len(trainer.split.seen),
                         trainer.batch_sharding)
  emb = _replicated(trainer.emb_seen, trainer.repl)
  return _compile("train_step", lambda: trainer.train_step.lower(state, batch, emb),
                  batch_size, {"state": state, "batch": batch, "label_emb": emb},
                  trainer, trainer.mesh.size, compile_it)


def eval_forward(trainer: Trainer, batch_size: int, compile_it: bool = True) -> Compiled:
  """The evaluation forward (ZSL and GZSL scores) of a global batch ``batch_size``."""
  state = trainer.abstract_state()
  batch = abstract_batch(trainer.meta, batch_size, None, trainer.batch_sharding)
  embs = _replicated((trainer.emb_unseen, trainer.emb_gzsl), trainer.repl)
  return _compile(
      "eval_forward",
      lambda: trainer.predict.lower(state.params, state.model_state, batch, embs),
      batch_size, {"params": state.params, "model_state": state.model_state, "batch": batch,
                   "label_emb": embs}, trainer, trainer.mesh.size, compile_it)


def test_metrics(trainer: Trainer, num_images: int, ks: Sequence[int],
                 compile_it: bool = True) -> Compiled:
  """``metrics_device``'s device part over ``num_images`` test images (one device)."""
  split = trainer.split
  seen, unseen = len(split.seen), len(split.unseen)
  zsl_cols, gzsl_cols = metrics._check_views(  # pylint: disable=protected-access
      seen + unseen, range(seen), range(seen, seen + unseen), ks)
  one = SingleDeviceSharding(trainer.mesh.devices.flat[0])
  blocks = metrics_device._blocks  # pylint: disable=protected-access
  block = metrics_device.DEFAULT_LABEL_BLOCK
  gzsl_blocks, zsl_blocks = blocks(gzsl_cols, block), blocks(np.arange(zsl_cols.size), block)
  args = {
      "scores": _struct((num_images, seen + unseen), jnp.float32, one),
      "labels": _struct((num_images, seen + unseen), jnp.int8, one),
      "zsl_scores": _struct((num_images, unseen), jnp.float32, one),
      "columns": tuple(_struct(a.shape, jnp.int32, one)
                       for a in (gzsl_cols, zsl_cols, gzsl_blocks, zsl_blocks)),
  }
  return _compile(
      "metrics",
      lambda: metrics_device._evaluate_core.lower(  # pylint: disable=protected-access
          args["scores"], args["labels"], args["zsl_scores"], *args["columns"],
          kmax=max(ks)),
      0, args, trainer, 1, compile_it)
