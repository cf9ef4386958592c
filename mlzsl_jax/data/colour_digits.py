"""``colour_digits``: a compositional multi-object dataset where zero-shot transfer is visible.

Scenes are 3x3 grids of 8x8 cells (24x24 RGB images) holding 2..4 *coloured handwritten
digits*: scikit-learn's 1,797 real 8x8 digits (inside its wheel, nothing downloaded), each
tinted with one of six colours. A label is a (colour, digit) pair: 6 x 10 = 60 labels, named
"red zero" .. "cyan nine", label id = colour * 10 + digit.

Zero-shot split (``unseen_pairs``): 12 held-out pairs, two per colour, chosen so that every
colour and every digit still occurs in seen labels (colour c holds out digits 2c and 2c + 1,
mod 10): an unseen label is a new *combination* of a colour and a digit both seen in training.
Training scenes contain only seen pairs; test scenes draw from all 60. The digit images are
split 70/30 by a seeded permutation (as digits_mosaic): training scenes use only the train
pool, test scenes only the test pool, so no test handwriting was ever seen.

Binding. After a scene's first object, each next one is, with probability ``p_distractor``, a
distractor of an object already placed: the same colour with another digit, or the same digit
in another colour (then a uniform pair otherwise). So colour and digit must be bound within a
region: a model that only detects "red somewhere" and "three somewhere" also fires on "red
three" in a scene of a red five and a green three. ``binding`` marks the scenes where some
present label's colour AND digit both also occur on other objects (the split "test_binding"
is the test scenes so marked).

Rendering: a digit's pixels (0..16) / 16 times the colour's RGB times a per-object brightness
in [0.7, 1]; black background. Region features: the pixels of non-overlapping ``patch`` x
``patch`` patches (default 8: one region per cell, a 3x3 grid of 192-d regions; 4: a 6x6 grid
of 48-d regions), row-major over the grid, each region's pixels in (row, col, channel) order,
values in [0, 1] stored as float16.

Label embeddings (``meta.embeddings``):
  "attributes": one-hot colour (6) concatenated with one-hot digit (10), L2-normalised;
  "sentence":   all-MiniLM-L6-v2 embeddings of "a <colour> <digit>" ("a red three"), when the
                optional ``sentence`` extra is installed at build time.

Stored example: features float16 [regions, patch*patch*3], labels int8 [60] (1 / -1),
image_id, image uint8 [24, 24, 3], cell_labels int8 [9] (label id per cell, -1 blank),
binding int8 [] (0 / 1).
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
from mlzsl_jax.data import digits_mosaic as dm
from mlzsl_jax.data import embeddings as emb_lib
from mlzsl_jax.data import options
from mlzsl_jax.data import tfds_common
from mlzsl_jax.data.source import DatasetMeta, meta_from_tfds, register_dataset

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0)}
COLOUR_NAMES = tuple(COLOURS)
NUM_COLOURS, NUM_DIGITS = len(COLOURS), dm.NUM_CLASSES
NUM_LABELS = NUM_COLOURS * NUM_DIGITS
TILE = dm.TILE
STORED_SPLITS = ("train", "test")
SPLITS = ("train", "test", "test_binding")
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
DATA_VERSION = "1.0.0"


def label_id(colour: int, digit: int) -> int:
  return colour * NUM_DIGITS + digit


def label_names() -> tuple[str, ...]:
  """"red zero" .. "cyan nine" in label-id order."""
  return tuple(f"{c} {d}" for c in COLOUR_NAMES for d in attributes.DIGIT_NAMES)


def unseen_pairs() -> tuple[int, ...]:
  """The 12 held-out label ids: colour c with digits 2c and 2c + 1 (mod 10). Every colour
  keeps 8 seen digits and every digit keeps >= 4 seen colours."""
  return tuple(sorted(label_id(c, (2 * c + j) % NUM_DIGITS)
                      for c in range(NUM_COLOURS) for j in (0, 1)))


def seen_pairs() -> tuple[int, ...]:
  unseen = set(unseen_pairs())
  return tuple(i for i in range(NUM_LABELS) if i not in unseen)


@dataclasses.dataclass(frozen=True)
class SceneParams(digit_grid.GridParams):
  """Everything that determines the generated data (seed, num_train, num_test: ``GridParams``)."""

  patch: int = 8
  min_objects: int = 2
  max_objects: int = 4
  p_distractor: float = 0.7

  cells = (3, 3)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.cells[0] * TILE, self.cells[1] * TILE, 3)

  @property
  def feature_dim(self) -> int:
    return self.patch * self.patch * 3

  @property
  def config_name(self) -> str:
    return (f"s{self.seed}_n{self.num_train}-{self.num_test}_p{self.patch}"
            f"_o{self.min_objects}-{self.max_objects}_d{round(self.p_distractor * 100)}")

  def validate(self) -> "SceneParams":
    """Raise ValueError naming the bad field (config field data.<name>); return self."""
    self.check_ints(("num_train", "num_test", "patch", "min_objects", "max_objects"),
                    "config field data.")
    if TILE * self.cells[0] % self.patch:
      raise ValueError(f"config field data.patch: expected a divisor of 24 (8 = one region "
                       f"per cell, 4 = four), got {self.patch}")
    if not self.min_objects <= self.max_objects <= self.num_cells:
      raise ValueError(f"config fields data.min_objects/max_objects: expected 1 <= min <= "
                       f"max <= {self.num_cells}, got {self.min_objects}..{self.max_objects}")
    if not 0.0 <= float(self.p_distractor) <= 1.0:
      raise ValueError(f"config field data.p_distractor: expected a probability, got "
                       f"{self.p_distractor!r}")
    return self


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"colour_digits: unknown split {split!r}; expected one of {SPLITS} "
                     "(config fields data.train_split / data.test_split)")


def _draw_pair(rng: np.random.Generator, allowed: np.ndarray, placed: list[int],
               p_distractor: float) -> int:
  """A label id from ``allowed``: with probability ``p_distractor`` (and something placed) one
  sharing the colour or the digit (not both) of a placed object, else uniform."""
  if placed and rng.random() < p_distractor:
    anchor = placed[rng.integers(len(placed))]
    colour, digit = divmod(anchor, NUM_DIGITS)
    if rng.random() < 0.5:
      options = allowed[(allowed // NUM_DIGITS == colour) & (allowed % NUM_DIGITS != digit)]
    else:
      options = allowed[(allowed % NUM_DIGITS == digit) & (allowed // NUM_DIGITS != colour)]
    if options.size:
      return int(options[rng.integers(options.size)])
  return int(allowed[rng.integers(allowed.size)])


def needs_binding(cell_labels: np.ndarray) -> bool:
  """True if some present label's colour and digit both also occur on OTHER objects of the
  scene (``cell_labels``: [cells] label ids, -1 blank)."""
  objs = [int(x) for x in cell_labels if x >= 0]
  for i, lab in enumerate(objs):
    colour, digit = divmod(lab, NUM_DIGITS)
    others = objs[:i] + objs[i + 1:]
    same_colour = any(o // NUM_DIGITS == colour and o % NUM_DIGITS != digit for o in others)
    same_digit = any(o % NUM_DIGITS == digit and o // NUM_DIGITS != colour for o in others)
    if same_colour and same_digit:
      return True
  return False


def render(digit_image: np.ndarray, colour: int, brightness: float) -> np.ndarray:
  """One tinted digit: [8, 8] pixels 0..16 -> float32 [8, 8, 3] in [0, 1]."""
  rgb = np.asarray(COLOURS[COLOUR_NAMES[colour]], np.float32)
  return (digit_image.astype(np.float32) / dm.MAX_PIXEL)[:, :, None] * rgb * brightness


def make_scenes(images: np.ndarray, targets: np.ndarray, pool: np.ndarray, n: int,
                rng: np.random.Generator, params: SceneParams,
                allowed: tuple[int, ...]) -> dict[str, np.ndarray]:
  """``n`` scenes of objects with label ids from ``allowed``, digit images from ``pool``.

  Returns:
    image:       uint8 [n, 24, 24, 3]   (rendered floats x 255, rounded)
    labels:      int8  [n, 60]          1 if the pair is present else -1
    cell_labels: int8  [n, 9]           label id per cell (row-major), -1 blank
    binding:     int8  [n]              ``needs_binding`` of each scene
  """
  allowed = np.asarray(allowed, np.int64)
  by_digit = {d: pool[targets[pool] == d] for d in range(NUM_DIGITS)}
  missing = [d for d in sorted({int(a) % NUM_DIGITS for a in allowed}) if by_digit[d].size == 0]
  if missing:
    raise ValueError(f"pool: no image of digit(s) {missing} in a pool of {pool.size} images")
  image = np.zeros((n,) + params.image_shape, np.float32)
  cell_labels = np.full((n, params.num_cells), -1, np.int64)
  for i in range(n):
    k = int(rng.integers(params.min_objects, params.max_objects + 1))
    cells = rng.permutation(params.num_cells)[:k]
    placed: list[int] = []
    for cell in cells:
      lab = _draw_pair(rng, allowed, placed, params.p_distractor)
      placed.append(lab)
      colour, digit = divmod(lab, NUM_DIGITS)
      src = by_digit[digit][rng.integers(by_digit[digit].size)]
      r, c = divmod(int(cell), params.cells[1])
      image[i, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = render(
          images[src], colour, float(rng.uniform(0.7, 1.0)))
      cell_labels[i, cell] = lab
  labels = -np.ones((n, NUM_LABELS), np.int8)
  for i in range(n):
    labels[i, cell_labels[i][cell_labels[i] >= 0]] = 1
  return {"image": np.round(image * 255).astype(np.uint8), "labels": labels,
          "cell_labels": cell_labels.astype(np.int8),
          "binding": np.array([needs_binding(c) for c in cell_labels], np.int8)}


def region_features(image: np.ndarray, patch: int) -> np.ndarray:
  """Pixel patches: uint8 [n, H, W, 3] -> float32 [n, (H/p)*(W/p), p*p*3] in [0, 1], regions
  row-major over the grid, each region's pixels in (row, col, channel) order."""
  image = np.asarray(image)
  if image.ndim != 4 or image.shape[-1] != 3:
    raise ValueError(f"images: expected [n, H, W, 3] RGB, got shape {list(image.shape)}")
  n, h, w, _ = image.shape
  if h % patch or w % patch:
    raise ValueError(f"patch: expected a divisor of the image size {h}x{w}, got {patch}")
  gh, gw = h // patch, w // patch
  x = image.astype(np.float32).reshape(n, gh, patch, gw, patch, 3).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, gh * gw, patch * patch * 3) / 255.0


