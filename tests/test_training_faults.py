"""Training faults: non-finite steps (the train step's on-device 'finite' flag,
train.on_nonfinite 'stop' and 'skip', no non-finite checkpoint ever written, one-line
errors) and resuming a workdir with another config (refused, naming the fields)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mlzsl_jax import workdir as wd
from mlzsl_jax import errors, evaluate, restore, sweep, train
from mlzsl_jax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "biam_digits.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, **train_fields):
  spec = importlib.util.spec_from_file_location("biam_digits_nf", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke=True")
  c.data.data_dir = data_dir
  c.train.checkpoint_every_steps = 2
  c.train.keep_checkpoints = 20
  c.train.log_every_steps = 5
  for k, v in train_fields.items():
    c.train[k] = v
  return c


def _saved_params(workdir):
  """{step: params} of every checkpoint on disk."""
  mngr = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints",
                               options=ocp.CheckpointManagerOptions(read_only=True))
  out = {s: mngr.restore(s, args=ocp.args.StandardRestore())["params"]
         for s in mngr.all_steps()}
  mngr.close()
  return out


def _all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_stop_names_the_step_and_never_saves_a_nonfinite_state(tmp_path, data_dir):
  config = _config(data_dir)
  config.optimizer.lr = 1e9
  with pytest.raises(errors.NonFiniteError) as info:
    train.train_and_evaluate(config, str(tmp_path / "w"))
  message = str(info.value)
  assert "non-finite (NaN/inf) at step" in message and "optimizer.lr" in message
  assert "train.on_nonfinite='skip'" in message
  saved = _saved_params(tmp_path / "w")
  assert all(_all_finite(p) for p in saved.values())
  if saved:
    assert f"last good checkpoint is step {max(saved)}" in message


def _poisoned(steps):
  """prefetch_to_device whose batches at the given 0-based steps carry NaN features (the
  host-side input check runs before; this stands for a numerical blow-up on the device)."""
  real = pipeline.prefetch_to_device

  def fake(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if i in steps:
        batch = {**batch, "features": batch["features"] * np.nan}
      yield batch
  return fake


def test_skip_drops_the_update_counts_it_and_stops_after_n_in_a_row(tmp_path, data_dir,
                                                                    monkeypatch):
  config = _config(data_dir, on_nonfinite="skip", max_consecutive_skips=3)
  monkeypatch.setattr(pipeline, "prefetch_to_device", _poisoned({2, 3}))
  result = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert np.isfinite(result["zsl"]["map"])
  saved = _saved_params(tmp_path / "w")
  assert all(_all_finite(p) for p in saved.values())
  # steps 3 and 4 (0-based 2, 3) were dropped: the state after step 4 is the one after 2
  for a, b in zip(jax.tree.leaves(saved[2]), jax.tree.leaves(saved[4])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree.leaves(saved[4]), jax.tree.leaves(saved[6])))
  # three in a row end the run, naming the count; nothing non-finite is saved
  monkeypatch.setattr(pipeline, "prefetch_to_device", _poisoned({1, 2, 3}))
  with pytest.raises(errors.NonFiniteError, match="3 updates in a row were non-finite"):
    train.train_and_evaluate(config, str(tmp_path / "w2"))
  assert all(_all_finite(p) for p in _saved_params(tmp_path / "w2").values())

  # resuming that workdir with other model / label fields is refused, naming them
  other = sweep.apply_overrides(config, {"model.top_k": 2, "data.seen_labels": (0, 3, 4, 5, 6, 8),
                                         "data.unseen_labels": (1, 2, 7, 9)})
  with pytest.raises(ValueError, match=r"another config: model.top_k: trained with 4, now 2; "
                                       r"data.seen_labels: .*; data.unseen_labels: trained with "
                                       r"\[1, 2, 7\], now \[1, 2, 7, 9\].*allow_config_change"):
    train.train_and_evaluate(other, str(tmp_path / "w"))
  # file locations may change; a sweep point whose fields changed starts afresh elsewhere
  moved = sweep.apply_overrides(config, {"data.data_dir": data_dir + "/"})
  assert wd.config_differences(moved, str(tmp_path / "w")) == []
  assert sweep.set_aside_if_changed(str(tmp_path / "w"), other) == str(tmp_path / "w.replaced1")
  assert not (tmp_path / "w").exists() and (tmp_path / "w.replaced1" / "checkpoints").is_dir()
  (tmp_path / "w.replaced1").rename(tmp_path / "w")

  # evaluating non-finite parameters: one error naming the model and the step
  _, trainer, state, _ = restore.restore(config, str(tmp_path / "w"))
  bad = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  source = restore.get_dataset(config.data)
  with pytest.raises(errors.NonFiniteError, match=r"biam at step \d+ produced \d+ non-finite"):
    evaluate.evaluate_state(trainer, source, bad, config)


def test_cli_exits_non_zero_with_one_line(tmp_path, data_dir):
  out = subprocess.run(
      [sys.executable, "-m", "mlzsl_jax.main", "train", f"--config={CONFIG}:smoke=True",
       f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}",
       "--config.optimizer.lr=1e9", "--config.train.num_epochs=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "error: training stopped: the loss or gradients became non-finite" in out.stderr
  assert "Traceback" not in out.stderr


def _killed_after(monkeypatch, steps: int):
  real = pipeline.prefetch_to_device

  def dying(*args, **kwargs):
    for i, batch in enumerate(real(*args, **kwargs)):
      if i == steps:
        raise KeyboardInterrupt("killed")
      yield batch
  monkeypatch.setattr(pipeline, "prefetch_to_device", dying)
  return real


def test_resume_on_another_topology_and_refuse_another_batch(tmp_path, data_dir, monkeypatch):
  """Checkpointed on 8 devices, resumed in a process that has 4 (same global batch, same
  data order with data.process_split=batches): same step, same parameters as the
  uninterrupted 8-device run (to float tolerance: the gradient sums run over 4 shards
  instead of 8). Another global batch is refused."""
  config = _config(data_dir)
  config.data.process_split = "batches"
  ref = _saved_params(_run_dir(config, tmp_path / "ref"))
  real = _killed_after(monkeypatch, 7)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  monkeypatch.setattr(pipeline, "prefetch_to_device", real)
  assert max(_saved_params(tmp_path / "w")) == 6
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run(
      [sys.executable, "-m", "mlzsl_jax.main", "train", f"--config={CONFIG}:smoke=True",
       f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}",
       "--config.data.process_split=batches", "--config.train.checkpoint_every_steps=2",
       "--config.train.keep_checkpoints=20", "--config.train.log_every_steps=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "resuming from checkpoint step 6" in out.stdout and "'data': 4" in out.stdout
  got = _saved_params(tmp_path / "w")
  assert max(got) == max(ref)
  for a, b in zip(jax.tree.leaves(got[max(got)]), jax.tree.leaves(ref[max(ref)])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  other = sweep.apply_overrides(config, {"train.batch_size": 16})
  with pytest.raises(ValueError, match=r"global train.batch_size=32, now 16"):
    train.train_and_evaluate(other, str(tmp_path / "w"))


def _run_dir(config, workdir):
  train.train_and_evaluate(config, str(workdir))
  return workdir
