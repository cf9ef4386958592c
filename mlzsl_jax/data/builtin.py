"""Importing this module registers the built-in datasets (and loads TensorFlow and tfds)."""

from mlzsl_jax.data import colour_digits  # noqa: F401  (registers "colour_digits")
from mlzsl_jax.data import digits_mosaic  # noqa: F401  (registers "digits_mosaic")
from mlzsl_jax.data import nus_wide  # noqa: F401  (registers "nus_wide")
from mlzsl_jax.data import open_images  # noqa: F401  (registers "open_images")
from mlzsl_jax.data import synthetic  # noqa: F401  (registers "synthetic")
from mlzsl_jax.data import xlsa17  # noqa: F401  (registers "xlsa17")
from mlzsl_jax.data import multilabel_folder  # noqa: F401  (registers "multilabel_folder")
