"""Sweeps: a config file's ``get_sweep(arg)`` names points, each a dict of config overrides.

  python -m mlzsl_jax.main sweep --config configs/biam_digits_ablation.py --workdir DIR
  python -m mlzsl_jax.main sweep --config ... --workdir DIR --launcher=slurm   # print commands

A config file with a sweep defines, next to ``get_config(arg)``::

  def get_sweep(arg=None) -> dict[str, dict[str, object]]:
    return {"no_context": {"model.context": "none"}, "both": {}}

Each point trains in ``DIR/<name>`` (resuming its own checkpoints) and ends with
``DIR/<name>/results.json``; ``DIR/sweep.json`` lists the points in order (the report's row
order). A point whose results.json says it trained to the end with the same config is
skipped, so re-running a sweep only runs what is missing or changed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import time
import traceback
from typing import Any, Callable

import ml_collections

from mlzsl_jax import workdir as wd
from mlzsl_jax.registry import Registry

SWEEP_FILE = "sweep.json"
_POINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclasses.dataclass(frozen=True)
class Point:
  """One sweep point: a directory-safe name and its overrides {'model.context': 'none'}."""
  name: str
  overrides: dict[str, Any]


def load_config_module(config_spec: str):
  """'configs/x.py[:arg]' -> (module, arg or None); FileNotFoundError names the file."""
  path, _, arg = config_spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {config_spec!r}: no such file {path!r}")
  spec = importlib.util.spec_from_file_location(
      f"_mlzsl_config_{os.path.splitext(os.path.basename(path))[0]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, (arg or None)


def named_overrides(config_spec: str, function: str, what: str
                    ) -> tuple[dict[str, dict[str, Any]], Any, str | None]:
  """(``{name: overrides}`` of the config file's ``function(arg)``, the module, arg), with
  names and override dicts validated (``what``: 'sweep point' / 'phase', for the errors)."""
  module, arg = load_config_module(config_spec)
  if not hasattr(module, function):
    raise ValueError(f"--config {config_spec!r}: the file defines no {function}(arg); it "
                     "returns {name: {'field.path': value, ...}}")
  raw = getattr(module, function)(arg)
  if not isinstance(raw, dict) or not raw:
    raise ValueError(f"{config_spec}: {function}() must return a non-empty dict "
                     f"{{name: {{field: value}}}}, got {type(raw).__name__}")
  for name, overrides in raw.items():
    if not isinstance(name, str) or not _POINT_NAME.match(name):
      raise ValueError(f"{config_spec}: {what} name {name!r} must be a directory-safe "
                       "name (letters, digits, _ . + = -)")
    if not isinstance(overrides, dict):
      raise ValueError(f"{config_spec}: {what} {name!r}: overrides must be a dict "
                       f"{{'field.path': value}}, got {type(overrides).__name__}")
  return raw, module, arg


def sweep_points(config_spec: str) -> list[Point]:
  """The points of the config file's ``get_sweep(arg)``, validated (names, override keys)."""
  raw, module, arg = named_overrides(config_spec, "get_sweep", "sweep point")
  base = module.get_config(arg)
  points = []
  for name, overrides in raw.items():
    point = Point(name, dict(overrides))
    apply_overrides(base, point.overrides, where=f"{config_spec} sweep point {name!r}")
    points.append(point)
  return points


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any], *,
                    where: str = "overrides") -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-path ``overrides`` set; unknown fields and wrong types
  raise ValueError naming ``where`` and the field."""
  out = ml_collections.ConfigDict(config.to_dict())
  for field, value in overrides.items():
    parts = field.split(".")
    node = out
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f"{where}: no config field {field!r} ("
                         f"{'.'.join(parts[:i + 1])!r} does not exist)")
      if i < len(parts) - 1:
        node = node[part]
    try:
      node[parts[-1]] = value
    except TypeError as e:
      raise ValueError(f"{where}: config field {field!r}: {e}") from e
  out.lock()
  return out


def config_json(config: ml_collections.ConfigDict) -> Any:
  """The config as plain JSON values (what results.json stores), for comparisons."""
  return json.loads(config.to_json_best_effort())


def read_results(workdir: str) -> dict | None:
  """``workdir/results.json`` or None if absent; ValueError names a corrupt file."""
  path = os.path.join(workdir, wd.RESULTS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}); delete it to re-run the point") from e


def is_finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """True if ``workdir`` holds results of a run that trained to its end with ``config``."""
  results = read_results(workdir)
  return bool(results and results.get("trained_to_end")
              and results.get("config") == config_json(config))


def _flag_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


LAUNCHERS: Registry[Callable[[str, str, list[str]], str]] = Registry("launcher", "--launcher")


@LAUNCHERS.register("local")
def _local(config_spec: str, workdir: str, flags: list[str]) -> str:
  return shlex.join(["launch/local.sh", config_spec, workdir, *flags])


@LAUNCHERS.register("slurm")
def _slurm(config_spec: str, workdir: str, flags: list[str]) -> str:
  return shlex.join(["sbatch", "launch/slurm.sbatch", config_spec, workdir, *flags])


@LAUNCHERS.register("tpu_pod")
def _tpu_pod(config_spec: str, workdir: str, flags: list[str]) -> str:
  return "launch/tpu_pod.sh \"$TPU_NAME\" \"$ZONE\" " + shlex.join([config_spec, workdir,
                                                                    *flags])


def launch_commands(config_spec: str, root: str, points: list[Point], launcher: str,
                    extra_flags: list[str] = ()) -> list[str]:
  """One shell command per point (``extra_flags``: --config.x=y given for every point)."""
  make = LAUNCHERS.get(launcher)
  return [make(config_spec, os.path.join(root, p.name),
               [*extra_flags, *(f"--config.{k}={_flag_value(v)}"
                                for k, v in p.overrides.items())])
          for p in points]


def write_sweep_file(root: str, config_spec: str, points: list[Point]) -> str:
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, SWEEP_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"config": config_spec,
               "points": [{"name": p.name, "overrides": p.overrides} for p in points]},
              f, indent=2)
  os.replace(tmp, path)
  return path


def plan(config_spec: str, base: ml_collections.ConfigDict, root: str,
         only: list[str] | None = None
         ) -> list[tuple[Point, ml_collections.ConfigDict, str, bool]]:
  """(point, its config, its workdir, finished?) for the selected points, in sweep order;
  writes ``root/sweep.json``. ``only``: point names (an unknown name is a ValueError)."""
  points = sweep_points(config_spec)
  names = [p.name for p in points]
  unknown = sorted(set(only or ()) - set(names))
  if unknown:
    raise ValueError(f"--only {unknown}: not points of {config_spec}; points: {names}")
  write_sweep_file(root, config_spec, points)
  out = []
  for point in points:
    if only and point.name not in only:
      continue
    config = apply_overrides(base, point.overrides, where=f"sweep point {point.name!r}")
    workdir = os.path.join(root, point.name)
    out.append((point, config, workdir, is_finished(workdir, config)))
  return out


def set_aside_if_changed(workdir: str, config: ml_collections.ConfigDict) -> str | None:
  """A point whose workdir was trained with other model / data fields must not resume it:
  the folder is renamed ``<workdir>.replaced<k>`` (nothing is deleted); returns that name."""
  if not os.path.isdir(workdir) or not wd.config_differences(config, workdir):
    return None
  k = 1
  while os.path.exists(f"{workdir}.replaced{k}"):
    k += 1
  os.rename(workdir, f"{workdir}.replaced{k}")
  return f"{workdir}.replaced{k}"


def run_sweep(config_spec: str, base: ml_collections.ConfigDict, root: str, *,
              train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
              only: list[str] | None = None, log: Callable[[str], None] = print
              ) -> dict[str, str]:
  """Runs every unfinished point of the sweep one after another in this process.

  Args:
    config_spec: 'configs/x.py[:arg]' (its get_sweep gives the points).
    base: the config to apply each point's overrides to (``get_config(arg)`` plus any
      command-line --config.x=y overrides).
    root: the sweep's directory; point p trains in ``root/p``.
    train_fn: (config, workdir) -> anything; default ``train.train_and_evaluate``.
    only: run just these point names (others are left as they are).

  Returns:
    {point name: 'skipped' | 'done' | 'failed: <error>'}; a failed point does not stop the
    others (its traceback is logged), so one bad point costs one point.
  """
  todo = [(point.name, config, workdir, str(point.overrides or "(base config)"))
          for point, config, workdir, _ in plan(config_spec, base, root, only)]
  return run_in_order(todo, train_fn, log, keep_going=True, set_aside=True)


def run_in_order(todo: list[tuple[str, ml_collections.ConfigDict, str, str]],
                 train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None,
                 log: Callable[[str], None], *, keep_going: bool, set_aside: bool,
                 prefix: str = "") -> dict[str, str]:
  """The plan / skip / run loop of sweeps and phase chains: each (name, config, workdir,
  description) in order; one whose ``results.json`` says it finished with this config is
  skipped. ``set_aside``: a workdir trained with other model / data fields is renamed first
  (sweeps; a phase's workdir refuses such a resume itself). ``keep_going``: a failure is
  logged and the next one runs (sweeps), otherwise it propagates (phases). A preempted run
  stops the loop.

  Returns {name: 'skipped' | 'done' | 'preempted' | 'failed: <error>'}.
  """
  if train_fn is None:
    from mlzsl_jax import train  # pylint: disable=import-outside-toplevel
    train_fn = train.train_and_evaluate
  status: dict[str, str] = {}
  for i, (name, config, workdir, description) in enumerate(todo, 1):
    tag = f"[{prefix}{i}/{len(todo)}] {name}"
    if is_finished(workdir, config):
      log(f"{tag}: finished earlier ({workdir}/{wd.RESULTS_FILE}), skipped")
      status[name] = "skipped"
      continue
    log(f"{tag}: {description} -> {workdir}")
    moved = set_aside_if_changed(workdir, config) if set_aside else None
    if moved:
      log(f"{tag}: its model / data fields changed; the earlier run was moved to {moved} "
          "and it starts afresh")
    t0 = time.perf_counter()
    try:
      result = train_fn(config, workdir)
    except Exception as e:  # noqa: BLE001 - a sweep's failed point must not lose the others
      if not keep_going:
        raise
      log(traceback.format_exc())
      status[name] = f"failed: {type(e).__name__}: {e}"
      continue
    if isinstance(result, dict) and "preempted_at" in result:
      log(f"{tag}: preempted; run the same command to resume")
      status[name] = "preempted"
      return status
    status[name] = "done"
    log(f"{tag}: done in {time.perf_counter() - t0:.0f} s")
  return status
