"""``synthetic``: an in-memory dataset at benchmark shapes whose labels are learnable.

Defaults match NUS-WIDE as the paper code sees it: 196 regions (a 14x14 grid) of 512-d
features, 925 seen + 81 unseen labels (seen first), 300-d label embeddings.

Labels are planted in the region features *through their embeddings*, so what a model learns
on seen labels transfers to unseen ones:

  E [labels, emb]        label embeddings, Gaussian, rows L2-normalised (source "random")
  P [emb, feature_dim]   a fixed Gaussian projection
  each image picks ``labels_per_image`` distinct labels; each is planted into
  ``regions_per_label`` distinct random regions as  E[label] @ P + noise;
  every other region is noise alone (Gaussian, std ``noise``).

Everything is a function of ``data.seed``: E and P of the seed, each chunk of
``CHUNK`` examples of (seed, split, chunk index), so a split is generated chunk by chunk (float32
peak memory of one chunk) and its examples do not depend on the other split's size.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from mlzsl_jax.data import options
from mlzsl_jax.data.attributes import l2_normalise_rows
from mlzsl_jax.data.source import DatasetMeta, register_dataset, register_dataset_shapes

if TYPE_CHECKING:  # TensorFlow loads when a split is read, not with the module (compile)
  import tensorflow as tf

SPLITS = ("train", "test")
CHUNK = 256  # examples generated per numpy call


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
  """Everything that determines the synthetic data."""

  seed: int = 0
  num_seen: int = 925
  num_unseen: int = 81
  grid: tuple[int, int] = (14, 14)
  feature_dim: int = 512
  emb_dim: int = 300
  num_train: int = 1024
  num_test: int = 256
  labels_per_image: int = 3
  regions_per_label: int = 2
  noise: float = 1.0

  @property
  def num_labels(self) -> int:
    return self.num_seen + self.num_unseen

  @property
  def num_regions(self) -> int:
    return self.grid[0] * self.grid[1]

  def num_examples(self, split: str) -> int:
    check_split(split)
    return self.num_train if split == "train" else self.num_test

  def validate(self) -> "SyntheticParams":
    """Raise ValueError naming the bad field; return self."""
    for field in ("num_seen", "feature_dim", "emb_dim", "num_train", "num_test",
                  "labels_per_image", "regions_per_label"):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config field data.{field}: expected a positive int, got {value!r}")
    if not isinstance(self.num_unseen, (int, np.integer)) or self.num_unseen < 0:
      raise ValueError(f"config field data.num_unseen: expected an int >= 0, "
                       f"got {self.num_unseen!r}")
    if len(self.grid) != 2 or min(self.grid) < 1:
      raise ValueError(f"config field data.grid: expected two positive ints, got {self.grid!r}")
    if self.labels_per_image > self.num_labels:
      raise ValueError(f"config field data.labels_per_image: expected <= {self.num_labels} "
                       f"labels, got {self.labels_per_image}")
    if self.labels_per_image * self.regions_per_label > self.num_regions:
      raise ValueError(
          f"config fields data.labels_per_image * data.regions_per_label: expected <= "
          f"{self.num_regions} regions, got {self.labels_per_image * self.regions_per_label}")
    if not self.noise >= 0:
      raise ValueError(f"config field data.noise: expected >= 0, got {self.noise!r}")
    return self


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"synthetic: unknown split {split!r}; expected one of {SPLITS}")


def label_names(params: SyntheticParams) -> tuple[str, ...]:
  """[labels]: "seen_0000".. then "unseen_0000".."""
  return (tuple(f"seen_{i:04d}" for i in range(params.num_seen)) +
          tuple(f"unseen_{i:04d}" for i in range(params.num_unseen)))


def label_embeddings(params: SyntheticParams) -> np.ndarray:
  """E: float32 [labels, emb_dim], Gaussian rows, L2-normalised."""
  rng = np.random.default_rng([params.seed, 0])
  return l2_normalise_rows(rng.standard_normal((params.num_labels, params.emb_dim)))


def projection(params: SyntheticParams) -> np.ndarray:
  """P: float32 [emb_dim, feature_dim], Gaussian N(0, 1) (so E[l] @ P has unit variance)."""
  rng = np.random.default_rng([params.seed, 1])
  return rng.standard_normal((params.emb_dim, params.feature_dim)).astype(np.float32)


def label_prototypes(params: SyntheticParams) -> np.ndarray:
  """E @ P: float32 [labels, feature_dim], what a planted region holds before noise."""
  return label_embeddings(params) @ projection(params)


def generate_chunk(params: SyntheticParams, split: str, chunk: int,
                   prototypes: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Examples [chunk*CHUNK, ...) of ``split`` (fewer in the last chunk).

  Returns:
    features:        float16 [n, regions, feature_dim]
    labels:          int8    [n, labels]   1 planted, -1 not
    image_id:        object  [n]           "<split>_000000", ...
    planted_labels:  int32   [n, labels_per_image]
    planted_regions: int32   [n, labels_per_image, regions_per_label]
  """
  check_split(split)
  total = params.num_examples(split)
  start = chunk * CHUNK
  n = min(CHUNK, total - start)
  if n <= 0:
    raise ValueError(f"synthetic {split}: chunk {chunk} starts at {start}, past {total} examples")
  if prototypes is None:
    prototypes = label_prototypes(params)
  rng = np.random.default_rng([params.seed, 2 + SPLITS.index(split), chunk])
  k, r = params.labels_per_image, params.regions_per_label
  planted = np.argsort(rng.random((n, params.num_labels)), axis=1)[:, :k]
  regions = np.argsort(rng.random((n, params.num_regions)), axis=1)[:, :k * r].reshape(n, k, r)
  feats = rng.standard_normal((n, params.num_regions, params.feature_dim), np.float32)
  feats *= np.float32(params.noise)
  rows = np.arange(n)[:, None, None]
  feats[rows, regions] += prototypes[planted][:, :, None, :]
  labels = np.full((n, params.num_labels), -1, np.int8)
  labels[np.arange(n)[:, None], planted] = 1
  return {
      "features": feats.astype(np.float16),
      "labels": labels,
      "image_id": np.array([f"{split}_{start + i:06d}" for i in range(n)], dtype=object),
      "planted_labels": planted.astype(np.int32),
      "planted_regions": regions.astype(np.int32),
  }


