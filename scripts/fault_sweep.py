"""Fault injection: kill training at random moments, re-run it, demand bit-identical results.

  .venv/bin/python scripts/fault_sweep.py --kills 21 [--seed 0] [--workdir workdirs/faults]

1. An uninterrupted reference run of the CLI (BiAM, digits smoke config, 12 epochs, a
   checkpoint every 4 steps, 3 kept).
2. Trials until ``--kills`` faults have landed (a signal sent before the run ended; trials
   whose run finished first are listed and not counted), each in a fresh workdir, rotating
   over three kinds:
   * ``sigkill``: SIGKILL after a random delay (anywhere: start-up, training, a save,
     evaluation);
   * ``sigkill_in_save``: SIGKILL the moment an asynchronous checkpoint save has a temporary
     folder on disk (after a random number of saves);
   * ``sigterm``: SIGTERM after a random delay (the run must save at the next step and exit 0).
   Then the same command is run again to its end.
3. A trial survives when that final run's parameters and optimizer state equal the
   reference's bit for bit, its step is the reference's, and its results.json metrics are
   equal.

Prints one line per trial and a summary ("survived K of N"); exits non-zero unless all
survived. The test suite keeps a fast subset (tests/test_cli.py: one SIGKILL, one SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'configs' / 'biam_digits.py'}:smoke=True"
OVERRIDES = ["--config.train.num_epochs=12", "--config.train.checkpoint_every_steps=4",
             "--config.train.keep_checkpoints=3", "--config.train.log_every_steps=20"]
KINDS = ("sigkill", "sigkill_in_save", "sigterm")


def command(workdir: Path, data_dir: Path) -> list[str]:
  return [sys.executable, "-m", "mlzsl_jax.main", "train", f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *OVERRIDES]


def final_state(workdir: Path):
  """(step, flat list of arrays: params, model state, optimizer state) of the last
  checkpoint."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  mngr = ocp.CheckpointManager(workdir / "checkpoints",
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step()
  state = mngr.restore(step, args=ocp.args.StandardRestore())
  mngr.close()
  leaves = [np.asarray(x) for k in ("params", "model_state", "opt_state")
            for x in jax.tree.leaves(state[k])]
  return step, leaves


def metrics(workdir: Path) -> dict:
  res = json.loads((workdir / "results.json").read_text())
  return {v: res[v] for v in ("zsl", "gzsl")}


def saving_now(workdir: Path) -> bool:
  ckpts = workdir / "checkpoints"
  return ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir())


def run_trial(kind: str, workdir: Path, data_dir: Path, rng: np.random.Generator,
              ref_seconds: float) -> str:
  """Starts, injects the fault, re-runs to the end; returns what happened, in words."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen(command(workdir, data_dir), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  t0 = time.perf_counter()
  sent = False
  if kind == "sigkill_in_save":
    target, seen, was_saving = int(rng.integers(1, 6)), 0, False
    while proc.poll() is None:
      now_saving = saving_now(workdir)
      if now_saving and not was_saving:
        seen += 1
        if seen >= target:
          proc.send_signal(signal.SIGKILL)
          sent = True
          break
      was_saving = now_saving
      time.sleep(0.002)
    what = f"SIGKILL during save #{seen} at {time.perf_counter() - t0:.1f} s"
  else:
    delay = float(rng.uniform(0.15, 0.85) * ref_seconds)
    try:
      proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
      sent = True
    what = f"{'SIGKILL' if kind == 'sigkill' else 'SIGTERM'} at {delay:.1f} s"
  out, _ = proc.communicate()
  if not sent:
    return "NOT LANDED: the run had finished before the signal"
  elif kind == "sigterm" and proc.returncode not in (0, -signal.SIGTERM):
    # 0: saved at the next step and exited; -SIGTERM: the signal came before the handler
    # was installed (start-up), the default action ended the process, like a kill.
    return f"{what}: exit status {proc.returncode}, expected 0\n{out[-1500:]}"
  resumed = [line for line in out.splitlines() if "preempted" in line]
  rerun = subprocess.run(command(workdir, data_dir), cwd=ROOT, env=env,
                         capture_output=True, text=True)
  if rerun.returncode != 0:
    return f"{what}: re-run failed ({rerun.returncode})\n{rerun.stdout[-1500:]}"
  start = [line for line in rerun.stdout.splitlines() if "resuming from checkpoint" in line]
  return what + ("; " + resumed[0].strip() if resumed else "") + (
      f"; re-run {start[0].strip()}" if start else "; re-run started from scratch")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=21)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="workdirs/faults")
  args = parser.parse_args()
  root = (ROOT / args.workdir).resolve()
  shutil.rmtree(root, ignore_errors=True)
  data_dir = root / "tfds"
  t0 = time.perf_counter()
  ref = subprocess.run(command(root / "reference", data_dir), cwd=ROOT, capture_output=True,
                       text=True)
  if ref.returncode != 0:
    raise SystemExit(f"reference run failed:\n{ref.stdout[-2000:]}\n{ref.stderr[-2000:]}")
  ref_seconds = time.perf_counter() - t0
  ref_step, ref_leaves = final_state(root / "reference")
  ref_metrics = metrics(root / "reference")
  print(f"reference: step {ref_step}, {ref_seconds:.0f} s", flush=True)
  rng = np.random.default_rng(args.seed)
  survived, landed, missed, by_kind = 0, 0, 0, {k: [0, 0] for k in KINDS}
  i = 0
  while landed < args.kills and i < 3 * args.kills:  # count only faults that landed
    kind = KINDS[i % len(KINDS)]
    workdir = root / f"trial{i:02d}_{kind}"
    i += 1
    # the run's lines name its workdir; relative to the repository, so the log is portable
    what = run_trial(kind, workdir, data_dir, rng, ref_seconds).replace(f"{ROOT}/", "")
    if what.startswith("NOT LANDED"):
      missed += 1
      print(f"[trial {i}] {kind}: {what}; not counted", flush=True)
      continue
    landed += 1
    ok = False
    if (workdir / "results.json").exists():
      step, leaves = final_state(workdir)
      ok = (step == ref_step and len(leaves) == len(ref_leaves)
            and all(a.dtype == b.dtype and np.array_equal(a, b)
                    for a, b in zip(leaves, ref_leaves))
            and metrics(workdir) == ref_metrics)
    survived += ok
    by_kind[kind][0] += ok
    by_kind[kind][1] += 1
    print(f"[{landed}/{args.kills}] {kind}: {what}: "
          f"{'identical to the reference' if ok else 'DIFFERENT'}", flush=True)
  print(f"\nsurvived {survived} of {landed} faults ("
        + ", ".join(f"{k} {a}/{n}" for k, (a, n) in by_kind.items()) + "): final parameters, "
        "optimizer state and metrics bit-identical to the uninterrupted run; "
        f"{missed} trial(s) whose run ended before the signal not counted", flush=True)
  if survived != landed or landed < args.kills:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
