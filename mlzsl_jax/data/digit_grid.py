"""What the two generated digit datasets (``digits_mosaic``, ``colour_digits``) share: the
parameters' seed, split sizes and grid geometry and the checks of those fields, the builder
config named by the parameters, and the tfds builder that writes the generated splits.

Each dataset keeps its own specifics in its module: the other parameters, the generation,
the per-cell stored fields, the metadata and the label words.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from mlzsl_jax.data import tfds_common


@dataclasses.dataclass(frozen=True)
class GridParams:
  """The fields every generated digit dataset has: seed and split sizes.

  A subclass adds ``cells`` (rows, cols of 8x8 cells), ``patch`` (region side, pixels),
  ``image_shape`` ([H, W] or [H, W, 3]) and ``feature_dim``; the grid properties follow.
  """

  seed: int = 0
  num_train: int = 6000
  num_test: int = 2000

  @property
  def grid_shape(self) -> tuple[int, int]:
    """(rows, cols) of the ``patch`` x ``patch`` regions."""
    return (self.image_shape[0] // self.patch, self.image_shape[1] // self.patch)

  @property
  def num_regions(self) -> int:
    return self.grid_shape[0] * self.grid_shape[1]

  @property
  def num_cells(self) -> int:
    return self.cells[0] * self.cells[1]

  def num_examples(self, split: str) -> int:
    """Examples of a stored split: ``num_train`` for "train", else ``num_test``."""
    return self.num_train if split == "train" else self.num_test

  def check_ints(self, positive: Sequence[str], prefix: str) -> None:
    """ValueError unless the fields ``positive`` are ints >= 1 and ``seed`` an int (numpy
    ints too, bools not), naming the field as ``<prefix><field>``."""
    for field in positive:
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{prefix}{field}: expected a positive int, got {value!r}")
    if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
      raise ValueError(f"{prefix}seed: expected an int, got {self.seed!r}")


@dataclasses.dataclass(eq=False)
class ParamsConfig(tfds.core.BuilderConfig):
  """Builder config carrying one parameter set (a ``GridParams`` subclass)."""

  params: Any = None


def params_config(params: GridParams, version: str, what: str) -> ParamsConfig:
  """The builder config of ``params``, validated: named ``params.config_name`` (so two
  parameter sets never share a folder), described "<what> <params>"."""
  params.validate()
  return ParamsConfig(name=params.config_name, version=tfds.core.Version(version),
                      description=f"{what} {params}", params=params)


class GridBuilder(tfds_common.LocalBuilder, skip_registration=True):
  """tfds builder of a generated digit dataset; its builder config carries the parameters.

  Stored example: features float16 [regions, feature_dim], labels int8 [NUM_LABELS],
  image_id, image uint8 ``params.image_shape``, then the subclass's ``cell_features``, the
  records in generation order. A subclass sets ``NUM_LABELS`` and writes ``cell_features``,
  ``static_metadata``, ``sentence_embeddings`` and ``generate_splits``.
  """

  NUM_LABELS = 0

  @property
  def params(self) -> Any:
    return self.builder_config.params

  def cell_features(self) -> dict[str, tfds.features.Tensor]:
    """The dataset's own stored fields (after ``image``), by name."""
    raise NotImplementedError

  def static_metadata(self) -> dict[str, Any]:
    """JSON-able metadata known without generating data."""
    raise NotImplementedError

  def sentence_embeddings(self) -> np.ndarray | None:
    """float32 [NUM_LABELS, dim] sentence embeddings of the labels, None without the model."""
    raise NotImplementedError

  def generate_splits(self) -> dict[str, dict[str, np.ndarray]]:
    """Every stored split's arrays ([n, ...] per field, ``image_id`` [n]), in split order;
    may add split-dependent metadata."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    p = self.params
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.summary(),
        features=tfds.features.FeaturesDict({
            "features": tfds.features.Tensor(shape=(p.num_regions, p.feature_dim),
                                             dtype=np.float16),
            "labels": tfds.features.Tensor(shape=(self.NUM_LABELS,), dtype=np.int8),
            "image_id": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=p.image_shape, dtype=np.uint8),
            **self.cell_features(),
        }),
        metadata=tfds.core.MetadataDict(self.static_metadata()),
        disable_shuffling=True,  # records stay in generation (image_id) order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    sentence = self.sentence_embeddings()
    if sentence is not None:
      self.info.metadata["embeddings"]["sentence"] = sentence.tolist()
    # Whole splits at once, as generated; the writer's memory is bounded (tfds_common).
    return {split: self._generate_examples(data)
            for split, data in self.generate_splits().items()}

  def _generate_examples(self, data: dict[str, np.ndarray]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    # Records in generation order: positions spread over tfds' buckets (tfds_common.example_key).
    fields = ("features", "labels", "image", *self.cell_features())
    for i, image_id in enumerate(data["image_id"]):
      yield tfds_common.example_key(i, len(data["image_id"])), {
          k: data[k][i] for k in fields} | {"image_id": image_id}
