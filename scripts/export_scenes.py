"""Writes test scenes of the demo data as PNG files (inputs for `main predict`).

  .venv/bin/python scripts/export_scenes.py --out docs/figures/scenes --indices 0 1 2
      [--config configs/biam_digits.py:data=colours] [-- --config.x=y overrides]

Each file is named <split>_<index>.png; the labels present are printed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from mlzsl_jax import sweep
from mlzsl_jax.data import get_dataset


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/biam_digits.py:data=colours")
  parser.add_argument("--split", default="test")
  parser.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--out", default="docs/figures/scenes")
  parser.add_argument("--data_dir", default="")
  args = parser.parse_args()
  module, arg = sweep.load_config_module(args.config)
  config = module.get_config(arg)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  source = get_dataset(config.data)
  if not hasattr(source, "pictures"):
    raise SystemExit(f"dataset {config.data.name!r} stores no pictures")
  os.makedirs(args.out, exist_ok=True)
  wanted = set(args.indices)
  pairs = zip(source.pictures(args.split).as_numpy_iterator(),
              source.as_tf_dataset(args.split).as_numpy_iterator())
  for i, (pic, ex) in enumerate(pairs):
    if i > max(wanted):
      break
    if i not in wanted:
      continue
    image = pic["image"]
    if image.ndim == 2:  # digits_mosaic: grey 0..16
      image = np.round(image.astype(np.float32) / 16 * 255).astype(np.uint8)
    path = os.path.join(args.out, f"{args.split}_{i}.png")
    Image.fromarray(image).save(path)
    present = [source.meta.label_names[j] for j in np.where(ex["labels"] > 0)[0]]
    print(f"{path}: {', '.join(present)}")


if __name__ == "__main__":
  main()
