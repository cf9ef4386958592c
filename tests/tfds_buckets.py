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


def assert_nothing_prepared(builder, data_dir, marker_names: tuple[str, ...],
                            untouched: bool = True) -> None:
  """No prepared or half-written dataset under ``data_dir`` (a pathlib.Path): ``builder``
  (a tfds builder there) is not prepared, and no dataset_info.json, tfrecord, incomplete
  folder, tfds bucket file or file named in ``marker_names`` is left; with ``untouched``,
  no file at all (the files were checked before tfds created anything)."""
  assert not builder.is_prepared()
  left = [p for p in data_dir.rglob("*")
          if p.name in ("dataset_info.json", *marker_names) or ".tfrecord" in p.name
          or "incomplete" in p.name or "bucket" in p.name]
  assert not left, left
  if untouched:
    assert not [p for p in data_dir.rglob("*") if p.is_file()]
