"""``open_images``: Open Images v4 for multi-label zero-shot learning, in the BiAM / LESA layout.

Users download the official files themselves and point ``data.manual_dir`` at the folder that
BiAM calls ``datasets/OpenImages`` (``akshitac8/BiAM``: ``util_openimages.py``,
``evaluate_openimages.py``, ``feature_extraction/extract_openimages_*.py``; LESA
``extract_data/``). It holds:

  train_features_lesa/*.h5   many files (~640 images each), one entry per image, keyed by the
                             image file name (``<ImageID>.jpg``):
                               ``<name>-features``   float32 [512, 196]  VGG19 conv5_4 of the
                                                     224x224 image, channels x (14*14 regions)
                               ``<name>-seenlabels`` int8 [7186]  states of the trainable
                                                     classes: 1 / -1 (= 2*Confidence-1 of the
                                                     human-verified labels) / 0 (not annotated)
  test_features_lesa/*.h5    the same keys plus ``<name>-unseenlabels`` int8 [2594], states of
                             the unseen classes (official: one file,
                             ``OPENIMAGES_TEST_CONV5_4_LESA_VGG_NO_CENTERCROP.h5``)
  2018_04/classes-trainable.txt   7186 class MIDs (``/m/...``), one per line: the seen labels,
                                  order of ``-seenlabels``
  2018_04/unseen_labels.pkl       pickled NumPy object array of the 2594 unseen MIDs, order of
                                  ``-unseenlabels`` (read with ``restricted_pickle``)
  2018_04/top_400_unseen.csv      no header, first column: the 400 evaluated unseen classes as
                                  0-based rows of ``unseen_labels.pkl`` (UTF-8 BOM, CRLF)
  2018_04/class-descriptions.csv  no header, ``MID,display name`` (names with commas quoted)
  wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl  (also looked up
                                  in ``manual_dir/..``) pickled pair (seen [7186, 300], unseen
                                  [2594, 300]) GloVe vectors (read with ``restricted_pickle``)

As the official code: image names are the keys without their suffix, sorted within a file
(``np.unique``); the 400 unseen states are ``-unseenlabels[top_400_unseen]``; embeddings are
``normalize(seen)`` and ``normalize(unseen[top_400_unseen])`` (rows scaled to unit L2 norm).
Files of a split are read in sorted path order (the official training loop draws files at
random; the order here is only a fixed, documented one).

Stored example (tfds, splits "train" and "test"; tensors as raw bytes, ~208 KB per example):
  features: float16 [196, 512]  ``-features`` transposed (regions row-major over the 14x14 grid)
  labels:   int8    [7586]      7186 seen states, then the 400 unseen states (train: 0 =
                                unknown, training files carry no unseen annotation)
  image_id: string              the image name as keyed in the h5 file (``<ImageID>.jpg``)
Metadata (JSON, except the embeddings: ``embeddings.npz`` beside it, float32): label_names
(class descriptions), label_mids, seen_labels / unseen_labels (our indices), unseen_source_rows
(the top-400 rows of ``unseen_labels.pkl``), grid_shape (14, 14), feature_dim 512,
embeddings {"glove": [7586, 300] unit rows}, source_files (size + SHA-256 of the label and
embedding files; name + size of every h5 file), provenance.

Building ~1.7 M training images (~340 GB at fp16) in bounded memory. Both build paths read the
h5 files ONE AT A TIME and one image at a time; no file is ever loaded whole.
* Plain path (default, one process): tfds' writer spills to 1000 temporary bucket files once
  ``tfds_common.WRITE_BUFFER_BYTES`` are buffered and then sorts one bucket at a time; with
  ``disable_shuffling`` it keeps the key order, so the keys here are the example positions
  spread evenly over tfds' 128-bit key range (``tfds_common.example_key``): each bucket holds
  ~1/1000 of the split (~340 MB for the full training split), instead of everything landing
  in the first bucket. Disk: the buckets hold a second copy of the split until they are
  written out (~2x the final size transiently). Measured on 20,012 images (a 4.2 GB split,
  2 CPU cores, tfds' 1 GB buffer then): peak RSS 1.7 GB with the spread keys against 4.7 GB
  with plain positions (which grows with the split); ~490 images/s. The same scheme for
  NUS-WIDE, with today's 256 MB buffer: ``benchmarks/prepare_memory.py``.
* Apache Beam (a cluster): ``_generate_examples`` returns
  ``beam.Create(<h5 files with their first position>) | beam.FlatMap(<read one file>)``
  when a Beam runner or options are given (``prepare(..., beam_runner=..., beam_options=...)``
  or ``tfds.download.DownloadConfig(beam_runner=...)``); apache-beam is imported only then
  (``pip install apache-beam``). Keys are the example positions; the shards keep the order.
  Command (see ``main``)::

    python -m mlzsl_jax.data.open_images --manual_dir /shared/OpenImages \\
        --data_dir /shared/tfds --beam -- --runner=FlinkRunner --flink_master=host:8081 \\
        --environment_type=LOOPBACK --parallelism=64

  (everything after ``--`` goes to Beam's ``PipelineOptions``; the workers must read
  ``manual_dir``: a shared filesystem, or a ``gs://`` path that TensorFlow's gfile reads;
  remote paths are opened through ``tf.io.gfile`` and were not tested here). On one large
  machine: ``--beam -- --runner=DirectRunner --direct_num_workers=16
  --direct_running_mode=multi_processing``. Checked with apache-beam 2.77.0's DirectRunner
  (in-process and 2 worker processes): the same examples in the same order as the plain path.

Scene feature (``data.scene='vgg19'``, ``data.scene_weights`` = torchvision's
``vgg19-dcbb9e9d.pth``; ``--scene vgg19 --scene_weights PATH`` on the command line below): the
builder config ``vgg19_scene`` (``OpenImagesVgg19Scene``, stored under
``<data_dir>/open_images/vgg19_scene/<version>``; the plain dataset is not touched) adds
``scene`` float16 [fc_dim] to every example: BiAM's ``vgg_net`` (eval mode) of the float32
``-features`` before the float16 cast, computed 64 images of one file at a time
(``tfds_common.to_stored``), and metadata scene_dim, scene_feature, scene_weights (path, size,
SHA-256; a different file given later is an error) and a provenance line. On the plain path the
head is loaded once by ``prepare``; with Beam every worker process loads it lazily, once, from
the same path (which it must be able to read) and checks its SHA-256.

Validation. Before tfds writes anything: every label file (names, MIDs, top-400 rows,
class descriptions), the embedding pickle's rows, and every h5 file's key set and dataset
shapes/dtypes (a truncated or corrupt file fails to open here). While writing: each image's
values (NaN/inf or beyond float16 in the features, states outside {-1, 0, 1}, unreadable data).
Every error names the file and the entry; tfds writes into a temporary folder that is removed
on any error, so no half-written dataset is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob as globlib
import io
import json
import os
import sys
import warnings
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from mlzsl_jax.data import extracted
from mlzsl_jax.data import options
from mlzsl_jax.data import tfds_common
from mlzsl_jax.data.open_images_release import (EMBEDDING_SOURCE, FEATURE_DIM, GRID_SHAPE,
                                                OFFICIAL_SIZES)
from mlzsl_jax.data.source import DatasetMeta, NamedLabels, meta_from_tfds, register_dataset

if __name__ == "__main__":
  # ``python -m mlzsl_jax.data.open_images``: run the ``main`` of the module as imported (the
  # copy whose builder is registered) instead of defining the builder twice.
  from mlzsl_jax.data import open_images as _registered  # pylint: disable=import-self
  _registered.main()
  sys.exit(0)

NUM_REGIONS = GRID_SHAPE[0] * GRID_SHAPE[1]
SPLITS = ("train", "test")
SPLIT_DIRS = {"train": "train_features_lesa", "test": "test_features_lesa"}
LABEL_DIR = "2018_04"
SEEN_FILE = "classes-trainable.txt"
UNSEEN_FILE = "unseen_labels.pkl"
TOP_UNSEEN_FILE = "top_400_unseen.csv"
DESCRIPTIONS_FILE = "class-descriptions.csv"
EMBEDDING_DIR = "wiki_contexts"
EMBEDDING_FILE = "OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl"
SUFFIX_FEATURES, SUFFIX_SEEN, SUFFIX_UNSEEN = "-features", "-seenlabels", "-unseenlabels"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
CONFIG_FILE = "configs/biam_open_images.py"  # named in the 'prepare with the scene' hint
FP16_MAX = float(np.finfo(np.float16).max)

# Bumped whenever stored content changes, so a cache built by older code is never reused.
DATA_VERSION = "1.0.0"

MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Set data.manual_dir to the folder BiAM calls datasets/OpenImages, holding "
    "train_features_lesa/*.h5 and test_features_lesa/*.h5 (BiAM's pre-extracted VGG19 "
    "features), 2018_04/{classes-trainable.txt, unseen_labels.pkl, top_400_unseen.csv, "
    "class-descriptions.csv} (BiAM repository, datasets/OpenImages/2018_04; "
    "classes-trainable.txt and class-descriptions.csv are also in the Open Images 2018_04 "
    f"release) and {EMBEDDING_DIR}/{EMBEDDING_FILE} (BiAM repository; also looked up in "
    "manual_dir/..).")


# ------------------------------------------------------------------ label files

@dataclasses.dataclass(frozen=True)
class LabelInfo(NamedLabels):
  """Validated label files, our label order (seen, then the evaluated unseen).

  Attributes:
    seen_mids: [S] MIDs of ``classes-trainable.txt`` (order of ``-seenlabels``).
    unseen_mids: [N_u] MIDs of ``unseen_labels.pkl`` (order of ``-unseenlabels``).
    top_unseen: int64 [U] rows of ``unseen_mids`` evaluated (``top_400_unseen.csv``).
    label_mids: [S + U] MIDs in our order.
    label_names: [S + U] display names (``class-descriptions.csv``).
    embeddings: float32 [S + U, 300], unit rows, our order.
    files: name -> path of each file read.
  """

  seen_mids: tuple[str, ...]
  unseen_mids: tuple[str, ...]
  top_unseen: np.ndarray
  label_mids: tuple[str, ...]
  label_names: tuple[str, ...]
  embeddings: np.ndarray
  files: dict[str, str]

  @property
  def num_seen(self) -> int:
    return len(self.seen_mids)


def _require_file(path: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found; {MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return path


def _read_text(path: str) -> str:
  try:
    with open(path, "r", encoding="utf-8-sig", newline=None) as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 text file: {e}") from e


def _unique_mids(path: str, mids: Sequence[str], what: str) -> tuple[str, ...]:
  """``mids`` as a tuple; ValueError naming ``path`` at an empty or repeated MID."""
  tfds_common.check_unique_entries(
      path, mids,
      lambda i, mid: "" if mid else (f"entry {i} ({what}) is empty; expected a class MID "
                                     f"like '/m/0100nhbf'"),
      lambda mid, first, i: f"MID {mid!r} appears twice (entries {first} and {i}); expected "
                            f"each {what} once")
  return tuple(mids)


def read_seen_mids(path: str) -> tuple[str, ...]:
  """``classes-trainable.txt``: one MID per line (official: ``line.rstrip()``)."""
  lines = _read_text(_require_file(path)).splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  return _unique_mids(path, [line.strip() for line in lines], "seen class")


def read_unseen_mids(path: str) -> tuple[str, ...]:
  """``unseen_labels.pkl``: a pickled 1-D array (or list) of MID strings."""
  from mlzsl_jax.data import restricted_pickle  # pylint: disable=import-outside-toplevel
  obj = restricted_pickle.load(_require_file(path))
  arr = np.asarray(obj, dtype=object) if isinstance(obj, (list, tuple)) else obj
  if not isinstance(arr, np.ndarray) or arr.ndim != 1:
    raise ValueError(f"{path}: expected a pickled 1-D array of unseen class MIDs, got "
                     f"{type(obj).__name__} {getattr(obj, 'shape', '')}")
  mids = []
  for i, item in enumerate(arr.tolist()):
    if isinstance(item, bytes):
      item = item.decode("utf-8", errors="replace")
    if not isinstance(item, str):
      raise ValueError(f"{path}: entry {i} must be a MID string, got {type(item).__name__} "
                       f"{item!r}")
    mids.append(item.strip())
  return _unique_mids(path, mids, "unseen class")


def read_top_unseen(path: str, num_unseen: int) -> np.ndarray:
  """``top_400_unseen.csv``: first column, 0-based rows of ``unseen_labels.pkl`` -> int64."""
  rows = []
  for number, line in enumerate(_read_text(_require_file(path)).splitlines(), start=1):
    if not line.strip():
      continue
    field = line.split(",")[0].strip().strip('"')
    try:
      value = int(field)
    except ValueError:
      raise ValueError(f"{path}: line {number}: expected an integer row of {UNSEEN_FILE} in "
                       f"the first column, got {field!r}") from None
    if not 0 <= value < num_unseen:
      raise ValueError(f"{path}: line {number}: row {value} out of range; {UNSEEN_FILE} has "
                       f"{num_unseen} unseen classes (0-based rows 0..{num_unseen - 1})")
    rows.append(value)
  if not rows:
    raise ValueError(f"{path}: no row listed; expected the evaluated unseen classes")
  uniq, counts = np.unique(rows, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(f"{path}: row {uniq[counts > 1][0]} listed {counts.max()} times; "
                     f"expected each unseen class once")
  return np.asarray(rows, np.int64)


def read_descriptions(path: str) -> dict[str, str]:
  """``class-descriptions.csv``: MID -> name (official parse: split at the first comma, strip
  spaces and double quotes)."""
  out = {}
  for number, line in enumerate(_read_text(_require_file(path)).splitlines(), start=1):
    if not line.strip():
      continue
    mid, sep, name = line.partition(",")
    if not sep:
      raise ValueError(f"{path}: line {number}: expected 'MID,name', got {line[:80]!r}")
    out[mid.strip(' "')] = name.strip(' "')
  return out


def find_embedding_file(manual_dir: str) -> str:
  candidates = [os.path.join(manual_dir, EMBEDDING_DIR, EMBEDDING_FILE),
                os.path.join(os.path.dirname(os.path.abspath(manual_dir)), EMBEDDING_DIR,
                             EMBEDDING_FILE),
                os.path.join(manual_dir, EMBEDDING_FILE)]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"label embeddings {EMBEDDING_FILE} not found (looked for "
                          f"{candidates}); {MANUAL_DOWNLOAD_INSTRUCTIONS}")


def load_labels(manual_dir: str) -> LabelInfo:
  """Read and validate the label and embedding files of ``manual_dir``.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: an unreadable file, a duplicate MID, a top-400 row out of range, a MID absent
      from ``class-descriptions.csv``, embedding rows that do not match the class lists, NaN
      or all-zero vectors; each names the file and the entry.
  """
  from mlzsl_jax.data import embeddings as emb_lib  # pylint: disable=import-outside-toplevel
  label_dir = os.path.join(manual_dir, LABEL_DIR)
  files = {SEEN_FILE: os.path.join(label_dir, SEEN_FILE),
           UNSEEN_FILE: os.path.join(label_dir, UNSEEN_FILE),
           TOP_UNSEEN_FILE: os.path.join(label_dir, TOP_UNSEEN_FILE),
           DESCRIPTIONS_FILE: os.path.join(label_dir, DESCRIPTIONS_FILE)}
  for path in files.values():
    _require_file(path)
  files[EMBEDDING_FILE] = find_embedding_file(manual_dir)
  seen = read_seen_mids(files[SEEN_FILE])
  unseen = read_unseen_mids(files[UNSEEN_FILE])
  both = sorted(set(seen) & set(unseen))
  if both:
    raise ValueError(f"{files[UNSEEN_FILE]}: MID {both[0]!r} is also a seen class in "
                     f"{files[SEEN_FILE]} ({len(both)} shared); expected disjoint lists")
  top = read_top_unseen(files[TOP_UNSEEN_FILE], len(unseen))
  descriptions = read_descriptions(files[DESCRIPTIONS_FILE])
  label_mids = seen + tuple(unseen[i] for i in top)
  for i, mid in enumerate(label_mids):
    if mid not in descriptions:
      source = (f"{files[SEEN_FILE]} line {i + 1}" if i < len(seen) else
                f"{files[UNSEEN_FILE]} entry {top[i - len(seen)]} (listed in "
                f"{TOP_UNSEEN_FILE})")
      raise ValueError(f"{files[DESCRIPTIONS_FILE]}: no name for class MID {mid!r} "
                       f"({source}); expected a line '{mid},<name>'")
  names = tuple(descriptions[m] for m in label_mids)

  path = files[EMBEDDING_FILE]
  seen_vecs, unseen_vecs = emb_lib.load_open_images_embeddings(path, num_seen=None,
                                                               normalise=False)
  if seen_vecs.shape[0] != len(seen):
    raise ValueError(f"{path}: entry 0 (seen vectors) has {seen_vecs.shape[0]} rows, but "
                     f"{files[SEEN_FILE]} lists {len(seen)} classes (one row per class)")
  if unseen_vecs.shape[0] != len(unseen):
    raise ValueError(f"{path}: entry 1 (unseen vectors) has {unseen_vecs.shape[0]} rows, but "
                     f"{files[UNSEEN_FILE]} lists {len(unseen)} classes (one row per class)")
  # Official: normalize(src_att[0]), normalize(src_att[1][idx_top_unseen]).
  table = np.concatenate([seen_vecs, unseen_vecs[top]], axis=0)
  what = f"{path} (rows: {SEEN_FILE} classes, then the {TOP_UNSEEN_FILE} rows of entry 1)"
  table = emb_lib.l2_normalise_rows(table, what, [f"{m} = {n}" for m, n in
                                                  zip(label_mids, names)])
  return LabelInfo(seen_mids=seen, unseen_mids=unseen, top_unseen=top, label_mids=label_mids,
                   label_names=names, embeddings=table, files=files)


# ------------------------------------------------------------------ h5 files

@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """The h5 files of one split, scanned (keys and shapes only).

  Attributes:
    split: "train" or "test".
    paths: [F] files, sorted.
    counts: [F] images per file.
  """

  split: str
  paths: tuple[str, ...]
  counts: tuple[int, ...]

  @property
  def total(self) -> int:
    return int(sum(self.counts))

  @property
  def offsets(self) -> tuple[int, ...]:
    """Position (in the split) of each file's first image."""
    return tuple(int(x) for x in np.cumsum((0,) + self.counts[:-1]))


