"""Chained training phases, one command: a paper's protocol end to end.

  python -m mlzsl_jax.main reproduce --config configs/biam_nus_wide.py:scene=vgg19 \\
      --workdir workdirs/biam_nus --config.data.manual_dir=/data/NUS-WIDE

A config file with phases defines, next to ``get_config(arg)``::

  def get_phases(arg=None) -> dict[str, dict[str, object]]:
    return {"select": {"data.train_split": "train80", "eval.val_split": "val20", ...},
            "finetune": {"train.init_from": "{select}/best", "train.num_epochs": 5, ...}}

Phases run in order, each in ``WORKDIR/<name>`` with ``get_config(arg)`` (plus command-line
``--config.x=y``) and its overrides; ``{name}`` in a string override is that phase's folder
(so a phase starts from an earlier one's best or latest checkpoint). Each phase is an
ordinary training run, so a killed phase resumes from its own checkpoints and evaluation
history; a phase whose ``results.json`` says it trained to its end with the same config is
skipped. At the end every phase's test records (``evals.json``) are printed as one table and
written to ``WORKDIR/final_table.md``.

The driver sits above ``train.py`` and ``evaluate.py``; neither imports it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import ml_collections

from mlzsl_jax import selection
from mlzsl_jax import workdir as wd
from mlzsl_jax import sweep

PHASES_FILE = "phases.json"


def phase_overrides(config_spec: str) -> dict[str, dict[str, Any]]:
  """The config file's ``get_phases(arg)``, validated (names, dict of overrides)."""
  return sweep.named_overrides(config_spec, "get_phases", "phase")[0]


def plan(config_spec: str, base: ml_collections.ConfigDict, root: str
         ) -> list[tuple[str, ml_collections.ConfigDict, str]]:
  """(name, config, workdir) of every phase in order; ``{name}`` placeholders in string
  overrides become the phase folders (an unknown name is a ValueError)."""
  raw = phase_overrides(config_spec)
  root = os.path.abspath(os.path.expanduser(root))
  dirs = {name: os.path.join(root, name) for name in raw}
  out = []
  for name, overrides in raw.items():
    resolved = {}
    for field, value in overrides.items():
      if isinstance(value, str) and "{" in value:
        try:
          value = value.format(**dirs)
        except (KeyError, IndexError, ValueError) as e:
          raise ValueError(f"{config_spec}: phase {name!r} field {field!r}={value!r}: "
                           f"unknown phase placeholder {e}; phases: {list(raw)}") from e
      resolved[field] = value
    config = sweep.apply_overrides(base, resolved, where=f"{config_spec} phase {name!r}")
    out.append((name, config, dirs[name]))
  return out


def _columns(views: dict, ks) -> list[str]:
  """Metric keys in the papers' order: P, R, F1 per K, then mAP (and weighted mAP)."""
  keys = [f"{m}@{k}" for k in ks for m in ("p", "r", "f1")] + ["map", "weighted_map"]
  return [k for k in keys if k in views]


def _label(key: str) -> str:
  """'f1@3' -> 'F1@3', 'map' -> 'mAP', 'weighted_map' -> 'wmAP'."""
  return {"map": "mAP", "weighted_map": "wmAP"}.get(key, key.upper())


def _cell(value: float) -> str:
  return "nan" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def final_table(phases: list[tuple[str, ml_collections.ConfigDict, str]]) -> str:
  """A markdown table of every test record of every phase, with each phase's selection.

  Rows: (phase, epoch, which parameters were scored); columns: ZSL then GZSL P/R/F1@K and
  mAP, values x100. A closing note says when the last phase's rows are several epochs of
  which choosing one would be a choice made on the test set.
  """
  lines, notes = [], []
  header_done = False
  last_tests: list[dict] = []
  for name, config, workdir in phases:
    history = selection.EvalHistory(workdir)
    tests = history.of_kind("test")
    vals = history.of_kind("val")
    if vals:
      metric = config.eval.select_metric
      best = selection.best_record(vals, metric)
      notes.append(f"- phase `{name}`: {len(vals)} validation passes on "
                   f"`{config.eval.val_split}`; selected epoch {best['epoch']} (step "
                   f"{best['step']}, {metric} = {_cell(selection.metric_value(best, metric))})"
                   ", ties going to the later epoch")
    if config.train.init_from:
      start = config.train.init_from
      root = os.path.dirname(workdir)
      if os.path.abspath(start).startswith(root + os.sep):
        start = os.path.relpath(start, root)  # 'select/best': the same table in any folder
      notes.append(f"- phase `{name}`: started from `{start}` with a fresh optimizer, "
                   f"trained on `{config.data.train_split}`")
    if not tests:
      continue
    ks = tuple(config.eval.ks)
    cols = {v: _columns(tests[0]["views"][v], ks) for v in ("zsl", "gzsl")}
    if not header_done:
      head = ["Phase", "Epoch", "Parameters"] + [f"{v.upper()} {_label(c)}"
                                                 for v in ("zsl", "gzsl") for c in cols[v]]
      lines.append("| " + " | ".join(head) + " |")
      lines.append("|" + "---|" * len(head))
      header_done = True
    for r in tests:
      which = (f"best (step {r['params_step']})" if r["checkpoint"] == "best"
               else f"step {r['params_step']}")
      cells = [name, str(r["epoch"]), which] + [_cell(r["views"][v][c])
                                                for v in ("zsl", "gzsl") for c in cols[v]]
      lines.append("| " + " | ".join(cells) + " |")
    last_tests = tests
  if not lines:
    return "(no test records yet)"
  if len(last_tests) > 1:
    notes.append(f"- The last phase's {len(last_tests)} test rows are shown as the official "
                 "log shows them. Picking one of them (the best ZSL row, the best GZSL row) "
                 "is a choice made on the test set, as the official code's reported numbers "
                 "are; no validation split takes part in it.")
  notes.append("- Values x100; P/R/F1@K overall (micro) over images; mAP per the evaluation "
               "protocol of the config (eval.protocol).")
  return "\n".join(lines + [""] + notes)


def run_phases(config_spec: str, base: ml_collections.ConfigDict, root: str, *,
               train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
               log: Callable[[str], None] = print) -> str | None:
  """Runs the unfinished phases in order; returns the final table (None if a phase was
  preempted: re-run the same command to go on)."""
  phases = plan(config_spec, base, root)
  os.makedirs(root, exist_ok=True)
  _write(os.path.join(root, PHASES_FILE), json.dumps(
      {"config": config_spec, "phases": [n for n, _, _ in phases]}, indent=2))
  status = sweep.run_in_order([(name, config, workdir, "phase") for name, config, workdir
                               in phases], train_fn, log, keep_going=False, set_aside=False,
                              prefix="phase ")
  if "preempted" in status.values():
    return None
  table = final_table(phases)
  _write(os.path.join(root, wd.FINAL_TABLE), table + "\n")
  log(f"\nFinal table ({root}/{wd.FINAL_TABLE}):\n{table}")
  return table


def _write(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
