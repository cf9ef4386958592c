"""The official BiAM NUS-WIDE release's sizes and layout, and the dataset's shapes for
``main compile`` (``dataset_shapes``): known without its files and without TensorFlow
(the builder, ``nus_wide``, checks prepared data against the same figures)."""

from __future__ import annotations

from mlzsl_jax.data import options
from mlzsl_jax.data.source import DatasetMeta, register_dataset_shapes, shapes_meta

FEATURE_DIM = 512
GRID_SHAPE = (14, 14)
EMBEDDING_SOURCE = "glove"
TRAIN_FRACTION = 0.8
# LESA's NUS-WIDE script validates on the first 5000 training records and trains on the rest.
LESA_VAL_SIZE = 5000
# (seen, unseen, training images, test images) of the official release: a warning otherwise.
OFFICIAL_SIZES = (925, 81, 161789, 107859)


def train80_size(num_train: int) -> int:
  """Images in the official 80% part: ``int(0.8 * N)`` exactly as util_nus.py computes it."""
  return int(TRAIN_FRACTION * num_train)


@register_dataset_shapes("nus_wide")
def nus_wide_shapes(data_config) -> DatasetMeta:
  """The official release's sizes (no file read): 925 + 81 labels, GloVe 300, [196, 512]
  regions, the scene feature's 4096 with data.scene='vgg19', the official split sizes."""
  num_seen, num_unseen, num_train, num_test = OFFICIAL_SIZES
  grid, dim, scene_dim, clip_dim = options.region_layout(data_config, GRID_SHAPE, FEATURE_DIM)
  k = train80_size(num_train)
  return shapes_meta(
      "nus_wide", num_seen + num_unseen, {EMBEDDING_SOURCE: 300, "clip": clip_dim}, grid, dim,
      scene_dim,
      {"train": num_train, "train80": k, "val20": num_train - k,
       "lesa_train": num_train - LESA_VAL_SIZE, "lesa_val": LESA_VAL_SIZE, "test": num_test},
      "shapes of the official BiAM NUS-WIDE release (no data)")
