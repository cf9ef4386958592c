"""Open-vocabulary tagging: a trained workdir + images + any label names -> top-K labels.

  python -m mlzsl_jax.main predict --config configs/biam_digits.py:data=colours \\
      --workdir workdirs/demo --inputs scene.png,other.npy \\
      --labels "red three,green,cyan seven,blue" --top_k 3

Label names need not be labels of the dataset: a name is embedded by the workdir's label
embedding source (``data.embedding``), so any name that source can embed is a label the model
can score, though it never trained on it:
  * colour_digits, 'attributes': a phrase of colour and digit words ("red three", "green",
    "seven"): one-hot colour(s) + one-hot digit(s), L2-normalised, as the dataset's labels;
  * digits_mosaic, 'attributes': digit names and attribute names ("eight", "loop_upper
    vertical_stem"), the rows / columns of its attribute table;
  * 'sentence' (both): any text, through the MiniLM model with the dataset's phrase template.
A name the source cannot embed is a ValueError saying which word and what is known.

Inputs: PNG / JPEG images of the dataset's kind (colour_digits: 24x24 RGB scenes;
digits_mosaic: 24x24 grey mosaics, 0..255 = 0..16), turned into region features exactly as
the dataset builder does, or ``.npy`` region-feature arrays [regions, feature_dim] (read with
``allow_pickle=False``). Output per input: the top-K (name, score) pairs and, for region
models, a PNG with the region map of each predicted label.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlzsl_jax.data import attributes
from mlzsl_jax.data import colour_digits
from mlzsl_jax.data import digits_mosaic
from mlzsl_jax.data import embeddings as emb_lib
from mlzsl_jax.registry import Registry

_ARTICLES = {"a", "an", "the"}

# '<dataset>:<source>' -> (names, meta) -> float32 [len(names), dim], rows L2-normalised
NAME_EMBEDDERS: Registry[Callable[[Sequence[str]], np.ndarray]] = Registry(
    "label-name embedder", "data.name:data.embedding")
# '<dataset>' -> (path, meta) -> (features float32 [regions, dim], picture array)
IMAGE_READERS: Registry[Callable] = Registry("image reader", "data.name")


def _words(name: str) -> list[str]:
  return [w for w in name.lower().replace(",", " ").split() if w not in _ARTICLES]


@NAME_EMBEDDERS.register("colour_digits:attributes")
def _colour_attributes(names: Sequence[str]) -> np.ndarray:
  """Colour words set the colour one-hots, digit words the digit one-hots."""
  colours = {c: i for i, c in enumerate(colour_digits.COLOUR_NAMES)}
  digits = {d: i for i, d in enumerate(attributes.DIGIT_NAMES)}
  out = np.zeros((len(names), colour_digits.NUM_COLOURS + colour_digits.NUM_DIGITS),
                 np.float32)
  for row, name in enumerate(names):
    words = _words(name)
    if not words:
      raise ValueError(f"label name {name!r}: empty; expected colour and/or digit words")
    for w in words:
      if w in colours:
        out[row, colours[w]] = 1.0
      elif w in digits:
        out[row, colour_digits.NUM_COLOURS + digits[w]] = 1.0
      else:
        raise ValueError(
            f"label name {name!r}: the 'attributes' source cannot embed the word {w!r}; it "
            f"knows the colours {list(colours)} and the digits {list(digits)} (use the "
            "'sentence' source for free text)")
  return attributes.l2_normalise_rows(out)


@NAME_EMBEDDERS.register("digits_mosaic:attributes")
def _digit_attributes(names: Sequence[str]) -> np.ndarray:
  """Digit names add their attribute rows; attribute names set their column."""
  table = attributes.digit_attribute_table()
  columns = {a: i for i, a in enumerate(attributes.attribute_names())}
  digits = {d: i for i, d in enumerate(attributes.DIGIT_NAMES)}
  out = np.zeros((len(names), table.shape[1]), np.float32)
  for row, name in enumerate(names):
    words = _words(name)
    if not words:
      raise ValueError(f"label name {name!r}: empty; expected digit or attribute names")
    for w in words:
      if w in digits:
        out[row] = np.maximum(out[row], table[digits[w]])
      elif w in columns:
        out[row, columns[w]] = 1.0
      else:
        raise ValueError(
            f"label name {name!r}: the 'attributes' source cannot embed the word {w!r}; it "
            f"knows the digits {list(digits)} and the attributes {list(columns)}")
  return attributes.l2_normalise_rows(out)


def _sentence(template: Callable[[str], str]) -> Callable[[Sequence[str]], np.ndarray]:
  def embed(names: Sequence[str]) -> np.ndarray:
    return emb_lib.require_sentence_embed([template(n) for n in names])
  return embed


NAME_EMBEDDERS.register("colour_digits:sentence")(_sentence(colour_digits.phrase))
NAME_EMBEDDERS.register("digits_mosaic:sentence")(
    _sentence(lambda n: f"the handwritten digit {n}"))


def embed_label_names(config, names: Sequence[str]) -> np.ndarray:
  """[len(names), dim] embeddings of ``names`` by the config's dataset and source."""
  if not names:
    raise ValueError("--labels: no label names given")
  key = f"{config.data.name}:{config.data.embedding}"
  if key not in NAME_EMBEDDERS.names():
    raise ValueError(f"predict: no way to embed new label names for dataset "
                     f"{config.data.name!r} with source {config.data.embedding!r}; known: "
                     f"{sorted(NAME_EMBEDDERS.names())} (or pass only the dataset's label "
                     "names)")
  return NAME_EMBEDDERS.get(key)(list(names))


