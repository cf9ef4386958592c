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


OVERRIDES = ("--config.train.num_epochs=24", "--config.train.checkpoint_every_steps=6",
             "--config.train.keep_checkpoints=2", "--config.train.log_every_steps=40")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
  """An uninterrupted run (with a profiler trace of steps 3..4, which changes no result)."""
  workdir = tmp_path_factory.mktemp("ref")
  out = run(cli(workdir, *OVERRIDES, "--config.train.profile_steps=(3, 4)", data_dir=data_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def test_profile_window_writes_a_trace(reference_run):
  workdir, out = reference_run
  # The first line names the platform, device kind and counts (and why CPU is expected).
  assert out.stdout.startswith("process 0/1: platform cpu, cpu x8 local, 8 global devices "
                               "(expected cpu: JAX_PLATFORMS=cpu)\n"), out.stdout[:300]
  assert "profile of steps 3..4 written" in out.stdout
  assert any(p.is_file() for p in (workdir / "profile").rglob("*.xplane.pb"))


def _start_and_signal(workdir, data_dir, sig):
  """Starts a run, sends ``sig`` once a checkpoint >= 12 exists; returns the finished proc."""
  proc = subprocess.Popen(cli(workdir, *OVERRIDES, data_dir=data_dir), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  ckpts = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 12 for p in ckpts.iterdir()):
      proc.send_signal(sig)
      break
    time.sleep(0.01)
  out, _ = proc.communicate(timeout=120)
  return proc, out


def _assert_resumes_to_reference(workdir, reference_run, data_dir):
  resumed = run(cli(workdir, *OVERRIDES, data_dir=data_dir))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from checkpoint step" in resumed.stdout
  ref_dir, _ = reference_run
  step_ref, params_ref = _final_params(ref_dir)
  step_res, params_res = _final_params(workdir)
  assert step_ref == step_res
  flat_ref, flat_res = jax_leaves(params_ref), jax_leaves(params_res)
  assert len(flat_ref) == len(flat_res) > 0
  for a, b in zip(flat_ref, flat_res):
    np.testing.assert_array_equal(a, b)
  res_ref = json.loads((ref_dir / "results.json").read_text())
  res_res = json.loads((workdir / "results.json").read_text())
  assert res_ref["zsl"] == res_res["zsl"] and res_ref["gzsl"] == res_res["gzsl"]
  return res_ref


def test_sigkill_then_rerun_ends_with_the_uninterrupted_parameters(tmp_path, data_dir,
                                                                    reference_run):
  killed_dir = tmp_path / "killed"
  proc, _ = _start_and_signal(killed_dir, data_dir, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed_dir / "results.json").exists()
  res_ref = _assert_resumes_to_reference(killed_dir, reference_run, data_dir)

  # `evaluate` restores the last checkpoint and reproduces the end-of-training table.
  ref_dir, _ = reference_run
  cmd = cli(ref_dir, *OVERRIDES, data_dir=data_dir)
  cmd[cmd.index("train")] = "evaluate"
  (ref_dir / "results.json").unlink()
  ev = run(cmd)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "\nZSL " in ev.stdout and "GZSL (chance)" in ev.stdout
  res_ev = json.loads((ref_dir / "results.json").read_text())
  assert res_ev["zsl"] == res_ref["zsl"] and res_ev["step"] == res_ref["step"]


def test_sigterm_saves_at_the_next_step_exits_0_and_resumes_identically(tmp_path, data_dir,
                                                                         reference_run):
  workdir = tmp_path / "preempted"
  proc, out = _start_and_signal(workdir, data_dir, signal.SIGTERM)
  assert proc.returncode == 0, out[-3000:]
  assert "preempted (SIGTERM): checkpoint saved at step" in out
  stopped = int(out.split("checkpoint saved at step ")[1].split(";")[0])
  latest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert latest == stopped >= 12
  assert not (workdir / "results.json").exists()
  _assert_resumes_to_reference(workdir, reference_run, data_dir)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_prepare_builds_the_dataset_without_a_workdir(data_dir):
  out = run([sys.executable, "-m", "mlzsl_jax.main", "prepare", f"--config={CONFIG}",
             f"--config.data.data_dir={data_dir}"])
  assert out.returncode == 0, out.stderr[-2000:]
  assert "digits_mosaic: {'train': 256, 'test': 64} examples, 10 labels" in out.stdout
  out = run([sys.executable, "-m", "mlzsl_jax.main", "convert", f"--config={CONFIG}",
             "--workdir=/tmp/unused", f"--config.data.data_dir={data_dir}"])
  assert out.returncode != 0 and "convert needs --init_from" in out.stderr
