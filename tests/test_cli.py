"""The command line end to end: config errors, and SIGKILL mid-run then resume.

Each test runs `python -m mlzsl_jax.main` in a subprocess (8 simulated CPU devices, inherited
from conftest) on the tiny 'smoke' variant of the digits demo.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "biam_digits.py") + ":smoke=True"


def cli(workdir, *overrides, data_dir):
  return [sys.executable, "-m", "mlzsl_jax.main", "train", f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *overrides]


def run(cmd, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_config_typo_and_wrong_type_fail_naming_the_field(tmp_path, data_dir):
  out = run(cli(tmp_path / "w", "--config.train.num_epohcs=3", data_dir=data_dir))
  assert out.returncode != 0
  assert "--config.train.num_epohcs: no such config field" in out.stderr
  out = run(cli(tmp_path / "w", "--config.train.batch_size=abc", data_dir=data_dir))
  assert out.returncode != 0
  assert "--config.train.batch_size=abc" in out.stderr


def test_bad_split_and_batch_fail_before_training(tmp_path, data_dir):
  out = run(cli(tmp_path / "w", "--config.data.unseen_labels=(3, 4, 16)", data_dir=data_dir))
  assert out.returncode != 0
  assert "data.unseen_labels: label ids [16] out of range [0, 10)" in out.stderr
  out = run(cli(tmp_path / "w", "--config.train.batch_size=12", data_dir=data_dir))
  assert out.returncode != 0
  assert "train.batch_size=12 must be a multiple" in out.stderr


def _final_params(workdir):
  ckpts = Path(workdir) / "checkpoints"
  last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore(ckpts / str(last) / "default")
  return last, state["params"]


def test_sigkill_then_rerun_ends_with_the_uninterrupted_parameters(tmp_path, data_dir):
  overrides = ("--config.train.num_epochs=24", "--config.train.checkpoint_every_steps=6",
               "--config.train.keep_checkpoints=2", "--config.train.log_every_steps=40")
  ref = run(cli(tmp_path / "ref", *overrides, data_dir=data_dir))
  assert ref.returncode == 0, ref.stderr[-3000:]

  killed_dir = tmp_path / "killed"
  proc = subprocess.Popen(cli(killed_dir, *overrides, data_dir=data_dir), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  ckpts = killed_dir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 12 for p in ckpts.iterdir()):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed_dir / "results.json").exists()

  resumed = run(cli(killed_dir, *overrides, data_dir=data_dir))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from checkpoint step" in resumed.stdout

  step_ref, params_ref = _final_params(tmp_path / "ref")
  step_res, params_res = _final_params(killed_dir)
  assert step_ref == step_res
  flat_ref = jax_leaves(params_ref)
  flat_res = jax_leaves(params_res)
  assert len(flat_ref) == len(flat_res) > 0
  for a, b in zip(flat_ref, flat_res):
    np.testing.assert_array_equal(a, b)
  res_ref = json.loads((tmp_path / "ref" / "results.json").read_text())
  res_res = json.loads((killed_dir / "results.json").read_text())
  assert res_ref["zsl"] == res_res["zsl"] and res_ref["gzsl"] == res_res["gzsl"]

  # `evaluate` restores the last checkpoint and reproduces the end-of-training table.
  cmd = cli(tmp_path / "ref", *overrides, data_dir=data_dir)
  cmd[cmd.index("train")] = "evaluate"
  (tmp_path / "ref" / "results.json").unlink()
  ev = run(cmd)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "\nZSL " in ev.stdout and "GZSL (chance)" in ev.stdout
  res_ev = json.loads((tmp_path / "ref" / "results.json").read_text())
  assert res_ev["zsl"] == res_ref["zsl"] and res_ev["step"] == res_ref["step"]


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