def generate_split(images: np.ndarray, targets: np.ndarray, params: SceneParams,
                   split: str) -> dict[str, np.ndarray]:
  """All examples of a stored split ("train" / "test"), deterministic in ``params``."""
  if split not in STORED_SPLITS:
    raise ValueError(f"colour_digits: stored splits are {STORED_SPLITS}, got {split!r}")
  params.validate()
  pool = dm.split_pools(len(images), params.seed)[split]
  rng = np.random.default_rng([params.seed, 11 + STORED_SPLITS.index(split)])
  allowed = seen_pairs() if split == "train" else tuple(range(NUM_LABELS))
  out = make_scenes(images, targets, pool, params.num_examples(split), rng, params, allowed)
  out["features"] = region_features(out["image"], params.patch).astype(np.float16)
  out["image_id"] = np.array([f"{split}_{i:06d}" for i in range(len(out["labels"]))],
                             dtype=object)
  out["pool"] = pool
  return out


def attribute_embeddings() -> np.ndarray:
  """float32 [60, 16]: one-hot colour ⊕ one-hot digit, rows L2-normalised."""
  out = np.zeros((NUM_LABELS, NUM_COLOURS + NUM_DIGITS), np.float32)
  for lab in range(NUM_LABELS):
    colour, digit = divmod(lab, NUM_DIGITS)
    out[lab, colour] = out[lab, NUM_COLOURS + digit] = 1.0
  return attributes.l2_normalise_rows(out)


