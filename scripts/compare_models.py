"""Trains every model on digits_mosaic and prints one comparison table (the LESA paper's
table shape: a row per model; ZSL and GZSL; P/R/F1@K and mAP).

  .venv/bin/python scripts/compare_models.py [--models biam lesa ...] [--workdir workdirs/compare]
      [--seed 3483] [-- extra --config.x=y overrides for every model]

Each model trains from `configs/<model>_digits.py` in `<workdir>/<model>`; a finished run is
not retrained (its checkpoint is restored and evaluated again). The table is read from the
`results.json` files and also written to `<workdir>/comparison.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mlzsl_jax import report

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("biam", "lesa", "attention_per_label", "fast0tag", "conse", "labelem", "dem")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
  parser.add_argument("--workdir", default="workdirs/compare")
  parser.add_argument("--seed", type=int, default=3483)
  parser.add_argument("overrides", nargs="*", help="extra --config.x=y flags for every model")
  args = parser.parse_args()
  workdirs = []
  for model in args.models:
    config = ROOT / "configs" / f"{model}_digits.py"
    if not config.exists():
      raise SystemExit(f"--models: no config {config.relative_to(ROOT)} for model {model!r}")
    workdir = Path(args.workdir) / model
    cmd = [sys.executable, "-m", "mlzsl_jax.main", "train", f"--config={config}",
           f"--workdir={workdir}", f"--config.seed={args.seed}", *args.overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    workdirs.append(str(ROOT / workdir))
  # One row per model (the workdir's name), the papers' column order, then the chance row.
  header, rows = report.build_table(workdirs, fields=[])
  header, rows = ["Model", *header[1:-1]], [row[:-1] for row in rows]  # no step column
  first = json.loads((Path(workdirs[0]) / "results.json").read_text())
  text = (f"digits_mosaic test split, {first['num_images']} images, seed {args.seed}; "
          f"mAP = official (labels without positives count 0); values x100\n\n"
          + report.to_markdown(header, rows))
  print("\n" + text)
  (ROOT / args.workdir / "comparison.md").write_text(text + "\n")


if __name__ == "__main__":
  main()
