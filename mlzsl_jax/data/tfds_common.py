"""What every tfds builder of this package shares: a builder base that downloads nothing, the
stored form of region features, the checks of the official files and config fields, the
optional BiAM scene feature computed at build time, and the base of the real datasets'
region-feature builders (``RegionBuilder``: nus_wide, open_images).

Scene feature (``data.scene='vgg19'``, NUS-WIDE and Open Images): BiAM's official ``vgg_net``
(``mlzsl_jax.extract.scene_head``: VGG19's last max-pool, fc6, ReLU, fc7, ReLU) applied to the
float32 source region features, with the user's torchvision VGG19 file
(``data.scene_weights``), ``SCENE_BATCH`` images at a time, stored float16 [fc_dim] beside the
features. It is a separate tfds builder config (``SCENE_CONFIG_NAME``: stored under
``<data_dir>/<name>/vgg19_scene/<version>``); the plain dataset (``<data_dir>/<name>/<version>``)
is untouched. The metadata records ``scene_dim``, the weights file's size and SHA-256
(``scene_weights``) and a provenance line.

Bounded memory at prepare (any number of images). Every builder here sets
``disable_shuffling``: tfds then writes the records in key order. Its writer (tfds 4.9)
keeps the serialized records in memory up to a buffer (1 GB by default; ``WRITE_BUFFER_BYTES``
here), then spills them to 1000 temporary bucket files by ``floor(key * 1000 / 2**128)`` and,
at the end, reads back and sorts one bucket at a time. Plain positions as keys all fall in
bucket 0, which is then read back whole: the whole split in memory. So the keys are the
positions spread evenly over the 128-bit key range (``example_key``, ``spread_keys``): the
order is the same, the records and shards are byte-for-byte the same, and the largest bucket
holds ~1/1000 of the split (~34 MB for NUS-WIDE's 161,789 training images, ~350 MB for Open
Images' 1.7 M). Peak memory: the buffer plus one bucket. ``benchmarks/prepare_memory.py``
measures it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mlzsl_jax.data import extracted


def prepare_generated(builder_cls, params, make_config: Callable, data_dir: str,
                      noun: str):
  """A code-generated dataset's builder for ``params`` (with ``config_name``, ``num_train``,
  ``num_test``) under ``data_dir``, generating the data the first time, with one progress
  line ("<name>: building <num_train>+<num_test> <noun> ...") instead of tfds' per-split
  bars. A parameter set that is a class config is passed by name (tfds refuses a copy of
  it)."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  known = {c.name for c in builder_cls.BUILDER_CONFIGS}
  config = params.config_name if params.config_name in known else make_config(params)
  builder = builder_cls(config=config, data_dir=os.path.expanduser(data_dir))
  if not builder.is_prepared():
    print(f"{builder_cls.name}: building {params.num_train}+{params.num_test} {noun} "
          f"({params.config_name}) into {builder.data_dir}", flush=True)
    bars = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
      tfds.display_progress_bar(bars)
  return builder


# ------------------------------------------------------------------ bounded-memory writing

KEY_SPACE = 1 << 128  # tfds' shuffler key range (128-bit)
# Serialized records tfds' writer holds before it spills to its bucket files (tfds: 1 GB).
WRITE_BUFFER_BYTES = 256 << 20