def _is_remote(path: str) -> bool:
  return "://" in path


@contextlib.contextmanager
def open_h5(path: str) -> Iterator[h5py.File]:
  """``h5py.File(path, 'r')`` (remote paths through ``tf.io.gfile``); ValueError naming the
  file when it is not a readable HDF5 file (truncated, corrupt)."""
  try:
    handle = tf.io.gfile.GFile(path, "rb") if _is_remote(path) else None
    f = h5py.File(handle if handle is not None else path, "r")
  except Exception as e:  # noqa: BLE001  (h5py raises OSError and others on damaged files)
    raise ValueError(f"{path}: cannot open as an HDF5 file (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from e
  try:
    yield f
  finally:
    f.close()
    if handle is not None:
      handle.close()


def list_h5_files(manual_dir: str, split: str) -> tuple[str, ...]:
  folder = os.path.join(manual_dir, SPLIT_DIRS[split])
  paths = (tf.io.gfile.glob(os.path.join(folder, "*.h5")) if _is_remote(folder)
           else globlib.glob(os.path.join(folder, "*.h5")))
  if not paths:
    raise FileNotFoundError(f"{folder}: no *.h5 file for split {split!r}; "
                            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return tuple(sorted(paths))


def _suffixes(split: str, features: bool = True) -> tuple[str, ...]:
  """The keys every image of a ``split`` file must have (``features=False``: the features
  come from an extract folder, the file needs only the label entries)."""
  return (((SUFFIX_FEATURES,) if features else ()) + (SUFFIX_SEEN,)
          + ((SUFFIX_UNSEEN,) if split == "test" else ()))


def image_names(path: str, f: h5py.File, split: str, features: bool = True) -> list[str]:
  """Sorted image names of an open file; ValueError naming the file and key for an unknown
  key or an image missing one of its entries."""
  suffixes = _suffixes(split, features)
  allowed = suffixes + ((SUFFIX_FEATURES,) if not features else ())  # present, not used
  found: dict[str, set[str]] = {}
  for key in f.keys():
    for suffix in (SUFFIX_FEATURES, SUFFIX_SEEN, SUFFIX_UNSEEN):
      if key.endswith(suffix) and len(key) > len(suffix):
        if suffix not in allowed:
          raise ValueError(f"{path}: unexpected key {key!r}: {split} files hold only "
                           f"{['<name>' + s for s in suffixes]}")
        found.setdefault(key[:-len(suffix)], set()).add(suffix)
        break
    else:
      raise ValueError(f"{path}: unexpected key {key!r}; expected keys "
                       f"{['<name>' + s for s in suffixes]} per image")
  names = sorted(found)
  for name in names:
    missing = [s for s in suffixes if s not in found[name]]
    if missing:
      raise ValueError(f"{path}: missing key {name + missing[0]!r} (image {name!r} has "
                       f"{sorted(name + s for s in found[name])}; expected "
                       f"{[name + s for s in suffixes]})")
  return names


def _expected_shapes(split: str, labels: LabelInfo, features: bool = True
                     ) -> dict[str, tuple[int, ...]]:
  shapes = {SUFFIX_FEATURES: (FEATURE_DIM, NUM_REGIONS)} if features else {}
  shapes[SUFFIX_SEEN] = (labels.num_seen,)
  if split == "test":
    shapes[SUFFIX_UNSEEN] = (len(labels.unseen_mids),)
  return shapes


def _check_dataset(path: str, key: str, obj: Any, shape: tuple[int, ...]) -> None:
  if not isinstance(obj, h5py.Dataset):
    raise ValueError(f"{path}: key {key!r} must be a dataset, got {type(obj).__name__}")
  if tuple(obj.shape) != shape:
    hint = (" (transposed? the official layout is channels x regions)"
            if tuple(obj.shape) == shape[::-1] and len(shape) == 2 else "")
    raise ValueError(f"{path}: key {key!r} must have shape {list(shape)}, got "
                     f"{list(obj.shape)}{hint}")
  if obj.dtype.kind not in "fiub":
    raise ValueError(f"{path}: key {key!r} must be numeric, got dtype {obj.dtype}")


def scan_split(manual_dir: str, split: str, labels: LabelInfo,
               features: extracted.ExtractedFeatures | None = None) -> SplitFiles:
  """Opens every h5 file of ``split`` once (one at a time) and checks keys, shapes, dtypes.

  Reads metadata only (no feature values). Warns about image names that occur in several
  files. With ``features`` (an extract folder), the files need only the label entries and
  every image must have been extracted.
  """
  paths = list_h5_files(manual_dir, split)
  shapes = _expected_shapes(split, labels, features is None)
  counts, seen_names, duplicates = [], set(), []
  for path in paths:
    with open_h5(path) as f:
      names = image_names(path, f, split, features is None)
      if not names:
        raise ValueError(f"{path}: holds no image (no '<name>{SUFFIX_SEEN}' key)")
      if features is not None:
        features.check_listed(names, path)
      for name in names:
        for suffix, shape in shapes.items():
          _check_dataset(path, name + suffix, f.get(name + suffix), shape)
    for name in names:
      if name in seen_names:
        duplicates.append((name, path))
      seen_names.add(name)
    counts.append(len(names))
  if duplicates:
    warnings.warn(f"open_images {split}: {len(duplicates)} image name(s) occur in more than "
                  f"one file (first: {duplicates[0][0]!r} again in {duplicates[0][1]}); each "
                  f"occurrence is kept", stacklevel=2)
  return SplitFiles(split=split, paths=paths, counts=tuple(counts))


# ------------------------------------------------------------------ reading examples

@dataclasses.dataclass(frozen=True)
class ReadSpec:
  """What a worker needs to turn one h5 file into examples (small, picklable for Beam)."""

  split: str
  num_seen: int
  num_unseen_all: int
  top_unseen: tuple[int, ...]
  label_mids: tuple[str, ...]  # our order (seen, then evaluated unseen): error messages
  unseen_mids: tuple[str, ...]  # order of '-unseenlabels': error messages
  total: int  # examples in the split
  spread_keys: bool  # plain path: keys spread over tfds' 128-bit range (see tfds_common.example_key)
  scene_weights: str = ""  # VGG19 file of the scene feature ('' = none); loaded once per process
  scene_sha256: str = ""  # its SHA-256 when the build started (checked by every worker)
  features_dir: str = ""  # an extract folder: features + scene from there ('' = the h5 files)
  feature_shape: tuple[int, int] = (FEATURE_DIM, NUM_REGIONS)  # [C, R] stored there


def _read(path: str, f: h5py.File, key: str) -> np.ndarray:
  try:
    return np.asarray(f[key][()])
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{path}: cannot read key {key!r} (truncated or corrupt file?): "
                     f"{type(e).__name__}: {e}") from e


def _states(path: str, key: str, values: np.ndarray, length: int,
            mids: Sequence[str]) -> np.ndarray:
  if values.shape != (length,):
    raise ValueError(f"{path}: key {key!r} must have shape [{length}], got "
                     f"{list(values.shape)}")
  bad = np.flatnonzero((values != 1) & (values != -1) & (values != 0))
  if bad.size:
    raise ValueError(f"{path}: key {key!r} has state {values[bad[0]].item()!r} at entry {bad[0]}"
                     f" ({mids[bad[0]]}); expected states in {{-1, 0, 1}} ({bad.size} bad entries)")
  return values.astype(np.int8)


def read_file_examples(path: str, offset: int, count: int, spec: ReadSpec
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
  """(key, example) of every image of one h5 file, read one image at a time (with a scene
  feature: ``tfds_common.SCENE_BATCH`` images at a time, from the process's head).

  Args:
    path: the file.
    offset: position (in the split) of its first image.
    count: images the scan found in it (checked again: the file must not have changed).
    spec: ``ReadSpec``.
  """
  if spec.features_dir:
    for key, ex in _read_file_float32(path, offset, count, spec):
      scene = ex.pop("scene")
      if np.abs(scene).max(initial=0) > FP16_MAX or np.abs(ex["features"]).max() > FP16_MAX:
        raise ValueError(f"{spec.features_dir}: image {ex['image_id']!r} has features beyond "
                         "the float16 range")
      yield key, {**ex, "features": ex["features"].astype(np.float16),
                  "scene": scene.astype(np.float16)}
    return
  scene = None
  if spec.scene_weights:
    scene = tfds_common.worker_scene_source(spec.scene_weights, spec.scene_sha256,
                                            FEATURE_DIM, GRID_SHAPE).fn
  yield from tfds_common.to_stored(_read_file_float32(path, offset, count, spec), scene)


def _read_file_float32(path: str, offset: int, count: int, spec: ReadSpec
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
  """``read_file_examples`` with the features still float32 [196, 512]."""
  features = (extracted.worker_features(spec.features_dir, spec.feature_shape)
              if spec.features_dir else None)
  with open_h5(path) as f:
    names = image_names(path, f, spec.split, features is None)
    if len(names) != count:
      raise ValueError(f"{path}: holds {len(names)} images, {count} when scanned (changed "
                       f"during the build?)")
    top = np.asarray(spec.top_unseen, np.int64)
    for i, name in enumerate(names):
      key = name + SUFFIX_FEATURES
      extra = {}
      if features is not None:
        feats, extra["scene"] = features.read(name)
        feats = feats.T  # back to [C, R], as the h5 files store it
      else:
        feats = _read(path, f, key)
      if feats.shape != tuple(spec.feature_shape):
        raise ValueError(f"{path}: key {key!r} must have shape {list(spec.feature_shape)}, "
                         f"got {list(feats.shape)}")
      if feats.dtype.kind not in "fiub":
        raise ValueError(f"{path}: key {key!r} must be numeric, got dtype {feats.dtype}")
      feats = feats.astype(np.float32, copy=False)
      finite = np.isfinite(feats)
      if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise ValueError(f"{path}: key {key!r} has NaN/inf values ({int((~finite).sum())}; "
                         f"first at channel {bad[0]}, region {bad[1]})")
      if np.abs(feats).max() > FP16_MAX:
        raise ValueError(f"{path}: key {key!r} has values beyond the float16 range (|x| > "
                         f"{FP16_MAX:g}); cannot store as float16")
      labels = np.zeros(len(spec.label_mids), np.int8)
      labels[:spec.num_seen] = _states(path, name + SUFFIX_SEEN,
                                       _read(path, f, name + SUFFIX_SEEN), spec.num_seen,
                                       spec.label_mids[:spec.num_seen])
      if spec.split == "test":
        unseen = _states(path, name + SUFFIX_UNSEEN, _read(path, f, name + SUFFIX_UNSEEN),
                         spec.num_unseen_all, spec.unseen_mids)
        labels[spec.num_seen:] = unseen[top]
      yield tfds_common.example_key(offset + i, spec.total, spec.spread_keys), {
          "features": np.ascontiguousarray(feats.T),
          "labels": labels,
          "image_id": name,
          **extra,
      }


def _read_file_element(element: tuple[str, int, int], spec: ReadSpec
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Beam FlatMap function: one (path, offset, count) element -> its examples."""
  path, offset, count = element
  yield from read_file_examples(path, offset, count, spec)


def iter_split_examples(files: SplitFiles, spec: ReadSpec
                        ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Plain path: the files of a split one after the other (one open file at a time)."""
  for path, offset, count in zip(files.paths, files.offsets, files.counts):
    yield from read_file_examples(path, offset, count, spec)


def _beam():
  try:
    return tfds.core.lazy_imports.apache_beam
  except ImportError as e:
    raise ImportError(f"open_images: building with Apache Beam needs the apache-beam package "
                      f"(pip install apache-beam[...runner extras]): {e}") from e


# ------------------------------------------------------------------ metadata

def _file_size(path: str) -> int:
  return int(tf.io.gfile.stat(path).length) if _is_remote(path) else os.path.getsize(path)


def metadata(labels: LabelInfo, splits: dict[str, SplitFiles], manual_dir: str,
             scene: tfds_common.SceneSource | None = None) -> dict[str, Any]:
  """Dataset metadata (see the module docstring); embeddings as a float32 array."""
  s, n = labels.num_seen, labels.num_labels
  out = {
      "label_names": list(labels.label_names),
      "label_mids": list(labels.label_mids),
      **tfds_common.label_split_fields(s, n),
      "unseen_source_rows": [int(i) for i in labels.top_unseen],
      "grid_shape": list(GRID_SHAPE),
      "feature_dim": FEATURE_DIM,
      "num_examples": {k: v.total for k, v in splits.items()},
      "embeddings": {EMBEDDING_SOURCE: labels.embeddings},
      "source_files": {
          **{name: tfds_common.file_fingerprint(path) for name, path in labels.files.items()},
          **{split: [{"file": os.path.relpath(p, manual_dir) if not _is_remote(p) else p,
                      "bytes": _file_size(p), "images": c}
                     for p, c in zip(v.paths, v.counts)] for split, v in splits.items()},
      },
      "provenance": (
          f"Open Images v4 (BiAM/LESA layout): features = h5 '<name>{SUFFIX_FEATURES}' "
          f"[512, 196] transposed to [196, 512], float16; labels = '<name>{SUFFIX_SEEN}' "
          f"({s} classes of {SEEN_FILE}) then '<name>{SUFFIX_UNSEEN}' at the {n - s} rows of "
          f"{TOP_UNSEEN_FILE} (train: 0 = unknown); states 1/-1/0; embeddings "
          f"'{EMBEDDING_SOURCE}' = {EMBEDDING_FILE} rows (seen, then unseen[top 400]) L2-"
          f"normalised per row as the official code; names from {DESCRIPTIONS_FILE}"
          + (f"; {scene.provenance()}" if scene is not None else "")),
  }
  if scene is not None:
    out.update(scene.metadata())
  return out


class OpenImagesMetadata(tfds.core.Metadata):
  """tfds metadata: JSON (``metadata.json``) plus the embeddings as ``embeddings.npz``
  (float32, ~9 MB instead of ~46 MB of JSON numbers; loaded without pickle)."""

  NPZ = "embeddings.npz"

  def save_metadata(self, data_dir):
    data_dir = epath.Path(data_dir)
    content = dict(self)
    embeddings = content.pop("embeddings", {})
    with (data_dir / tfds.core.constants.METADATA_FILENAME).open("w") as f:
      json.dump(content, f)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v, np.float32) for k, v in embeddings.items()})
    (data_dir / self.NPZ).write_bytes(buffer.getvalue())

  def load_metadata(self, data_dir):
    data_dir = epath.Path(data_dir)
    self.clear()
    with (data_dir / tfds.core.constants.METADATA_FILENAME).open("r") as f:
      self.update(json.load(f))
    with np.load(io.BytesIO((data_dir / self.NPZ).read_bytes()), allow_pickle=False) as npz:
      self["embeddings"] = {k: npz[k] for k in npz.files}


# ------------------------------------------------------------------ tfds builder

@dataclasses.dataclass(frozen=True)
class Prepared:
  """Everything validated before tfds writes: label files and the scanned h5 files."""

  manual_dir: str
  labels: LabelInfo
  splits: dict[str, SplitFiles]


def load_and_scan(manual_dir: str, features: extracted.ExtractedFeatures | None = None
                  ) -> Prepared:
  """``load_labels`` + ``scan_split`` of both splits (no feature values are read)."""
  manual_dir = os.path.expanduser(manual_dir)
  if not _is_remote(manual_dir) and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"config field data.manual_dir: folder {manual_dir!r} does not "
                            f"exist; {MANUAL_DOWNLOAD_INSTRUCTIONS}")
  labels = load_labels(manual_dir)
  got = (labels.num_seen, len(labels.unseen_mids), labels.num_labels - labels.num_seen)
  if got != OFFICIAL_SIZES:
    warnings.warn(f"open_images: label files give (seen, unseen in {UNSEEN_FILE}, evaluated "
                  f"unseen) = {got}; the official release has {OFFICIAL_SIZES}",
                  stacklevel=2)
  splits = {split: scan_split(manual_dir, split, labels, features) for split in SPLITS}
  return Prepared(manual_dir=manual_dir, labels=labels, splits=splits)


