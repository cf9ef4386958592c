"""Errors that end a command with one clear line (``main`` prints them without a traceback)."""


class NonFiniteError(RuntimeError):
  """Training or evaluation met NaN / inf values; the message says where and what to try."""
