"""Importing this module registers the shapes of the built-in datasets that have them, without
TensorFlow (``main compile`` runs where it is not installed, e.g. under a newer jax)."""

from mlzsl_jax.data import nus_wide_release  # noqa: F401  (registers "nus_wide" shapes)
from mlzsl_jax.data import open_images_release  # noqa: F401  (registers "open_images" shapes)
from mlzsl_jax.data import synthetic  # noqa: F401  (registers "synthetic" and its shapes)
