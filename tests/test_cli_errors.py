"""User errors end every command with one line (``error: ...``, exit status 1, no traceback;
``MLZSL_DEBUG=1`` shows it), bugs keep their traceback, and a command starts quietly (no
TensorFlow / absl C++ start-up lines on stderr)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlzsl_jax import errors
from mlzsl_jax.data import multilabel_folder

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args, env=None):
  full_env = {**os.environ, **(env or {})}
  full_env.pop("XLA_FLAGS", None)  # one device is enough
  full_env.pop("MLZSL_VERBOSE", None)
  return subprocess.run([sys.executable, "-m", "mlzsl_jax.main", *args], cwd=ROOT,
                        env=full_env, capture_output=True, text=True, timeout=300)


def test_user_error_is_one_line_and_the_start_is_quiet(tmp_path):
  missing = tmp_path / "no_such_folder"
  args = ("prepare", "--config", "configs/own_data.py",
          f"--config.data.manual_dir={missing}", f"--config.data.data_dir={tmp_path}")
  out = run_main(*args)
  assert out.returncode == 1
  assert out.stderr.splitlines() == [
      f"error: config field data.manual_dir='{missing}': not a folder (the dataset folder; "
      "docs/own-data.md)"], out.stderr  # nothing else: no oneDNN / absl / tfds lines
  debug = run_main(*args, env={"MLZSL_DEBUG": "1"})
  assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


@pytest.mark.parametrize("command,message", [
    (("evaluate", "--config", "configs/biam_digits.py:smoke=True", "--workdir", "{tmp}/empty",
      "--config.data.data_dir={tmp}/tfds"), "error: --workdir '{tmp}/empty': no checkpoint "
                                            "under {tmp}/empty/checkpoints; train first"),
    (("predict", "--config", "configs/clip_zero_shot.py", "--inputs", "photo.jpg",
      "--labels", "dog"), "error: CLIP features / label names need the CLIP weights: "
                          "--config.data.clip_weights=FILE (the file the workdir's data used)"),
    (("extract", "--image_dir", "{tmp}/none", "--out_dir", "{tmp}/out", "--weights",
      "w.safetensors", "--backbone", "clip_vit"), "error: image folder '{tmp}/none' does not "
                                                 "exist"),
])
def test_every_command_kind_ends_a_user_error_in_one_line(tmp_path, command, message):
  out = run_main(*[a.format(tmp=tmp_path) for a in command])
  assert out.returncode == 1
  assert out.stderr.splitlines() == [message.format(tmp=tmp_path)], out.stderr


def test_user_errors_and_bugs_are_told_apart(tmp_path):
  with pytest.raises(FileNotFoundError) as ours:
    multilabel_folder.read_names(str(tmp_path / "label_names.txt"))
  assert errors.is_user_error(ours.value)
  assert errors.one_line(ours.value).startswith("error: ") and "\n" not in errors.one_line(
      ours.value)
  with pytest.raises(ValueError) as theirs:  # raised inside NumPy: a bug here, traceback kept
    np.zeros(6).reshape(4, 4)
  assert not errors.is_user_error(theirs.value)
  assert not errors.is_user_error(KeyError("x"))