def _read_picture(path: str, mode: str) -> np.ndarray:
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover
    raise ImportError("predict on image files needs Pillow (pip install pillow)") from e
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert(mode))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image (PNG / JPEG): {e}") from e


def _check_size(path: str, picture: np.ndarray, want: tuple[int, ...], what: str):
  if tuple(picture.shape) != tuple(want):
    raise ValueError(f"{path}: expected a {what} image of shape {list(want)}, got "
                     f"{list(picture.shape)}")


@IMAGE_READERS.register("colour_digits")
def _colour_image(path: str, config) -> tuple[np.ndarray, np.ndarray]:
  params = colour_digits.params_from_config(config.data)
  picture = _read_picture(path, "RGB")
  _check_size(path, picture, params.image_shape, "24x24 RGB colour_digits")
  return colour_digits.region_features(picture[None], params.patch)[0], picture


@IMAGE_READERS.register("digits_mosaic")
def _mosaic_image(path: str, config) -> tuple[np.ndarray, np.ndarray]:
  params = digits_mosaic.params_from_config(config.data)
  picture = _read_picture(path, "L")
  _check_size(path, picture, params.image_shape, "grey digits_mosaic")
  pixels = np.round(picture.astype(np.float32) / 255.0 * digits_mosaic.MAX_PIXEL)
  return digits_mosaic.region_features(pixels[None], params.patch)[0], picture


def read_input(path: str, config, meta) -> tuple[np.ndarray, np.ndarray | None]:
  """(region features float32 [regions, dim], picture or None) of one input file."""
  want = (meta.num_regions, meta.feature_dim)
  if path.endswith(".npy"):
    try:
      feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: cannot read as a .npy array (allow_pickle=False): {e}") from e
    picture = None
  else:
    if config.data.name not in IMAGE_READERS.names():
      raise ValueError(f"{path}: dataset {config.data.name!r} has no image reader; pass "
                       f"region features as .npy [{want[0]}, {want[1]}]")
    feats, picture = IMAGE_READERS.get(config.data.name)(path, config)
  feats = np.asarray(feats, np.float32)
  if feats.shape != want:
    raise ValueError(f"{path}: expected region features of shape {list(want)} "
                     f"([regions, feature_dim] of {meta.name}), got {list(feats.shape)}")
  if not np.isfinite(feats).all():
    raise ValueError(f"{path}: region features hold NaN/inf values")
  return feats, picture


def predict(config, workdir: str, inputs: Sequence[str], label_names: Sequence[str] = (),
            top_k: int = 5, checkpoint: str = "latest", out_dir: str | None = None
            ) -> list[dict]:
  """Tags each input with the top-K of ``label_names`` (default: the dataset's labels).

  Returns one dict per input: {"input": path, "top": [(name, score), ...] best first,
  "scores": {name: score}, "figure": PNG path or None}. Figures (region models) go to
  ``out_dir`` (default WORKDIR/predict), one per input: the image and the region map of each
  predicted label.
  """
  from mlzsl_jax import plots  # pylint: disable=import-outside-toplevel
  from mlzsl_jax import restore  # pylint: disable=import-outside-toplevel

  if not inputs:
    raise ValueError("--inputs: no input files given")
  source, trainer, state, step = restore.restore(config, workdir, checkpoint)
  meta = source.meta
  names = list(label_names) or list(meta.label_names)
  if not 1 <= top_k:
    raise ValueError(f"--top_k={top_k}: expected >= 1")
  known = {n: i for i, n in enumerate(meta.label_names)}
  if label_names and not all(n in known for n in names):
    emb = embed_label_names(config, names)
  else:  # the dataset's own labels: its stored embeddings (exactly what was trained on)
    emb = np.asarray(meta.embedding(config.data.embedding))[[known[n] for n in names]]
  read = [read_input(p, config, meta) for p in inputs]
  feats = jnp.asarray(np.stack([f for f, _ in read]))
  model = nnx.merge(trainer.graphdef, state.params, state.model_state)
  if config.model.get("scene_source", "") == "dataset":
    raise ValueError("predict: this model reads a stored scene feature (model.scene_source="
                     "'dataset'), which plain images do not carry")
  with jax.sharding.use_abstract_mesh(trainer.mesh.abstract_mesh):
    scores = np.asarray(model(feats, jnp.asarray(emb), None, train=False)["scores"],
                        np.float32)
    maps = (np.asarray(plots.REGION_MAPS.get(config.model.name)(model, feats,
                                                                jnp.asarray(emb), None),
                       np.float32)
            if config.model.name in plots.REGION_MAPS.names() else None)
  k = min(top_k, len(names))
  out_dir = out_dir or os.path.join(workdir, "predict")
  results = []
  for i, path in enumerate(inputs):
    order = np.argsort(-scores[i], kind="stable")[:k]
    top = [(names[j], float(scores[i, j])) for j in order]
    figure = None
    if maps is not None and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      figure = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
      plots.plot_region_maps(read[i][1], maps[i][:, order].T, meta.grid_shape,
                             [n for n, _ in top], [f"score {s:.2f}" for _, s in top], figure,
                             suptitle=f"{config.model.name}, step {step}: top {k} of "
                                      f"{len(names)} label names")
    results.append({"input": path, "top": top,
                    "scores": {n: float(s) for n, s in zip(names, scores[i])},
                    "figure": figure})
  return results