class OpenImages(tfds_common.RegionBuilder):
  """tfds builder over the official Open Images v4 files; see the module docstring. Records
  in file order, then image-name order within a file; SCENE: ``OpenImagesVgg19Scene``,
  EXTRACTED: ``OpenImagesExtracted``."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  GRID_SHAPE, FEATURE_DIM, CONFIG_FILE = GRID_SHAPE, FEATURE_DIM, CONFIG_FILE  # the module's
  METADATA = OpenImagesMetadata

  _preloaded: Prepared | None = None  # set by ``prepare``: validated before tfds writes
  _features_dir: str = ""  # the extract folder (EXTRACTED), set by ``prepare``
  _use_beam: bool = False

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = (download_config.beam_runner is not None
                      or download_config.beam_options is not None)
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    self.check_prepared_parts(bool(self._features_dir))
    prepared = self._preloaded
    if prepared is None or prepared.manual_dir != manual_dir:
      prepared = load_and_scan(manual_dir, self._extracted_features())
    scene = self._scene if self.SCENE else None
    self.info.metadata.update(metadata(prepared.labels, prepared.splits, manual_dir, scene))
    if self.EXTRACTED:
      self.info.metadata.update(extracted.metadata(
          "Open Images v4", self.builder_config.name, self._extracted_features(),
          self.feature_layout(), "the h5 files' label entries"))
    return {split: self._generate_examples(prepared, split) for split in SPLITS}

  def _generate_examples(self, prepared: Prepared, split: str):
    """Examples of ``split``: a generator (plain path) or, when Beam was requested, the
    PTransform ``beam.Create(files) | beam.FlatMap(read_one_file)``."""
    files = prepared.splits[split]
    labels = prepared.labels
    spec = ReadSpec(split=split, num_seen=labels.num_seen,
                    num_unseen_all=len(labels.unseen_mids),
                    top_unseen=tuple(int(i) for i in labels.top_unseen),
                    label_mids=labels.label_mids, unseen_mids=labels.unseen_mids,
                    total=files.total,
                    spread_keys=not self._use_beam)
    if self.SCENE and self._scene is not None:
      spec = dataclasses.replace(spec, scene_weights=self._scene.weights["file"],
                                 scene_sha256=self._scene.weights["sha256"])
    if self.EXTRACTED:
      grid, dim, _ = self.feature_layout()
      spec = dataclasses.replace(spec, features_dir=self._features_dir,
                                 feature_shape=(dim, grid[0] * grid[1]))
    if not self._use_beam:
      return iter_split_examples(files, spec)
    beam = _beam()
    elements = list(zip(files.paths, files.offsets, files.counts))
    return (f"Files{split}" >> beam.Create(elements)
            | f"Read{split}" >> beam.FlatMap(_read_file_element, spec=spec))


  def _extracted_features(self) -> extracted.ExtractedFeatures | None:
    if not self.EXTRACTED:
      return None
    grid, dim, _ = self.feature_layout()
    return extracted.worker_features(self._features_dir, (dim, grid[0] * grid[1]))


class OpenImagesExtracted(OpenImages, skip_registration=True):
  """``open_images`` on features extracted with ``extract --backbone <name>`` (a CLIP ViT):
  builder config = the backbone's name (``<data_dir>/open_images/<name>/<version>``);
  features = patch tokens [N, D], scene = the class embedding [D], keyed by the image names
  of the h5 files (``<ImageID>.jpg``: extract from the folder of the images themselves),
  whose label entries give the labels (their ``-features`` entries are not needed)."""

  name = "open_images"
  EXTRACTED = True


class OpenImagesVgg19Scene(OpenImages, skip_registration=True):
  """``open_images`` with the BiAM scene feature: builder config ``vgg19_scene`` (its own
  folder, ``<data_dir>/open_images/vgg19_scene/<version>``); see the module docstring."""

  name = "open_images"
  BUILDER_CONFIGS = [tfds_common.vgg19_scene_config()]
  SCENE = True


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"open_images: unknown split {split!r}; expected one of {SPLITS}")


class OpenImagesSource:
  """``DatasetSource`` over a prepared ``OpenImages`` builder.

  Attributes:
    meta: ``DatasetMeta``.
    seen_ids / unseen_ids: our label indices (0..S-1 / S..S+U-1).
    label_mids: the class MID of each label.
  """

  def __init__(self, builder: OpenImages):
    self.builder = builder
    self.meta: DatasetMeta = meta_from_tfds("open_images", builder, SPLITS)
    md = builder.info.metadata
    self.seen_ids = tuple(int(i) for i in md["seen_labels"])
    self.unseen_ids = tuple(int(i) for i in md["unseen_labels"])
    self.label_mids = tuple(md["label_mids"])

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    """Examples {features f16 [196, 512], labels int8 [S + U], image_id} (plus scene f16
    [scene_dim] when the dataset stores it), file order."""
    check_split(split)
    return tfds_common.stored_examples(self.builder, split, self.meta.num_labels,
                                       self.meta.scene_dim)


def _check_sources(builder: OpenImages, manual_dir: str) -> None:
  """ValueError when the label files there differ from those the dataset was built from."""
  names = (SEEN_FILE, UNSEEN_FILE, TOP_UNSEEN_FILE, DESCRIPTIONS_FILE)
  tfds_common.check_source_files(
      builder, {name: os.path.join(manual_dir, LABEL_DIR, name) for name in names},
      skip_missing=True)


def prepare(manual_dir: str = "", data_dir: str | None = None, *,
            beam_runner: Any = None, beam_options: Any = None,
            progress: bool = True, scene: str = "none", scene_weights: str = "",
            backbone: str = "vgg19", features_dir: str = "") -> OpenImages:
  """Builder under ``data_dir``, built from ``manual_dir`` the first time.

  Args:
    manual_dir: the official files (module docstring); may be '' once prepared.
    data_dir: tfds data folder (default ``~/tensorflow_datasets``).
    beam_runner / beam_options: build with Apache Beam (``tfds.download.DownloadConfig``'s
      fields); None for both: the plain single-process path.
    progress: tfds' progress bars.
    scene: 'none', or 'vgg19': the ``vgg19_scene`` config (module docstring).
    scene_weights: the torchvision VGG19 file; needed to build the 'vgg19' dataset; when
      given for a prepared one, it must be the file it was built with.
    backbone: 'vgg19' (the h5 files' features) or a CLIP release (``clip_vit_b16`` ...):
      the features and scene of an extract run in ``features_dir`` (needed to build it).
  """
  if scene not in options.SCENE_CHOICES:
    raise ValueError(f"config field data.scene={scene!r}: expected one of "
                     f"{options.SCENE_CHOICES}")
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  if backbone != "vgg19":
    extracted.extracted_layout(backbone)  # an unknown name fails here
    if scene != "none":
      raise ValueError(f"config field data.scene={scene!r} with data.backbone={backbone!r}: "
                       "the scene feature of extracted features is their class embedding; "
                       "leave data.scene 'none'")
    builder = OpenImagesExtracted(config=tfds.core.BuilderConfig(
        name=backbone, description=f"features of {backbone}"), data_dir=data_dir)
    if not builder.is_prepared() and not features_dir:
      raise ValueError(
          f"open_images with data.backbone={backbone!r} is not prepared under {data_dir!r}: "
          f"give data.manual_dir (the label files and label h5 files) and data.features_dir "
          f"(the extract --out_dir of `main extract --backbone {backbone}`) to build it")
    builder._features_dir = os.path.abspath(os.path.expanduser(features_dir)) \
        if features_dir else ""  # pylint: disable=protected-access
  else:
    builder = (OpenImagesVgg19Scene if scene == "vgg19" else OpenImages)(data_dir=data_dir)
  if builder.is_prepared():
    if manual_dir:
      _check_sources(builder, os.path.expanduser(manual_dir))
    if builder.SCENE and scene_weights:
      tfds_common.check_scene_weights(builder, scene_weights)
    return builder
  if builder.SCENE and not scene_weights:
    raise tfds_common.missing_scene_error("open_images", data_dir, CONFIG_FILE)
  if not manual_dir:
    raise ValueError(
        f"config field data.manual_dir: required to build open_images (not prepared under "
        f"{data_dir!r}), got ''; {MANUAL_DOWNLOAD_INSTRUCTIONS}")
  try:
    if builder.SCENE:  # the weights first (a bad file fails in seconds), before tfds writes
      builder._scene = tfds_common.load_scene_source(  # pylint: disable=protected-access
          os.path.abspath(os.path.expanduser(scene_weights)), FEATURE_DIM, GRID_SHAPE)
      # this process's copy for read_file_examples (Beam workers elsewhere load their own)
      tfds_common.keep_scene_source(builder._scene)  # pylint: disable=protected-access
    prepared = load_and_scan(manual_dir, builder._extracted_features())  # pylint: disable=protected-access
    print(f"open_images: building from {prepared.manual_dir} into {builder.data_dir} "
          f"({prepared.splits['train'].total} train, {prepared.splits['test'].total} test "
          f"images{', Apache Beam' if beam_runner or beam_options else ''}"
          f"{', VGG19 scene feature' if builder.SCENE else ''}"
          f"{', ' + backbone + ' features' if builder.EXTRACTED else ''})", flush=True)
    builder._preloaded = prepared  # pylint: disable=protected-access
    bars = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(progress)
    try:
      # tfds writes into a temporary folder, renamed only on success and removed on error.
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=prepared.manual_dir, try_download_gcs=False, beam_runner=beam_runner,
          beam_options=beam_options))
    finally:
      tfds.display_progress_bar(bars)
  finally:
    builder._preloaded = None  # pylint: disable=protected-access
    builder._scene = None  # pylint: disable=protected-access
    tfds_common.release_scene_sources()
    extracted.release_worker_features()
  return builder


@register_dataset("open_images")
def open_images_factory(data_config) -> OpenImagesSource:
  """Registered factory: reads data.manual_dir (required until prepared), data.data_dir,
  data.scene ('none' / 'vgg19') and data.scene_weights (the torchvision VGG19 file; needed to
  build the 'vgg19' dataset), prepares the dataset if needed (plain path; for Beam run
  ``python -m mlzsl_jax.data.open_images ... --beam``), returns its ``DatasetSource``."""
  manual_dir = options.manual_dir_option(data_config)
  scene, scene_weights = options.scene_option(data_config)
  backbone, features_dir = extracted.backbone_option(data_config)
  return OpenImagesSource(prepare(manual_dir, data_config.get("data_dir", None) or None,
                                  scene=scene, scene_weights=scene_weights,
                                  backbone=backbone, features_dir=features_dir))


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m mlzsl_jax.data.open_images --manual_dir D --data_dir T [--scene vgg19
  --scene_weights W] [--beam -- OPTS]``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  beam_args = []
  if "--" in argv:
    cut = argv.index("--")
    argv, beam_args = argv[:cut], argv[cut + 1:]
  parser = argparse.ArgumentParser(description="Build the open_images tfds dataset.")
  parser.add_argument("--manual_dir", required=True)
  parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
  parser.add_argument("--beam", action="store_true",
                      help="build with Apache Beam; options after '--' go to PipelineOptions")
  parser.add_argument("--scene", default="none", choices=options.SCENE_CHOICES,
                      help="vgg19: also store BiAM's scene feature (builder config "
                           f"{tfds_common.SCENE_CONFIG_NAME!r})")
  parser.add_argument("--scene_weights", default="",
                      help="torchvision's vgg19-dcbb9e9d.pth (with --scene vgg19); Beam "
                           "workers read it from this path")
  args = parser.parse_args(argv)
  beam_options = None
  if args.beam:
    beam_options = _beam().options.pipeline_options.PipelineOptions(flags=beam_args)
  elif beam_args:
    parser.error("Beam options after '--' need --beam")
  weights = os.path.abspath(os.path.expanduser(args.scene_weights)) if args.scene_weights else ""
  builder = prepare(args.manual_dir, args.data_dir, beam_options=beam_options, scene=args.scene,
                    scene_weights=weights)
  print(f"open_images: prepared at {builder.data_dir}: "
        f"{ {s: builder.info.splits[s].num_examples for s in SPLITS} }")

