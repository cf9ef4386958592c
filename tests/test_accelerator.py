"""The accelerator path: which platform a run expects, the launchers' refusal to fall back to
the CPU, the install files per accelerator, and the benchmarks on a machine without
TensorFlow (benchmarks/gpu.sh end to end, on the CPU, in a subprocess where importing
tensorflow, tfds, clu or tensorboard fails)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlzsl_jax import accelerator as acc

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "tensorboard")
# Installed as sitecustomize.py on PYTHONPATH: every import of a blocked package fails, as on
# a machine that has JAX, Flax, Optax and orbax but no TensorFlow; attempts are logged.
BLOCKER = f"""
import os, sys
class _Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {BLOCKED!r}:
      with open(os.environ['BLOCK_LOG'], 'a') as f:
        f.write(name + '\\n')
      raise ImportError(f'{{name}}: blocked (no TensorFlow on this machine)')
    return None
sys.meta_path.insert(0, _Block())
"""


def never(path: str) -> bool:
  del path
  return False


@pytest.mark.parametrize("config_value, environ, files, want", [
    ("auto", {}, (), ("auto", "nothing asks")),
    ("cpu", {"MLZSL_PLATFORM": "gpu", "SLURM_JOB_ID": "1", "SLURM_GPUS_PER_TASK": "1"}, (),
     ("cpu", "config field platform=cpu")),
    ("auto", {"MLZSL_PLATFORM": "gpu", "JAX_PLATFORMS": "cpu"}, (), ("gpu", "MLZSL_PLATFORM=gpu")),
    ("auto", {"JAX_PLATFORMS": "cuda,cpu"}, ("/dev/accel0",), ("gpu", "JAX_PLATFORMS=cuda,cpu")),
    ("auto", {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "4"}, (),
     ("gpu", "SLURM_GPUS_ON_NODE=4")),
    ("auto", {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "0"}, (), ("auto", "nothing asks")),
    ("auto", {"SLURM_GPUS_PER_TASK": "1"}, (), ("auto", "nothing asks")),  # not in a job
    ("auto", {}, ("/dev/nvidia0",), ("gpu", "/dev/nvidia0")),
    ("auto", {}, ("/dev/accel0",), ("tpu", "/dev/accel0")),
    ("auto", {"MLZSL_PLATFORM": "auto"}, ("/dev/nvidia0",), ("auto", "MLZSL_PLATFORM=auto")),
])
def test_expected_platform_follows_the_documented_order(config_value, environ, files, want):
  got = acc.expected_platform(config_value, environ, exists=lambda p: p in files)
  assert got.platform == want[0]
  assert want[1] in got.source


def test_bad_platform_values_name_where_they_came_from():
  with pytest.raises(ValueError, match=r"config field platform='cuda': expected one of auto"):
    acc.expected_platform("cuda", {}, exists=never)
  with pytest.raises(ValueError, match=r"environment MLZSL_PLATFORM='gpus'"):
    acc.expected_platform("auto", {"MLZSL_PLATFORM": "gpus"}, exists=never)


def test_a_gpu_expectation_on_this_cpu_stops_with_the_install_command_and_the_override():
  acc.check_platform(acc.Expectation("cpu", "test"))  # what JAX sees here: no error
  acc.check_platform(acc.Expectation("auto", "test"))
  with pytest.raises(acc.PlatformError) as e:
    acc.check_platform(acc.Expectation("gpu", "SLURM gave this job GPUs (SLURM_GPUS=2)"))
  text = str(e.value)
  assert "expects platform gpu (SLURM gave this job GPUs (SLURM_GPUS=2))" in text
  assert "sees only cpu devices" in text
  assert "make setup ACCEL=cuda12" in text  # no CUDA plugin is installed in CI
  assert "--config.platform=cpu" in text and "MLZSL_PLATFORM=cpu" in text
  with pytest.raises(acc.PlatformError, match="make setup ACCEL=tpu"):
    acc.check_platform(acc.Expectation("tpu", "test"))


def fake_bin(tmp_path: Path, name: str, body: str) -> Path:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  tool = bin_dir / name
  tool.write_text("#!/usr/bin/env bash\n" + body)
  tool.chmod(0o755)
  return bin_dir


def launcher_env(bin_dir: Path, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MLZSL_"))}
  env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHON=sys.executable, **extra)
  return env


def test_slurm_launcher_refuses_to_train_on_the_cpu(tmp_path):
  """launch/slurm.sbatch, its srun replaced by one that runs the task here: JAX sees only
  the CPU, so the task stops before training, in one line, and writes no checkpoint."""
  bin_dir = fake_bin(tmp_path, "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
  workdir = tmp_path / "w"
  cmd = ["bash", str(ROOT / "launch" / "slurm.sbatch"),
         str(ROOT / "configs" / "biam_digits.py") + ":smoke=True", str(workdir)]
  out = subprocess.run(cmd, cwd=ROOT, env=launcher_env(bin_dir), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: this run expects platform gpu (MLZSL_PLATFORM=gpu)"), last
  assert "Traceback" not in out.stderr
  assert not workdir.exists()


def test_tpu_launcher_asks_every_worker_for_the_tpu(tmp_path):
  log = tmp_path / "gcloud.log"
  bin_dir = fake_bin(tmp_path, "gcloud", f'printf "%s\\n" "$@" > {log}\n')
  cmd = ["bash", str(ROOT / "launch" / "tpu_pod.sh"), "my-tpu", "zone-a",
         "configs/biam_nus_wide.py", "gs://b/w", "--config.dtype=bfloat16"]
  for extra, want in (({}, "MLZSL_PLATFORM=tpu "), ({"MLZSL_PLATFORM": "cpu"},
                                                     "MLZSL_PLATFORM=cpu ")):
    out = subprocess.run(cmd, cwd=ROOT, env=launcher_env(bin_dir, **extra),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    remote = log.read_text().split("--command\n", 1)[1]
    assert "--worker=all" in log.read_text()
    assert re.search(want + r"\.venv/bin/python -m mlzsl_jax\.main train", remote), remote


def requirement_pins(path: Path) -> dict[str, str]:
  pins = {}
  for line in path.read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, sep, version = line.partition("==")
      assert sep and version, f"{path.name}: {line!r} is not pinned with =="
      pins[re.sub(r"\[.*\]", "", name).lower()] = version
  return pins


def test_accelerator_requirements_pin_plugins_of_the_same_jax_and_make_installs_them():
  base = requirement_pins(ROOT / "requirements.txt")
  plugins = {"cuda12": ("jax-cuda12-plugin", "jax-cuda12-pjrt"),
             "cuda13": ("jax-cuda13-plugin", "jax-cuda13-pjrt"), "tpu": ()}
  for accel, names in plugins.items():
    pins = requirement_pins(ROOT / f"requirements-{accel}.txt")
    for name in names:
      assert pins[name] == base["jax"] == base["jaxlib"], (accel, name)
    assert not set(pins) & {"jax", "jaxlib", "tensorflow-cpu"}, accel  # same base stack
    dry = subprocess.run(["make", "-n", "setup", f"ACCEL={accel}", "VENV=/nonexistent"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"-r requirements.txt -r requirements-{accel}.txt" in dry.stdout
    others = [n for a, ns in plugins.items() if a != accel for n in ns]
    assert all(n in dry.stdout.split("uninstall")[1].split("\n")[0] for n in others)
  assert "libtpu" in requirement_pins(ROOT / "requirements-tpu.txt")
  bad = subprocess.run(["make", "-n", "setup", "ACCEL=rocm"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
  assert bad.returncode != 0 and "ACCEL=rocm: expected one of cpu cuda12 cuda13 tpu" in bad.stderr


def blocked_env(tmp_path: Path, **extra) -> dict:
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(BLOCKER)
  env = dict(os.environ, PYTHONPATH=str(site), BLOCK_LOG=str(tmp_path / "blocked.log"),
             PYTHON=sys.executable, **extra)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  return env


def test_gpu_script_and_benchmarks_run_without_tensorflow(tmp_path):
  """benchmarks/gpu.sh (with gpu_suite.py --smoke) and eval_metrics.py where importing
  TensorFlow, tfds, clu or tensorboard fails: every section but 'input' measures; 'input'
  says why it was skipped; nothing imported a blocked package except the input section's
  own probe."""
  out_dir = tmp_path / "out"
  env = blocked_env(tmp_path, OUT=str(out_dir), MLZSL_PLATFORM="cpu")
  smoke = ["--smoke", "--dtypes", "bfloat16", "--batches", "4", "--max_batch", "4",
           "--steps", "1", "--warmup", "1", "--test_rows", "40", "--test_batch", "16",
           "--oi_batch", "4", "--oi_eval_batches", "2", "--peak_gflops", "100",
           "--profile", str(tmp_path / "profile")]
  run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *smoke], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert "platform cpu" in (out_dir / "env.txt").read_text()
  # --profile: a trace per train case and its most expensive ops, in ms per step
  assert re.search(r"where the time went:\n +\d+\.\d+ ms/step", run.stdout), run.stdout[-3000:]
  assert list((tmp_path / "profile").rglob("perfetto_trace.json.gz"))
  rows = json.loads((out_dir / "gpu_suite.json").read_text())
  by_case = {(r["section"], r["case"].split(",")[0].split(" (")[0]): r for r in rows}
  for key in [("train", "train step"), ("test_pass", "eval forward"),
              ("test_pass", "metrics on device"), ("open_images", "train step"),
              ("open_images", "eval forward")]:
    row = by_case[key]
    assert row["images_per_s"] > 0 and row["seconds"] > 0, row
  assert by_case[("train", "train step")]["tflops"] > 0  # XLA's FLOP count was found
  assert by_case[("test_pass", "eval forward")]["case"].startswith("eval forward, 40 images")
  assert "skipped: TensorFlow is not installed" in by_case[("input", "tf.data -> train step")
                                                          ]["note"]
  assert "| train | train step (smoke_nus) | bfloat16 | 4 |" in (out_dir / "gpu_suite.md"
                                                                 ).read_text()
  # The only blocked import tried is the input section's probe (and data.source's optional one).
  attempts = set((tmp_path / "blocked.log").read_text().split())
  assert attempts <= {"tensorflow"}, attempts

  metrics = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "eval_metrics.py"), "--rows", "300",
       "--labels", "30", "--unseen", "6", "--repeats", "1", "--skip-chance"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert metrics.returncode == 0, metrics.stderr[-3000:]
  assert re.search(r"max \|numpy - device\| over all metrics: \S+ \(OK at 1e-5\)",
                   metrics.stdout), metrics.stdout


def test_gpu_suite_finds_the_largest_batch_that_fits(monkeypatch):
  """The upward search: listed batches, then doubling until out of memory."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import gpu_suite  # pylint: disable=import-outside-toplevel

  def fake_train_row(shapes, dtype, batch, args, section="train"):
    if batch > 8192:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    return gpu_suite.Row(section, "train step", dtype, batch, images_per_s=float(batch))

  monkeypatch.setattr(gpu_suite, "train_row", fake_train_row)
  args = gpu_suite.parse_args(["--dtypes", "float32", "--batches", "32,1024"])
  rows: list = []
  gpu_suite.train_section(gpu_suite.SHAPES["nus_wide"], args, gpu_suite.Budget(60), rows.append)
  assert [r.batch for r in rows] == [32, 1024, 2048, 4096, 8192, 16384]
  assert rows[-1].note == "out of memory: the largest batch that fits is 8192"

  def broken(*a, **k):
    raise ValueError("model.heads=3 must divide channels")
  monkeypatch.setattr(gpu_suite, "train_row", broken)
  with pytest.raises(ValueError, match="heads"):  # other errors are not taken for memory
    gpu_suite.train_section(gpu_suite.SHAPES["nus_wide"], args, gpu_suite.Budget(60),
                            rows.append)


def test_profile_summary_counts_only_innermost_events():
  """--profile's 'where the time went': nested wrappers are not counted twice."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import train_throughput  # pylint: disable=import-outside-toplevel

  def ev(name, ts, dur, tid=1):
    return {"name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}
  events = [ev("outer", 0, 10), ev("a", 1, 3), ev("b", 5, 2), ev("solo", 20, 5),
            ev("other_thread", 0, 50, tid=2), ev("a", 30, 4), ev("wrap", 29, 6)]
  leaves = sorted((e["name"], e["ts"]) for e in train_throughput.leaf_events(events))
  assert leaves == [("a", 1), ("a", 30), ("b", 5), ("other_thread", 0), ("solo", 20)]
