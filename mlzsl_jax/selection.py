"""A run's evaluation history (validation and test passes) and model selection on it.

Every scheduled evaluation during training is one record in ``workdir/evals.json``:

  {"kind": "val" | "test", "step": s, "epoch": s / steps per epoch, "split": "val20",
   "checkpoint": "latest" | "best", "params_step": the step whose parameters were scored,
   "views": {"seen": {...}, "zsl": {...}, "gzsl": {...}}, "selected": bool (val only)}

A record is identified by (kind, step, checkpoint).

The file is rewritten atomically after each record (process 0), so a run killed at any
moment resumes with every finished evaluation kept; an evaluation that was running is simply
done again from the same checkpoint (evaluation is deterministic), which is what makes a
resumed run end with the same history as an uninterrupted one.

Selection (``eval.select_metric``, e.g. ``"seen/f1@5"`` = F1@5 over the seen labels of the
validation split): the best validation record is the one with the largest value, and a tie
goes to the LATER epoch, as the official BiAM ``if mF1_val >= best`` does.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

import jax

from mlzsl_jax import workdir as wd

KINDS = ("val", "test")
VIEWS = ("seen", "zsl", "gzsl")
CHECKPOINT_CHOICES = ("latest", "best")


def parse_metric(name: str, field: str = "eval.select_metric") -> tuple[str, str]:
  """'seen/f1@5' -> ('seen', 'f1@5'); ValueError naming ``field`` otherwise."""
  view, _, key = str(name).partition("/")
  if view not in VIEWS or not key:
    raise ValueError(f"config field {field}={name!r}: expected '<view>/<metric>' with view "
                     f"one of {VIEWS}, e.g. 'seen/f1@5' or 'zsl/map'")
  return view, key


def metric_value(record: dict, name: str) -> float:
  """The value of metric ``name`` ('view/key') in ``record``; KeyError names what exists."""
  view, key = parse_metric(name)
  views = record["views"]
  if view not in views or key not in views[view]:
    have = sorted(f"{v}/{k}" for v in views for k in views[v])
    raise KeyError(f"evaluation record of step {record.get('step')}: no metric {name!r}; "
                   f"recorded: {have}")
  return float(views[view][key])


def best_record(records: Iterable[dict], metric: str) -> dict | None:
  """The record with the largest ``metric``; a tie goes to the later one (official ``>=``).

  NaN values never win. Records are taken in the order given (step order).
  """
  best, best_value = None, -math.inf
  for record in records:
    value = metric_value(record, metric)
    if not math.isnan(value) and value >= best_value:
      best, best_value = record, value
  return best


def check_points(values: Sequence[int], lowest: int, highest: int, field: str,
                 what: str) -> tuple[int, ...]:
  """Sorted unique ints in lowest..highest; ValueError naming ``field`` otherwise."""
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or not lowest <= v <= highest:
      raise ValueError(f"config field {field}={tuple(values)!r}: expected {what} in "
                       f"{lowest}..{highest}, got {v!r}")
    out.append(v)
  return tuple(sorted(set(out)))


def check_checkpoint_choices(value: str, field: str) -> tuple[str, ...]:
  """'latest', 'best' or 'latest,best' -> the tuple; ValueError naming ``field``."""
  out = tuple(v.strip() for v in str(value).split(","))
  if not out or any(v not in CHECKPOINT_CHOICES for v in out) or len(set(out)) != len(out):
    raise ValueError(f"config field {field}={value!r}: expected 'latest', 'best' or both "
                     "comma-separated ('latest,best')")
  return out


def plateau_learning_rate(values: Sequence[float], lr: float, *, signal: float,
                          patience: int, decay: float, min_scale: float) -> float:
  """The learning rate after validations with metric ``values`` (in order), LESA's rule.

  LESA ``core/utils.py`` LearningRate.adapt: an exponential moving average of the metric,
  started at 0, ``ema = (1 - signal) * ema + signal * value``; when it falls below its
  previous value, the rate is at least ``min_scale`` times its start and no cool-down is
  left, the rate is multiplied by ``decay`` and the cool-down set to ``patience``; the
  cool-down drops by one at every validation.
  """
  start, ema, cooldown = lr, 0.0, 0
  for value in values:
    previous, ema = ema, ema * (1 - signal) + value * signal
    if ema < previous and lr >= start * min_scale and cooldown <= 0:
      lr *= decay
      cooldown = patience
    cooldown -= 1
  return lr


class EvalHistory:
  """The records of ``workdir/evals.json``, in the order they were made."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, wd.HISTORY_FILE)
    self.records: list[dict] = []
    if os.path.exists(self.path):
      try:
        with open(self.path) as f:
          self.records = json.load(f)["records"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{self.path}: not an evaluation history ({e}); it is rewritten "
                         "atomically, so this is not a crash: delete it only if you know why "
                         "it changed") from e

  def get(self, kind: str, step: int, checkpoint: str = "latest") -> dict | None:
    return next((r for r in self.records if (r["kind"], r["step"], r["checkpoint"])
                 == (kind, step, checkpoint)), None)

  def of_kind(self, kind: str) -> list[dict]:
    return [r for r in self.records if r["kind"] == kind]

  def add(self, record: dict) -> None:
    """Appends ``record`` (replacing one with the same kind, step and checkpoint) and saves
    atomically."""
    key = lambda r: (r["kind"], r["step"], r["checkpoint"])  # noqa: E731
    self.records = [r for r in self.records if key(r) != key(record)]
    self.records.append(record)
    self.records.sort(key=lambda r: (r["step"], KINDS.index(r["kind"]),
                                     CHECKPOINT_CHOICES.index(r["checkpoint"])))
    if jax.process_index() == 0:
      with open(self.path + ".tmp", "w") as f:
        json.dump({"records": self.records}, f, indent=1)
      os.replace(self.path + ".tmp", self.path)


def make_record(kind: str, step: int, steps_per_epoch: int, split: str, checkpoint: str,
                params_step: int, views: dict[str, dict[str, float]], **extra: Any) -> dict:
  """One history record (see the module docstring); metric values as plain floats."""
  epoch = step / steps_per_epoch
  return {"kind": kind, "step": int(step),
          "epoch": int(epoch) if epoch == int(epoch) else round(epoch, 3), "split": split,
          "checkpoint": checkpoint, "params_step": int(params_step),
          "views": {v: {k: float(x) for k, x in m.items()} for v, m in views.items()},
          **extra}
