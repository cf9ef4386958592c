"""``xlsa17``: single-label ZSL benchmarks in the layout of Xian et al.'s "xlsa17" release.

Xian, Lampert, Schiele, Akata, "Zero-Shot Learning - A Comprehensive Evaluation of the Good,
the Bad and the Ugly" (CVPR 2017 / TPAMI): ResNet-101 features and the "proposed splits" of
AwA2, CUB, SUN, aPY and AwA1. Users download ``xlsa17.zip`` themselves; its folder
``xlsa17/data/<SUBSET>/`` holds the two files this builder reads (``scipy.io.loadmat``, MATLAB
v5 files; nothing is unpickled):

  res101.mat
    features:    float  [2048, N]  one column per image (ResNet-101 pooled, no cropping)
    labels:      int    [N, 1]     1-based class = row of ``allclasses_names``
    image_files: cell   [N, 1]     image paths (optional here; used as image_id when present)
  att_splits.mat
    allclasses_names: cell  [C, 1]  class names (e.g. 'antelope', 'grizzly+bear')
    att:              float [A, C]  class attribute vectors, each column unit L2 norm
    original_att:     float [A, C]  the raw attribute values (AwA has -1 entries), DEM's input
    trainval_loc, test_seen_loc, test_unseen_loc: int [n, 1]  1-based columns of ``features``
    (train_loc, val_loc: the validation protocol; not read.)

Label space: the SEEN classes (those of the ``trainval_loc`` images) first, then the UNSEEN
classes (those of ``test_unseen_loc``), each in ascending original class id. Every class of
``allclasses_names`` must be seen or unseen, never both; ``test_seen_loc`` images must be of
seen classes.

Stored example (tfds, one dataset per subset, records in the order of the ``*_loc`` vectors):
  features: float16 [1, 2048]  the image's feature column (R = 1 region, grid (1, 1))
  labels:   int8    [C]        +1 for the image's class, -1 for every other class
  image_id: string  []         the ``image_files`` entry as stored, else the 1-based column
                               number of the image in ``features`` ("1", "2", ...)
Splits: "trainval", "test_seen", "test_unseen", and "test" = test_seen then test_unseen.

Memory at prepare: ``res101.mat`` is read whole (a MATLAB v5 file cannot be read in parts;
AwA2's is ~300 MB of float32, the largest subset); tfds' writer then holds at most its
buffer plus one bucket (record keys spread over its buckets: ``tfds_common``).

Dataset metadata (tfds MetadataDict, JSON): label_names (``allclasses_names`` in our order,
as stored), original_class_ids (the 1-based id of each of our labels), seen_labels /
unseen_labels (our indices), grid_shape (1, 1), feature_dim 2048, num_examples per split,
embeddings {"att": ``att`` transposed to float32 [C, A], unit rows as stored in the file;
"original_att": ``original_att`` transposed, float32 [C, A], RAW (not normalised, it may hold
-1 entries): the one embedding whose rows are not L2-normalised, kept raw because DEM uses the
raw values}, and the size and SHA-256 of both source files (a prepared dataset is checked
against the files whenever they are given again).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Iterator

import numpy as np
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from mlzsl_jax.data import options
from mlzsl_jax.data import tfds_common
from mlzsl_jax.data.source import DatasetMeta, NamedLabels, meta_from_tfds, register_dataset

FEATURE_FILE = "res101.mat"
SPLITS_FILE = "att_splits.mat"
FEATURE_DIM = 2048
GRID_SHAPE = (1, 1)
SUBSETS = ("AWA2", "CUB", "SUN", "APY", "AWA1")
STORED_SPLITS = ("trainval", "test_seen", "test_unseen")
SPLITS = STORED_SPLITS + ("test",)
LOC_KEYS = {"trainval": "trainval_loc", "test_seen": "test_seen_loc",
            "test_unseen": "test_unseen_loc"}
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
UNIT_NORM_TOL = 1e-3
FP16_MAX = float(np.finfo(np.float16).max)

# (seen classes, unseen classes, images) of the official release, only for a warning when the
# files given for a subset do not look like that subset.
OFFICIAL_SIZES = {"AWA2": (40, 10, 37322), "CUB": (150, 50, 11788), "SUN": (645, 72, 14340),
                  "APY": (20, 12, 15339), "AWA1": (40, 10, 30475)}

# Bumped whenever stored content changes, so a cache built by older code is never reused.
DATA_VERSION = "1.0.0"

MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download xlsa17.zip (Xian et al., 'Zero-Shot Learning - the Good, the Bad and the Ugly', "
    "proposed splits + ResNet-101 features), unzip it, and set data.manual_dir to "
    "xlsa17/data/<SUBSET> (the folder holding res101.mat and att_splits.mat) or to "
    "xlsa17/data (then data.subset picks the sub-folder).")


@dataclasses.dataclass(frozen=True)
class Xlsa17Data(NamedLabels):
  """Validated content of one subset's two files, in our label order.

  Attributes:
    features: float16 [N, 2048], row i = column i of ``res101.mat:features``.
    label_index: int64 [N], our label (0..C-1) of each image.
    image_ids: [N] strings (``image_files`` entries, else "1".."N").
    image_id_source: "image_files" or "index".
    label_names: [C] names, our order (seen first, then unseen).
    original_class_ids: int64 [C], the 1-based class id of each of our labels.
    num_seen: number of seen classes (labels 0..num_seen-1).
    att: float32 [C, A], rows = ``att`` columns (unit L2 norm), our order.
    original_att: float32 [C, A], rows = ``original_att`` columns (raw), our order.
    locations: split -> int64 [n], 0-based image indices in file order; "test" is test_seen
      followed by test_unseen.
  """

  features: np.ndarray
  label_index: np.ndarray
  image_ids: tuple[str, ...]
  image_id_source: str
  label_names: tuple[str, ...]
  original_class_ids: np.ndarray
  num_seen: int
  att: np.ndarray
  original_att: np.ndarray
  locations: dict[str, np.ndarray]

  def labels(self, index: int) -> np.ndarray:
    """States of image ``index``: int8 [C], +1 at its label, -1 elsewhere."""
    states = np.full(self.num_labels, -1, np.int8)
    states[self.label_index[index]] = 1
    return states


# ------------------------------------------------------------------ reading and validation

def check_subset(subset: str) -> str:
  """The subset name, upper-cased; ValueError naming data.subset when unknown."""
  if not isinstance(subset, str) or subset.upper() not in SUBSETS:
    raise ValueError(f"config field data.subset: expected one of {SUBSETS}, got {subset!r}")
  return subset.upper()


def find_source_dir(manual_dir: str, subset: str) -> str:
  """The folder holding both files: ``manual_dir`` itself, else ``manual_dir/<subset>``.

  Raises FileNotFoundError naming the folder and each missing file.
  """
  subset = check_subset(subset)
  manual_dir = os.path.expanduser(manual_dir)
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
        f"config field data.manual_dir: folder {manual_dir!r} does not exist; "
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  for folder in (manual_dir, os.path.join(manual_dir, subset)):
    if all(os.path.isfile(os.path.join(folder, f)) for f in (FEATURE_FILE, SPLITS_FILE)):
      return folder
  # Report the missing files of the folder that holds any of them (else of manual_dir).
  folder = next((d for d in (manual_dir, os.path.join(manual_dir, subset))
                 if any(os.path.isfile(os.path.join(d, f))
                        for f in (FEATURE_FILE, SPLITS_FILE))), manual_dir)
  missing = [os.path.join(folder, f) for f in (FEATURE_FILE, SPLITS_FILE)
             if not os.path.isfile(os.path.join(folder, f))]
  raise FileNotFoundError(
      f"xlsa17 {subset}: missing file(s) {missing} (looked in {manual_dir!r} and "
      f"{os.path.join(manual_dir, subset)!r}); {MANUAL_DOWNLOAD_INSTRUCTIONS}")


def read_mat(path: str, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """Variables of a MATLAB .mat file (``scipy.io.loadmat``, no pickle).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: the file is not a readable MATLAB v4/v5/v7 file (truncated, corrupt, v7.3
      HDF5), or a ``required`` key is absent; the message names the file (and key).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found")
  try:
    content = scipy.io.loadmat(path, variable_names=list(required + optional))
  except NotImplementedError as e:  # scipy's answer to v7.3 (HDF5) files
    raise ValueError(f"{path}: a MATLAB v7.3 (HDF5) file; expected a MATLAB v5 file as in "
                     f"the official xlsa17 release (re-save with save(..., '-v7')): {e}") from e
  except Exception as e:  # noqa: BLE001  (scipy raises many types on a damaged file)
    raise ValueError(f"{path}: cannot read as a MATLAB .mat file (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from e
  for key in required:
    if key not in content:
      found = sorted(k for k in content if not k.startswith("__"))
      raise ValueError(f"{path}: missing key {key!r}; expected keys {list(required)}, "
                       f"found {found}")
  return {k: content[k] for k in required + optional if k in content}


def _numeric(path: str, key: str, value: Any) -> np.ndarray:
  value = np.asarray(value)
  if value.dtype.kind not in "biuf":
    raise ValueError(f"{path}: key {key!r} must be a real numeric array, got dtype "
                     f"{value.dtype}")
  return value


def _vector(path: str, key: str, value: Any, expected: str) -> np.ndarray:
  """A MATLAB column (or row) vector as 1-D; ValueError naming file/key otherwise."""
  value = _numeric(path, key, value)
  if value.ndim != 2 or (min(value.shape) != 1 and value.size != 0):
    raise ValueError(f"{path}: key {key!r} must be a vector {expected}, got shape "
                     f"{value.shape}")
  return value.reshape(-1)


def _integers(path: str, key: str, value: np.ndarray, low: int, high: int,
              what: str) -> np.ndarray:
  """Integer-valued entries in [low, high] as int64; ValueError naming file/key otherwise."""
  if value.dtype.kind == "f":
    if not np.all(np.isfinite(value)) or np.any(value != np.round(value)):
      bad = np.where(~np.isfinite(value) | (value != np.round(value)))[0]
      raise ValueError(f"{path}: key {key!r} must hold integer {what}, got {value[bad[0]]} "
                       f"at entry {bad[0]} ({bad.size} such entries)")
  value = value.astype(np.int64)
  bad = np.where((value < low) | (value > high))[0]
  if bad.size:
    raise ValueError(f"{path}: key {key!r}: {what} must be in {low}..{high} (1-based), got "
                     f"{value[bad[0]]} at entry {bad[0]} ({bad.size} out of range)")
  return value


def _strings(path: str, key: str, value: Any, count: int) -> list[str]:
  """A MATLAB cell array of strings ([count, 1], each a 1-element char array) as a list."""
  value = np.asarray(value)
  if value.ndim != 2 or min(value.shape) != 1 or value.size != count:
    raise ValueError(f"{path}: key {key!r} must be a cell array of {count} strings, shape "
                     f"[{count}, 1], got shape {value.shape}")
  out = []
  for i, item in enumerate(value.reshape(-1)):
    if isinstance(item, np.ndarray) and item.dtype.kind == "U" and item.size <= 1:
      out.append(str(item.reshape(-1)[0]) if item.size else "")
    elif isinstance(item, str):
      out.append(item)
    else:
      raise ValueError(f"{path}: key {key!r} entry {i} must be a string (char array), got "
                       f"{type(item).__name__} {getattr(item, 'dtype', '')} "
                       f"{getattr(item, 'shape', '')}")
  return out


def _check_finite(path: str, key: str, value: np.ndarray, axis_name: str) -> None:
  """ValueError naming file/key and the first bad column when ``value`` has NaN/inf."""
  bad_cols = np.where(~np.all(np.isfinite(value), axis=0))[0]
  if bad_cols.size:
    raise ValueError(f"{path}: key {key!r} has NaN/inf values in {bad_cols.size} "
                     f"{axis_name}(s); first: {axis_name} {bad_cols[0] + 1} (1-based)")


def _class_list(ids: np.ndarray, names: list[str], limit: int = 5) -> str:
  return ", ".join(f"{c} ({names[c - 1]!r})" for c in ids[:limit]) + (
      f", ... ({ids.size} in all)" if ids.size > limit else "")


def load_xlsa17(source_dir: str) -> Xlsa17Data:
  """Read and validate ``res101.mat`` and ``att_splits.mat`` of one subset.

  Args:
    source_dir: folder holding both files.

  Returns:
    ``Xlsa17Data`` in our label order (seen classes first, then unseen, each ascending id).

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: unreadable file, missing key, wrong shape/orientation, NaN values, class
      labels or locations out of range, a location in two splits, or a class both seen and
      unseen; the message names the file and the key, with expected vs got.
  """
  res_path = os.path.join(source_dir, FEATURE_FILE)
  att_path = os.path.join(source_dir, SPLITS_FILE)
  res = read_mat(res_path, ("features", "labels"), ("image_files",))
  splits = read_mat(att_path, ("allclasses_names", "att", "original_att") +
                    tuple(LOC_KEYS.values()))

  # res101.mat: features [2048, N], labels [N, 1].
  features = _numeric(res_path, "features", res["features"])
  if features.ndim != 2 or features.shape[0] != FEATURE_DIM:
    hint = (" (transposed? the official layout has one column per image)"
            if features.ndim == 2 and features.shape[1] == FEATURE_DIM else "")
    raise ValueError(f"{res_path}: key 'features' must have shape [{FEATURE_DIM}, N], got "
                     f"{features.shape}{hint}")
  num_images = features.shape[1]
  if num_images == 0:
    raise ValueError(f"{res_path}: key 'features' holds no image (shape {features.shape})")
  _check_finite(res_path, "features", features, "image column")
  too_big = np.where((features.max(axis=0) > FP16_MAX) | (features.min(axis=0) < -FP16_MAX))[0]
  if too_big.size:
    raise ValueError(f"{res_path}: key 'features' has values beyond the float16 range "
                     f"(|x| > {FP16_MAX:g}) in {too_big.size} image column(s); first: column "
                     f"{too_big[0] + 1}")
  labels = _vector(res_path, "labels", res["labels"], f"[{num_images}, 1]")
  if labels.size != num_images:
    raise ValueError(f"{res_path}: key 'labels' must have {num_images} entries (one per "
                     f"'features' column), shape [{num_images}, 1], got {res['labels'].shape}")

  # att_splits.mat: names [C, 1], att / original_att [A, C].
  raw_names = np.asarray(splits["allclasses_names"])
  num_classes = raw_names.size
  names = _strings(att_path, "allclasses_names", raw_names, num_classes)
  if num_classes < 2:
    raise ValueError(f"{att_path}: key 'allclasses_names' must name >= 2 classes, got "
                     f"{num_classes}")
  labels = _integers(res_path, "labels", labels, 1, num_classes,
                     f"class ids of the {num_classes} classes in {SPLITS_FILE}:allclasses_names")
  embeddings = {}
  for key in ("att", "original_att"):
    value = _numeric(att_path, key, splits[key])
    if value.ndim != 2 or value.shape[1] != num_classes:
      hint = (" (transposed? the official layout has one column per class)"
              if value.ndim == 2 and value.shape[0] == num_classes else "")
      raise ValueError(f"{att_path}: key {key!r} must have shape [A, {num_classes}] (one "
                       f"column per class of 'allclasses_names'), got {value.shape}{hint}")
    _check_finite(att_path, key, value, "class column")
    embeddings[key] = value.astype(np.float64)
  if embeddings["att"].shape != embeddings["original_att"].shape:
    raise ValueError(f"{att_path}: keys 'att' and 'original_att' must have the same shape, "
                     f"got {embeddings['att'].shape} and {embeddings['original_att'].shape}")
  norms = np.linalg.norm(embeddings["att"], axis=0)
  bad = np.where(np.abs(norms - 1.0) > UNIT_NORM_TOL)[0]
  if bad.size:
    raise ValueError(f"{att_path}: key 'att' must have unit-L2-norm columns (official "
                     f"layout), got norm {norms[bad[0]]:.6g} for class {bad[0] + 1} "
                     f"({bad.size} such classes)")

  # Locations: 1-based image columns, disjoint across splits.
  locations, owner = {}, np.full(num_images, -1, np.int64)
  for s, (split, key) in enumerate(LOC_KEYS.items()):
    loc = _vector(att_path, key, splits[key], "[n, 1]")
    loc = _integers(att_path, key, loc, 1, num_images,
                    f"image locations (columns of {FEATURE_FILE}:features, N = {num_images})")
    if loc.size == 0:
      raise ValueError(f"{att_path}: key {key!r} is empty; expected >= 1 image location")
    index = loc - 1
    uniq, counts = np.unique(index, return_counts=True)
    if np.any(counts > 1):
      raise ValueError(f"{att_path}: key {key!r} lists location {uniq[counts > 1][0] + 1} "
                       f"{counts.max()} times; expected each location once")
    taken = owner[index] >= 0
    if np.any(taken):
      first = index[taken][0]
      other = list(LOC_KEYS.values())[owner[first]]
      raise ValueError(f"{att_path}: location {first + 1} appears in both {other!r} and "
                       f"{key!r} ({int(taken.sum())} shared); expected disjoint splits")
    owner[index] = s
    locations[split] = index

  # Classes: seen = classes of trainval, unseen = classes of test_unseen.
  seen = np.unique(labels[locations["trainval"]])
  unseen = np.unique(labels[locations["test_unseen"]])
  both = np.intersect1d(seen, unseen)
  if both.size:
    raise ValueError(
        f"{att_path}: keys 'trainval_loc' and 'test_unseen_loc' share class(es) "
        f"{_class_list(both, names)} (labels from {FEATURE_FILE}); expected disjoint seen and "
        f"unseen classes")
  stray = np.setdiff1d(np.unique(labels[locations["test_seen"]]), seen)
  if stray.size:
    raise ValueError(
        f"{att_path}: key 'test_seen_loc' has images of class(es) {_class_list(stray, names)} "
        f"that no 'trainval_loc' image has; expected only seen classes")
  absent = np.setdiff1d(np.arange(1, num_classes + 1), np.concatenate([seen, unseen]))
  if absent.size:
    raise ValueError(
        f"{att_path}: class(es) {_class_list(absent, names)} of 'allclasses_names' have no "
        f"image in 'trainval_loc' or 'test_unseen_loc'; expected every class seen or unseen")

  order = np.concatenate([seen, unseen])  # 1-based original ids in our label order
  ours = np.empty(num_classes + 1, np.int64)
  ours[order] = np.arange(num_classes)
  locations["test"] = np.concatenate([locations["test_seen"], locations["test_unseen"]])

  if "image_files" in res:
    image_ids = tuple(_strings(res_path, "image_files", res["image_files"], num_images))
    id_source = "image_files"
  else:
    image_ids = tuple(str(i + 1) for i in range(num_images))
    id_source = "index"

  return Xlsa17Data(
      features=np.ascontiguousarray(features.T.astype(np.float16)),
      label_index=ours[labels],
      image_ids=image_ids,
      image_id_source=id_source,
      label_names=tuple(names[c - 1] for c in order),
      original_class_ids=order,
      num_seen=int(seen.size),
      att=embeddings["att"].T[order - 1].astype(np.float32),
      original_att=embeddings["original_att"].T[order - 1].astype(np.float32),
      locations=locations,
  )


def metadata(data: Xlsa17Data, subset: str, source_dir: str) -> dict[str, Any]:
  """JSON-able dataset metadata (see the module docstring)."""
  c, s = data.num_labels, data.num_seen
  return {
      "subset": subset,
      "label_names": list(data.label_names),
      "original_class_ids": [int(i) for i in data.original_class_ids],
      **tfds_common.label_split_fields(s, c),
      "grid_shape": list(GRID_SHAPE),
      "feature_dim": FEATURE_DIM,
      "num_examples": {k: int(v.size) for k, v in data.locations.items()},
      "image_id_source": data.image_id_source,
      "embeddings": {"att": data.att.tolist(), "original_att": data.original_att.tolist()},
      "source_files": {f: tfds_common.file_fingerprint(os.path.join(source_dir, f))
                       for f in (FEATURE_FILE, SPLITS_FILE)},
      "provenance": (
          f"xlsa17 {subset} (Xian et al., GBU proposed splits): features = {FEATURE_FILE} "
          f"'features' columns (ResNet-101, 2048-d) as float16; labels = 'labels' (single "
          f"label, +1/-1 over all classes, seen classes of trainval_loc first then unseen "
          f"classes of test_unseen_loc, each ascending original id); embeddings: 'att' = "
          f"{SPLITS_FILE} 'att' (unit L2 columns as stored), 'original_att' = 'original_att' "
          f"RAW, not normalised (DEM's input)"),
  }


def _warn_if_unofficial(data: Xlsa17Data, subset: str) -> None:
  got = (data.num_seen, data.num_labels - data.num_seen, data.features.shape[0])
  if got != OFFICIAL_SIZES[subset]:
    warnings.warn(f"xlsa17 {subset}: files have (seen classes, unseen classes, images) = "
                  f"{got}; the official release has {OFFICIAL_SIZES[subset]}", stacklevel=3)


# ------------------------------------------------------------------ tfds builder

class Xlsa17(tfds_common.LocalBuilder):
  """tfds builder over ``load_xlsa17``; see the module docstring."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=s, version=tfds.core.Version(DATA_VERSION),
                              description=f"xlsa17 {s}: res101.mat + att_splits.mat")
      for s in SUBSETS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS


  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.summary(),
        features=tfds.features.FeaturesDict({
            "features": tfds.features.Tensor(shape=(GRID_SHAPE[0] * GRID_SHAPE[1],
                                                    FEATURE_DIM), dtype=np.float16),
            # The number of classes is only known from the files.
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int8),
            "image_id": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # records stay in the order of the *_loc vectors
    )

  # (source_dir, Xlsa17Data) already read and validated by ``prepare``, so a bad file fails
  # before tfds creates anything under data_dir and the files are read once.
  _preloaded: tuple[str, Xlsa17Data] | None = None

  def _split_generators(self, dl_manager):
    source_dir = os.fspath(dl_manager.manual_dir)
    subset = self.builder_config.name
    if self._preloaded is not None and self._preloaded[0] == source_dir:
      data = self._preloaded[1]
    else:
      data = load_xlsa17(source_dir)
    _warn_if_unofficial(data, subset)
    self.info.metadata.update(metadata(data, subset, source_dir))
    return {split: self._generate_examples(data, split) for split in SPLITS}

  def _generate_examples(self, data: Xlsa17Data, split: str) -> Iterator[tuple[int, dict]]:
    # With disable_shuffling tfds writes records in key order: the keys are the positions in
    # the split, spread over tfds' buckets (bounded memory; tfds_common.example_key).
    total = len(data.locations[split])
    for position, index in enumerate(data.locations[split]):
      yield tfds_common.example_key(position, total), {
          "features": data.features[index][None, :],
          "labels": data.labels(index),
          "image_id": data.image_ids[index],
      }


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"xlsa17: unknown split {split!r}; expected one of {SPLITS}")


def meta_from_builder(builder: Xlsa17) -> DatasetMeta:
  """``DatasetMeta`` from a prepared builder's stored metadata."""
  return meta_from_tfds("xlsa17", builder, SPLITS)


class Xlsa17Source:
  """``DatasetSource`` over a prepared ``Xlsa17`` builder.

  Attributes:
    meta: ``DatasetMeta``.
    seen_ids / unseen_ids: our label indices of the seen (0..S-1) / unseen (S..C-1) classes.
    original_class_ids: the 1-based ``allclasses_names`` row of each of our labels.
  """

  def __init__(self, builder: Xlsa17):
    self.builder = builder
    self.meta = meta_from_builder(builder)
    md = builder.info.metadata
    self.seen_ids = tuple(int(i) for i in md["seen_labels"])
    self.unseen_ids = tuple(int(i) for i in md["unseen_labels"])
    self.original_class_ids = tuple(int(i) for i in md["original_class_ids"])

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    """Examples {features f16 [1, 2048], labels int8 [C], image_id string}, file order."""
    check_split(split)
    return tfds_common.stored_examples(self.builder, split, self.meta.num_labels)


def _check_fingerprint(builder: Xlsa17, source_dir: str) -> None:
  """ValueError when the files in ``source_dir`` differ from those the dataset was built from."""
  tfds_common.check_source_files(
      builder, {name: os.path.join(source_dir, name) for name in (FEATURE_FILE, SPLITS_FILE)})


def prepare(subset: str, manual_dir: str = "", data_dir: str | None = None) -> Xlsa17:
  """Builder for ``subset`` under ``data_dir``, built from ``manual_dir`` the first time.

  Once prepared, ``manual_dir`` may be empty; when given, its files must be the ones the
  dataset was built from (size and SHA-256), else ValueError.
  """
  subset = check_subset(subset)
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  source_dir = find_source_dir(manual_dir, subset) if manual_dir else None
  builder = Xlsa17(config=subset, data_dir=data_dir)
  if builder.is_prepared():
    if source_dir is not None:
      _check_fingerprint(builder, source_dir)
    return builder
  if source_dir is None:
    raise ValueError(
        f"config field data.manual_dir: required to build xlsa17 {subset} (not prepared "
        f"under {data_dir!r}), got ''; {MANUAL_DOWNLOAD_INSTRUCTIONS}")
  print(f"xlsa17: building {subset} from {source_dir} into {builder.data_dir}", flush=True)
  # Validate before tfds touches data_dir; tfds itself writes into a temporary folder that is
  # renamed only on success and removed on error.
  builder._preloaded = (source_dir, load_xlsa17(source_dir))  # pylint: disable=protected-access
  bars = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=source_dir, try_download_gcs=False))
  finally:
    tfds.display_progress_bar(bars)
    builder._preloaded = None  # pylint: disable=protected-access
  return builder


@register_dataset("xlsa17")
def xlsa17_factory(data_config) -> Xlsa17Source:
  """Registered factory: reads data.subset (AWA2/CUB/SUN/APY/AWA1), data.manual_dir (the
  folder of the official files; required until the dataset is prepared) and data.data_dir,
  prepares the tfds dataset if needed, returns its ``DatasetSource``."""
  manual_dir = options.manual_dir_option(data_config)
  subset = data_config.get("subset", "") or ""
  return Xlsa17Source(prepare(subset, manual_dir, data_config.get("data_dir", None) or None))
