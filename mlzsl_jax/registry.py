"""One small registry type for everything chosen by name in a config (models, losses,
datasets), so no code branches on names and every unknown name fails the same clear way."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
  """name -> callable, filled by the ``register`` decorator.

  Args:
    kind: what is registered ("model"), for messages.
    config_field: the config field that holds the name ("model.name"), for messages.
  """

  def __init__(self, kind: str, config_field: str):
    self.kind, self.config_field = kind, config_field
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def wrap(fn: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} registered twice")
      self._entries[name] = fn
      return fn
    return wrap

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ValueError(f"config field {self.config_field}={name!r}: unknown {self.kind}; "
                       f"registered: {sorted(self._entries)}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)