def example_key(position: int, total: int, spread: bool = True) -> int:
  """tfds key of the example at ``position`` (0-based) of a split of ``total`` examples.

  With ``disable_shuffling`` tfds writes records in key order; its generator-path writer puts
  a key in bucket ``floor(key * 1000 / 2**128)``. ``position * (2**128 // total)`` keeps the
  order and gives each of the 1000 buckets ~total/1000 examples; plain positions would all
  fall in bucket 0 (read back whole). Beam's writer normalises by the largest key, so there
  ``spread=False`` (the position itself).
  """
  if not 0 <= position < max(total, 1):
    raise ValueError(f"example position {position} outside the split's {total} examples")
  return position * (KEY_SPACE // max(total, 1)) if spread else position


def spread_keys(examples: Iterable[tuple[int, Any]], total: int
                ) -> Iterator[tuple[int, Any]]:
  """(position, example) -> (``example_key(position, total)``, example), lazily."""
  for position, example in examples:
    yield example_key(position, total), example


@contextlib.contextmanager
def write_buffer(max_bytes: int) -> Iterator[None]:
  """tfds' generator-path writer spills to its bucket files once ``max_bytes`` of serialized
  records are buffered (instead of 1 GB), within this block."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  if not hasattr(shuffle, "MAX_MEM_BUFFER_SIZE"):
    raise RuntimeError(f"tensorflow_datasets {tfds.__version__}: no "
                       "shuffle.MAX_MEM_BUFFER_SIZE (the pinned 4.9.10 has it); pin that "
                       "version")
  before = shuffle.MAX_MEM_BUFFER_SIZE
  shuffle.MAX_MEM_BUFFER_SIZE = int(max_bytes)
  try:
    yield
  finally:
    shuffle.MAX_MEM_BUFFER_SIZE = before


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder over files the user already has (or generates): nothing is downloaded.

  Preparing holds at most ``WRITE_BUFFER_BYTES`` of records plus one of tfds' 1000 buckets
  when the keys are spread (``example_key``); see the module docstring.
  """

  @classmethod
  def summary(cls) -> str:
    """The tfds description: the first paragraph of the builder's module docstring."""
    return sys.modules[cls.__module__].__doc__.split("\n\n")[0]

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    with write_buffer(WRITE_BUFFER_BYTES):
      return super()._download_and_prepare(dl_manager, download_config)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """None: no checksums file beside the code.

    tfds 4.9.10 otherwise resolves the path through ``importlib_resources``, a package it
    only declares for Python < 3.9, and fails with ModuleNotFoundError on 3.11.
    """
    return None


def region_example_features(num_regions: int, feature_dim: int, scene: bool = False
                            ) -> tfds.features.FeaturesDict:
  """Stored example of a region-feature dataset: features fp16 [regions, dim], labels int8
  [labels] (length from the files), image_id; with ``scene``, scene fp16 [scene_dim] (length
  from the weights file; the metadata's ``scene_dim``).

  Raw bytes: 2 bytes per feature value and 1 per state (tfds' default encoding stores float16
  as a float32 FloatList and int8 as varint int64: ~2x the size, ~15x slower to serialize).
  """
  fields = {
      "features": tfds.features.Tensor(shape=(num_regions, feature_dim), dtype=np.float16,
                                       encoding=tfds.features.Encoding.BYTES),
      "labels": tfds.features.Tensor(shape=(None,), dtype=np.int8,
                                     encoding=tfds.features.Encoding.BYTES),
      "image_id": tfds.features.Text(),
  }
  if scene:
    fields["scene"] = tfds.features.Tensor(shape=(None,), dtype=np.float16,
                                           encoding=tfds.features.Encoding.BYTES)
  return tfds.features.FeaturesDict(fields)


def select_fields(num_labels: int, scene_dim: int = 0) -> Callable[[dict], dict]:
  """tf map fn: a stored example -> {features, labels [num_labels], image_id} plus
  scene [scene_dim] when ``scene_dim > 0`` (lengths known from the metadata, not from the
  stored tensor spec)."""
  def select(ex):
    out = {"features": ex["features"],
           "labels": tf.ensure_shape(ex["labels"], (num_labels,)),
           "image_id": ex["image_id"]}
    if scene_dim > 0:
      out["scene"] = tf.ensure_shape(ex["scene"], (scene_dim,))
    return out
  return select


def stored_examples(builder, split: str, num_labels: int, scene_dim: int = 0
                    ) -> tf.data.Dataset:
  """The examples of ``split`` in stored order (``select_fields``)."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(select_fields(num_labels, scene_dim))


# ------------------------------------------------------------------ scene feature

SCENE_CONFIG_NAME = "vgg19_scene"
SCENE_BATCH = 64  # images per call of the jitted head (padded: one compile)
SCENE_FEATURE = "vgg19_fc7"
FP16_MAX = float(np.finfo(np.float16).max)


def vgg19_scene_config() -> tfds.core.BuilderConfig:
  """The builder config of a dataset stored with the BiAM scene feature."""
  return tfds.core.BuilderConfig(
      name=SCENE_CONFIG_NAME,
      description="with the BiAM scene feature: VGG19 fc7 (last max-pool, fc6, ReLU, fc7, "
                  "ReLU) of the float32 region features, float16 [fc_dim]")


def missing_scene_error(dataset: str, data_dir: str, config_file: str) -> ValueError:
  """data.scene='vgg19' on a dataset not prepared with it, and no weights to build it."""
  return ValueError(
      f"config field data.scene='vgg19': the {dataset} dataset with the scene feature (builder "
      f"config {SCENE_CONFIG_NAME!r}) is not prepared under {data_dir!r}, and "
      f"data.scene_weights is empty; prepare it once with: python -m mlzsl_jax.main prepare "
      f"--config {config_file}:scene=vgg19 --config.data.manual_dir=... "
      f"--config.data.scene_weights=/path/vgg19-dcbb9e9d.pth (torchvision's ImageNet VGG19 "
      f"file; the scene feature is computed from it once and stored)")


def sha256_file(path: str) -> str:
  """Hex SHA-256 of a file, streamed 4 MB at a time."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def file_fingerprint(path: str, hash_contents: bool = True) -> dict[str, Any]:
  """{"bytes": size} plus {"sha256": hex digest} when ``hash_contents`` (every builder's
  record of the files it was built from)."""
  out: dict[str, Any] = {"bytes": os.path.getsize(path)}
  if hash_contents:
    out["sha256"] = sha256_file(path)
  return out


def check_unique_entries(path: str, entries: Sequence[Any], fault: Callable[[int, Any], str],
                         repeated: Callable[[Any, int, int], str]) -> None:
  """ValueError "<path>: <why>" at the first entry of a file's list, in list order, that is
  faulty (``fault(i, entry)``: why, '' when fine) or repeats an earlier one
  (``repeated(entry, first, i)``: why, ``first`` the earlier index)."""
  first: dict[Any, int] = {}
  for i, entry in enumerate(entries):
    why = fault(i, entry)
    if why:
      raise ValueError(f"{path}: {why}")
    if entry in first:
      raise ValueError(f"{path}: {repeated(entry, first[entry], i)}")
    first[entry] = i


def label_split_fields(num_seen: int, num_labels: int) -> dict[str, list[int]]:
  """The metadata's seen_labels [0..num_seen) and unseen_labels [num_seen..num_labels)."""
  return {"seen_labels": list(range(num_seen)),
          "unseen_labels": list(range(num_seen, num_labels))}


def check_source_files(builder, paths: dict[str, str], skip_missing: bool = False,
                       label: str = "size/SHA-256 ") -> None:
  """ValueError when a file (``paths``: name -> path) differs from the file of that name the
  prepared dataset was built from (metadata ``source_files``: size, then SHA-256 where one
  was recorded; ``label`` prefixes the record in the message). Names without a record are
  skipped, and with ``skip_missing`` files that are not there."""
  stored = builder.info.metadata.get("source_files", {})
  for name, path in paths.items():
    want = stored.get(name)
    if want is None or (skip_missing and not os.path.isfile(path)):
      continue
    if (os.path.getsize(path) != want["bytes"]
        or file_fingerprint(path, "sha256" in want) != want):
      raise ValueError(
          f"{path}: differs from the file the prepared dataset at {builder.data_dir} was "
          f"built from ({label}{want}); delete that folder to rebuild, or set another "
          f"data.data_dir")


def weights_fingerprint(path: str) -> dict[str, Any]:
  """{"file": path, "bytes": size, "sha256": hex digest} of a weights file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config field data.scene_weights: file {path!r} does not exist "
                            "(expected torchvision's vgg19-dcbb9e9d.pth)")
  return {"file": path, "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def check_scene_weights(builder, path: str) -> None:
  """ValueError when ``path`` is not the weights file the prepared scene dataset was built
  with (size, then SHA-256)."""
  stored = builder.info.metadata.get("scene_weights") or {}
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config field data.scene_weights: file {path!r} does not exist")
  if (os.path.getsize(path) != stored.get("bytes")
      or sha256_file(path) != stored.get("sha256")):
    raise ValueError(
        f"config field data.scene_weights: {path!r} differs from the weights file the "
        f"prepared dataset at {builder.data_dir} was built with ({stored.get('file')!r}, "
        f"{stored.get('bytes')} bytes, SHA-256 {stored.get('sha256')}); give that file (or "
        f"leave data.scene_weights empty), or delete that folder to rebuild")


@dataclasses.dataclass(frozen=True)
class SceneSource:
  """A loaded scene head: ``fn`` float32 [B, regions, C] -> float32 [B, dim] (numpy)."""

  fn: Callable[[np.ndarray], np.ndarray]
  dim: int
  weights: dict[str, Any]  # weights_fingerprint

  def metadata(self) -> dict[str, Any]:
    return {"scene_dim": self.dim, "scene_feature": SCENE_FEATURE,
            "scene_weights": dict(self.weights)}

  def provenance(self) -> str:
    return (f"scene = BiAM's vgg_net (eval mode) on the float32 region features before the "
            f"float16 cast: VGG19's last 2x2 max-pool of the grid, (C, H, W) flatten, fc6, "
            f"ReLU, fc7, ReLU (torchvision classifier[0:5]) -> float16 [{self.dim}], weights "
            f"{os.path.basename(self.weights['file'])} (SHA-256 {self.weights['sha256']})")


def load_scene_source(path: str, region_dim: int, grid_shape: Sequence[int],
                      fingerprint: dict[str, Any] | None = None) -> SceneSource:
  """The head of a torchvision VGG19 file (errors name the file and key), jitted."""
  from mlzsl_jax.extract import scene_head  # pylint: disable=import-outside-toplevel
  fingerprint = fingerprint or weights_fingerprint(path)
  head = scene_head.load_scene_head(path, region_dim=region_dim, grid_shape=grid_shape)
  return SceneSource(fn=scene_head.numpy_scene_fn(head), dim=head.fc_dim,
                     weights=dict(fingerprint))


# One head per worker process (Apache Beam): (path, sha256) -> SceneSource.
_WORKER_SCENE: dict[tuple[str, str], SceneSource] = {}


def worker_scene_source(path: str, sha256: str, region_dim: int,
                        grid_shape: Sequence[int]) -> SceneSource:
  """The head of ``path``, loaded once per process (its SHA-256 checked against ``sha256``,
  the file the build started with) and kept for the process's next files."""
  key = (path, sha256)
  if key not in _WORKER_SCENE:
    fingerprint = weights_fingerprint(path)
    if fingerprint["sha256"] != sha256:
      raise ValueError(f"scene weights {path!r}: SHA-256 {fingerprint['sha256']} on this "
                       f"worker, {sha256} when the build started (changed, or another file "
                       f"at this path?)")
    _WORKER_SCENE[key] = load_scene_source(path, region_dim, grid_shape, fingerprint)
  return _WORKER_SCENE[key]


def keep_scene_source(source: SceneSource) -> None:
  """Make an already loaded head the process's copy (``worker_scene_source``)."""
  _WORKER_SCENE[(source.weights["file"], source.weights["sha256"])] = source


def release_scene_sources() -> None:
  """Drop the process's heads (~480 MB each for the ImageNet VGG19)."""
  _WORKER_SCENE.clear()


def _stored(example: dict[str, Any]) -> dict[str, Any]:
  return {**example, "features": np.ascontiguousarray(example["features"]).astype(np.float16)}


def _with_scene(batch: list, scene_fn, batch_size: int) -> Iterator[tuple[Any, dict]]:
  feats = np.zeros((batch_size, *np.shape(batch[0][1]["features"])), np.float32)
  for i, (_, ex) in enumerate(batch):
    feats[i] = ex["features"]
  scene = np.asarray(scene_fn(feats), np.float32)[:len(batch)]  # padding rows dropped
  for (key, ex), value in zip(batch, scene):
    if not np.all(np.isfinite(value)) or np.abs(value).max(initial=0) > FP16_MAX:
      raise ValueError(f"image {ex['image_id']!r}: scene feature has NaN/inf or values beyond "
                       f"the float16 range (max |x| = {float(np.abs(value).max()):g})")
    yield key, {**_stored(ex), "scene": value.astype(np.float16)}


def to_stored(examples: Iterable[tuple[Any, dict[str, Any]]],
              scene_fn: Callable[[np.ndarray], np.ndarray] | None = None,
              batch_size: int = SCENE_BATCH) -> Iterator[tuple[Any, dict[str, Any]]]:
  """(key, example with source-precision features [regions, C]) -> (key, stored example):
  features cast to float16 and, with ``scene_fn``, ``scene`` float16 [S] = scene_fn(float32
  features), computed ``batch_size`` examples at a time (the last batch zero-padded, so the
  jitted head compiles once). Holds at most ``batch_size`` examples."""
  if scene_fn is None:
    for key, ex in examples:
      yield key, _stored(ex)
    return
  batch = []
  for item in examples:
    batch.append(item)
    if len(batch) == batch_size:
      yield from _with_scene(batch, scene_fn, batch_size)
      batch = []
  if batch:
    yield from _with_scene(batch, scene_fn, batch_size)


# ------------------------------------------------------------------ region-feature builders

class RegionBuilder(LocalBuilder, skip_registration=True):
  """A builder of a real dataset's region features (``region_example_features``): the
  official VGG19 grid (``GRID_SHAPE`` x ``FEATURE_DIM``), plus the scene feature with
  ``SCENE`` (the ``vgg19_scene`` config), or with ``EXTRACTED`` an extract run's features
  and scene (builder config = the backbone's name). Records in the source files' order.
  """

  GRID_SHAPE: tuple[int, int] = (0, 0)
  FEATURE_DIM = 0
  CONFIG_FILE = ""  # the dataset's config, named in the 'prepare with the scene' hint
  METADATA = tfds.core.MetadataDict  # the metadata container (class)
  SCENE = False  # True: the vgg19_scene config
  EXTRACTED = False  # True: features + scene of an extract run

  _scene: SceneSource | None = None  # the loaded head, set by the module's ``prepare``

  def feature_layout(self) -> tuple[tuple[int, int], int, int]:
    """(grid_shape, feature_dim, scene_dim) of what this builder stores (scene_dim 0: known
    only from the weights file)."""
    if self.EXTRACTED:
      return extracted.extracted_layout(self.builder_config.name)
    return self.GRID_SHAPE, self.FEATURE_DIM, 0

  def _info(self) -> tfds.core.DatasetInfo:
    grid, dim, _ = self.feature_layout()
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.summary(),
        features=region_example_features(grid[0] * grid[1], dim, self.SCENE or self.EXTRACTED),
        metadata=self.METADATA(),
        disable_shuffling=True,  # records stay in the order of the source files
    )

  def check_prepared_parts(self, has_features: bool) -> None:
    """ValueError when tfds builds this builder without what the module's ``prepare`` sets:
    the extract folder (``has_features``; EXTRACTED) or the scene head (SCENE)."""
    where = os.fspath(self.data_dir_root)
    if self.EXTRACTED and not has_features:
      raise ValueError(f"{self.name} ({self.builder_config.name}): not prepared under "
                       f"{where!r}; prepare it with data.features_dir = the extract --out_dir")
    if self.SCENE and self._scene is None:
      raise missing_scene_error(self.name, where, self.CONFIG_FILE)
