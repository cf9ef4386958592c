"""Multi-process training on one machine: 2 processes x 4 CPU devices (gloo collectives, a
localhost coordinator) against 1 process x 8 devices, through the command line.

With ``data.process_split=batches`` the two runs see the same global batches, so losses,
parameters and results.json agree to float tolerance. With 'examples' (each process reads
half the data) the run must complete, evaluate every test image once, and only process 0 may
print the table and write the shared files; its results.json must equal a 1-process
evaluation of its checkpoint. The runs start together (5 processes, about 1 min of 2 idle
cores); the dataset is built once beforehand, in this process.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "configs" / "biam_digits.py"
# A ragged evaluation (64 test images, eval batches of 24; 'examples': 12 per process, the
# last one 8 valid + 4 padding) and a log line every 4 steps (losses compared at 4, 8, 12, 16).
COMMON = ("--config.train.log_every_steps=4", "--config.train.checkpoint_every_steps=16",
          "--config.eval.batch_size=24")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)  # conftest set 8 devices for this process; the children set their own
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return env


def _start(command: str, workdir: Path, data_dir: str, processes: int, *overrides):
  """Starts ``processes`` processes of one run; returns [(Popen, stdout path, stderr path)]."""
  port = _free_port()
  procs = []
  for i in range(processes):
    cmd = [sys.executable, "-m", "mlzsl_jax.main", command,
           f"--config={CONFIG_FILE}:smoke=True", f"--workdir={workdir}",
           f"--config.data.data_dir={data_dir}", *COMMON, *overrides]
    if processes > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
              f"--process_id={i}"]
    out, err = (workdir.parent / f"{workdir.name}.{i}.{kind}" for kind in ("out", "err"))
    with open(out, "w") as fo, open(err, "w") as fe:
      procs.append((subprocess.Popen(cmd, cwd=ROOT, env=_env(8 // processes), stdout=fo,
                                     stderr=fe), out, err))
  return procs


def _finish(procs, timeout=300) -> list[str]:
  """Waits for every process; returns their stdouts; fails with the stderr tails."""
  try:
    for p, _, _ in procs:
      p.wait(timeout=timeout)
  finally:
    for p, _, _ in procs:
      if p.poll() is None:
        p.kill()
  for p, _, err in procs:
    assert p.returncode == 0, Path(err).read_text()[-3000:]
  return [Path(out).read_text() for _, out, _ in procs]


def _load_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("_biam_digits", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  from mlzsl_jax.data import digits_mosaic
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  # Built here once: processes that build the same tfds dataset concurrently collide.
  config = _load_config().get_config("smoke=True")
  digits_mosaic.prepare(digits_mosaic.params_from_config(config.data), data_dir)
  base = tmp_path_factory.mktemp("runs")
  dirs = {name: base / name for name in ("one", "two_batches", "two_examples")}
  started = {
      "one": _start("train", dirs["one"], data_dir, 1, "--config.data.process_split=batches"),
      "two_batches": _start("train", dirs["two_batches"], data_dir, 2,
                            "--config.data.process_split=batches"),
      "two_examples": _start("train", dirs["two_examples"], data_dir, 2,
                             "--config.data.process_split=examples"),
  }
  try:
    outs = {name: _finish(procs) for name, procs in started.items()}
  finally:  # a failed run leaves no process behind
    for p, _, _ in (proc for procs in started.values() for proc in procs):
      if p.poll() is None:
        p.kill()
  return dirs, outs, data_dir


def _final_state(workdir: Path, like=None):
  """(last step, restored state). A checkpoint written by 2 processes names their devices
  (ids 0..3 and 2048..2051 here), so it is restored onto one local device, shaped ``like``."""
  import jax
  ckpts = workdir / "checkpoints"
  last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  target = None
  if like is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          like)
  return last, ocp.StandardCheckpointer().restore(ckpts / str(last) / "default", target)


def _logged(workdir: Path, tag: str) -> dict[int, float]:
  """{step: value} of scalar ``tag`` in the run's TensorBoard event file(s)."""
  import tensorflow as tf
  values = {}
  for path in workdir.glob("events.out.tfevents.*"):
    for raw in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(raw.numpy())
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = float(tf.make_ndarray(v.tensor))
  return values


