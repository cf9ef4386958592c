"""Restoring a trained workdir for evaluation, plots and prediction: the dataset, the
compiled ``Trainer`` and the state of a chosen checkpoint (``latest``, ``best`` or a step).

Sits above ``train.py`` (checkpoint layout, Trainer) and ``evaluate.py`` (metrics), so that
neither of those imports the other.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from mlzsl_jax import workdir as wd
from mlzsl_jax import step as step_lib
from mlzsl_jax import distributed
from mlzsl_jax import evaluate as evaluate_lib
from mlzsl_jax import sharding as shd
from mlzsl_jax.data.source import get_dataset


def checkpoint_step(workdir: str, config, checkpoint: str | int = "latest"
                    ) -> tuple[ocp.CheckpointManager, int]:
  """(manager, step) of ``checkpoint`` in ``workdir``: 'latest' (``checkpoints/``), 'best'
  (``best/``, kept by validation-based selection) or a step number of ``checkpoints/``."""
  choice = str(checkpoint)
  if choice == "best":
    mngr = wd.best_checkpoint_manager(workdir)
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"--workdir {workdir!r}: no best checkpoint under "
                              f"{os.path.join(workdir, wd.BEST_DIR)} (the run has no "
                              "validation-based selection: eval.val_split, or it has not "
                              "validated yet); use --checkpoint=latest")
    return mngr, step
  mngr = wd.checkpoint_manager(workdir, config)
  if choice == "latest":
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"--workdir {workdir!r}: no checkpoint under "
                              f"{os.path.join(workdir, wd.CHECKPOINTS_DIR)}; train first")
    return mngr, step
  if not choice.isdigit():
    raise ValueError(f"--checkpoint={choice!r}: expected 'latest', 'best' or a step number")
  if int(choice) not in mngr.all_steps():
    raise FileNotFoundError(f"--workdir {workdir!r}: no checkpoint of step {choice}; kept "
                            f"steps: {sorted(mngr.all_steps())}")
  return mngr, int(choice)


def build(config: ml_collections.ConfigDict):
  """(dataset source, Trainer) of ``config`` for evaluation: the dataset (prepared by
  process 0 first), the mesh and the compiled functions, before any checkpoint."""
  source = distributed.process_zero_first(lambda: get_dataset(config.data), "dataset ready")
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  return source, step_lib.Trainer(config, source.meta, mesh, steps_per_epoch=1)


def restore(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int = "latest"):
  """(source, trainer, state, step) of ``checkpoint`` in ``workdir`` (see checkpoint_step).

  Warns (process 0) where the workdir was trained with other model / data fields (e.g. another
  seen / unseen split): the scores would then be those of a different experiment.
  """
  workdir = wd.ensure_workdir(workdir)
  source, trainer = build(config)
  if not trainer.has_parameters:  # a training-free model (clip_zero_shot): step 0, as built
    return source, trainer, trainer.init_state(), 0
  mngr, step = checkpoint_step(workdir, config, checkpoint)
  differences = wd.config_differences(config, workdir)
  if differences and jax.process_index() == 0:
    print(f"WARNING: {workdir}/{wd.CONFIG_FILE} differs from this config in: "
          + "; ".join(differences), flush=True)
  state = mngr.restore(step, args=ocp.args.StandardRestore(trainer.abstract_state()))
  return source, trainer, state, step


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             checkpoint: str | int = "latest") -> dict:
  """Restores ``checkpoint`` of ``workdir`` and prints the evaluation table of the test split
  and of each ``eval.extra_test_splits`` (``results.json`` is written, with the step of the
  checkpoint evaluated)."""
  source, trainer, state, step = restore(config, workdir, checkpoint)
  result = evaluate_lib.evaluate_state(trainer, source, state, config)
  result["splits"] = {s: evaluate_lib.evaluate_state(trainer, source, state, config, s)
                      for s in config.eval.extra_test_splits}
  evaluate_lib.report(result, config, workdir, step)
  return result
