"""tf.data input pipeline: per-process split -> shuffle(seed, epoch) -> batch -> prefetch,
delivered as globally sharded jax.Arrays.

The order of training batches is a pure function of (seed, epoch), so a run resumed at step k
sees exactly the batches an uninterrupted run sees from step k on.

Several processes (``config.data.process_split``); tf.data has no random access, so reading
only one's share and having batches that do not depend on the process count exclude each
other:
  'examples' (default): process i of P reads examples i, i+P, i+2P, ... (``ds.shard``),
    shuffles them and batches its own local batches. Each process reads 1/P of the data, but
    which images meet in a global batch depends on P (a 2-process run is a different, equally
    valid, sample order than a 1-process run). Per-process counts can differ (the
    positive-label filter keeps different numbers per shard): every process takes the
    smallest count's number of steps per epoch, dropping the few extra examples of the others.
  'batches': every process reads the whole split in the same shuffled order, builds each
    global batch and keeps the rows its devices hold. Batches are exactly those of a
    1-process run, whatever P: a run reproduces across 1 x 8 and 2 x 4 devices, at P times the
    reading and decoding. For small datasets, reproducibility checks, and debugging.
Evaluation follows the same split; ``collect_scores`` (evaluate.py) reassembles the test
images in file order in both modes.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterator, Sequence

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


def _keep_for_training(label_ids: tf.Tensor, drop_without_positive: bool,
                       max_positive: int) -> Callable[[tf.Tensor], tf.Tensor] | None:
  """Predicate on an example's labels [num_labels] (None = keep all): at least one positive
  among ``label_ids`` (``drop_without_positive``) and at most ``max_positive`` of them
  (``max_positive`` > 0; BiAM's Open Images script keeps images with <= 40 positives)."""
  if not drop_without_positive and max_positive <= 0:
    return None

  def keep(labels):
    positives = tf.reduce_sum(tf.cast(tf.gather(labels, label_ids) > 0, tf.int32))
    ok = positives > 0 if drop_without_positive else tf.constant(True)
    if max_positive > 0:
      ok = tf.logical_and(ok, positives <= max_positive)
    return ok
  return keep


PROCESS_SPLITS = ("examples", "batches")


def check_process_split(value: str) -> str:
  if value not in PROCESS_SPLITS:
    raise ValueError(f"config field data.process_split={value!r}: expected one of "
                     f"{PROCESS_SPLITS}")
  return value


def _process_share(ds: tf.data.Dataset, process_split: str = "examples") -> tf.data.Dataset:
  """This process's examples: 1/P of them ('examples'), or all of them ('batches')."""
  if check_process_split(process_split) == "examples" and jax.process_count() > 1:
    ds = ds.shard(jax.process_count(), jax.process_index())
  return ds


def process_rows(global_batch: int, sharding=None) -> np.ndarray:
  """Rows of a global batch [global_batch, ...] that this process supplies, ascending.

  With ``sharding`` (the batch sharding): the rows its addressable devices hold, which is what
  ``jax.make_array_from_process_local_data`` expects the local batch to contain, in that
  order. Without: the contiguous block [i * local, (i + 1) * local).
  """
  if sharding is None:
    local = global_batch // jax.process_count()
    return np.arange(jax.process_index() * local, (jax.process_index() + 1) * local)
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  blocks = sorted({(sl[0].indices(global_batch)[0], sl[0].indices(global_batch)[1])
                   for sl in index_map.values()})
  return np.concatenate([np.arange(a, b) for a, b in blocks])


def _check_rows_per_process(global_batch: int, sharding, process_split: str):
  """'examples' gives each process different examples, which is only right when no two
  processes hold the same batch rows (a 'model' mesh axis spanning processes would)."""
  if process_split != "examples" or sharding is None or jax.process_count() == 1:
    return
  held = len(process_rows(global_batch, sharding))
  if held * jax.process_count() != global_batch:
    raise ValueError(f"config field data.process_split='examples': this process's devices "
                     f"hold {held} of the {global_batch} rows of a batch, not 1/"
                     f"{jax.process_count()} (processes share rows: a 'model' axis spans "
                     "processes); use data.process_split='batches' with this mesh")


def _take_rows(rows: np.ndarray) -> Callable[[dict], dict]:
  rows = tf.constant(rows, tf.int32)
  return lambda batch: {k: tf.gather(v, rows) for k, v in batch.items()}


def train_steps_per_epoch(n_read: int, global_batch: int, process_split: str
                          ) -> tuple[int, int]:
  """(steps per epoch, usable training examples over all processes), equal on every process.

  Args:
    n_read: ``count_train_examples`` of this process (its shard for 'examples', the whole
      split for 'batches').
  """
  if check_process_split(process_split) == "batches" or jax.process_count() == 1:
    return n_read // global_batch, n_read
  from jax.experimental import multihost_utils
  counts = np.asarray(multihost_utils.process_allgather(np.int32(n_read))).reshape(-1)
  return int(counts.min()) // (global_batch // jax.process_count()), int(counts.sum())


def count_train_examples(source: DatasetSource, split: str, seen_ids: Sequence[int],
                         drop_without_positive: bool, process_split: str = "examples",
                         max_positive: int = 0) -> int:
  """Number of training examples this process reads per epoch (after the label filters)."""
  ids = tf.constant(list(seen_ids), tf.int32)
  ds = _process_share(source.as_tf_dataset(split), process_split).map(lambda ex: ex["labels"])
  keep = _keep_for_training(ids, drop_without_positive, max_positive)
  if keep is not None:
    ds = ds.filter(keep)
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
                  data_shards: int, prefetch: int = 2, process_split: str = "examples",
                  sharding=None, max_positive: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless host batches from ``start_step`` on; labels restricted to ``seen_ids``.

  Every epoch has exactly ``steps_per_epoch`` batches (``train_steps_per_epoch``), so all
  processes agree on epoch boundaries. ``sharding``: the batch sharding, which tells the
  'batches' split which rows of each global batch are this process's (``process_rows``).

  Yields dicts: features fp16 [local_batch, R, C], labels int8 [local_batch, len(seen_ids)],
  scene fp16 [local_batch, S] when stored.
  """
  local = shd.local_batch_size(global_batch, "train.batch_size", data_shards)
  _check_rows_per_process(global_batch, sharding, process_split)
  ids = tf.constant(list(seen_ids), tf.int32)
  with_scene = source.meta.scene_dim > 0
  base = _process_share(source.as_tf_dataset(split), process_split)
  keep = _keep_for_training(ids, drop_without_positive, max_positive)
  if keep is not None:
    base = base.filter(lambda ex: keep(ex["labels"]))
  base = base.map(lambda ex: _select(ex, ids, with_scene), num_parallel_calls=tf.data.AUTOTUNE)
  feature_shape = (source.meta.num_regions, source.meta.feature_dim)
  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    ds = base.shuffle(shuffle_buffer, seed=seed * 100003 + epoch,
                      reshuffle_each_iteration=False)
    if process_split == "batches":
      ds = ds.batch(global_batch, drop_remainder=True).take(steps_per_epoch).skip(offset)
      if jax.process_count() > 1:
        ds = ds.map(_take_rows(process_rows(global_batch, sharding)))
    else:
      ds = ds.batch(local, drop_remainder=True).take(steps_per_epoch).skip(offset)
    ds = ds.prefetch(prefetch)
    for batch in ds.as_numpy_iterator():
      check_batch(batch, feature_shape, split)
      yield batch
    epoch, offset = epoch + 1, 0


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _num_examples(ds: tf.data.Dataset, source: DatasetSource, split: str) -> int:
  """Examples in ``split``: tf.data's cardinality, else the metadata, else counted."""
  n = int(ds.cardinality().numpy())
  if n < 0:
    n = source.meta.num_examples.get(split, -1)
  if n < 0:
    n = int(ds.map(lambda ex: 0).reduce(np.int64(0), lambda c, _: c + 1).numpy())
  return n


def eval_batches(source: DatasetSource, *, split: str, global_batch: int, data_shards: int,
                 process_split: str = "examples", sharding=None
                 ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Every example of ``split`` once over all processes, as (padded host batch, valid rows).

  Each batch also holds 'index' int32 [local_batch]: the example's position in the file order
  of ``split``, -1 on padding rows. Every process yields the same number of batches (a
  process whose share has run out yields all-padding batches), so collectives stay in step.
  Single process: file order, the last batch zero-padded to the full batch so one compiled
  function serves all. 'examples': this process's shard (examples i, i+P, ...), padded the
  same way. 'batches': global batches of the file order (the last one padded), of which this
  process keeps its rows (``process_rows``; valid rows need not come first).
  Labels are over all labels of the dataset.
  """
  local = shd.local_batch_size(global_batch, "eval.batch_size", data_shards)
  check_process_split(process_split)
  _check_rows_per_process(global_batch, sharding, process_split)
  with_scene = source.meta.scene_dim > 0
  all_ids = tf.range(source.meta.num_labels)
  ds = source.as_tf_dataset(split)
  total = _num_examples(ds, source, split)
  ds = ds.enumerate().map(
      lambda i, ex: {**_select(ex, all_ids, with_scene), "index": tf.cast(i, tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  processes = jax.process_count()
  if process_split == "batches" or processes == 1:
    rows = process_rows(global_batch, sharding) if processes > 1 else np.arange(global_batch)
    batch_size, num_batches = global_batch, _ceil_div(total, global_batch)
  else:  # the largest shard (process 0's) sets the number of batches
    ds, rows = _process_share(ds, process_split), None
    batch_size, num_batches = local, _ceil_div(_ceil_div(total, processes), local)
  spec = ds.element_spec
  feature_shape = (source.meta.num_regions, source.meta.feature_dim)
  batches = ds.batch(batch_size).prefetch(2).as_numpy_iterator()
  for _ in range(num_batches):
    batch = next(batches, None)
    if batch is None:  # this process's share has run out: all padding
      batch = {k: np.zeros((0,) + tuple(s.shape), s.dtype.as_numpy_dtype)
               for k, s in spec.items()}
    check_batch(batch, feature_shape, split)
    n = len(batch["labels"])
    if n < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
      batch["index"][n:] = -1
    if rows is not None and len(rows) != batch_size:
      batch = {k: v[rows] for k, v in batch.items()}
      n = int((batch["index"] >= 0).sum())
    yield batch, n
  if next(batches, None) is not None:
    raise ValueError(f"split {split!r}: more examples than the {total} its dataset reports "
                     "(tf.data cardinality / DatasetMeta.num_examples); fix the dataset's "
                     "metadata")


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
