"""The workdir: its layout and the rules for resuming it, in one place.

  WORKDIR/config.json     the config a training run started with (``CONFIG_FILE``); resuming
                          with other model / data / label-split fields or another global
                          batch is refused (``check_resume_config``)
  WORKDIR/checkpoints/    orbax checkpoints by step (``checkpoint_manager``)
  WORKDIR/best/           the validation-selected checkpoint, one step (``best_checkpoint_manager``)
  WORKDIR/results.json    the last evaluation's metrics and config (``RESULTS_FILE``)
  WORKDIR/evals.json      every scheduled evaluation, one record each (``HISTORY_FILE``)
  WORKDIR/final_table.md  a chained protocol's final table (``FINAL_TABLE``)

Training, evaluation, restore, convert, sweep, phases and plots read these names from here.
"""

from __future__ import annotations

import json
import os
import tempfile

import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
RESULTS_FILE = "results.json"
HISTORY_FILE = "evals.json"
FINAL_TABLE = "final_table.md"


def ensure_workdir(workdir: str) -> str:
  """Creates ``workdir`` and checks it is writable; clear error otherwise."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise PermissionError(f"--workdir {workdir!r}: cannot create or write to it "
                          f"({e.strerror or e}); choose a writable directory") from e
  return workdir


# Fields that say where files are, not what is trained: they may change between runs.
LOCATION_FIELDS = ("data_dir", "manual_dir", "scene_weights")


def config_differences(config, workdir: str) -> list[str]:
  """'block.field: trained with X, now Y' for every model / data field (the label split is
  data.seen_labels / data.unseen_labels) where ``workdir/config.json`` (written by training)
  and ``config`` disagree; fields one side lacks (older versions) and file locations are not
  compared."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    trained = json.load(f)
  now = json.loads(config.to_json_best_effort())
  out = []
  for block in ("model", "data"):
    a, b = trained.get(block, {}), now.get(block, {})
    for key in [k for k in b if k in a and k not in LOCATION_FIELDS]:
      if a[key] != b[key]:
        out.append(f"{block}.{key}: trained with {a[key]!r}, now {b[key]!r}")
  return out


def check_resume_config(config, workdir: str, resuming: bool) -> None:
  """Resuming a workdir trained with other model / data / label-split fields is a
  ValueError naming them, unless ``train.allow_config_change``."""
  diffs = config_differences(config, workdir) if resuming else []
  path = os.path.join(workdir, CONFIG_FILE)
  if resuming and os.path.exists(path):
    with open(path) as f:
      trained = json.load(f).get("train", {}).get("batch_size")
    if trained is not None and trained != config.train.batch_size:
      # Steps per epoch, the learning-rate schedule and the data order follow the global
      # batch: another one would not continue the same run (the device count may change).
      raise ValueError(f"--workdir {workdir!r}: its checkpoints were trained with the global "
                       f"train.batch_size={trained}, now {config.train.batch_size}; resume "
                       f"with train.batch_size={trained} (any device or process count "
                       "that divides it), or start a new workdir")
  if diffs and not config.train.allow_config_change:
    raise ValueError(f"--workdir {workdir!r} holds checkpoints trained with another config: "
                     + "; ".join(diffs) + ". Use a new workdir, or set "
                     "--config.train.allow_config_change=True to resume anyway")


BEST_DIR = "best"  # WORKDIR/best: the validation-selected checkpoint (one step kept)


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=config.train.checkpoint_every_steps,
      max_to_keep=config.train.keep_checkpoints, create=True)
  return ocp.CheckpointManager(os.path.join(workdir, CHECKPOINTS_DIR), options=options)


def best_checkpoint_manager(workdir: str) -> ocp.CheckpointManager:
  """``WORKDIR/best``: holds the one checkpoint chosen by validation (selection.py)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  return ocp.CheckpointManager(os.path.join(workdir, BEST_DIR), options=options)
