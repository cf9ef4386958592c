"""``extract --backbone clip_vit_b16`` end to end on this machine: images/s and what the real
datasets would take.

Writes ``--images`` random JPEG photos (``--size`` pixels, a typical Flickr 500x375 by
default) and a ViT-B/16 weight file with random weights in the OpenAI layout (the released
shapes, ~600 MB of float32) into a temporary folder, then runs ``extract_folder`` (decoding
on ``--workers`` threads, CLIP preprocessing, the jitted image tower data-parallel over the
local devices, float16 tokens written to h5) and prints the loop's images/s (the one
compilation included) and the extrapolated time for NUS-WIDE (269,648 images) and Open
Images v4 (1.74 M train + 125k test). Nothing is written into the repository.

  .venv/bin/python benchmarks/clip_extract.py [--images 64] [--batch 16] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))  # clip_reference.random_state_dict

DATASETS = {"NUS-WIDE": 269_648, "Open Images v4": 1_743_042 + 125_436}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=64)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--size", default="500x375", help="WxH of the generated photos")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--workers", type=int, default=4)
  args = p.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  import clip_reference  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip as clip_lib  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import safetensors_io  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.extract import run  # pylint: disable=import-outside-toplevel

  width, height = (int(v) for v in args.size.split("x"))
  with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(tmp, "images"))
    for i in range(args.images):
      base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
      photo = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
      photo.save(os.path.join(tmp, "images", f"{i:05d}.jpg"), quality=90)
    weights = os.path.join(tmp, "ViT-B-16.safetensors")
    spec = clip_lib.named_spec("clip_vit_b16")
    safetensors_io.write_safetensors(weights, clip_reference.random_state_dict(spec))
    t0 = time.perf_counter()
    summary = run.extract_folder(os.path.join(tmp, "images"), os.path.join(tmp, "out"),
                                 weights, backbone="clip_vit_b16",
                                 batch_size=args.batch - args.batch % jax.local_device_count(),
                                 dtype=args.dtype, num_workers=args.workers, progress=False)
    total = time.perf_counter() - t0
  rate = summary.images_per_second
  print(f"extract --backbone clip_vit_b16 ({args.dtype}), {args.images} JPEG {args.size}, "
        f"batch {args.batch}, {jax.local_device_count()} {jax.devices()[0].platform} "
        f"device(s), {os.cpu_count()} CPU(s): {rate:.1f} images/s in the loop (one compile "
        f"included), {total:.1f} s with loading the weights")
  for name, count in DATASETS.items():
    print(f"  {name}: {count:,} images -> {count / rate / 3600:.1f} h at this rate")


if __name__ == "__main__":
  main()
