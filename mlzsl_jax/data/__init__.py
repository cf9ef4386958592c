"""Datasets. The built-in ones (colour_digits, digits_mosaic, synthetic, xlsa17, nus_wide,
open_images) register on first use: ``get_dataset`` imports ``builtin``, which imports their
modules (and with them TensorFlow and tfds). Importing this package, or ``DatasetMeta``,
needs neither, so the train step and the benchmarks run on machines without TensorFlow."""

from mlzsl_jax.data.source import DatasetMeta, DatasetSource, get_dataset, register_dataset

__all__ = ["DatasetMeta", "DatasetSource", "get_dataset", "register_dataset"]
