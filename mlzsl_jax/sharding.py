"""The only place that knows about devices: the mesh, partition rules, batch placement.

Mesh axes are ('data', 'model'). Batches are split over 'data'; parameters follow the
config's partition rules (regex on the parameter path -> axis names per dimension), and a
rule that does not divide a dimension falls back to replication for that dimension.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "model")


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'model') mesh; data=-1 takes all devices not used by 'model'."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(f"config field mesh.model={model} must divide the {n} devices")
  if data == -1:
    data = n // model
  if data * model != n:
    raise ValueError(f"mesh.data={data} x mesh.model={model} != {n} devices")
  return Mesh(np.asarray(devices).reshape(data, model), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over 'data', the rest replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _spec_for(path: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
  for pattern, axes in rules:
    if re.fullmatch(pattern, path):
      axes = tuple(axes)
      if len(axes) > len(shape):
        axes = axes[-len(shape):] if shape else ()
      axes = (None,) * (len(shape) - len(axes)) + axes  # rules align to trailing dims
      fitted = tuple(a if a is None or shape[i] % mesh.shape[a] == 0 else None
                     for i, a in enumerate(axes))
      return P(*fitted)
  return P()


def tree_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]]):
  """NamedSharding per leaf of ``tree`` (arrays or ShapeDtypeStructs) from the rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, _spec_for(_path_str(path), tuple(x.shape), rules,
                                                    mesh)), tree)


def host_to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of a global batch -> globally sharded jax.Arrays."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def local_batch_size(global_batch: int, field: str, data_shards: int,
                     processes: int | None = None) -> int:
  """This process's share of a global batch (``processes``: default this job's count); a
  ValueError naming the config field when the batch is not a multiple of the mesh's
  'data' shards and of the processes (the input pipeline, ``train`` and ``compile`` check
  it)."""
  n = jax.process_count() if processes is None else processes
  if global_batch % n or global_batch % data_shards:
    raise ValueError(f"config field {field}={global_batch} must be a multiple of the mesh's "
                     f"{data_shards} 'data' shards and of the {n} process(es)")
  return global_batch // n
