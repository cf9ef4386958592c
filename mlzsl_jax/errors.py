"""Errors that end a command with one clear line (``main`` prints them without a traceback)."""


class NonFiniteError(RuntimeError):
  """Training or evaluation met NaN / inf values; the message says where and what to try."""


# ------------------------------------------------------------------ one-line user errors

import os  # noqa: E402
import traceback  # noqa: E402

DEBUG_ENV = "MLZSL_DEBUG"  # =1: every error with its traceback
USER_ERROR_TYPES = (ValueError, FileNotFoundError, NotADirectoryError, ImportError,
                    NonFiniteError)
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _raised_in(exc: BaseException) -> str:
  """File of the frame that raised ``exc`` (the innermost of its traceback)."""
  frames = traceback.extract_tb(exc.__traceback__)
  return os.path.abspath(frames[-1].filename) if frames else ""


def is_user_error(exc: BaseException) -> bool:
  """A bad input, flag, config value or file, as this library reports them: one of
  ``USER_ERROR_TYPES`` raised by the library's own code or a config file (its messages name
  the file / field and what was expected). An exception raised inside a dependency (JAX,
  NumPy, TensorFlow) is treated as a bug and keeps its traceback."""
  if not isinstance(exc, USER_ERROR_TYPES):
    return False
  where = _raised_in(exc)
  return where.startswith(_PACKAGE + os.sep) or f"{os.sep}configs{os.sep}" in where


def one_line(exc: BaseException) -> str:
  """``error: <message>`` on one line."""
  text = " ".join(str(exc).split()) or type(exc).__name__
  return f"error: {text}"


def debug_requested() -> bool:
  return os.environ.get(DEBUG_ENV, "") not in ("", "0")
