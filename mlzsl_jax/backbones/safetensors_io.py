"""Read and write ``.safetensors`` files with NumPy only (no torch, no pickle).

Format: an 8-byte little-endian header length n, n bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, then the raw little-endian tensor bytes (offsets relative to the end of the
header). Every header entry is checked against the file, so a truncated or corrupt file is
an error naming the file and the tensor, never a silently short array.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2 ** 20


def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, str], int]:
  """(tensor entries, metadata, byte offset of the data section) of a safetensors file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise ValueError(f"{os.fspath(path)}: not a safetensors file ({size} bytes, expected "
                       "an 8-byte header length first)")
    (n,) = struct.unpack("<Q", raw)
    if n > min(MAX_HEADER_BYTES, size - 8):
      raise ValueError(f"{os.fspath(path)}: header length {n} does not fit the file "
                       f"({size} bytes): not a safetensors file, or truncated")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{os.fspath(path)}: safetensors header is not valid JSON ({e})") from e
  if not isinstance(header, dict):
    raise ValueError(f"{os.fspath(path)}: safetensors header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  return header, dict(metadata), 8 + n


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """({name: array}, metadata) of a safetensors file. Arrays are read-only views of a
  memory map of the file (nothing is copied until used)."""
  header, metadata, start = read_header(path)
  size = os.path.getsize(path)
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(size - start,)) \
      if size > start else np.zeros((0,), np.uint8)
  out = {}
  for name, entry in header.items():
    where = f"{os.fspath(path)}: tensor {name!r}"
    try:
      dtype = DTYPES[entry["dtype"]]
      shape = tuple(int(d) for d in entry["shape"])
      begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{where}: bad header entry {entry!r} (expected dtype one of "
                       f"{sorted(DTYPES)}, shape, data_offsets)") from e
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != want or begin < 0:
      raise ValueError(f"{where}: data_offsets {[begin, end]} hold {end - begin} bytes, "
                       f"{entry['dtype']} {list(shape)} needs {want}")
    if end > data.shape[0]:
      raise ValueError(f"{where}: data ends at byte {start + end}, the file has {size} "
                       "bytes (truncated?)")
    out[name] = data[begin:end].view(np.ndarray).view(dtype).reshape(shape)
  return out, metadata


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``tensors`` (C-contiguous copies, in name order) to ``path`` atomically."""
  entries, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.asarray(tensors[name], order="C")  # (ascontiguousarray makes 0-d 1-d)
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype not in NAMES:
      raise ValueError(f"write_safetensors {name!r}: dtype {array.dtype} not supported "
                       f"(expected one of {sorted(str(d) for d in NAMES)})")
    raw = array.tobytes()  # native order: little-endian on every platform JAX supports
    entries[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                     "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  header = json.dumps(entries, separators=(",", ":")).encode()
  header += b" " * (-len(header) % 8)
  tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for raw in chunks:
      f.write(raw)
  os.replace(tmp, path)
