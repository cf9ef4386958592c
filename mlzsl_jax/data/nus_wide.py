"""``nus_wide``: NUS-WIDE multi-label zero-shot (925 seen + 81 unseen labels), BiAM layout.

Users download the pre-extracted features and lists of BiAM (Narayan et al., ICCV 2021,
github akshitac8/BiAM, README "NUS-WIDE Step 1"); ``data.manual_dir`` is the folder BiAM calls
``datasets/NUS-WIDE`` (or its parent, holding ``NUS-WIDE/``):

  features/nus_wide_train.h5   one set of datasets per training image, keyed by image name:
      <name>-features   float32 [512, 196]  VGG19 conv5_4 of a 224x224 image, channels x
                                            regions, region r = row * 14 + col
      <name>-labels     int8    [925]       seen-label states, +1 / -1
      <name>-labels_81  int8    [81]        unseen-label states, +1 / -1
  features/nus_wide_test.h5    the same keys; <name>-labels is [1006] (925 seen then the 81
                               unseen; its last 81 entries equal <name>-labels_81)
  NUS_WID_Tags/TagList1k.txt   1,000 tag names, one a line (CRLF in the official file)
  ConceptsList/Concepts81.txt  81 concept names, one a line
  wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300
                               pickle: [float32 [1000, 300] (tag list rows),
                                        float32 [81, 300] (concept rows)]
  img_names.pkl / test_img_names.pkl
                               pickle: {"img_names": [name, ...]} (161,789 / 107,859)

Facts from the official code (BiAM ``util_nus.py`` DATA_LOADER, ``train_nus.py`` test();
LESA ``extract_data/extract_full_NUS_WIDE_images_VGG_feature_2_TFRecord.py``; the label
construction of akshitac8/Generative_MLZSL ``datasets/extract_features/preprocess.py``):
  * seen labels = the tags of TagList1k.txt that are not lines of Concepts81.txt, in file order,
    compared as exact strings after ``splitlines()`` (no case or space folding). In the official
    files 75 of the 81 concepts are tags and 6 are not (computer, fire, map, swimmers, tattoo,
    whales): 1000 - 75 = 925 seen. The unseen labels are the 81 concepts in Concepts81.txt order
    (embedding rows ``pickle[1]``), not the 75 matching tags.
  * embeddings: ``normalize(pickle[0][seen_rows])`` and ``normalize(pickle[1])`` (L2 per row).
  * label states are ``2 * x - 1`` of the 0/1 NUS-WIDE annotations: +1 / -1, never 0 (the
    official AP keeps ``|label| == 1`` and the ranking loss takes ``-label`` as negatives, which
    a 0/1 encoding would break; a 0 is therefore rejected here as a sign of a 0/1 file).
  * train/validation: the first ``int(0.8 * N)`` names of img_names.pkl train, the rest validate.
  * images are read in the order of the name lists; h5 entries of unlisted images are ignored.
The pickles are read with ``restricted_pickle`` (NumPy arrays, lists, dicts, strings only),
never ``pickle.load``. The h5 files are read with h5py, one image at a time, and the records'
keys are spread over tfds' bucket files (``tfds_common``): preparing holds at most tfds'
write buffer plus 1/1000 of a split, whatever the number of images.

Stored example (tfds, raw-bytes encoding; records in the order of the name lists):
  features: float16 [196, 512]  ``<name>-features`` transposed (region r = row * 14 + col)
  labels:   int8    [1006]      states, the 925 seen labels then the 81 unseen
                                (train: ``-labels`` then ``-labels_81``; test: ``-labels``)
  image_id: string  []          the image name as listed
Splits: "train" (all training images), "train80" / "val20" (BiAM's 80/20 split: the first
``int(0.8 * N)`` training images and the rest), "lesa_train" / "lesa_val" (LESA's: all but the
first 5000 training images / those 5000), all read as slices of the stored "train", so nothing
is stored twice, and "test". No scene feature is stored (scene_dim 0): the official pipeline
computes it on the fly with VGG19's frozen fc6/fc7 from these region features.

With ``data.scene='vgg19'`` and ``data.scene_weights`` (torchvision's ``vgg19-dcbb9e9d.pth``)
the builder config ``vgg19_scene`` (``NusWideVgg19Scene``, stored under
``<data_dir>/nus_wide/vgg19_scene/<version>``; the plain dataset is not touched) stores that
feature once: examples add ``scene`` float16 [fc_dim] = BiAM's ``vgg_net`` (eval mode) of the
float32 ``<name>-features`` (before the float16 cast), computed 64 images at a time
(``tfds_common``); metadata adds scene_dim = fc_dim, scene_feature, scene_weights (the file's
path, size and SHA-256: once prepared, a different file given as data.scene_weights is an
error, and none is needed) and a provenance line.

Dataset metadata: label_names (925 seen tags then the 81 concepts), tag_list_rows (row of each
seen label in TagList1k.txt), seen_labels / unseen_labels, grid_shape (14, 14), feature_dim 512,
scene_dim 0, num_examples (the four splits), train80_size, embeddings {"glove": float32
[1006, 300], rows L2-normalised}, source_files (SHA-256 of the small files, byte size of the h5
files: a prepared dataset is checked against the files whenever they are given again).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mlzsl_jax.data import embeddings as emb_lib
from mlzsl_jax.data import extracted
from mlzsl_jax.data import restricted_pickle
from mlzsl_jax.data import options
from mlzsl_jax.data import tfds_common
from mlzsl_jax.data.nus_wide_release import (EMBEDDING_SOURCE, FEATURE_DIM, GRID_SHAPE,
                                             LESA_VAL_SIZE, OFFICIAL_SIZES, train80_size)
from mlzsl_jax.data.source import DatasetMeta, NamedLabels, meta_from_tfds, register_dataset

TRAIN_H5 = os.path.join("features", "nus_wide_train.h5")
TEST_H5 = os.path.join("features", "nus_wide_test.h5")
TAGS_FILE = os.path.join("NUS_WID_Tags", "TagList1k.txt")
CONCEPTS_FILE = os.path.join("ConceptsList", "Concepts81.txt")
EMBEDDINGS_FILE = os.path.join("wiki_contexts", "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300")
TRAIN_NAMES = "img_names.pkl"
TEST_NAMES = "test_img_names.pkl"
SOURCE_FILES = (TRAIN_H5, TEST_H5, TAGS_FILE, CONCEPTS_FILE, EMBEDDINGS_FILE, TRAIN_NAMES,
                TEST_NAMES)
H5_FILES = (TRAIN_H5, TEST_H5)
NAMES_KEY = "img_names"

NUM_REGIONS = GRID_SHAPE[0] * GRID_SHAPE[1]
FEATURE_SHAPE = (FEATURE_DIM, NUM_REGIONS)  # as stored in the h5 files
STORED_SPLITS = ("train", "test")
SPLITS = ("train", "train80", "val20", "lesa_train", "lesa_val", "test")
FEATURES_SUFFIX, LABELS_SUFFIX, UNSEEN_SUFFIX = "-features", "-labels", "-labels_81"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
CONFIG_FILE = "configs/biam_nus_wide.py"  # named in the 'prepare with the scene' hint
FP16_MAX = float(np.finfo(np.float16).max)

# Bumped whenever stored content changes, so a cache built by older code is never reused.
DATA_VERSION = "1.0.0"

MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download BiAM's NUS-WIDE files (github akshitac8/BiAM, README 'NUS-WIDE Step 1': the "
    "pre-computed features nus_wide_train.h5 / nus_wide_test.h5 into features/, plus the "
    "repository's datasets/NUS-WIDE folder with NUS_WID_Tags/TagList1k.txt, "
    "ConceptsList/Concepts81.txt, wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300, "
    "img_names.pkl, test_img_names.pkl) and set data.manual_dir to that NUS-WIDE folder.")


@dataclasses.dataclass(frozen=True)
class NusWideIndex(NamedLabels):
  """Everything but the per-image arrays, read and validated.

  Attributes:
    source_dir: the folder of the official files.
    label_names: [925 + 81] seen tags (TagList1k order) then the concepts (Concepts81 order).
    tag_list_rows: [925] row of each seen label in TagList1k.txt.
    num_seen: 925 for the official files.
    embeddings: float32 [num_labels, 300], rows L2-normalised (official normalisation).
    image_names: split ("train" / "test") -> names in list order.
    unlisted_entries: h5 file -> number of its top-level entries besides the three keys of
      each listed image (ignored, as the official loader ignores them).
  """

  source_dir: str
  label_names: tuple[str, ...]
  tag_list_rows: tuple[int, ...]
  num_seen: int
  embeddings: np.ndarray
  image_names: dict[str, tuple[str, ...]]
  unlisted_entries: dict[str, int]

  @property
  def num_unseen(self) -> int:
    return self.num_labels - self.num_seen

  @property
  def train80_size(self) -> int:
    return train80_size(len(self.image_names["train"]))

  def num_examples(self) -> dict[str, int]:
    n = len(self.image_names["train"])
    return {"train": n, "train80": self.train80_size, "val20": n - self.train80_size,
            "test": len(self.image_names["test"])}

  def path(self, name: str) -> str:
    return os.path.join(self.source_dir, name)


# ------------------------------------------------------------------ files and lists

def find_source_dir(manual_dir: str) -> str:
  """The folder holding the official files: ``manual_dir`` or ``manual_dir/NUS-WIDE``.

  Raises FileNotFoundError naming each missing file.
  """
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
        f"config field data.manual_dir: folder {manual_dir!r} does not exist; "
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  candidates = (manual_dir, os.path.join(manual_dir, "NUS-WIDE"))
  for folder in candidates:
    if all(os.path.isfile(os.path.join(folder, f)) for f in SOURCE_FILES):
      return folder
  folder = max(candidates, key=lambda d: sum(os.path.isfile(os.path.join(d, f))
                                             for f in SOURCE_FILES))
  missing = [os.path.join(folder, f) for f in SOURCE_FILES
             if not os.path.isfile(os.path.join(folder, f))]
  raise FileNotFoundError(f"nus_wide: missing file(s) {missing} (looked in {manual_dir!r} and "
                          f"{candidates[1]!r}); {MANUAL_DOWNLOAD_INSTRUCTIONS}")


def read_name_list(path: str) -> list[str]:
  """Lines of a tag / concept list (``splitlines``: LF or CRLF), validated.

  Raises:
    ValueError: not UTF-8, an empty line, a name with leading/trailing spaces, a duplicate.
  """
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 text file: {e}") from e
  names = text.splitlines()
  if not names:
    raise ValueError(f"{path}: no names (empty file)")
  seen: dict[str, int] = {}
  for line, name in enumerate(names, start=1):
    if not name:
      raise ValueError(f"{path}: line {line} is empty; expected one name a line")
    if name != name.strip():
      raise ValueError(f"{path}: line {line}: name {name!r} has leading/trailing spaces; the "
                       f"official lists have none (names are compared as exact strings)")
    if name in seen:
      raise ValueError(f"{path}: line {line}: name {name!r} repeats line {seen[name]}")
    seen[name] = line
  return names


def label_space(tags: Sequence[str], concepts: Sequence[str]) -> tuple[list[int], list[str]]:
  """(tag_list_rows of the seen labels, all label names) as the official code builds them.

  Seen = tags that are not concepts (exact string match), in tag-list order; unseen = every
  concept in concept-list order (whether or not it is a tag).
  """
  concept_set = set(concepts)
  rows = [i for i, t in enumerate(tags) if t not in concept_set]
  return rows, [tags[i] for i in rows] + list(concepts)


def read_image_names(path: str) -> list[str]:
  """``{"img_names": [...]}`` of a name-list pickle (restricted unpickler), validated."""
  obj = restricted_pickle.load(path)
  if not isinstance(obj, dict) or NAMES_KEY not in obj:
    keys = sorted(map(repr, obj)) if isinstance(obj, dict) else None
    raise ValueError(f"{path}: expected a pickled dict with key {NAMES_KEY!r}, got "
                     f"{type(obj).__name__}" + (f" with keys {keys}" if keys is not None else ""))
  names = obj[NAMES_KEY]
  if isinstance(names, np.ndarray):
    names = names.tolist()
  if not isinstance(names, (list, tuple)) or not names:
    raise ValueError(f"{path}: key {NAMES_KEY!r} must be a non-empty list of image names, got "
                     f"{type(names).__name__}" + (f" of length {len(names)}"
                                                   if hasattr(names, "__len__") else ""))
  tfds_common.check_unique_entries(
      path, names, _name_fault,
      lambda name, first, i: f"key {NAMES_KEY!r} lists image {name!r} twice (entries {first} "
                             f"and {i})")
  return list(names)


def _name_fault(i: int, name: Any) -> str:
  """Why entry ``i`` of a name list is not an image name ('' when it is one)."""
  if isinstance(name, bytes):
    return f"key {NAMES_KEY!r} entry {i} is bytes ({name[:60]!r}); expected str names"
  if not isinstance(name, str) or not name:
    return f"key {NAMES_KEY!r} entry {i} must be a non-empty str, got {name!r}"
  return ""


def open_h5(path: str):
  """``h5py.File(path, "r")``; a truncated or corrupt file becomes ValueError naming it."""
  import h5py  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found")
  try:
    return h5py.File(path, "r")
  except (OSError, RuntimeError, ValueError) as e:
    raise ValueError(f"{path}: cannot open as an HDF5 file (truncated or corrupt?): {e}") from e


def _check_entry(path: str, f, keys: set[str], name: str, suffix: str, shape: tuple[int, ...],
                 kinds: str, what: str, names_file: str) -> None:
  """Dataset ``name + suffix`` exists with ``shape`` and a dtype of ``kinds`` (metadata only,
  through h5py's low-level open: ~0.1 ms per dataset; the official files hold ~700k)."""
  import h5py  # pylint: disable=import-outside-toplevel
  key = name + suffix
  if key not in keys:
    raise ValueError(f"{path}: image {name!r} (listed in {names_file}) has no key {key!r}")
  try:
    ds = h5py.h5d.open(f.id, key.encode("utf-8"))
    got_shape, dtype = tuple(ds.shape), ds.dtype
  except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
    raise ValueError(f"{path}: key {key!r} of image {name!r}: cannot open it as a dataset "
                     f"(a group? truncated or corrupt file?): {e}") from e
  if got_shape != shape:
    hint = (" (transposed? the official layout is channels x regions)"
            if got_shape == shape[::-1] and len(shape) == 2 else "")
    raise ValueError(f"{path}: key {key!r} of image {name!r}: expected {what} of shape "
                     f"{list(shape)}, got {list(got_shape)}{hint}")
  if dtype.kind not in kinds:
    raise ValueError(f"{path}: key {key!r} of image {name!r}: expected a numeric {what}, got "
                     f"dtype {dtype}")


def _label_shapes(split: str, num_seen: int, num_unseen: int) -> dict[str, tuple[int]]:
  return {LABELS_SUFFIX: (num_seen if split == "train" else num_seen + num_unseen,),
          UNSEEN_SUFFIX: (num_unseen,)}


def check_h5_index(path: str, names: Sequence[str], split: str, num_seen: int,
                   num_unseen: int, names_file: str, features: bool = True) -> int:
  """Check that every listed image has its three datasets with the official shapes/dtypes.

  Reads h5 metadata only (no arrays; about a minute for the 161,789 official training
  images). Returns the number of top-level h5 entries besides the three keys of each listed
  image (ignored, as the official loader ignores them).

  Raises:
    ValueError: unreadable file, an image without one of its keys, a wrong shape or dtype;
      the message names the file, the image and the key.
  """
  label_shapes = _label_shapes(split, num_seen, num_unseen)
  with open_h5(path) as f:
    try:
      keys = set(f.keys())
    except (OSError, RuntimeError, ValueError) as e:
      raise ValueError(f"{path}: cannot list its keys (truncated or corrupt?): {e}") from e
    for name in names:
      if features:
        _check_entry(path, f, keys, name, FEATURES_SUFFIX, FEATURE_SHAPE, "f",
                     "float region features", names_file)
      for suffix, shape in label_shapes.items():
        _check_entry(path, f, keys, name, suffix, shape, "iuf", "label-state vector",
                     names_file)
  listed = {n + suffix for n in names for suffix in (FEATURES_SUFFIX, *label_shapes)}
  return len(keys - listed)  # listed names are all top-level (names hold no '/')


def load_index(source_dir: str, features: bool = True) -> NusWideIndex:
  """Read and validate the lists, the embeddings and the h5 key structure (not the arrays).
  ``features=False``: the features come from ``data.features_dir`` (extract); the h5 files
  need only the label entries.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: any inconsistency, naming the file and the entry (see the checks below).
  """
  def path(name):
    return os.path.join(source_dir, name)

  for name in SOURCE_FILES:
    if not os.path.isfile(path(name)):
      raise FileNotFoundError(f"{path(name)}: file not found; {MANUAL_DOWNLOAD_INSTRUCTIONS}")
  tags = read_name_list(path(TAGS_FILE))
  concepts = read_name_list(path(CONCEPTS_FILE))
  rows, label_names = label_space(tags, concepts)
  if not rows:
    raise ValueError(f"{path(TAGS_FILE)}: every tag is a concept of {CONCEPTS_FILE}; no seen "
                     f"label left")
  table = emb_lib.nus_wide_label_embeddings(path(EMBEDDINGS_FILE), rows, len(concepts), tags,
                                            concepts)
  names = {"train": read_image_names(path(TRAIN_NAMES)),
           "test": read_image_names(path(TEST_NAMES))}
  both = set(names["train"]).intersection(names["test"])
  if both:
    raise ValueError(f"{path(TRAIN_NAMES)} and {path(TEST_NAMES)} share {len(both)} image(s), "
                     f"e.g. {sorted(both)[0]!r}; expected disjoint training and test images")
  for split, names_file in (("train", TRAIN_NAMES), ("test", TEST_NAMES)):
    slash = next((n for n in names[split] if "/" in n), None)
    if slash is not None:
      raise ValueError(f"{path(names_file)}: image name {slash!r} contains '/'; the official "
                       f"names are flat (h5 keys '<name>-features')")
  unlisted = {}
  for split, h5_file, names_file in (("train", TRAIN_H5, TRAIN_NAMES),
                                     ("test", TEST_H5, TEST_NAMES)):
    unlisted[h5_file] = check_h5_index(path(h5_file), names[split], split, len(rows),
                                       len(concepts), names_file, features)
  return NusWideIndex(source_dir=source_dir, label_names=tuple(label_names),
                      tag_list_rows=tuple(rows), num_seen=len(rows), embeddings=table,
                      image_names={k: tuple(v) for k, v in names.items()},
                      unlisted_entries=unlisted)


# ------------------------------------------------------------------ per-image arrays

def _read(f, path: str, name: str, suffix: str) -> np.ndarray:
  key = name + suffix
  try:
    return np.asarray(f[key][()])
  except (OSError, RuntimeError, KeyError, ValueError) as e:
    raise ValueError(f"{path}: cannot read key {key!r} of image {name!r} (truncated or "
                     f"corrupt?): {e}") from e


def _states(path: str, name: str, key: str, value: np.ndarray) -> np.ndarray:
  """Label states as int8; ValueError unless every entry is +1 or -1."""
  bad = np.where((value != 1) & (value != -1))[0]
  if bad.size:
    zero_hint = (" (a 0/1-encoded file? the official files hold 2x-1 of the 0/1 annotations)"
                 if np.any(value[bad] == 0) else "")
    raise ValueError(f"{path}: key {key!r} of image {name!r}: states must be +1 or -1, got "
                     f"{value[bad[0]]} at entry {bad[0]} ({bad.size} such entries){zero_hint}")
  return value.astype(np.int8)


def read_example(f, path: str, name: str, split: str, num_seen: int,
                 num_unseen: int, cast: bool = True,
                 features: "extracted.ExtractedFeatures | None" = None) -> dict[str, Any]:
  """One stored example from an open h5 file.

  Returns:
    {"features": float16 [196, 512], "labels": int8 [num_seen + num_unseen], "image_id": name}
    (``cast=False``: the features in the file's precision, for the scene feature).
    With ``features`` (an extract run): features and ``scene`` from there, labels from h5.

  Raises:
    ValueError naming the file, image and key: unreadable data, wrong shape (the file changed
    since it was indexed), NaN/inf or beyond-float16 features, states other than +1/-1, and
    (test) ``-labels`` whose unseen part differs from ``-labels_81``.
  """
  if features is not None:
    regions, scene = features.read(name)
    labels = _read_labels(f, path, name, split, num_seen, num_unseen)
    return {"features": regions.astype(np.float16) if cast else regions, "labels": labels,
            "image_id": name, "scene": scene}
  feats = _read(f, path, name, FEATURES_SUFFIX)
  if feats.shape != FEATURE_SHAPE:
    raise ValueError(f"{path}: key {name + FEATURES_SUFFIX!r} of image {name!r}: expected shape "
                     f"{list(FEATURE_SHAPE)}, got {list(feats.shape)}")
  if not np.all(np.isfinite(feats)):
    raise ValueError(f"{path}: key {name + FEATURES_SUFFIX!r} of image {name!r} has "
                     f"{int(np.sum(~np.isfinite(feats)))} NaN/inf value(s)")
  if np.max(np.abs(feats)) > FP16_MAX:
    raise ValueError(f"{path}: key {name + FEATURES_SUFFIX!r} of image {name!r} has values "
                     f"beyond the float16 range (|x| > {FP16_MAX:g}): max |x| = "
                     f"{float(np.max(np.abs(feats))):g}")
  states = _read_labels(f, path, name, split, num_seen, num_unseen)
  feats = feats.T.astype(np.float16) if cast else feats.T
  return {"features": np.ascontiguousarray(feats), "labels": states, "image_id": name}


def _read_labels(f, path: str, name: str, split: str, num_seen: int,
                 num_unseen: int) -> np.ndarray:
  """int8 [num_seen + num_unseen] states of image ``name`` (see ``read_example``)."""
  shapes = _label_shapes(split, num_seen, num_unseen)
  labels = {}
  for suffix, shape in shapes.items():
    value = _read(f, path, name, suffix)
    if value.shape != shape:
      raise ValueError(f"{path}: key {name + suffix!r} of image {name!r}: expected shape "
                       f"{list(shape)}, got {list(value.shape)}")
    labels[suffix] = _states(path, name, name + suffix, value)
  if split == "train":
    states = np.concatenate([labels[LABELS_SUFFIX], labels[UNSEEN_SUFFIX]])
  else:
    states = labels[LABELS_SUFFIX]
    diff = np.where(states[num_seen:] != labels[UNSEEN_SUFFIX])[0]
    if diff.size:
      raise ValueError(
          f"{path}: image {name!r}: key {name + LABELS_SUFFIX!r} entries {num_seen}.. (the "
          f"unseen labels) differ from key {name + UNSEEN_SUFFIX!r} at {diff.size} label(s), "
          f"first: unseen label {diff[0]} ({states[num_seen + diff[0]]} vs "
          f"{labels[UNSEEN_SUFFIX][diff[0]]}); expected the same states")
  return states


def iter_examples(index: NusWideIndex, split: str,
                  scene: tfds_common.SceneSource | None = None,
                  features: extracted.ExtractedFeatures | None = None
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
  """(position, example) of a stored split ("train" / "test"), one image at a time (with
  ``scene``: plus ``scene``, computed ``tfds_common.SCENE_BATCH`` images at a time; with
  ``features``, an extract run: its features and scene, the h5 files' labels)."""
  h5_file = TRAIN_H5 if split == "train" else TEST_H5
  path = index.path(h5_file)
  with open_h5(path) as f:
    raw = ((position, read_example(f, path, name, split, index.num_seen, index.num_unseen,
                                   cast=False, features=features))
           for position, name in enumerate(index.image_names[split]))
    if features is not None:
      for position, ex in raw:
        scene_value = ex.pop("scene")
        if np.abs(scene_value).max(initial=0) > tfds_common.FP16_MAX:
          raise ValueError(f"image {ex['image_id']!r}: scene feature beyond the float16 range")
        yield position, {**ex, "features": ex["features"].astype(np.float16),
                         "scene": scene_value.astype(np.float16)}
      return
    yield from tfds_common.to_stored(raw, scene.fn if scene is not None else None)


# ------------------------------------------------------------------ metadata

def source_fingerprints(source_dir: str) -> dict[str, dict[str, Any]]:
  """Fingerprints of the official files (the two h5 files: size only, they are ~50 GB)."""
  return {name: tfds_common.file_fingerprint(os.path.join(source_dir, name), name not in H5_FILES)
          for name in SOURCE_FILES}


def metadata(index: NusWideIndex, scene: tfds_common.SceneSource | None = None
             ) -> dict[str, Any]:
  """JSON-able dataset metadata (see the module docstring)."""
  s, c = index.num_seen, index.num_labels
  out = {
      "label_names": list(index.label_names),
      "tag_list_rows": list(index.tag_list_rows),
      **tfds_common.label_split_fields(s, c),
      "grid_shape": list(GRID_SHAPE),
      "feature_dim": FEATURE_DIM,
      "scene_dim": 0,
      "num_examples": index.num_examples(),
      "train80_size": index.train80_size,
      "embeddings": {EMBEDDING_SOURCE: index.embeddings.tolist()},
      "unlisted_h5_entries": dict(index.unlisted_entries),
      "source_files": source_fingerprints(index.source_dir),
      "provenance": (
          f"NUS-WIDE, BiAM layout: features = {TRAIN_H5} / {TEST_H5} '<name>-features' "
          f"(VGG19 conv5_4, [512, 196]) transposed to [196, 512] float16; labels = +1/-1 states, "
          f"{s} seen labels (tags of {TAGS_FILE} not in {CONCEPTS_FILE}, file order) then "
          f"{c - s} unseen (the concepts, file order): train '-labels' + '-labels_81', test "
          f"'-labels'; image order = {TRAIN_NAMES} / {TEST_NAMES}; train80/val20 = first "
          f"int(0.8 N) / rest; embeddings 'glove' = {EMBEDDINGS_FILE} rows (seen tag rows, then "
          f"the 81 concept rows), each L2-normalised (official); "
          + (scene.provenance() if scene is not None else "no scene feature stored")),
  }
  if scene is not None:
    out.update(scene.metadata())
  return out


def _warn_if_unofficial(index: NusWideIndex) -> None:
  got = (index.num_seen, index.num_unseen, len(index.image_names["train"]),
         len(index.image_names["test"]))
  if got != OFFICIAL_SIZES:
    warnings.warn(f"nus_wide: files have (seen labels, unseen labels, training images, test "
                  f"images) = {got}; the official release has {OFFICIAL_SIZES}", stacklevel=3)
  for h5_file, count in index.unlisted_entries.items():
    if count:
      warnings.warn(f"nus_wide: {os.path.join(index.source_dir, h5_file)} has {count} "
                    f"top-level entries besides the three keys of each listed image "
                    f"(ignored, as the official loader ignores them)", stacklevel=3)


# ------------------------------------------------------------------ tfds builder

class NusWide(tfds_common.RegionBuilder):
  """tfds builder over the official BiAM NUS-WIDE files; see the module docstring. Records
  in the order of the name lists; SCENE: ``NusWideVgg19Scene``, EXTRACTED:
  ``NusWideExtracted``."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  GRID_SHAPE, FEATURE_DIM, CONFIG_FILE = GRID_SHAPE, FEATURE_DIM, CONFIG_FILE  # the module's

  # (source_dir, NusWideIndex) already validated by ``prepare``, so a bad file fails before
  # tfds creates anything under data_dir.
  _preloaded: tuple[str, NusWideIndex] | None = None
  _features: extracted.ExtractedFeatures | None = None  # an extract run, set by ``prepare``

  def _split_generators(self, dl_manager):
    source_dir = find_source_dir(os.fspath(dl_manager.manual_dir))
    if self._preloaded is not None and self._preloaded[0] == source_dir:
      index = self._preloaded[1]
    else:
      index = load_index(source_dir, features=not self.EXTRACTED)
    self.check_prepared_parts(self._features is not None)
    _warn_if_unofficial(index)
    scene = self._scene if self.SCENE else None
    self.info.metadata.update(metadata(index, scene))
    if self.EXTRACTED:
      self.info.metadata.update(extracted_metadata(self, self._features))
    return {split: self._generate_examples(index, split, scene, self._features)
            for split in STORED_SPLITS}

  def _generate_examples(self, index: NusWideIndex, split: str,
                         scene: tfds_common.SceneSource | None = None,
                         features: extracted.ExtractedFeatures | None = None):
    # With disable_shuffling tfds writes records in key order: the keys are the positions in
    # the name list, spread over tfds' buckets (bounded memory; tfds_common.example_key).
    yield from tfds_common.spread_keys(iter_examples(index, split, scene, features),
                                       len(index.image_names[split]))


class NusWideVgg19Scene(NusWide, skip_registration=True):
  """``nus_wide`` with the BiAM scene feature: builder config ``vgg19_scene`` (its own folder,
  ``<data_dir>/nus_wide/vgg19_scene/<version>``); see the module docstring."""

  name = "nus_wide"
  BUILDER_CONFIGS = [tfds_common.vgg19_scene_config()]
  SCENE = True


class NusWideExtracted(NusWide, skip_registration=True):
  """``nus_wide`` on features extracted with ``extract --backbone <name>`` (a CLIP ViT):
  builder config = the backbone's name (its own folder, ``<data_dir>/nus_wide/<name>/
  <version>``); features = the patch tokens [N, D], scene = the class embedding [D], labels
  and image lists from the official files (whose h5 files need only the label entries)."""

  name = "nus_wide"
  EXTRACTED = True


def extracted_metadata(builder: NusWide, features: extracted.ExtractedFeatures
                       ) -> dict[str, Any]:
  return extracted.metadata("NUS-WIDE", builder.builder_config.name, features,
                            builder.feature_layout(),
                            f"{TRAIN_H5} / {TEST_H5} label entries")


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"nus_wide: unknown split {split!r}; expected one of {SPLITS} "
                     f"(config fields data.train_split / data.test_split)")


class NusWideSource:
  """``DatasetSource`` over a prepared ``NusWide`` builder.

  Attributes:
    meta: ``DatasetMeta`` (num_examples of the four splits).
    seen_ids / unseen_ids: label indices 0..924 / 925..1005 (official release).
    train80_size: images of the "train80" split (the first ones of "train").
  """

  def __init__(self, builder: NusWide, train_mix_slices: int = 256, mix_seed: int = 0):
    self.builder = builder
    self.train_mix_slices, self.mix_seed = train_mix_slices, mix_seed
    md = builder.info.metadata
    base = meta_from_tfds("nus_wide", builder, STORED_SPLITS)
    n = base.num_examples["train"]
    self.train80_size = int(md.get("train80_size", train80_size(n)))
    lesa = min(LESA_VAL_SIZE, n)
    self._ranges = {"train": ("train", 0, n), "train80": ("train", 0, self.train80_size),
                    "val20": ("train", self.train80_size, n),
                    "lesa_train": ("train", lesa, n), "lesa_val": ("train", 0, lesa),
                    "test": ("test", 0, base.num_examples["test"])}
    self.meta: DatasetMeta = dataclasses.replace(base, num_examples={
        k: end - first for k, (_, first, end) in self._ranges.items()})
    self.seen_ids = tuple(int(i) for i in md["seen_labels"])
    self.unseen_ids = tuple(int(i) for i in md["unseen_labels"])

  def tfds_split(self, split: str) -> str:
    """The tfds split string of ``split`` (all but "train" / "test" are slices of "train")."""
    stored, first, end = self._range(split)
    return stored if split in STORED_SPLITS else f"{stored}[{first}:{end}]"

  def _range(self, split: str) -> tuple[str, int, int]:
    """(stored split, first, end) of ``split`` inside the stored splits."""
    check_split(split)
    return self._ranges[split]

  def as_tf_dataset(self, split: str, mix_slices: int | None = None,
                    seed: int | None = None) -> tf.data.Dataset:
    """Examples {features f16 [196, 512], labels int8 [L], image_id string} (plus scene f16
    [scene_dim] when the dataset stores it).

    Args:
      split: one of ``SPLITS``.
      mix_slices: 0 = the order of the name list (the stored order). n > 1 = the split cut
        into n contiguous slices read side by side, each next example drawn from a random
        slice (``seed``). The official lists are sorted by concept folder ('actor_...',
        'airport_...'), and the stored dataset is ordered (tfds then refuses
        ``shuffle_files``), so a training pipeline should mix slices before its shuffle
        buffer (the official loader draws uniform random batches).
      seed: seed of the slice order and of the draws (mix_slices > 1).
    None (the pipeline's call): training splits ("train", "train80") mix
    ``data.mix_slices`` slices (default 256) with seed ``data.seed``, a fixed order, so a
    resumed run reads the same stream; evaluation splits keep the stored order.
    """
    if mix_slices is None:
      mix_slices = (self.train_mix_slices if split in ("train", "train80", "lesa_train")
                    else 0)
      seed = self.mix_seed if seed is None else seed
    if mix_slices > 1:
      stored, first, end = self._range(split)
      bounds = np.linspace(first, end, min(mix_slices, max(end - first, 1)) + 1).astype(int)
      order = np.random.default_rng(seed).permutation(len(bounds) - 1)
      parts = [self.builder.as_dataset(split=f"{stored}[{bounds[i]}:{bounds[i + 1]}]",
                                       shuffle_files=False)
               for i in order if bounds[i + 1] > bounds[i]]
      ds = tf.data.Dataset.sample_from_datasets(parts, seed=seed,
                                                stop_on_empty_dataset=False)
    else:
      ds = self.builder.as_dataset(split=self.tfds_split(split), shuffle_files=False)
    return ds.map(tfds_common.select_fields(self.meta.num_labels, self.meta.scene_dim))


def _check_fingerprint(builder: NusWide, source_dir: str) -> None:
  """ValueError when the files in ``source_dir`` differ from those the dataset was built from
  (the h5 files: size only)."""
  tfds_common.check_source_files(
      builder, {name: os.path.join(source_dir, name) for name in SOURCE_FILES}, label="")


def prepare(manual_dir: str = "", data_dir: str | None = None, scene: str = "none",
            scene_weights: str = "", backbone: str = "vgg19", features_dir: str = ""
            ) -> NusWide:
  """The ``nus_wide`` builder under ``data_dir``, built from ``manual_dir`` the first time.

  Validation of the lists, embeddings and h5 key structure happens before tfds writes anything;
  per-image checks (NaN, states, unreadable chunks) happen while writing, and tfds then removes
  its temporary folder, so no half-written dataset is left. Once prepared, ``manual_dir`` may
  be empty; when given, its files must be the ones the dataset was built from.

  ``scene='vgg19'``: the ``vgg19_scene`` config (module docstring); ``scene_weights`` (the
  torchvision VGG19 file) is needed to build it and, when given later, must be the same file.

  ``backbone`` other than "vgg19" (a CLIP release, ``clip_vit_b16`` ...): the features and
  scene of an extract run in ``features_dir`` (needed to build it), stored under the builder
  config of that name (``NusWideExtracted``).
  """
  if scene not in options.SCENE_CHOICES:
    raise ValueError(f"config field data.scene={scene!r}: expected one of "
                     f"{options.SCENE_CHOICES}")
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  source_dir = find_source_dir(manual_dir) if manual_dir else None
  if backbone != "vgg19":
    return _prepare_extracted(source_dir, data_dir, scene, backbone, features_dir)
  builder = (NusWideVgg19Scene if scene == "vgg19" else NusWide)(data_dir=data_dir)
  if builder.is_prepared():
    if source_dir is not None:
      _check_fingerprint(builder, source_dir)
    if builder.SCENE and scene_weights:
      tfds_common.check_scene_weights(builder, scene_weights)
    return builder
  if builder.SCENE and not scene_weights:
    raise tfds_common.missing_scene_error("nus_wide", data_dir, CONFIG_FILE)
  if source_dir is None:
    raise ValueError(
        f"config field data.manual_dir: required to build nus_wide (not prepared under "
        f"{data_dir!r}), got ''; {MANUAL_DOWNLOAD_INSTRUCTIONS}")
  print(f"nus_wide: validating {source_dir}", flush=True)
  if builder.SCENE:  # the weights first: a bad file fails in seconds
    builder._scene = tfds_common.load_scene_source(  # pylint: disable=protected-access
        os.path.abspath(os.path.expanduser(scene_weights)), FEATURE_DIM, GRID_SHAPE)
  index = load_index(source_dir)
  print(f"nus_wide: building {index.num_examples()} from {source_dir} into {builder.data_dir}"
        + (f" with the VGG19 scene feature ({scene_weights})" if builder.SCENE else ""),
        flush=True)
  return _build(builder, source_dir, index)


def _build(builder: NusWide, source_dir: str, index: NusWideIndex) -> NusWide:
  """Writes the dataset from the validated ``index`` (and the scene head / extract folder
  ``prepare`` set on the builder), then drops what ``prepare`` set."""
  builder._preloaded = (source_dir, index)  # pylint: disable=protected-access
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=source_dir, try_download_gcs=False))
  finally:
    builder._preloaded = None  # pylint: disable=protected-access
    builder._scene = None  # pylint: disable=protected-access
    if builder._features is not None:  # pylint: disable=protected-access
      builder._features.close()  # pylint: disable=protected-access
    builder._features = None  # pylint: disable=protected-access
  return builder


def _prepare_extracted(source_dir: str | None, data_dir: str, scene: str, backbone: str,
                       features_dir: str) -> NusWide:
  grid, dim, _ = extracted.extracted_layout(backbone)  # an unknown name fails here
  if scene != "none":
    raise ValueError(f"config field data.scene={scene!r} with data.backbone={backbone!r}: the "
                     "scene feature of extracted features is their class embedding; leave "
                     "data.scene 'none'")
  config = tfds.core.BuilderConfig(name=backbone, description=f"features of {backbone}")
  builder = NusWideExtracted(config=config, data_dir=data_dir)
  if builder.is_prepared():
    if source_dir is not None:
      _check_fingerprint(builder, source_dir)
    return builder
  if source_dir is None or not features_dir:
    raise ValueError(
        f"nus_wide with data.backbone={backbone!r} is not prepared under {data_dir!r}: give "
        f"data.manual_dir (the official lists and label h5 files) and data.features_dir (the "
        f"extract --out_dir of `main extract --backbone {backbone}`) to build it")
  features = extracted.ExtractedFeatures(features_dir, (dim, grid[0] * grid[1]), "clip")
  print(f"nus_wide: validating {source_dir} and {features.out_dir}", flush=True)
  index = load_index(source_dir, features=False)
  features.check_listed(index.image_names["train"], os.path.join(source_dir, TRAIN_NAMES))
  features.check_listed(index.image_names["test"], os.path.join(source_dir, TEST_NAMES))
  print(f"nus_wide: building {index.num_examples()} with {backbone} features into "
        f"{builder.data_dir}", flush=True)
  builder._features = features  # pylint: disable=protected-access
  return _build(builder, source_dir, index)


@register_dataset("nus_wide")
def nus_wide_factory(data_config) -> NusWideSource:
  """Registered factory: reads data.manual_dir (the official NUS-WIDE folder; required until
  the dataset is prepared), data.data_dir, data.scene ('none' / 'vgg19') and
  data.scene_weights (the torchvision VGG19 file; needed to build the 'vgg19' dataset),
  prepares the tfds dataset if needed, returns its ``DatasetSource``."""
  manual_dir = options.manual_dir_option(data_config)
  scene, scene_weights = options.scene_option(data_config)
  backbone, features_dir = extracted.backbone_option(data_config)
  return NusWideSource(prepare(manual_dir, data_config.get("data_dir", None) or None,
                               scene=scene, scene_weights=scene_weights, backbone=backbone,
                               features_dir=features_dir),
                       train_mix_slices=int(data_config.get("mix_slices", 256)),
                       mix_seed=int(data_config.get("seed", 0)))
