"""tf.data input pipeline: per-process split -> shuffle(seed, epoch) -> batch -> prefetch,
delivered as globally sharded jax.Arrays.

The order of training batches is a pure function of (seed, epoch), so a run resumed at step k
sees exactly the batches an uninterrupted run sees from step k on.
"""

from __future__ import annotations

import collections
from typing import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf

from mlzsl_jax.data.source import DatasetSource
from mlzsl_jax import sharding as shd

tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX


def _select(example: dict, label_ids: tf.Tensor, with_scene: bool) -> dict:
  out = {"features": example["features"],
         "labels": tf.gather(example["labels"], label_ids, axis=-1)}
  if with_scene:
    out["scene"] = example["scene"]
  return out


def _has_positive(label_ids: tf.Tensor):
  return lambda ex: tf.reduce_any(tf.gather(ex["labels"], label_ids) > 0)


def _process_share(ds: tf.data.Dataset) -> tf.data.Dataset:
  if jax.process_count() > 1:
    ds = ds.shard(jax.process_count(), jax.process_index())
  return ds


def local_batch_size(global_batch: int, field: str, data_shards: int) -> int:
  """This process's share of a global batch; clear error when it does not divide."""
  n = jax.process_count()
  if global_batch % n or global_batch % data_shards:
    raise ValueError(f"config field {field}={global_batch} must be a multiple of the "
                     f"{n} process(es) and of the mesh's {data_shards} 'data' shards")
  return global_batch // n


def count_train_examples(source: DatasetSource, split: str, seen_ids: Sequence[int],
                         drop_without_positive: bool) -> int:
  """Number of training examples this process sees per epoch (after the positive filter)."""
  ids = tf.constant(list(seen_ids), tf.int32)
  ds = _process_share(source.as_tf_dataset(split)).map(lambda ex: ex["labels"])
  if drop_without_positive:
    ds = ds.filter(lambda y: tf.reduce_any(tf.gather(y, ids) > 0))
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def check_batch(batch: dict[str, np.ndarray], feature_shape: tuple[int, int], split: str):
  """Shape and finiteness checks on a host batch; errors name the field and what was wrong."""
  feats = batch["features"]
  if feats.shape[1:] != tuple(feature_shape):
    raise ValueError(f"split {split!r} field 'features': expected [batch, "
                     f"{feature_shape[0]}, {feature_shape[1]}], got {list(feats.shape)}")
  for field in ("features", "scene"):
    if field in batch and not np.isfinite(batch[field]).all():
      rows = np.where(~np.isfinite(batch[field].reshape(len(batch[field]), -1)).all(1))[0]
      raise ValueError(f"split {split!r} field {field!r}: NaN/inf values in "
                       f"{len(rows)} example(s) of this batch (batch rows {rows[:5].tolist()})")
  bad = ~np.isin(batch["labels"], (-1, 0, 1))
  if bad.any():
    raise ValueError(f"split {split!r} field 'labels': states must be 1/-1/0, got "
                     f"{np.unique(batch['labels'][bad])[:5].tolist()}")


def train_batches(source: DatasetSource, *, split: str, seen_ids: Sequence[int],
                  global_batch: int, seed: int, start_step: int, steps_per_epoch: int,
                  shuffle_buffer: int, drop_without_positive: bool,
                  data_shards: int, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Endless host batches from ``start_step`` on; labels restricted to ``seen_ids``.

  Yields dicts: features fp16 [local_batch, R, C], labels int8 [local_batch, len(seen_ids)],
  scene fp16 [local_batch, S] when stored.
  """
  local = local_batch_size(global_batch, "train.batch_size", data_shards)
  ids = tf.constant(list(seen_ids), tf.int32)
  with_scene = source.meta.scene_dim > 0
  base = _process_share(source.as_tf_dataset(split))
  if drop_without_positive:
    base = base.filter(_has_positive(ids))
  base = base.map(lambda ex: _select(ex, ids, with_scene), num_parallel_calls=tf.data.AUTOTUNE)
  feature_shape = (source.meta.num_regions, source.meta.feature_dim)
  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    ds = base.shuffle(shuffle_buffer, seed=seed * 100003 + epoch,
                      reshuffle_each_iteration=False)
    ds = ds.batch(local, drop_remainder=True).skip(offset).prefetch(prefetch)
    for batch in ds.as_numpy_iterator():
      check_batch(batch, feature_shape, split)
      yield batch
    epoch, offset = epoch + 1, 0


def eval_batches(source: DatasetSource, *, split: str, global_batch: int, data_shards: int
                 ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Every example of ``split`` once, in file order, as (padded host batch, valid rows).

  The last batch is zero-padded to the full batch so one compiled function serves all.
  Labels are over all labels of the dataset.
  """
  local = local_batch_size(global_batch, "eval.batch_size", data_shards)
  with_scene = source.meta.scene_dim > 0
  all_ids = tf.range(source.meta.num_labels)
  ds = _process_share(source.as_tf_dataset(split))
  ds = ds.map(lambda ex: _select(ex, all_ids, with_scene), num_parallel_calls=tf.data.AUTOTUNE)
  feature_shape = (source.meta.num_regions, source.meta.feature_dim)
  for batch in ds.batch(local).prefetch(2).as_numpy_iterator():
    check_batch(batch, feature_shape, split)
    n = len(batch["labels"])
    if n < local:
      batch = {k: np.concatenate([v, np.zeros((local - n,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, n


def prefetch_to_device(batches: Iterator[dict[str, np.ndarray]], sharding, size: int = 2
                       ) -> Iterator[dict[str, jax.Array]]:
  """Keeps ``size`` batches already transferred to the devices ahead of the consumer."""
  queue = collections.deque()
  for batch in batches:
    queue.append(shd.host_to_global(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
