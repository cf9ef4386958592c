"""A run's evaluation history (validation and test passes) and model selection on it.

Every scheduled evaluation during training is one record in ``workdir/evals.json``:

  {"kind": "val" | "test", "epoch": e, "step": s, "split": "val20",
   "checkpoint": "latest" | "best", "params_step": the step whose parameters were scored,
   "views": {"seen": {...}, "zsl": {...}, "gzsl": {...}}, "selected": bool (val only)}

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

HISTORY_FILE = "evals.json"
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
    raise KeyError(f"evaluation record of epoch {record.get('epoch')}: no metric {name!r}; "
                   f"recorded: {have}")
  return float(views[view][key])


def best_record(records: Iterable[dict], metric: str) -> dict | None:
  """The record with the largest ``metric``; a tie goes to the later one (official ``>=``).

  NaN values never win. Records are taken in the order given (epoch order).
  """
  best, best_value = None, -math.inf
  for record in records:
    value = metric_value(record, metric)
    if not math.isnan(value) and value >= best_value:
      best, best_value = record, value
  return best


def check_epochs(epochs: Sequence[int], num_epochs: int, field: str) -> tuple[int, ...]:
  """Sorted unique epochs, each in 1..num_epochs; ValueError naming ``field`` otherwise."""
  out = []
  for e in epochs:
    if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= num_epochs:
      raise ValueError(f"config field {field}={tuple(epochs)!r}: expected epochs in 1.."
                       f"{num_epochs} (train.num_epochs), got {e!r}")
    out.append(e)
  return tuple(sorted(set(out)))


def check_checkpoint_choice(value: str, field: str) -> str:
  if value not in CHECKPOINT_CHOICES:
    raise ValueError(f"config field {field}={value!r}: expected one of {CHECKPOINT_CHOICES}")
  return value


class EvalHistory:
  """The records of ``workdir/evals.json``, in the order they were made."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, HISTORY_FILE)
    self.records: list[dict] = []
    if os.path.exists(self.path):
      try:
        with open(self.path) as f:
          self.records = json.load(f)["records"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{self.path}: not an evaluation history ({e}); it is rewritten "
                         "atomically, so this is not a crash: delete it only if you know why "
                         "it changed") from e

  def get(self, kind: str, epoch: int) -> dict | None:
    return next((r for r in self.records if r["kind"] == kind and r["epoch"] == epoch), None)

  def of_kind(self, kind: str) -> list[dict]:
    return [r for r in self.records if r["kind"] == kind]

  def add(self, record: dict) -> None:
    """Appends ``record`` (replacing one of the same kind and epoch) and saves atomically."""
    self.records = [r for r in self.records
                    if (r["kind"], r["epoch"]) != (record["kind"], record["epoch"])]
    self.records.append(record)
    self.records.sort(key=lambda r: (r["epoch"], KINDS.index(r["kind"])))
    if jax.process_index() == 0:
      with open(self.path + ".tmp", "w") as f:
        json.dump({"records": self.records}, f, indent=1)
      os.replace(self.path + ".tmp", self.path)


def make_record(kind: str, epoch: int, step: int, split: str, checkpoint: str,
                params_step: int, views: dict[str, dict[str, float]], **extra: Any) -> dict:
  """One history record (see the module docstring); metric values as plain floats."""
  return {"kind": kind, "epoch": int(epoch), "step": int(step), "split": split,
          "checkpoint": checkpoint, "params_step": int(params_step),
          "views": {v: {k: float(x) for k, x in m.items()} for v, m in views.items()},
          **extra}