def _assert_close(a, b, path=""):
  if isinstance(a, dict):
    assert set(a) == set(b), path
    for k in a:
      _assert_close(a[k], b[k], f"{path}/{k}")
  else:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)


def test_two_processes_batches_split_reproduce_one_process(runs):
  dirs, outs, _ = runs
  one, two = dirs["one"], dirs["two_batches"]
  assert "process 0/1: platform cpu, cpu x8 local, 8 global devices" in outs["one"][0]
  assert "process 0/2: platform cpu, cpu x4 local, 8 global devices" in outs["two_batches"][0]
  assert "process 1/2: platform cpu, cpu x4 local, 8 global devices" in outs["two_batches"][1]
  loss_one, loss_two = _logged(one, "loss"), _logged(two, "loss")
  assert sorted(loss_one) == [4, 8, 12, 16]
  _assert_close(loss_one, loss_two)
  step_one, state_one = _final_state(one)
  step_two, state_two = _final_state(two, like=state_one)
  assert step_one == step_two == 16
  import jax
  leaves_one, leaves_two = jax.tree.leaves(state_one), jax.tree.leaves(state_two)
  assert len(leaves_one) == len(leaves_two) > 0
  for a, b in zip(leaves_one, leaves_two):  # params, optimizer moments, step, rng
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  res_one = json.loads((one / "results.json").read_text())
  res_two = json.loads((two / "results.json").read_text())
  assert res_one["num_images"] == res_two["num_images"] == 64
  for view in ("zsl", "gzsl", "chance"):
    _assert_close(res_one[view], res_two[view], view)


def test_examples_split_completes_and_only_process_zero_reports(runs):
  dirs, outs, _ = runs
  workdir = dirs["two_examples"]
  p0, p1 = outs["two_examples"]
  assert "process 1/2: platform cpu, cpu x4 local, 8 global devices" in p1
  for text in ("parameters;", "\nZSL ", "GZSL (chance)", "step 16/16"):
    assert text in p0 and text not in p1, text
  assert "data split by examples" in p0
  results = json.loads((workdir / "results.json").read_text())
  assert results["num_images"] == 64 and results["step"] == 16
  assert json.loads((workdir / "config.json").read_text())["data"]["process_split"] == "examples"
  # One event file: process 1's metric writer only logs.
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
  # Each process read 1/2 of the data: a different (valid) sample order than 1 process.
  assert sorted(_logged(workdir, "loss")) == [4, 8, 12, 16]


def test_examples_split_evaluation_pairs_every_image_with_its_labels(runs, tmp_path):
  """The 2-process 'examples' run scored its own shards (rows gathered out of file order, a
  ragged last batch); its results.json equals this process's 1 x 8 `evaluate` of the same
  final checkpoint (which also shows a 2-process checkpoint restores on 1 process)."""
  from mlzsl_jax import restore
  dirs, _, data_dir = runs
  workdir = tmp_path / "eval_here"
  shutil.copytree(dirs["two_examples"] / "checkpoints", workdir / "checkpoints")
  config = _load_config().get_config("smoke=True")
  config.data.data_dir = data_dir
  config.eval.batch_size = 24
  config.train.checkpoint_every_steps = 16
  here = restore.evaluate(config, str(workdir))
  got = json.loads((dirs["two_examples"] / "results.json").read_text())
  assert here["num_images"] == got["num_images"] == 64
  for view in ("zsl", "gzsl", "chance"):
    _assert_close(here[view], got[view], view)


# --- fast in-process checks of the pieces (one process) ---------------------------------

CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "SLURM_GPUS_PER_TASK", "CUDA_VISIBLE_DEVICES",
                "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                "KUBERNETES_SERVICE_HOST", "JAX_LOCAL_DEVICE_IDS")


@pytest.fixture
def fake_initialize(monkeypatch):
  """Records jax.distributed.initialize calls instead of making them."""
  import jax
  calls = []
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
  return calls