def num_chunks(params: SyntheticParams, split: str) -> int:
  return -(-params.num_examples(split) // CHUNK)


def generate_split(params: SyntheticParams, split: str) -> dict[str, np.ndarray]:
  """The whole split in memory (tests, small sizes): ``generate_chunk``'s fields, concatenated."""
  protos = label_prototypes(params)
  chunks = [generate_chunk(params, split, c, protos) for c in range(num_chunks(params, split))]
  return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def params_from_config(data_config) -> SyntheticParams:
  """``SyntheticParams`` from a ConfigDict; missing fields take the defaults."""
  d = SyntheticParams()
  grid = data_config.get("grid", d.grid)
  if isinstance(grid, (int, np.integer)) or len(grid) != 2:
    raise ValueError(f"config field data.grid: expected two ints, got {grid!r}")
  noise = data_config.get("noise", d.noise)
  if not isinstance(noise, (int, float)) or isinstance(noise, bool):
    raise ValueError(f"config field data.noise: expected a float, got {noise!r}")
  ints = {name: options.int_field(data_config, name, getattr(d, name))
          for name in ("seed", "num_seen", "num_unseen", "feature_dim", "emb_dim", "num_train",
                       "num_test", "labels_per_image", "regions_per_label")}
  return SyntheticParams(grid=(int(grid[0]), int(grid[1])), noise=float(noise),
                         **ints).validate()


class SyntheticSource:
  """``DatasetSource`` generating examples on the fly, chunk by chunk."""

  def __init__(self, params: SyntheticParams):
    self.params = params.validate()
    self._prototypes = label_prototypes(params)
    self.meta = synthetic_meta(params)

  def as_tf_dataset(self, split: str) -> tf.data.Dataset:
    """Examples {features f16 [R, C], labels int8 [L], image_id string} in a fixed order.

    Chunks are generated lazily (one ``from_tensor_slices``-sized chunk in memory at a time),
    so a large split never sits in memory whole; every pass yields identical examples.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel,redefined-outer-name
    check_split(split)
    p = self.params
    fields = ("features", "labels", "image_id")

    def chunks():
      for c in range(num_chunks(p, split)):
        data = generate_chunk(p, split, c, self._prototypes)
        yield {key: data[key] for key in fields}

    signature = {
        "features": tf.TensorSpec((None, p.num_regions, p.feature_dim), tf.float16),
        "labels": tf.TensorSpec((None, p.num_labels), tf.int8),
        "image_id": tf.TensorSpec((None,), tf.string),
    }
    return tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()


def synthetic_meta(params: SyntheticParams) -> DatasetMeta:
  """The ``DatasetMeta`` of the data ``params`` generate (labels, embeddings, sizes)."""
  return DatasetMeta(
      name="synthetic",
      label_names=label_names(params),
      embeddings={"random": label_embeddings(params)},
      grid_shape=tuple(params.grid),
      feature_dim=params.feature_dim,
      scene_dim=0,
      num_examples={split: params.num_examples(split) for split in SPLITS},
      provenance=(f"synthetic (seed {params.seed}): regions = Gaussian noise (std "
                  f"{params.noise}) with each of {params.labels_per_image} labels per image "
                  f"planted in {params.regions_per_label} regions as E[label] @ P; E random "
                  "Gaussian label embeddings (source 'random'), P a fixed Gaussian projection"),
  )


@register_dataset("synthetic")
def synthetic_factory(data_config) -> SyntheticSource:
  """Registered factory: ``data.seed`` plus optional shape fields (see ``SyntheticParams``)."""
  return SyntheticSource(params_from_config(data_config))


@register_dataset_shapes("synthetic")
def synthetic_shapes(data_config) -> DatasetMeta:
  """The generated data's ``DatasetMeta`` (no example generated, no TensorFlow)."""
  return synthetic_meta(params_from_config(data_config))
