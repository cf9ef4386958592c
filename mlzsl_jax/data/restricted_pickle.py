"""Read the official pickles (label embeddings, image-name lists) without running their code.

``pickle.load`` can call any importable function named in the file (``os.system`` ...), so a
user's pickle is never given to it. ``load`` uses an unpickler whose ``find_class`` resolves
only an allow-list of globals: the NumPy internals that rebuild arrays, dtypes and scalars as
NumPy 1.x and 2.x write them (protocols 0-5), and a few harmless builtins. Every other global
raises ``ValueError`` naming the file and the forbidden ``module.name`` *before* anything is
called. Plain containers (list, tuple, dict, set), strings, bytes, numbers, bools and None need
no global and load as usual.

Globals a pickled ndarray / dtype / scalar names (checked with pickletools on NumPy 1.x and 2.x
pickles, and on the official files of BiAM / LESA):
  numpy.core.multiarray._reconstruct   (NumPy 1.x; official NUS-WIDE / Open Images pickles)
  numpy._core.multiarray._reconstruct  (NumPy 2.x)
  numpy.ndarray, numpy.dtype
  numpy.core.multiarray.scalar / numpy._core.multiarray.scalar       (NumPy scalars)
  numpy.core.numeric._frombuffer / numpy._core.numeric._frombuffer   (protocol 5)
  _codecs.encode                       (array bytes in protocols 0-2, e.g. LESA unseen_labels.pkl)
  __builtin__ / builtins .bytes, .bytearray, .set, .frozenset, .complex   (protocols 0-2)
The allowed names are mapped to this NumPy's own objects, so a NumPy 1.x pickle loads under
NumPy 2.x (and back) without importing the deprecated ``numpy.core`` alias.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
from typing import Any

import numpy as np

try:  # NumPy >= 2
  from numpy._core import multiarray as _multiarray
  from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover  (NumPy 1.x)
  from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
  from numpy.core import numeric as _numeric  # type: ignore[no-redef]

ALLOWED_KINDS = ("NumPy arrays / dtypes / scalars, lists, tuples, dicts, sets, strings, bytes, "
                 "numbers, bools, None")


def _allowed_globals() -> dict[tuple[str, str], Any]:
  table: dict[tuple[str, str], Any] = {
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): np.dtype,
      ("_codecs", "encode"): _codecs.encode,
  }
  for package in ("numpy.core", "numpy._core"):
    table[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    table[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
    table[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
  for module in ("builtins", "__builtin__"):
    for name, obj in (("bytes", bytes), ("bytearray", bytearray), ("set", set),
                      ("frozenset", frozenset), ("complex", complex)):
      table[(module, name)] = obj
  return table


ALLOWED_GLOBALS = _allowed_globals()


class ForbiddenGlobal(pickle.UnpicklingError):
  """A pickle names a global outside ``ALLOWED_GLOBALS``."""

  def __init__(self, module: str, name: str):
    super().__init__(f"{module}.{name}")
    self.qualified = f"{module}.{name}"


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:  # noqa: D102
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise ForbiddenGlobal(module, name) from None

  def persistent_load(self, pid: Any) -> Any:  # noqa: D102
    raise ForbiddenGlobal("<persistent id>", repr(pid)[:80])


def loads(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickle ``data`` with the allow-list; ``source`` names it in error messages.

  Raises:
    ValueError: a forbidden global (named as module.name), or data that is not a readable
      pickle (truncated, corrupt); the message starts with ``source``.
  """
  try:
    # latin1: the documented way to read Python 2 / NumPy array byte strings.
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
  except ForbiddenGlobal as e:
    raise ValueError(
        f"{source}: refusing to unpickle: forbidden global {e.qualified} (only "
        f"{ALLOWED_KINDS} are allowed; nothing in the file was executed)") from None
  except Exception as e:  # noqa: BLE001  (pickle raises many types on damaged data)
    raise ValueError(f"{source}: cannot read as a pickle (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from e


def load(path: str | os.PathLike) -> Any:
  """The object pickled in ``path``, rebuilt with the allow-list of this module.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: a forbidden global (message names the file and ``module.name``), or a file
      that is not a readable pickle.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found")
  with open(path, "rb") as f:
    data = f.read()
  return loads(data, path)
