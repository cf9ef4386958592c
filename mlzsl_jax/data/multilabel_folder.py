"""``multilabel_folder``: a user's own multi-label zero-shot dataset from a folder of images.

What the user brings (``data.manual_dir`` is the folder; file names are config fields):
  images/                  the images (any tree; ``data.image_dir``, default "images")
  labels.csv               ``image,labels`` rows: the image's path below images/ and its label
                           names separated by '|' (a header row ``image,labels`` is allowed),
                           or ``labels.jsonl``: one ``{"image": "...", "labels": [...]}`` a line
                           (``data.labels_file``)
  label_names.txt          every label name, one a line (``data.names_file``)
  unseen labels            ``data.unseen``: names separated by '|' (or ',' when no name holds
                           one), or a file (one name a line) in the folder
  split.csv (optional)     ``image,split`` rows with split "train" / "test"
                           (``data.split_file``); without it a seeded split:
                           ``data.test_fraction`` (0.2) of the images, ``data.seed``
Features come from an ``extract`` run over images/ (``data.features_dir``, backbone
``data.backbone``: a CLIP release, or vgg19 for the official-style VGG19 regions + fc7 scene),
keyed by the image's path with '/' -> '_'.

Labels: seen = the names file's names that are not unseen (file order), then the unseen
(their order in the names file); states +1 (listed) / -1 (every other label: a folder
dataset is fully annotated). Splits: "train" (training images; their unseen states are kept
but a run trains on the seen labels only) and "test". Label embeddings: ``data.embedding=clip``
(any text; ``mlzsl_jax/data/clip_labels.py``).

Every file is checked before anything is written; a problem is one line naming the file and
row (a label not in the names file, an image missing / unreadable / not extracted, a
duplicate image, an image without labels, an unseen name that is not a label). The prepared
dataset lives under ``<data_dir>/multilabel_folder/<folder name>-<backbone>/<version>``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mlzsl_jax.data import extracted
from mlzsl_jax.data import tfds_common
from mlzsl_jax.data.source import DatasetMeta, meta_from_tfds, register_dataset

DATA_VERSION = "1.0.0"
SPLITS = ("train", "test")
DEFAULTS = {"image_dir": "images", "labels_file": "labels.csv", "names_file": "label_names.txt",
            "split_file": "", "unseen": "", "test_fraction": 0.2}
VGG19_LAYOUT = ((14, 14), 512, 4096)


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """Everything but the features, read and validated."""
  root: str
  label_names: tuple[str, ...]     # seen (names-file order) then unseen
  num_seen: int
  images: dict[str, tuple[str, ...]]  # split -> image paths (relative to the image folder)
  positives: dict[str, tuple[int, ...]]  # image path -> label ids
  fingerprint: str                 # SHA-256 over the list files


def _fail(path: str, row: int | None, message: str) -> ValueError:
  where = f"{path}" + (f", row {row}" if row is not None else "")
  return ValueError(f"{where}: {message}")


def _read_lines(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found (multilabel_folder; see "
                            "docs/own-data.md)")
  with open(path, encoding="utf-8-sig") as f:
    return [line.rstrip("\r\n") for line in f]


def read_names(path: str) -> list[str]:
  """Label names, one a line (blank lines skipped); duplicates are an error."""
  names, first = [], {}
  for row, line in enumerate(_read_lines(path), 1):
    name = line.strip()
    if not name:
      continue
    if name in first:
      raise _fail(path, row, f"label {name!r} listed twice (first at row {first[name]})")
    first[name] = row
    names.append(name)
  if not names:
    raise _fail(path, None, "no label names")
  return names


def read_unseen(spec: str, root: str, known: set[str]) -> list[str]:
  """The unseen label names of ``data.unseen``: a file in the folder, or names separated by
  '|' (or ','); every one must be a label."""
  path = os.path.join(root, spec)
  if spec and os.path.isfile(path):
    names, where = [l.strip() for l in _read_lines(path) if l.strip()], path
  else:
    sep = "|" if "|" in spec else ","
    names, where = [n.strip() for n in spec.split(sep) if n.strip()], "config field data.unseen"
  if not names:
    raise ValueError("config field data.unseen: empty; name the unseen labels ('a|b|c' or a "
                     "file in data.manual_dir)")
  for name in names:
    if name not in known:
      raise ValueError(f"{where}: unseen label {name!r} is not in the label names file")
  if len(set(names)) != len(names):
    raise ValueError(f"{where}: an unseen label is listed twice")
  if len(names) == len(known):
    raise ValueError(f"{where}: every label is unseen; nothing left to train on")
  return names


def read_labels(path: str, known: dict[str, int]) -> dict[str, tuple[int, ...]]:
  """image path -> label ids, from a CSV (``image,labels`` with '|') or JSON-lines file."""
  rows: list[tuple[int, str, list[str]]] = []
  if path.endswith((".jsonl", ".json")):
    for row, line in enumerate(_read_lines(path), 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
        rows.append((row, str(item["image"]), [str(n) for n in item["labels"]]))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise _fail(path, row, f"expected {{\"image\": ..., \"labels\": [...]}}, got "
                    f"{line[:80]!r} ({e})") from e
  else:
    for row, fields in enumerate(csv.reader(_read_lines(path)), 1):
      if not fields or (row == 1 and [f.strip().lower() for f in fields] == ["image", "labels"]):
        continue
      if len(fields) != 2:
        raise _fail(path, row, f"expected 2 fields 'image,labels' (labels separated by '|'),"
                    f" got {len(fields)}")
      rows.append((row, fields[0].strip(), [n.strip() for n in fields[1].split("|")
                                            if n.strip()]))
  out: dict[str, tuple[int, ...]] = {}
  first: dict[str, int] = {}
  for row, image, names in rows:
    if not image:
      raise _fail(path, row, "empty image path")
    if image in first:
      raise _fail(path, row, f"image {image!r} listed twice (first at row {first[image]})")
    first[image] = row
    if not names:
      raise _fail(path, row, f"image {image!r} has no label")
    for name in names:
      if name not in known:
        raise _fail(path, row, f"label {name!r} of image {image!r} is not in the label names "
                    "file")
    out[image] = tuple(sorted({known[n] for n in names}))
  if not out:
    raise _fail(path, None, "no image rows")
  return out


def read_split(path: str, images: Sequence[str]) -> dict[str, list[str]]:
  """The split file: every labelled image exactly once, split "train" or "test"."""
  listed = set(images)
  out: dict[str, list[str]] = {"train": [], "test": []}
  seen_rows: dict[str, int] = {}
  for row, fields in enumerate(csv.reader(_read_lines(path)), 1):
    if not fields or (row == 1 and [f.strip().lower() for f in fields] == ["image", "split"]):
      continue
    if len(fields) != 2 or fields[1].strip() not in SPLITS:
      raise _fail(path, row, f"expected 'image,train' or 'image,test', got {','.join(fields)!r}")
    image = fields[0].strip()
    if image not in listed:
      raise _fail(path, row, f"image {image!r} is not in the labels file")
    if image in seen_rows:
      raise _fail(path, row, f"image {image!r} listed twice (first at row {seen_rows[image]})")
    seen_rows[image] = row
    out[fields[1].strip()].append(image)
  missing = [i for i in images if i not in seen_rows]
  if missing:
    raise _fail(path, None, f"{len(missing)} labelled image(s) have no split, e.g. "
                f"{missing[0]!r}")
  return out


def seeded_split(images: Sequence[str], fraction: float, seed: int) -> dict[str, list[str]]:
  """``fraction`` of the images (at least one) to "test", chosen by ``seed``; file order kept."""
  if not 0 < fraction < 1:
    raise ValueError(f"config field data.test_fraction={fraction!r}: expected 0 < x < 1")
  n_test = max(1, int(round(fraction * len(images))))
  if n_test >= len(images):
    raise ValueError(f"{len(images)} image(s): too few to split off a test set")
  test = set(np.random.default_rng(seed).permutation(len(images))[:n_test].tolist())
  return {"train": [im for i, im in enumerate(images) if i not in test],
          "test": [im for i, im in enumerate(images) if i in test]}


def _option(data_config, name: str):
  value = data_config.get(name, DEFAULTS[name])
  return DEFAULTS[name] if value is None else value


def load_index(data_config) -> FolderIndex:
  """Reads and validates every list file (not the images or features)."""
  root = os.path.abspath(os.path.expanduser(data_config.get("manual_dir", "") or ""))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config field data.manual_dir={root!r}: not a folder (the "
                            "dataset folder; docs/own-data.md)")
  names_path = os.path.join(root, _option(data_config, "names_file"))
  names = read_names(names_path)
  unseen = read_unseen(str(_option(data_config, "unseen")), root, set(names))
  seen = [n for n in names if n not in set(unseen)]
  order = seen + [n for n in names if n in set(unseen)]
  ids = {n: i for i, n in enumerate(order)}
  labels_path = os.path.join(root, _option(data_config, "labels_file"))
  positives = read_labels(labels_path, ids)
  image_dir = os.path.join(root, _option(data_config, "image_dir"))
  for row, image in enumerate(positives, 1):
    if not os.path.isfile(os.path.join(image_dir, image)):
      raise ValueError(f"{labels_path}: image {image!r} (row {row} of the images listed) is "
                       f"missing from {image_dir}")
  split_file = _option(data_config, "split_file")
  images = list(positives)
  if split_file:
    splits = read_split(os.path.join(root, split_file), images)
  else:
    splits = seeded_split(images, float(_option(data_config, "test_fraction")),
                          int(data_config.get("seed", 0)))
  digest = hashlib.sha256()
  for path in (names_path, labels_path) + ((os.path.join(root, split_file),) if split_file
                                           else ()):
    with open(path, "rb") as f:
      digest.update(f.read())
  digest.update(json.dumps({"unseen": unseen, "splits": splits}).encode())
  return FolderIndex(root=root, label_names=tuple(order), num_seen=len(seen),
                     images={k: tuple(v) for k, v in splits.items()},
                     positives=positives, fingerprint=digest.hexdigest())


def _layout(backbone: str) -> tuple[tuple[int, int], int, int]:
  return VGG19_LAYOUT if backbone == "vgg19" else extracted.extracted_layout(backbone)


class MultilabelFolder(tfds_common.LocalBuilder):
  """tfds builder of one folder (builder config ``<folder name>-<backbone>``)."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {DATA_VERSION: "First release."}
  _index: FolderIndex | None = None
  _features: extracted.ExtractedFeatures | None = None

  def backbone(self) -> str:
    return self.builder_config.name.rsplit("-", 1)[1]

  def _info(self) -> tfds.core.DatasetInfo:
    grid, dim, _ = _layout(self.backbone())
    return tfds.core.DatasetInfo(
        builder=self, description=self.summary(),
        features=tfds_common.region_example_features(grid[0] * grid[1], dim, scene=True),
        metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._index is None or self._features is None:
      raise ValueError(f"multilabel_folder {self.builder_config.name}: not prepared; prepare "
                       "it with data.manual_dir and data.features_dir")
    index, features = self._index, self._features
    grid, dim, scene_dim = _layout(self.backbone())
    self.info.metadata.update({
        "label_names": list(index.label_names),
        **tfds_common.label_split_fields(index.num_seen, len(index.label_names)),
        "grid_shape": list(grid), "feature_dim": dim, "scene_dim": scene_dim,
        "embeddings": {}, "source_fingerprint": index.fingerprint,
        "manual_dir": index.root, "features_dir": features.out_dir,
        "extract_architecture": features.architecture,
        "provenance": (f"multilabel_folder {index.root}: labels from its files (+1 listed, -1 "
                       f"otherwise), features of extract --backbone {self.backbone()} in "
                       f"{features.out_dir}")})
    return {split: self._generate_examples(index, features, split) for split in SPLITS}

  def _generate_examples(self, index: FolderIndex, features, split: str):
    from mlzsl_jax.extract.images import image_key  # pylint: disable=import-outside-toplevel
    images = index.images[split]
    for position, image in enumerate(images):
      regions, scene = features.read(image_key(image))
      labels = -np.ones(len(index.label_names), np.int8)
      labels[list(index.positives[image])] = 1
      if (np.abs(regions).max() > tfds_common.FP16_MAX
          or np.abs(scene).max(initial=0) > tfds_common.FP16_MAX):
        raise ValueError(f"{features.out_dir}: image {image!r} has features beyond float16")
      yield tfds_common.example_key(position, len(images)), {
          "features": regions.astype(np.float16), "labels": labels, "image_id": image,
          "scene": scene.astype(np.float16)}


def prepare(data_config) -> MultilabelFolder:
  """The builder of ``data.manual_dir`` with ``data.backbone`` features, built the first time
  from ``data.features_dir`` (every file checked before anything is written)."""
  from mlzsl_jax.extract.images import image_key  # pylint: disable=import-outside-toplevel
  backbone, features_dir = extracted.backbone_option(data_config)
  grid, dim, _ = _layout(backbone)
  root = os.path.abspath(os.path.expanduser(data_config.get("manual_dir", "") or ""))
  name = f"{os.path.basename(root.rstrip(os.sep)) or 'folder'}-{backbone}"
  data_dir = os.path.expanduser(data_config.get("data_dir", "") or "~/tensorflow_datasets")
  builder = MultilabelFolder(config=tfds.core.BuilderConfig(name=name), data_dir=data_dir)
  index = load_index(data_config)
  if builder.is_prepared():
    if builder.info.metadata.get("source_fingerprint") != index.fingerprint:
      raise ValueError(f"{root}: its list files (or data.unseen / the split) changed since "
                       f"the dataset at {builder.data_dir} was prepared; delete that folder "
                       "to rebuild")
    return builder
  if not features_dir:
    raise ValueError(f"config field data.features_dir: empty; run `python -m mlzsl_jax.main "
                     f"extract --backbone {backbone} --image_dir "
                     f"{os.path.join(root, _option(data_config, 'image_dir'))} --out_dir "
                     "FEATS ...` and set data.features_dir=FEATS")
  kind = "VGG19" if backbone == "vgg19" else "clip"
  features = extracted.ExtractedFeatures(features_dir, (dim, grid[0] * grid[1]), kind)
  labels_path = os.path.join(root, _option(data_config, "labels_file"))
  for row, image in enumerate(index.positives, 1):
    if image_key(image) not in features.shard_of:
      raise ValueError(f"{labels_path}: image {image!r} (row {row} of the images listed) was "
                       f"not extracted (unreadable? see "
                       f"{os.path.join(features.out_dir, 'unreadable.txt')})")
  print(f"multilabel_folder: building {len(index.images['train'])} train + "
        f"{len(index.images['test'])} test images, {index.num_seen} seen + "
        f"{len(index.label_names) - index.num_seen} unseen labels into {builder.data_dir}",
        flush=True)
  builder._index, builder._features = index, features  # pylint: disable=protected-access
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    builder._index = builder._features = None  # pylint: disable=protected-access
    features.close()
  return builder


class MultilabelFolderSource:
  """``DatasetSource`` over a prepared folder dataset."""

  def __init__(self, builder: MultilabelFolder):
    self.builder = builder
    self.meta: DatasetMeta = meta_from_tfds("multilabel_folder", builder, SPLITS)

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    if split not in SPLITS:
      raise ValueError(f"multilabel_folder: unknown split {split!r}; expected one of "
                       f"{SPLITS} (config fields data.train_split / data.test_split)")
    return tfds_common.stored_examples(self.builder, split, self.meta.num_labels,
                                       self.meta.scene_dim)


@register_dataset("multilabel_folder")
def multilabel_folder_factory(data_config) -> MultilabelFolderSource:
  """Registered factory: data.manual_dir, labels_file, names_file, unseen, split_file,
  test_fraction, image_dir, backbone, features_dir, data_dir (module docstring)."""
  return MultilabelFolderSource(prepare(data_config))


def label_ids(data_config) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(seen ids, unseen ids) of the folder's label order, for the config's label split."""
  index = load_index(data_config)
  return (tuple(range(index.num_seen)),
          tuple(range(index.num_seen, len(index.label_names))))


def describe(index: FolderIndex) -> dict[str, Any]:
  return {"labels": len(index.label_names), "seen": index.num_seen,
          "train": len(index.images["train"]), "test": len(index.images["test"])}
