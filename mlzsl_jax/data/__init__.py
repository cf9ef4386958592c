"""Datasets: importing this package registers the built-in ones (colour_digits, digits_mosaic,
synthetic, xlsa17, nus_wide, open_images)."""

from mlzsl_jax.data import colour_digits  # noqa: F401  (registers "colour_digits")
from mlzsl_jax.data import digits_mosaic  # noqa: F401  (registers "digits_mosaic")
from mlzsl_jax.data import nus_wide  # noqa: F401  (registers "nus_wide")
from mlzsl_jax.data import open_images  # noqa: F401  (registers "open_images")
from mlzsl_jax.data import synthetic  # noqa: F401  (registers "synthetic")
from mlzsl_jax.data import xlsa17  # noqa: F401  (registers "xlsa17")
from mlzsl_jax.data.source import DatasetMeta, DatasetSource, get_dataset, register_dataset

__all__ = ["DatasetMeta", "DatasetSource", "get_dataset", "register_dataset"]
