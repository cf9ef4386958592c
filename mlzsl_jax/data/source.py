"""What every dataset hands to the pipeline: metadata plus a tf.data view of each split.

A dataset is registered by name (``register_dataset``) with a factory
``factory(data_config) -> DatasetSource``. Only the factory/builder knows the file format;
the pipeline, trainer and evaluator only see ``DatasetSource``.

Example dict yielded by ``as_tf_dataset(split)``:
  features: float16 [regions, feature_dim]  (row-major over ``grid_shape``)
  labels:   int8    [num_labels]            states 1 = positive, -1 = negative, 0 = unknown,
                                            over *all* labels of the dataset (seen first)
  image_id: string  []
  scene:    float16 [scene_dim]             only when ``meta.scene_dim > 0``
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from mlzsl_jax.registry import Registry

if TYPE_CHECKING:  # metadata and shapes load without TensorFlow (``main compile``)
  import tensorflow as tf


class NamedLabels:
  """Mixin of a record with ``label_names`` (one per label, in label order)."""

  @property
  def num_labels(self) -> int:
    return len(self.label_names)


@dataclasses.dataclass(frozen=True)
class DatasetMeta(NamedLabels):
  """Static description of a dataset.

  Attributes:
    name: registry name.
    label_names: all label names, in the dataset's label order.
    embeddings: embedding source name -> float32 [num_labels, emb_dim], rows L2-normalised.
    grid_shape: (height, width) of the region grid; regions = height * width.
    feature_dim: channels of each region feature.
    scene_dim: length of the stored scene feature, 0 if none is stored.
    num_examples: split name -> number of examples.
    provenance: free text: where features / labels / embeddings came from.
    default_split: (seen ids, unseen ids) the dataset defines, used when the config leaves
      data.seen_labels and data.unseen_labels empty (a user's folder dataset); None if none.
  """

  name: str
  label_names: tuple[str, ...]
  embeddings: dict[str, np.ndarray]
  grid_shape: tuple[int, int]
  feature_dim: int
  scene_dim: int
  num_examples: dict[str, int]
  provenance: str = ""
  default_split: tuple[tuple[int, ...], tuple[int, ...]] | None = None

  @property
  def num_regions(self) -> int:
    return self.grid_shape[0] * self.grid_shape[1]

  def embedding(self, source: str) -> np.ndarray:
    """Label embeddings [num_labels, emb_dim] of ``source``; clear error when absent."""
    if source not in self.embeddings:
      raise ValueError(
          f"dataset {self.name!r}: no label embedding source {source!r}; "
          f"available: {sorted(self.embeddings)} (config field data.embedding)")
    return self.embeddings[source]


def meta_from_tfds(name: str, builder, splits) -> DatasetMeta:
  """``DatasetMeta`` of a prepared tfds builder whose MetadataDict holds label_names,
  embeddings, grid_shape, feature_dim, provenance (and optionally scene_dim)."""
  md = builder.info.metadata
  return DatasetMeta(
      name=name,
      label_names=tuple(md["label_names"]),
      embeddings={k: np.asarray(v, np.float32) for k, v in md["embeddings"].items()},
      grid_shape=tuple(md["grid_shape"]),
      feature_dim=int(md["feature_dim"]),
      scene_dim=int(md.get("scene_dim", 0)),
      num_examples={s: int(builder.info.splits[s].num_examples) for s in splits},
      provenance=md["provenance"],
      default_split=((tuple(int(i) for i in md["seen_labels"]),
                      tuple(int(i) for i in md["unseen_labels"]))
                     if "seen_labels" in md and "unseen_labels" in md else None),
  )


class DatasetSource(Protocol):
  meta: DatasetMeta

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    """Examples of ``split`` in a fixed order (see module docstring for fields)."""


DATASETS: Registry[Callable[..., DatasetSource]] = Registry("dataset", "data.name")
# A dataset factory is ``factory(data_config) -> DatasetSource``.
register_dataset = DATASETS.register


def get_dataset(data_config) -> DatasetSource:
  """Build the dataset named ``data_config.name``."""
  import mlzsl_jax.data.builtin  # noqa: F401  (registers the built-in datasets)
  from mlzsl_jax.data import clip_labels  # pylint: disable=import-outside-toplevel
  source = DATASETS.get(data_config.name)(data_config)
  return clip_labels.add_to_source(source, data_config)  # data.embedding=clip, any dataset


# A dataset whose files are large (the official benchmarks) also registers its shapes:
# ``shapes(data_config) -> DatasetMeta`` with the official sizes and random unit-norm label
# embeddings of the right widths, known without any file, for ``main compile``.
DATASET_SHAPES: Registry[Callable[..., DatasetMeta]] = Registry("dataset shapes", "data.name")
register_dataset_shapes = DATASET_SHAPES.register


def dataset_shapes(data_config) -> DatasetMeta:
  """The dataset's ``DatasetMeta`` without its files when it registered its shapes (without
  TensorFlow for the built-in ones), else the prepared (or generated) dataset's own
  metadata."""
  import mlzsl_jax.data.builtin_shapes  # noqa: F401  (no TensorFlow)
  if data_config.name in DATASET_SHAPES.names():
    return DATASET_SHAPES.get(data_config.name)(data_config)
  return get_dataset(data_config).meta


def shapes_meta(name: str, num_labels: int, embedding_dims: dict[str, int],
                grid_shape: tuple[int, int], feature_dim: int, scene_dim: int,
                num_examples: dict[str, int], provenance: str) -> DatasetMeta:
  """A ``DatasetMeta`` of the given sizes; label embeddings random unit rows (seeded)."""
  rng = np.random.default_rng(0)
  embeddings = {}
  for source, dim in embedding_dims.items():
    emb = rng.normal(size=(num_labels, dim)).astype(np.float32)
    embeddings[source] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  return DatasetMeta(name=name, label_names=tuple(f"label_{i}" for i in range(num_labels)),
                     embeddings=embeddings, grid_shape=tuple(grid_shape),
                     feature_dim=feature_dim, scene_dim=scene_dim,
                     num_examples=dict(num_examples), provenance=provenance)
