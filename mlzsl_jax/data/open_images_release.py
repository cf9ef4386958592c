"""BiAM's Open Images v4 release: its sizes and layout, and the dataset's shapes for
``main compile`` (``dataset_shapes``), known without its files and without TensorFlow
(the builder, ``open_images``, checks prepared data against the same figures)."""

from __future__ import annotations

from mlzsl_jax.data import options
from mlzsl_jax.data.source import DatasetMeta, register_dataset_shapes, shapes_meta

FEATURE_DIM = 512
GRID_SHAPE = (14, 14)
EMBEDDING_SOURCE = "glove"
# (seen, unseen in unseen_labels.pkl, evaluated unseen) of the official release: a warning only.
OFFICIAL_SIZES = (7186, 2594, 400)
# Images of BiAM's feature files, rounded (the files are not here to count): ~1.7 M training
# images (docs/reproduce.md) and the ~125 k test images of Open Images v4's test split.
APPROX_IMAGES = {"train": 1_700_000, "test": 125_000}


@register_dataset_shapes("open_images")
def open_images_shapes(data_config) -> DatasetMeta:
  """The official release's label sizes (7186 seen + the 400 evaluated unseen), GloVe 300,
  [196, 512] regions, the scene's 4096 with data.scene='vgg19', image counts rounded."""
  num_seen, _, num_top = OFFICIAL_SIZES
  grid, dim, scene_dim, clip_dim = options.region_layout(data_config, GRID_SHAPE, FEATURE_DIM)
  return shapes_meta("open_images", num_seen + num_top,
                     {EMBEDDING_SOURCE: 300, "clip": clip_dim}, grid, dim, scene_dim,
                     APPROX_IMAGES,
                     "shapes of BiAM's Open Images v4 release (no data; image counts rounded)")
