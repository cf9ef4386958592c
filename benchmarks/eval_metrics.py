"""Time of the multi-label metrics (mAP, P/R/F1@K; ZSL and GZSL): NumPy vs on device.

Random inputs at NUS-WIDE test shapes: scores [rows, labels] float32 (standard normal plus a
small push on positives), labels ~1% positive, ~2% unknown, rest negative; the last
``--unseen`` columns are unseen; ZSL uses separate ``zsl_scores [rows, unseen]`` as
``evaluate.py`` does. Times
  (a) ``metrics.evaluate_multilabel`` (NumPy, host),
  (b) ``metrics_device.evaluate_multilabel_device``: first call (transfer + compile + run),
      then warm calls (median of ``--repeats``; inputs already on device),
checks that (a) and (b) agree (max |difference| over every metric) and prints seconds and
rows/s. Devices: whatever JAX uses (``JAX_PLATFORMS=cpu`` for CPU).

  .venv/bin/python benchmarks/eval_metrics.py [--rows 107859] [--labels 1006] [--unseen 81]
      [--ks 3,5] [--label-block 256] [--repeats 3] [--skip-numpy] [--skip-chance]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from mlzsl_jax import metrics
from mlzsl_jax import metrics_device


def make_inputs(rows: int, labels: int, unseen: int, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores [rows, labels] f32, states [rows, labels] int8, zsl_scores [rows, unseen] f32)."""
  rng = np.random.default_rng(seed)
  u = rng.random((rows, labels), dtype=np.float32)
  states = np.where(u < 0.01, 1, np.where(u < 0.03, 0, -1)).astype(np.int8)
  scores = rng.standard_normal((rows, labels), dtype=np.float32)
  scores += 1.5 * (states == 1)
  zsl_scores = scores[:, labels - unseen:] + 0.1 * rng.standard_normal((rows, unseen),
                                                                        dtype=np.float32)
  return scores, states, zsl_scores


def max_difference(a: dict, b: dict) -> float:
  """max |a[view][key] - b[view][key]| over both views and every key."""
  return max(abs(a[v][k] - b[v][k]) for v in a for k in a[v])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=107_859)
  parser.add_argument("--labels", type=int, default=1006)
  parser.add_argument("--unseen", type=int, default=81)
  parser.add_argument("--ks", default="3,5")
  parser.add_argument("--label-block", type=int, default=metrics_device.DEFAULT_LABEL_BLOCK)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-numpy", action="store_true")
  parser.add_argument("--skip-chance", action="store_true",
                      help="do not time chance_level_device")
  args = parser.parse_args()
  ks = tuple(int(k) for k in args.ks.split(","))
  seen, unseen = range(args.labels - args.unseen), range(args.labels - args.unseen, args.labels)
  scores, states, zsl_scores = make_inputs(args.rows, args.labels, args.unseen)
  print(f"devices: {jax.devices()}; rows {args.rows}, labels {args.labels} "
        f"({args.unseen} unseen), ks {ks}, label_block {args.label_block}")

  table = []
  want = None
  if not args.skip_numpy:
    t0 = time.perf_counter()
    want = metrics.evaluate_multilabel(scores, states, seen, unseen, ks, zsl_scores=zsl_scores)
    table.append(("numpy metrics.evaluate_multilabel", time.perf_counter() - t0))

  def device_eval(s, y, z):
    return metrics_device.evaluate_multilabel_device(s, y, seen, unseen, ks, zsl_scores=z,
                                                     label_block=args.label_block)

  t0 = time.perf_counter()
  got = device_eval(scores, states, zsl_scores)
  table.append(("device, first call (transfer+compile+run)", time.perf_counter() - t0))
  on_device = [jax.device_put(x) for x in (scores, states, zsl_scores)]
  jax.block_until_ready(on_device)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    device_eval(*on_device)
    times.append(time.perf_counter() - t0)
  table.append((f"device, warm (median of {args.repeats}, inputs on device)",
                float(np.median(times))))
  if not args.skip_chance:
    t0 = time.perf_counter()
    metrics_device.chance_level_device(on_device[1], seen, unseen, ks,
                                       label_block=args.label_block)
    table.append(("device chance_level_device (3 seeds, incl. compile)",
                  time.perf_counter() - t0))

  width = max(len(name) for name, _ in table)
  print(f"{'case':<{width}}  {'seconds':>9}  {'rows/s':>10}")
  for name, seconds in table:
    print(f"{name:<{width}}  {seconds:9.3f}  {args.rows / seconds:10.0f}")
  if want is not None:
    diff = max_difference(got, want)
    print(f"max |numpy - device| over all metrics: {diff:.2e} "
          f"({'OK' if diff <= 1e-5 else 'MISMATCH'} at 1e-5)")
  print(f"device GZSL: {got['gzsl']}\ndevice ZSL:  {got['zsl']}")


if __name__ == "__main__":
  main()