def phrase(name: str) -> str:
  """The sentence embedded for a label name: "red three" -> "a red three"."""
  return f"a {name}"


def make_builder_config(params: SceneParams) -> digit_grid.ParamsConfig:
  return digit_grid.params_config(params, DATA_VERSION, "coloured digit scenes")


class ColourDigits(digit_grid.GridBuilder):
  """tfds builder over ``generate_split``; see the module docstring."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [make_builder_config(SceneParams())]
  NUM_LABELS = NUM_LABELS

  def cell_features(self) -> dict[str, tfds.features.Tensor]:
    """cell_labels int8 [cells] (label id per cell, -1 blank), binding int8 [] (0 / 1)."""
    return {"cell_labels": tfds.features.Tensor(shape=(self.params.num_cells,), dtype=np.int8),
            "binding": tfds.features.Tensor(shape=(), dtype=np.int8)}

  def static_metadata(self) -> dict:
    """JSON-able metadata known without generating data (no sentence embeddings)."""
    params = self.params
    return {
        "label_names": list(label_names()),
        "colour_names": list(COLOUR_NAMES),
        "digit_names": list(attributes.DIGIT_NAMES),
        "seen_labels": list(seen_pairs()),
        "unseen_labels": list(unseen_pairs()),
        "grid_shape": list(params.grid_shape),
        "feature_dim": params.feature_dim,
        "patch": params.patch,
        "params": dataclasses.asdict(params),
        "embeddings": {"attributes": attribute_embeddings().tolist()},
        "provenance": (
            "features: pixel patches of 24x24 RGB scenes of scikit-learn digits tinted in 6 "
            "colours (70/30 seeded pool split of the 1,797 digits); labels: (colour, digit) "
            "pairs present; embeddings: 'attributes' = one-hot colour + one-hot digit, "
            "L2-normalised; 'sentence' = all-MiniLM-L6-v2 of 'a <colour> <digit>' when the "
            "sentence extra is installed (mlzsl_jax/data/colour_digits.py)"),
    }

  def sentence_embeddings(self) -> np.ndarray | None:
    return emb_lib.sentence_embed([phrase(n) for n in label_names()])

  def generate_splits(self) -> dict[str, dict[str, np.ndarray]]:
    """Both stored splits (~5.3 KB per scene: 31.5 MB for 6,000); records the number of
    test scenes that need binding."""
    images, targets = dm.load_digit_images()
    data = {s: generate_split(images, targets, self.params, s) for s in STORED_SPLITS}
    self.info.metadata["num_binding_test"] = int(data["test"]["binding"].sum())
    return data


class ColourDigitsSource:
  """``DatasetSource`` over a prepared ``ColourDigits`` builder; "test_binding" is the test
  split filtered to the scenes where binding is needed."""

  def __init__(self, builder: ColourDigits):
    self.builder = builder
    base = meta_from_tfds("colour_digits", builder, STORED_SPLITS)
    counts = dict(base.num_examples)
    counts["test_binding"] = int(builder.info.metadata["num_binding_test"])
    self.meta: DatasetMeta = dataclasses.replace(base, num_examples=counts)
    self.params = builder.params

  def _stored(self, split: str) -> tf.data.Dataset:
    check_split(split)
    ds = self.builder.as_dataset(split="test" if split == "test_binding" else split,
                                 shuffle_files=False)
    if split == "test_binding":
      ds = ds.filter(lambda ex: ex["binding"] > 0)
    return ds

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    """Examples {features f16 [R, C], labels int8 [60], image_id string} in a fixed order."""
    return self._stored(split).map(
        lambda ex: {k: ex[k] for k in ("features", "labels", "image_id")})

  def pictures(self, split: str) -> tf.data.Dataset:
    """{image uint8 [24, 24, 3], cell_labels int8 [9]} in the order of ``as_tf_dataset``."""
    return self._stored(split).map(lambda ex: {"image": ex["image"],
                                               "cell_labels": ex["cell_labels"]})


def params_from_config(data_config) -> SceneParams:
  d = SceneParams()
  get_int = lambda name, default: options.int_field(data_config, name, default)  # noqa: E731
  return SceneParams(
      seed=get_int("seed", d.seed), num_train=get_int("num_train", d.num_train),
      num_test=get_int("num_test", d.num_test), patch=get_int("patch", d.patch),
      min_objects=get_int("min_objects", d.min_objects),
      max_objects=get_int("max_objects", d.max_objects),
      p_distractor=float(data_config.get("p_distractor", d.p_distractor))).validate()


def prepare(params: SceneParams, data_dir: str | None = None) -> ColourDigits:
  """Builder for ``params`` under ``data_dir``, generating the data the first time."""
  return tfds_common.prepare_generated(ColourDigits, params, make_builder_config,
                                       data_dir or DEFAULT_DATA_DIR, "scenes")


@register_dataset("colour_digits")
def colour_digits_factory(data_config) -> ColourDigitsSource:
  """Registered factory: data.data_dir, seed, num_train, num_test, patch, min_objects,
  max_objects, p_distractor."""
  return ColourDigitsSource(prepare(params_from_config(data_config),
                                    data_config.get("data_dir", None) or None))


# ------------------------------------------------------------------ predict hooks
# New label names and image files as this dataset's (``mlzsl_jax.hooks``; used by predict).

@hooks.NAME_EMBEDDERS.register("colour_digits:attributes")
def embed_attribute_names(names: Sequence[str], config=None) -> np.ndarray:
  """Colour words set the colour one-hots, digit words the digit one-hots: float32
  [len(names), 16], rows L2-normalised."""
  colours = {c: i for i, c in enumerate(COLOUR_NAMES)}
  digits = {d: NUM_COLOURS + i for i, d in enumerate(attributes.DIGIT_NAMES)}

  def add_word(row: np.ndarray, word: str) -> bool:
    column = colours.get(word, digits.get(word))
    if column is not None:
      row[column] = 1.0
    return column is not None

  return attributes.l2_normalise_rows(hooks.embed_attribute_words(
      names, NUM_COLOURS + NUM_DIGITS, add_word, "colour and/or digit words",
      f"the colours {list(colours)} and the digits {list(digits)} (use the 'sentence' source "
      "for free text)"))


@hooks.IMAGE_READERS.register("colour_digits")
def read_scene_image(path: str, config) -> tuple[np.ndarray, np.ndarray, None]:
  """(region features float32 [regions, patch*patch*3], picture uint8 [24, 24, 3], None)."""
  params = params_from_config(config.data)
  picture = hooks.read_sized_picture(path, "RGB", params.image_shape, "24x24 RGB colour_digits")
  return region_features(picture[None], params.patch)[0], picture, None


@hooks.NAME_EMBEDDERS.register("colour_digits:sentence")
def embed_sentence_names(names, config=None) -> np.ndarray:
  """Any text, through the MiniLM model with the dataset's phrase template."""
  return emb_lib.require_sentence_embed([phrase(n) for n in names])
