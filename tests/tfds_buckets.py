"""Test helper: make tfds' writer send every record through its on-disk bucket files (the path
a real-size build takes) and record how many records each bucket held when read back."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from mlzsl_jax.data import tfds_common


@contextlib.contextmanager
def through_disk_buckets() -> Iterator[list[int]]:
  """Within the block, prepares buffer 0 bytes (``tfds_common.WRITE_BUFFER_BYTES``), so every
  record is spilled to tfds' 1000 bucket files; yields a list that receives, per bucket read
  back, its record count (tfds sorts a bucket in memory: the largest is the peak)."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  sizes: list[int] = []
  read_values = shuffle._Bucket.read_values  # pylint: disable=protected-access

  def counted(bucket):
    values = list(read_values(bucket))
    sizes.append(len(values))
    yield from values

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds_common, "WRITE_BUFFER_BYTES", 0)
    patch.setattr(shuffle._Bucket, "read_values", counted)  # pylint: disable=protected-access
    yield sizes
