"""Command line: python -m mlzsl_jax.main {train,evaluate} --config FILE[:ARG] --workdir DIR.

Any config field can be overridden: --config.train.num_epochs=5. Unknown fields and wrong
types fail at start, naming the field.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.")


def _train(config, workdir):
  from mlzsl_jax import train
  return train.train_and_evaluate(config, workdir)


def _evaluate(config, workdir):
  from mlzsl_jax import evaluate
  return evaluate.evaluate(config, workdir)


COMMANDS = {"train": _train, "evaluate": _evaluate}


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m mlzsl_jax.main {{{','.join(COMMANDS)}}} "
                         "--config configs/<file>.py[:arg] --workdir DIR")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  COMMANDS[argv[1]](_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
