"""Runs the demo for several model seeds and prints mean +- std of its metrics.

  .venv/bin/python scripts/demo_seeds.py [--seeds 3483 1 2] [--workdir workdirs/seeds] [-- overrides]

Each seed trains `configs/biam_digits.py` in its own workdir (`<workdir>/seed<s>`; finished
runs are re-evaluated from their checkpoint) and the table below is read from the
`results.json` files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("ZSL", "zsl"), ("GZSL", "gzsl"), ("ZSL chance", "chance/zsl"),
        ("GZSL chance", "chance/gzsl")]


def lookup(result: dict, path: str) -> dict:
  for part in path.split("/"):
    result = result[part]
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[3483, 1, 2])
  parser.add_argument("--workdir", default="workdirs/seeds")
  parser.add_argument("--config", default="configs/biam_digits.py")
  parser.add_argument("overrides", nargs="*", help="extra --config.x=y flags")
  args = parser.parse_args()
  results = []
  for seed in args.seeds:
    workdir = Path(args.workdir) / f"seed{seed}"
    cmd = [sys.executable, "-m", "mlzsl_jax.main", "train", f"--config={args.config}",
           f"--workdir={workdir}", f"--config.seed={seed}", *args.overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    results.append(json.loads((ROOT / workdir / "results.json").read_text()))
  keys = [k for k in results[0]["zsl"] if k != "map_with_positives"]
  rows = list(ROWS)
  for split in results[0].get("splits", {}):  # e.g. colour_digits' test_binding
    rows += [(f"ZSL {split}", f"splits/{split}/zsl"), (f"GZSL {split}", f"splits/{split}/gzsl"),
             (f"ZSL {split} chance", f"splits/{split}/chance/zsl"),
             (f"GZSL {split} chance", f"splits/{split}/chance/gzsl")]
  width = max(len(name) for name, _ in rows)
  print(f"\n{args.config}, seeds {args.seeds}: mean +- std (x100) over {len(results)} runs")
  print(f"{'Setting':<{width}} " + "  ".join(f"{k:>12}" for k in keys))
  for name, path in rows:
    cells = []
    for k in keys:
      v = 100 * np.array([lookup(r, path)[k] for r in results])
      cells.append(f"{v.mean():6.1f} +- {v.std(ddof=1) if len(v) > 1 else 0:3.1f}")
    print(f"{name:<{width}} " + "  ".join(f"{c:>12}" for c in cells))
  for view in ("zsl", "gzsl"):
    got = 100 * np.array([r[view]["map"] for r in results])
    chance = 100 * np.array([r["chance"][view]["map"] for r in results])
    print(f"\n{view.upper()} mAP per seed: {np.round(got, 1).tolist()}; chance: "
          f"{np.round(chance, 1).tolist()}; ratio: {np.round(got / chance, 1).tolist()}")


if __name__ == "__main__":
  main()
