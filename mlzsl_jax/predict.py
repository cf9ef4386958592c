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

Each embedder and reader is registered by the module that owns the dataset or backbone
(``mlzsl_jax/hooks.py``); this module names none. ``clip_zero_shot`` (any model without
parameters) needs no workdir (``workdir=None``): ``predict --config
configs/clip_zero_shot.py --config.data.clip_weights=FILE --inputs ... --labels ...``.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlzsl_jax import hooks

def embed_label_names(config, names: Sequence[str]) -> np.ndarray:
  """[len(names), dim] embeddings of ``names`` by the config's dataset and source."""
  if not names:
    raise ValueError("--labels: no label names given")
  hooks.load_all()
  for key in (f"{config.data.name}:{config.data.embedding}", f"*:{config.data.embedding}"):
    if key in hooks.NAME_EMBEDDERS.names():
      return hooks.NAME_EMBEDDERS.get(key)(list(names), config)
  raise ValueError(f"predict: no way to embed new label names for dataset "
                   f"{config.data.name!r} with source {config.data.embedding!r}; known: "
                   f"{sorted(hooks.NAME_EMBEDDERS.names())} (or pass only the dataset's label "
                   "names)")


def _image_reader(config) -> Callable | None:
  """The reader for photos: the workdir's backbone (NUS-WIDE / Open Images), else the
  dataset's own; None when there is none."""
  backbone = config.data.get("backbone", "") or ""
  if backbone:
    return hooks.IMAGE_READERS.get("backbone:vgg19" if backbone == "vgg19"
                                   else "backbone:clip")
  if config.data.name in hooks.IMAGE_READERS.names():
    return hooks.IMAGE_READERS.get(config.data.name)
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
  from mlzsl_jax import restore  # pylint: disable=import-outside-toplevel

  if not inputs:
    raise ValueError("--inputs: no input files given")
  if not 1 <= top_k:
    raise ValueError(f"--top_k={top_k}: expected >= 1")
  hooks.load_all()
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
    maps = (np.asarray(hooks.REGION_MAPS.get(config.model.name)(model, feats,
                                                                jnp.asarray(emb), scene),
                       np.float32)
            if config.model.name in hooks.REGION_MAPS.names() else None)
  return _results(inputs, names, scores, maps, [r[1] for r in read],
                  meta.grid_shape, top_k, out_dir or os.path.join(workdir, "predict"),
                  f"{config.model.name}, step {step}")


def predict_zero_shot(config, inputs: Sequence[str], label_names: Sequence[str], top_k: int,
                      out_dir: str | None) -> list[dict]:
  """``predict`` of a training-free model (no parameters: ``clip_zero_shot``) without a
  workdir or dataset: photos and label text through the CLIP towers of ``data.clip_weights``
  (``hooks``' 'backbone:clip' reader and '*:clip' embedder), scored by ``config.model``."""
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.models import get_model_builder  # pylint: disable=import-outside-toplevel
  if not label_names:
    raise ValueError("--labels: predict without a workdir needs the label names to score")
  hooks.load_all()
  clip_model = clip_weights.cached_clip(clip_weights.weights_from_config(config))
  dim = clip_model.spec.embed_dim
  model = get_model_builder(config.model.name)(
      config.model, feature_dim=dim, emb_dim=dim, grid_shape=clip_model.grid_shape,
      scene_dim=dim, dtype=jnp.float32, rngs=nnx.Rngs(0))
  if jax.tree.leaves(nnx.state(model, nnx.Param)):
    raise ValueError(f"predict without --workdir: model.name={config.model.name!r} has "
                     "trained parameters; give its --workdir (only a training-free model such "
                     "as clip_zero_shot runs without one)")
  emb = jnp.asarray(hooks.NAME_EMBEDDERS.get("*:clip")(list(label_names), config))
  read = [hooks.IMAGE_READERS.get("backbone:clip")(p, config) for p in inputs]
  feats = jnp.asarray(np.stack([f for f, _, _ in read]))
  scene = jnp.asarray(np.stack([s for _, _, s in read]))
  scores = np.asarray(model(feats, emb, scene)["scores"], np.float32)
  maps = (np.asarray(hooks.REGION_MAPS.get(config.model.name)(model, feats, emb, scene),
                     np.float32)
          if config.model.name in hooks.REGION_MAPS.names() else None)
  return _results(inputs, list(label_names), scores, maps, [r[1] for r in read],
                  clip_model.grid_shape, top_k, out_dir or "predict_out",
                  f"{config.model.name}, no training")


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
