"""Command line: python -m mlzsl_jax.main COMMAND --config FILE[:ARG] [--workdir DIR] [...].

Commands: train, evaluate [--checkpoint=latest|best|STEP] [--init_from=OFFICIAL_WEIGHTS],
reproduce (the config file's get_phases() in order, e.g. select on val20 then fine-tune, and
one final table), predict --inputs=IMAGES --labels=NAMES (top-K of any label names the
embedding source can embed, with region-map PNGs), prepare (build the dataset),
convert --init_from=OFFICIAL_WEIGHTS (into the workdir's checkpoint of step 0),
sweep (every point of the config file's get_sweep(), or --launcher=local|slurm|tpu_pod to
print one launch command per point), plots (PNG figures of a trained workdir),
report DIR... [--csv F] [--markdown F] (one table from results.json files),
extract --image_dir D --out_dir O --weights FILE [--backbone vgg19|resnet101|clip_vit_*]
(features of a folder of images), and
compile --topology v5e:16x16|h100:8 [--num_slices N] [--top_bytes N] [--max_batch] (the
config's programs compiled for a TPU slice or GPUs on this CPU machine: per-chip memory,
FLOP, bytes, collectives, a roofline estimate; exit 1 when a program does not fit; needs
make setup-compile).

Any config field can be overridden: --config.train.num_epochs=5. Unknown fields and wrong
types fail at start, naming the field.

Several processes (hosts): under SLURM / Open MPI / a TPU pod nothing extra is needed (JAX
detects the launch); by hand, start one process per host with
``--coordinator_address=HOST0:PORT --num_processes=N --process_id=i``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.")
# Multi-process runs (see mlzsl_jax/distributed.py). Left unset, a SLURM / Open MPI / TPU-pod
# launch with more than one process is detected by JAX itself; otherwise one process.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0's coordinator ('' = auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0,
                                      "Number of processes (0 = auto-detect).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1,
                                   "Index of this process, 0..num_processes-1 (-1 = auto).")


_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "evaluate / convert: official weights (BiAM .pth, LESA TF checkpoint) "
    "to convert to our parameters instead of restoring a checkpoint of the workdir.")


_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", "evaluate / predict: which checkpoint of the workdir: 'latest', "
    "'best' (selected on the validation split) or a step number.")


_INPUTS = flags.DEFINE_list("inputs", None, "predict: image files (PNG/JPEG of the dataset's "
                            "kind) or .npy region-feature arrays [regions, dim].")
_LABELS = flags.DEFINE_list("labels", None, "predict: label names to rank (any name the "
                            "workdir's embedding source can embed; default: the dataset's).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "predict: labels shown per input.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "predict: folder of the region-map PNGs "
                               "(default WORKDIR/predict).")


_TOPOLOGY = flags.DEFINE_string("topology", None, "compile: TPU slice (v5e:16x16, v4:2x2x2, "
                                "v5p:4x4x8, v6e:8x8) or GPUs (h100:8, h200:4x8).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "compile: slices of --topology "
                                   "(multi-slice).")
_TOP_BYTES = flags.DEFINE_integer("top_bytes", 0, "compile: list the N ops that move the "
                                  "most bytes per program.")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False, "compile: search the largest global "
                               "train batch that fits.")


_LAUNCHER = flags.DEFINE_string(
    "launcher", None, "sweep: print one command per unfinished point for launch/<launcher> "
    "(local, slurm, tpu_pod) instead of running the points here.")
_ONLY = flags.DEFINE_list("only", None, "sweep: run only these point names.")
_EXAMPLES = flags.DEFINE_list("examples", ["0"], "plots: test-set indices of the examples "
                              "whose region-score maps are drawn.")
_LOCALIZE = flags.DEFINE_integer("localize", 100, "plots: count region-map peaks on the "
                                 "label's own cell over this many test images (digits).")


def _compile(config, workdir):
  """Compiles the config's programs for --topology (a TPU this machine need not have)."""
  del workdir
  if not _TOPOLOGY.value:
    raise app.UsageError("compile needs --topology (e.g. v5e:16x16)")
  from mlzsl_jax.compile import command, topology
  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  try:
    status = command.run(config, spec, _TOPOLOGY.value, _NUM_SLICES.value, _TOP_BYTES.value,
                         _MAX_BATCH.value)
  except (topology.CompilerMissing, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  raise SystemExit(status)


def _train(config, workdir):
  from mlzsl_jax import train
  return train.train_and_evaluate(config, workdir)


def _evaluate(config, workdir):
  if _INIT_FROM.value:
    from mlzsl_jax import convert
    return convert.evaluate_init_from(config, workdir, _INIT_FROM.value)
  from mlzsl_jax import restore
  return restore.evaluate(config, workdir, _CHECKPOINT.value)


def _reproduce(config, workdir):
  """Runs the config file's get_phases() in order (each resumable), then the final table."""
  from mlzsl_jax import phases
  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  if phases.run_phases(spec, config, workdir) is None:
    raise SystemExit(0)


def _prepare(config, workdir):
  """Builds (or validates) the configured dataset once, so training jobs start reading."""
  del workdir
  from mlzsl_jax import distributed
  from mlzsl_jax.data.source import get_dataset
  source = distributed.process_zero_first(lambda: get_dataset(config.data), "dataset ready")
  print(f"{config.data.name}: {source.meta.num_examples} examples, "
        f"{source.meta.num_labels} labels, embeddings {sorted(source.meta.embeddings)}; "
        f"{source.meta.provenance}", flush=True)


def _convert(config, workdir):
  if not _INIT_FROM.value:
    raise app.UsageError("convert needs --init_from=PATH (official weights)")
  from mlzsl_jax import convert
  print(f"converted {_INIT_FROM.value} -> "
        f"{convert.convert_to_workdir(config, workdir, _INIT_FROM.value)} (step 0)", flush=True)


def _sweep(config, workdir):
  """Runs (or, with --launcher, prints the commands of) the unfinished sweep points."""
  from mlzsl_jax import sweep
  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  # The --config.x=y overrides given on the command line apply to every point.
  extra = [a for a in sys.argv if a.startswith("--config.")]
  if _LAUNCHER.value:
    todo = [p for p, _, _, finished in sweep.plan(spec, config, workdir, _ONLY.value)
            if not finished]
    for cmd in sweep.launch_commands(spec, workdir, todo, _LAUNCHER.value, extra):
      print(cmd)
    return
  status = sweep.run_sweep(spec, config, workdir, only=_ONLY.value)
  print("\n".join(f"{name}: {s}" for name, s in status.items()), flush=True)
  failed = [n for n, s in status.items() if s.startswith("failed")]
  if failed:
    raise SystemExit(f"sweep: {len(failed)} point(s) failed: {failed}; re-run the same "
                     "command to retry them (finished points are skipped)")
  print(f"report: python -m mlzsl_jax.main report {workdir}", flush=True)


def _predict(config, workdir):
  """Top-K of any label names for each input, and a region-map PNG per input."""
  from mlzsl_jax import predict
  for r in predict.predict(config, workdir, _INPUTS.value or [], _LABELS.value or [],
                           top_k=_TOP_K.value, checkpoint=_CHECKPOINT.value,
                           out_dir=_OUT_DIR.value):
    tags = ", ".join(f"{name} {score:.2f}" for name, score in r["top"])
    print(f"{r['input']}: {tags}" + (f"  [{r['figure']}]" if r["figure"] else ""), flush=True)


def _plots(config, workdir):
  from mlzsl_jax import plots
  paths = plots.plot_workdir(config, workdir, examples=[int(i) for i in _EXAMPLES.value],
                             localize=_LOCALIZE.value)
  print("\n".join(paths), flush=True)


COMMANDS = {"train": _train, "evaluate": _evaluate, "prepare": _prepare, "convert": _convert,
            "sweep": _sweep, "plots": _plots, "reproduce": _reproduce, "predict": _predict,
            "compile": _compile}
NEEDS_WORKDIR = {"train", "evaluate", "convert", "sweep", "plots", "reproduce", "predict"}


def _unknown_override(argv: list[str]) -> str | None:
  """The first ``--config.a.b=v`` whose field does not exist in the config file, if any."""
  import importlib.util
  spec_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec_arg is None and "--config" in argv:
    spec_arg = argv[argv.index("--config") + 1]
  if spec_arg is None:
    return None
  path, _, arg = spec_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_mlzsl_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      field = a[len("--config."):].split("=", 1)[0]
      node = config
      for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
          return field
        node = node[part]
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a clear message for a misspelt config field."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:
    field = _unknown_override(argv)
    if field is None:
      raise
    raise SystemExit(f"error: --config.{field}: no such config field (typo?); see the "
                     "config file and mlzsl_jax/config_base.py for the fields") from e


def _start_platform(config_platform: str, initialize) -> None:
  """Resolves the platform this run must use, starts JAX (``initialize``: the multi-process
  join), checks the platform and prints the first line: process, platform, device kind and
  counts. A mismatch (e.g. a GPU job whose JAX sees only the CPU) stops with one line."""
  from mlzsl_jax import accelerator
  try:
    expect = accelerator.expected_platform(config_platform)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  accelerator.select_backend(expect)
  initialize()
  try:
    accelerator.check_platform(expect)
  except accelerator.PlatformError as e:
    raise SystemExit(f"error: {e}") from None
  print(accelerator.describe(expect), flush=True)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m mlzsl_jax.main {{{','.join(COMMANDS)}}} "
                         "--config configs/<file>.py[:arg] --workdir DIR")
  # Progress lines are printed; libraries' absl log lines (tfds' "Using custom data
  # configuration", ...) only with MLZSL_VERBOSE=1.
  verbose = os.environ.get("MLZSL_VERBOSE", "") not in ("", "0")
  logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)
  training_free = (_CONFIG.value is not None and argv[1] == "predict"
                   and _CONFIG.value.model.get("name") == "clip_zero_shot")
  if _CONFIG.value is None or (argv[1] in NEEDS_WORKDIR and not _WORKDIR.value
                               and not training_free):
    raise app.UsageError("--config (and, except for prepare and predict with clip_zero_shot, "
                         "--workdir) are required")
  if argv[1] == "compile":  # runs on this machine's CPU for a topology it does not have
    from mlzsl_jax import accelerator
    accelerator.select_backend(accelerator.Expectation("cpu", "the compile command"))
    with user_errors_in_one_line():
      return _compile(_CONFIG.value, None)
  from mlzsl_jax import distributed
  _start_platform(_CONFIG.value.get("platform", "auto"),
                  lambda: distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                                 _PROCESS_ID.value, cpu_collectives=True))
  with user_errors_in_one_line():
    COMMANDS[argv[1]](_CONFIG.value, _WORKDIR.value)


