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

  * 'clip' (any dataset, ``data.embedding=clip``): any text, through the CLIP text tower of
    ``data.clip_weights`` under the workdir's templates, as the dataset's labels were;
  * 'glove' (NUS-WIDE, Open Images): only the dataset's own label names (the stored
    vocabulary); another name is a one-line error naming it.

Inputs: PNG / JPEG images, or ``.npy`` region-feature arrays [regions, feature_dim] (read
with ``allow_pickle=False``). Images become features as the workdir's data was made:
  * ``data.backbone`` a CLIP release: photos of any size through CLIP's preprocessing and the
    image tower of ``data.clip_weights``: patch tokens, and the class embedding as the scene;
  * ``data.backbone='vgg19'`` (NUS-WIDE, Open Images): the official VGG19 preprocessing and
    network of ``data.scene_weights`` (torchvision's file): conv5_4 regions and fc7 scene;
  * colour_digits / digits_mosaic: 24x24 scenes of the dataset's kind, as its builder does.
Output per input: the top-K (name, score) pairs and, for region models, a PNG with the
region map of each predicted label (the 14x14 grid upsampled over the photo).

``clip_zero_shot`` needs no workdir (``workdir=None``): ``predict --config
configs/clip_zero_shot.py --config.data.clip_weights=FILE --inputs ... --labels ...``.
"""

from __future__ import annotations

import functools
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

# '<dataset>:<source>' (or '*:<source>', any dataset) -> (names, config) -> float32
# [len(names), dim], rows L2-normalised
NAME_EMBEDDERS: Registry[Callable[[Sequence[str], object], np.ndarray]] = Registry(
    "label-name embedder", "data.name:data.embedding")
# '<dataset>' or 'backbone:<family>' -> (path, config) -> (features float32 [regions, dim],
# picture array, scene float32 [scene_dim] or None)
IMAGE_READERS: Registry[Callable] = Registry("image reader", "data.name / data.backbone")


def _words(name: str) -> list[str]:
  return [w for w in name.lower().replace(",", " ").split() if w not in _ARTICLES]


@NAME_EMBEDDERS.register("colour_digits:attributes")
def _colour_attributes(names: Sequence[str], config=None) -> np.ndarray:
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
def _digit_attributes(names: Sequence[str], config=None) -> np.ndarray:
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


def _sentence(template: Callable[[str], str]) -> Callable[[Sequence[str], object], np.ndarray]:
  def embed(names: Sequence[str], config=None) -> np.ndarray:
    return emb_lib.require_sentence_embed([template(n) for n in names])
  return embed


@functools.lru_cache(maxsize=2)
def _clip(weights: str):
  """The CLIP model of a weight file, loaded once per process."""
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel
  return clip_weights.load_clip(weights)


def _clip_weights(config) -> str:
  weights = config.data.get("clip_weights", "") or ""
  if not weights:
    raise ValueError("predict: CLIP features / label names need the CLIP weights: "
                     "--config.data.clip_weights=FILE (the file the workdir's data used)")
  return weights


@NAME_EMBEDDERS.register("*:clip")
def _clip_names(names: Sequence[str], config) -> np.ndarray:
  """Any text: the CLIP text tower under the config's templates (as data.embedding=clip)."""
  from mlzsl_jax.backbones import clip_text, clip_tokenizer  # pylint: disable=import-outside-toplevel
  weights = _clip_weights(config)
  tokenizer = clip_tokenizer.load_tokenizer(weights, config.data.get("clip_vocab", "") or None)
  return clip_text.label_embeddings(list(names), _clip(weights), tokenizer,
                                    config.data.get("clip_templates", "ensemble"))


@NAME_EMBEDDERS.register("*:glove")
def _glove_names(names: Sequence[str], config) -> np.ndarray:
  """GloVe workdirs know only the dataset's label names (the stored rows)."""
  raise ValueError(f"label name {names[0]!r}: not one of the dataset's label names, the only "
                   f"words a '{config.data.embedding}' workdir has vectors for; use a CLIP "
                   "workdir (data.embedding=clip) for free text")


NAME_EMBEDDERS.register("colour_digits:sentence")(_sentence(colour_digits.phrase))
NAME_EMBEDDERS.register("digits_mosaic:sentence")(
    _sentence(lambda n: f"the handwritten digit {n}"))


def embed_label_names(config, names: Sequence[str]) -> np.ndarray:
  """[len(names), dim] embeddings of ``names`` by the config's dataset and source."""
  if not names:
    raise ValueError("--labels: no label names given")
  for key in (f"{config.data.name}:{config.data.embedding}", f"*:{config.data.embedding}"):
    if key in NAME_EMBEDDERS.names():
      return NAME_EMBEDDERS.get(key)(list(names), config)
  raise ValueError(f"predict: no way to embed new label names for dataset "
                   f"{config.data.name!r} with source {config.data.embedding!r}; known: "
                   f"{sorted(NAME_EMBEDDERS.names())} (or pass only the dataset's label "
                   "names)")


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
def _colour_image(path: str, config) -> tuple[np.ndarray, np.ndarray, None]:
  params = colour_digits.params_from_config(config.data)
  picture = _read_picture(path, "RGB")
  _check_size(path, picture, params.image_shape, "24x24 RGB colour_digits")
  return colour_digits.region_features(picture[None], params.patch)[0], picture, None


@IMAGE_READERS.register("digits_mosaic")
def _mosaic_image(path: str, config) -> tuple[np.ndarray, np.ndarray, None]:
  params = digits_mosaic.params_from_config(config.data)
  picture = _read_picture(path, "L")
  _check_size(path, picture, params.image_shape, "grey digits_mosaic")
  pixels = np.round(picture.astype(np.float32) / 255.0 * digits_mosaic.MAX_PIXEL)
  return digits_mosaic.region_features(pixels[None], params.patch)[0], picture, None


def clip_image_features(path: str, weights: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(patch tokens float32 [N, D], the centre crop uint8 [S, S, 3] as the image tower saw it,
  class embedding float32 [D]) of a photo of any size (CLIP's preprocessing)."""
  from mlzsl_jax.backbones import clip_preprocess  # pylint: disable=import-outside-toplevel
  model = _clip(weights)
  try:
    x = clip_preprocess.load_image(path, model.image_size)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image (PNG / JPEG): {e}") from e
  out = model.encode_image(jnp.asarray(x[None]))
  crop = np.clip(np.round((x * clip_preprocess.CLIP_STD + clip_preprocess.CLIP_MEAN) * 255),
                 0, 255).astype(np.uint8)
  return (np.asarray(out["tokens"][0], np.float32), crop,
          np.asarray(out["class"][0], np.float32))


@IMAGE_READERS.register("backbone:clip")
def _clip_image(path: str, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  return clip_image_features(path, _clip_weights(config))


@functools.lru_cache(maxsize=1)
def _vgg19(weights: str):
  from mlzsl_jax.extract import torchvision_weights  # pylint: disable=import-outside-toplevel
  return torchvision_weights.load_vgg19(weights)


@IMAGE_READERS.register("backbone:vgg19")
def _vgg19_image(path: str, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The official BiAM features of a photo: 224x224 bilinear, conv5_4 regions, fc7 scene."""
  from mlzsl_jax.extract import images  # pylint: disable=import-outside-toplevel
  weights = config.data.get("scene_weights", "") or ""
  if not weights:
    raise ValueError(f"{path}: predict on photos with VGG19 features needs the torchvision "
                     "VGG19 file: --config.data.scene_weights=/path/vgg19-dcbb9e9d.pth")
  try:
    x = images.load_image(path, images.IMAGE_SIZE)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read as an image (PNG / JPEG): {e}") from e
  out = _vgg19(weights)(jnp.asarray(x[None]))
  picture = np.clip(np.round((x * images.IMAGENET_STD + images.IMAGENET_MEAN) * 255), 0,
                    255).astype(np.uint8)
  return (np.asarray(out["regions"][0], np.float32), picture,
          np.asarray(out["scene"][0], np.float32))


def _image_reader(config) -> Callable | None:
  """The reader for photos: the workdir's backbone (NUS-WIDE / Open Images), else the
  dataset's own; None when there is none."""
  backbone = config.data.get("backbone", "") or ""
  if backbone:
    return IMAGE_READERS.get("backbone:vgg19" if backbone == "vgg19" else "backbone:clip")
  if config.data.name in IMAGE_READERS.names():
    return IMAGE_READERS.get(config.data.name)
  return None


def read_input(path: str, config, meta) -> tuple[np.ndarray, np.ndarray | None,
                                                 np.ndarray | None]:
  """(region features float32 [regions, dim], picture or None, scene [scene_dim] or None)
  of one input file."""
  want = (meta.num_regions, meta.feature_dim)
  scene = None
  if path.endswith(".npy"):
    try:
      feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: cannot read as a .npy array (allow_pickle=False): {e}") from e
    picture = None
  else:
    reader = _image_reader(config)
    if reader is None:
      raise ValueError(f"{path}: dataset {config.data.name!r} has no image reader; pass "
                       f"region features as .npy [{want[0]}, {want[1]}]")
    feats, picture, scene = reader(path, config)
  feats = np.asarray(feats, np.float32)
  if feats.shape != want:
    raise ValueError(f"{path}: expected region features of shape {list(want)} "
                     f"([regions, feature_dim] of {meta.name}), got {list(feats.shape)}")
  if not np.isfinite(feats).all():
    raise ValueError(f"{path}: region features hold NaN/inf values")
  if scene is not None and np.shape(scene) != (meta.scene_dim,):
    scene = None  # the dataset stores no scene of this kind: the model does not read it
  return feats, picture, scene


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
  if not 1 <= top_k:
    raise ValueError(f"--top_k={top_k}: expected >= 1")
  if not workdir:
    return predict_zero_shot(config, inputs, label_names, top_k, out_dir)
  source, trainer, state, step = restore.restore(config, workdir, checkpoint)
  meta = source.meta
  names = list(label_names) or list(meta.label_names)
  known = {n: i for i, n in enumerate(meta.label_names)}
  if label_names and not all(n in known for n in names):
    emb = embed_label_names(config, names)
  else:  # the dataset's own labels: its stored embeddings (exactly what was trained on)
    emb = np.asarray(meta.embedding(config.data.embedding))[[known[n] for n in names]]
  read = [read_input(p, config, meta) for p in inputs]
  feats = jnp.asarray(np.stack([f for f, _, _ in read]))
  scene = (jnp.asarray(np.stack([s for _, _, s in read]))
           if meta.scene_dim > 0 and all(s is not None for _, _, s in read) else None)
  model = nnx.merge(trainer.graphdef, state.params, state.model_state)
  if config.model.get("scene_source", "") == "dataset" and scene is None:
    raise ValueError("predict: this model reads a stored scene feature (model.scene_source="
                     "'dataset'), which these inputs do not carry (.npy regions, or a "
                     "dataset without a photo reader)")
  with jax.sharding.use_abstract_mesh(trainer.mesh.abstract_mesh):
    scores = np.asarray(model(feats, jnp.asarray(emb), scene, train=False)["scores"],
                        np.float32)
    maps = (np.asarray(plots.REGION_MAPS.get(config.model.name)(model, feats,
                                                                jnp.asarray(emb), scene),
                       np.float32)
            if config.model.name in plots.REGION_MAPS.names() else None)
  return _results(inputs, names, scores, maps, [r[1] for r in read],
                  meta.grid_shape, top_k, out_dir or os.path.join(workdir, "predict"),
                  f"{config.model.name}, step {step}")


def predict_zero_shot(config, inputs: Sequence[str], label_names: Sequence[str], top_k: int,
                      out_dir: str | None) -> list[dict]:
  """``predict`` of ``clip_zero_shot`` without a workdir or dataset: photos and label text
  through the CLIP towers of ``data.clip_weights``, scored by the model of ``config.model``."""
  from mlzsl_jax import plots  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.models import clip_zero_shot  # pylint: disable=import-outside-toplevel
  if config.model.name != "clip_zero_shot":
    raise ValueError(f"predict without --workdir: only the training-free clip_zero_shot "
                     f"(model.name={config.model.name!r} needs its trained workdir)")
  if not label_names:
    raise ValueError("--labels: predict without a workdir needs the label names to score")
  weights = _clip_weights(config)
  clip_model = _clip(weights)
  dim = clip_model.spec.embed_dim
  model = clip_zero_shot.build(config.model, feature_dim=dim, emb_dim=dim,
                               grid_shape=clip_model.grid_shape, scene_dim=dim,
                               rngs=nnx.Rngs(0))
  emb = jnp.asarray(_clip_names(list(label_names), config))
  read = [clip_image_features(p, weights) for p in inputs]
  feats = jnp.asarray(np.stack([f for f, _, _ in read]))
  scene = jnp.asarray(np.stack([s for _, _, s in read]))
  scores = np.asarray(model(feats, emb, scene)["scores"], np.float32)
  maps = np.asarray(plots.REGION_MAPS.get("clip_zero_shot")(model, feats, emb, scene),
                    np.float32)
  return _results(inputs, list(label_names), scores, maps, [r[1] for r in read],
                  clip_model.grid_shape, top_k, out_dir or "predict_out",
                  f"clip_zero_shot ({config.model.mode})")


def _results(inputs, names, scores, maps, pictures, grid_shape, top_k, out_dir,
             title) -> list[dict]:
  """One dict per input (and its region-map PNG when ``maps`` is given)."""
  from mlzsl_jax import plots  # pylint: disable=import-outside-toplevel
  k = min(top_k, len(names))
  results = []
  for i, path in enumerate(inputs):
    order = np.argsort(-scores[i], kind="stable")[:k]
    top = [(names[j], float(scores[i, j])) for j in order]
    figure = None
    if maps is not None and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      figure = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
      plots.plot_region_maps(pictures[i], maps[i][:, order].T, grid_shape,
                             [n for n, _ in top], [f"score {s:.2f}" for _, s in top], figure,
                             suptitle=f"{title}: top {k} of {len(names)} label names")
    results.append({"input": path, "top": top,
                    "scores": {n: float(s) for n, s in zip(names, scores[i])},
                    "figure": figure})
  return results
