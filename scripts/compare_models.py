"""Trains every model on one dataset and prints one comparison table (the LESA paper's
table shape: a row per model; ZSL and GZSL; P/R/F1@K and mAP).

  .venv/bin/python scripts/compare_models.py [--data colours|mosaic|nus_wide|open_images]
      [--backbone clip_vit_b16] [--models biam lesa ...] [--workdir workdirs/compare_<data>]
      [--seed 3483] [-- extra --config.x=y overrides]

``--data colours`` also prints the table of the test scenes where binding is needed.

Demo data: each model trains from `configs/<model>_digits.py`. NUS-WIDE / Open Images: from
`configs/clip_models.py:model=<model>,data=<data>,backbone=<backbone>` (CLIP tokens and CLIP
label embeddings by default; the dataset prepared from an extract folder first, docs/clip.md;
pass its paths as overrides, e.g. `--config.data.data_dir=/data/tfds`), with the
training-free `clip_zero_shot` in the table too (evaluated, not trained). Each model runs in
`<workdir>/<model>`; a finished run is not retrained (its checkpoint is restored and
evaluated again). The table is read from the `results.json` files and also written to
`<workdir>/comparison.md`.
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
DEMO_DATA = ("colours", "mosaic")
BENCHMARK_DATA = ("nus_wide", "open_images")


def command(model: str, args, workdir: Path) -> list[str]:
  """The ``main`` command that trains (or, training-free, evaluates) ``model``."""
  if args.data in DEMO_DATA:
    config = ROOT / "configs" / f"{model}_digits.py"
    if not config.exists():
      raise SystemExit(f"--models: no config {config.relative_to(ROOT)} for model {model!r}")
    spec = f"{config}:data={args.data}"
  else:
    spec = f"{ROOT / 'configs' / 'clip_models.py'}:model={model},data={args.data}," \
           f"backbone={args.backbone}"
  verb = "evaluate" if model == "clip_zero_shot" else "train"
  return [sys.executable, "-m", "mlzsl_jax.main", verb, f"--config={spec}",
          f"--workdir={workdir}", f"--config.seed={args.seed}", *args.overrides]


def comparison_table(workdirs: list[str], seed: int) -> str:
  """Markdown: one row per model (the workdir's name), the papers' column order, then the
  chance row; one table per evaluated split."""
  first = json.loads((Path(workdirs[0]) / "results.json").read_text())
  dataset = first["config"]["data"]["name"]
  text = ""
  for split in [None, *first.get("splits", {})]:
    header, rows = report.build_table(workdirs, fields=[], split=split)
    header, rows = ["Model", *header[1:-1]], [row[:-1] for row in rows]  # no step column
    images = first["splits"][split]["num_images"] if split else first["num_images"]
    text += (f"{dataset} {split or 'test'} split, {images} images, seed {seed}; "
             f"mAP = official (labels without positives count 0); values x100\n\n"
             + report.to_markdown(header, rows) + "\n\n")
  return text.rstrip()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=None,
                      help="default: the seven trained models (+ clip_zero_shot on NUS-WIDE "
                      "/ Open Images)")
  parser.add_argument("--data", default="mosaic", choices=DEMO_DATA + BENCHMARK_DATA)
  parser.add_argument("--backbone", default="clip_vit_b16",
                      help="NUS-WIDE / Open Images: clip_vit_* or vgg19")
  parser.add_argument("--workdir", default=None, help="default workdirs/compare_<data>")
  parser.add_argument("--seed", type=int, default=3483)
  parser.add_argument("overrides", nargs="*", help="extra --config.x=y flags for every model")
  args = parser.parse_args()
  args.workdir = args.workdir or f"workdirs/compare_{args.data}"
  if args.models is None:
    args.models = list(DEFAULT_MODELS) + (["clip_zero_shot"] if args.data in BENCHMARK_DATA
                                          and args.backbone != "vgg19" else [])
  workdirs = []
  for model in args.models:
    workdir = Path(args.workdir) / model
    cmd = command(model, args, workdir)
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    workdirs.append(str(ROOT / workdir))
  text = comparison_table(workdirs, args.seed)
  print("\n" + text)
  (ROOT / args.workdir / "comparison.md").write_text(text + "\n")


if __name__ == "__main__":
  main()