def _slurm(monkeypatch, ntasks: int):
  for k, v in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node[01-02]",
                   SLURM_NTASKS=str(ntasks), SLURM_PROCID="1", SLURM_LOCALID="1").items():
    monkeypatch.setenv(k, v)


def test_initialize_explicit_auto_detected_or_single(fake_initialize, monkeypatch):
  from mlzsl_jax import distributed
  assert distributed.initialize() is False and fake_initialize == []  # one process
  assert distributed.initialize("127.0.0.1:1234", 2, 1) is True
  assert fake_initialize == [("jax_cpu_collectives_implementation", "gloo"),
                             {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                              "process_id": 1}]
  fake_initialize.clear()
  _slurm(monkeypatch, 1)  # a 1-task SLURM step: one process, nothing to join
  assert distributed.detect_cluster() == ("slurm", 1)
  assert distributed.initialize() is False and fake_initialize == []
  _slurm(monkeypatch, 2)  # JAX fills in everything from SLURM
  assert distributed.initialize(cpu_collectives=False) is True
  assert fake_initialize == [{}]
  fake_initialize.clear()
  # --gpus-per-task: the task sees only its own GPU(s), as local ordinals 0..k-1.
  monkeypatch.setenv("SLURM_GPUS_PER_TASK", "2")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
  assert distributed.initialize(cpu_collectives=False) is True
  assert fake_initialize == [{"local_device_ids": [0, 1]}]
  with pytest.raises(ValueError, match="--process_id=2: expected in \\[0, 2\\)"):
    distributed.initialize("127.0.0.1:1234", 2, 2)


def test_process_split_field_and_one_process_pipeline():
  import jax
  import tensorflow as tf
  from mlzsl_jax import sharding as shd
  from mlzsl_jax.data import pipeline
  from mlzsl_jax.data.source import DatasetMeta

  with pytest.raises(ValueError, match="data.process_split='rows': expected one of"):
    pipeline.check_process_split("rows")
  n, labels = 21, 4

  class Source:
    meta = DatasetMeta(name="arrays", label_names=tuple("abcd"), embeddings={},
                       grid_shape=(1, 2), feature_dim=3, scene_dim=0, num_examples={})

    def as_tf_dataset(self, split):
      feats = np.arange(n, dtype=np.float16)[:, None, None] * np.ones((1, 2, 3), np.float16)
      states = np.where(np.arange(n * labels).reshape(n, labels) % 3, 1, -1).astype(np.int8)
      return tf.data.Dataset.from_tensor_slices({"features": feats, "labels": states})

  sharding = shd.batch_sharding(shd.make_mesh())
  np.testing.assert_array_equal(pipeline.process_rows(16, sharding), np.arange(16))
  got = list(pipeline.eval_batches(Source(), split="test", global_batch=8, data_shards=8,
                                   process_split="batches", sharding=sharding))
  assert [m for _, m in got] == [8, 8, 5]
  index = np.concatenate([b["index"] for b, _ in got])
  np.testing.assert_array_equal(index, list(range(n)) + [-1] * 3)
  # One process: both splits give the same batches.
  kw = dict(split="train", seen_ids=(0, 1), global_batch=8, seed=1, start_step=0,
            steps_per_epoch=2, shuffle_buffer=32, drop_without_positive=True, data_shards=8)
  assert pipeline.train_steps_per_epoch(19, 8, "examples") == (2, 19) == \
      pipeline.train_steps_per_epoch(19, 8, "batches")
  a = pipeline.train_batches(Source(), process_split="examples", **kw)
  b = pipeline.train_batches(Source(), process_split="batches", sharding=sharding, **kw)
  for _ in range(5):
    np.testing.assert_array_equal(next(a)["features"], next(b)["features"])
  # An epoch is exactly steps_per_epoch batches even when more would fit (processes agree).
  kw.update(steps_per_epoch=1)
  a = pipeline.train_batches(Source(), **kw)
  next(a)
  kw.update(start_step=1)
  np.testing.assert_array_equal(next(a)["features"],
                                next(pipeline.train_batches(Source(), **kw))["features"])
  assert jax.process_count() == 1