class user_errors_in_one_line:  # pylint: disable=invalid-name
  """A user error (bad input file, label name, flag or config value, missing weights: see
  ``errors.is_user_error``) ends the command with ``error: ...`` on one line and exit status
  1; ``MLZSL_DEBUG=1`` shows its traceback. Bugs keep their traceback."""

  def __enter__(self):
    return self

  def __exit__(self, kind, exc, tb):
    from mlzsl_jax import errors  # pylint: disable=import-outside-toplevel
    if exc is not None and errors.is_user_error(exc) and not errors.debug_requested():
      print(errors.one_line(exc), file=sys.stderr, flush=True)
      raise SystemExit(1) from None
    return False


def _extract_main(argv: list[str]):
  """``python -m mlzsl_jax.main extract --image_dir D --out_dir O --weights F [...]``: region
  (and scene) features of a folder of images (see mlzsl_jax/extract/run.py for the flags);
  several processes split the shards (launched like training: SLURM / TPU pod detected)."""
  from mlzsl_jax import distributed
  from mlzsl_jax.extract import run
  _start_platform("auto", distributed.initialize)
  with user_errors_in_one_line():
    run.main(argv)


def _import_tensorflow_quietly() -> None:
  """TensorFlow's C++ start-up lines (oneDNN notices, absl's pre-init warning) go to file
  descriptor 2 while it imports; they are dropped unless ``MLZSL_VERBOSE=1``. An import
  failure still raises (TensorFlow is optional for some commands)."""
  if os.environ.get("MLZSL_VERBOSE", "") not in ("", "0"):
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pass
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] != "extract":
    _import_tensorflow_quietly()  # before the config file (and the data modules) load it
  if len(sys.argv) > 1 and sys.argv[1] == "extract":
    _extract_main(sys.argv[2:])
  elif len(sys.argv) > 1 and sys.argv[1] == "report":
    from mlzsl_jax import report
    report.main(sys.argv[2:])
  else:
    app.run(main, flags_parser=_parse_flags)
