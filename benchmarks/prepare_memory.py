"""Peak resident memory and wall time of ``main prepare`` on NUS-WIDE files of growing size.

For each size N it writes files in the official BiAM layout (``mlzsl_jax/data/nus_wide.py``'s
docstring: ``features/nus_wide_{train,test}.h5`` with random float32 [512, 196] features and
+1/-1 states, the tag and concept lists, a GloVe-shaped pickle, the two name pickles; random
names, the train name list in an order unlike the h5 file's), then runs, in a fresh process,

  python -m mlzsl_jax.main prepare --config configs/biam_nus_wide.py[:scene=vgg19] \\
      --config.data.manual_dir=<files> --config.data.data_dir=<tfds>

and reads that process's peak RSS from ``wait4`` (ru_maxrss) and its wall time. It prints one
row per size, the growth of the peak from the first to the last size, and an extrapolation to
the real NUS-WIDE (161,789 + 107,859 images) and Open Images (plain path; about 1.7 M
training + 125 k test images, rounded): time at the measured images/s of the largest size;
memory as the largest size's peak plus the larger of the measured growth per image and the
growth of tfds' largest bucket (split / 1000 records, see ``mlzsl_jax.data.tfds_common``).
``--scene`` stores the VGG19 scene feature too (random fc6 / fc7 weights of the real shapes
in an .npz, ~470 MB). ``--repo`` runs ``prepare`` from another
checkout (e.g. the code before a change), with the same files. No assertions; nothing is kept
unless ``--keep``.

  .venv/bin/python benchmarks/prepare_memory.py [--sizes 4000,16000] [--test 500] [--scene]
      [--root /tmp/mlzsl_prepare_bench] [--repo .] [--keep]
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mlzsl_jax.data import nus_wide  # noqa: E402  (paths and shapes of the layout only)

NUM_TAGS, NUM_CONCEPTS, NUM_SEEN = 1000, 81, 925
NUS_WIDE_REAL = (161_789, 107_859)
OPEN_IMAGES_REAL = (1_700_000, 125_000)  # about (BiAM's feature files), rounded
BUCKETS = 1000  # tfds' shuffler buckets (tfds_common)


def write_lists(root: str, rng: np.random.Generator) -> None:
  """Tag / concept lists (75 concepts are tags, 6 are not, as in the official files) and a
  GloVe-shaped pickle [float32 [1000, 300], float32 [81, 300]]."""
  tags = [f"tag{i:03d}" for i in range(NUM_TAGS)]
  concepts = sorted(tags[:75] + [f"concept{i}" for i in range(NUM_CONCEPTS - 75)])
  for rel, lines in ((nus_wide.TAGS_FILE, tags), (nus_wide.CONCEPTS_FILE, concepts)):
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w", encoding="utf-8", newline="") as f:
      f.writelines(f"{t}\r\n" for t in lines)
  os.makedirs(os.path.dirname(os.path.join(root, nus_wide.EMBEDDINGS_FILE)), exist_ok=True)
  with open(os.path.join(root, nus_wide.EMBEDDINGS_FILE), "wb") as f:
    pickle.dump([rng.normal(size=(NUM_TAGS, 300)).astype(np.float32),
                 rng.normal(size=(NUM_CONCEPTS, 300)).astype(np.float32)], f, protocol=3)


def write_split(root: str, split: str, count: int, rng: np.random.Generator) -> None:
  """``count`` images of ``split`` into its h5 file (one image at a time, uncompressed) and
  its names pickle (the list in reverse h5 order: the builder must follow the list)."""
  import h5py  # pylint: disable=import-outside-toplevel
  names = [f"{split}_{i:07d}_{rng.integers(1e6, 1e10)}.jpg" for i in range(count)]
  h5_path = os.path.join(root, nus_wide.TRAIN_H5 if split == "train" else nus_wide.TEST_H5)
  os.makedirs(os.path.dirname(h5_path), exist_ok=True)
  base = rng.random((512, 196), dtype=np.float32) * 8
  seen = NUM_SEEN if split == "train" else NUM_SEEN + NUM_CONCEPTS
  with h5py.File(h5_path, "w") as f:
    for i, name in enumerate(names):
      states = np.where(rng.random(seen) < 0.02, 1, -1).astype(np.int8)
      f.create_dataset(name + "-features", data=np.roll(base, i, axis=1) + np.float32(i % 7))
      f.create_dataset(name + "-labels", data=states)
      f.create_dataset(name + "-labels_81", data=states[-NUM_CONCEPTS:] if split == "test"
                       else np.where(rng.random(NUM_CONCEPTS) < 0.02, 1, -1).astype(np.int8))
  names_file = nus_wide.TRAIN_NAMES if split == "train" else nus_wide.TEST_NAMES
  with open(os.path.join(root, names_file), "wb") as f:
    pickle.dump({"img_names": names[::-1]}, f, protocol=3)


def write_scene_weights(path: str, rng: np.random.Generator) -> None:
  """fc6 [4096, 25088] / fc7 [4096, 4096] of torchvision's vgg19 layout, random, as .npz."""
  fc_in = 512 * 7 * 7
  np.savez(path, **{
      "classifier.0.weight": (rng.standard_normal((4096, fc_in), dtype=np.float32)
                              / np.sqrt(fc_in)).astype(np.float32),
      "classifier.0.bias": np.zeros(4096, np.float32),
      "classifier.3.weight": (rng.standard_normal((4096, 4096), dtype=np.float32)
                              / 64).astype(np.float32),
      "classifier.3.bias": np.zeros(4096, np.float32)})


def run_prepare(repo: str, manual_dir: str, data_dir: str, scene_weights: str
                ) -> tuple[float, float, str]:
  """(peak RSS in GB, wall seconds, last output line) of one ``main prepare`` process."""
  config = "configs/biam_nus_wide.py" + (":scene=vgg19" if scene_weights else "")
  cmd = [sys.executable, "-m", "mlzsl_jax.main", "prepare", f"--config={config}",
         f"--config.data.manual_dir={manual_dir}", f"--config.data.data_dir={data_dir}"]
  if scene_weights:
    cmd.append(f"--config.data.scene_weights={scene_weights}")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "MLZSL_PLATFORM": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": repo}
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    raise SystemExit(f"prepare failed (exit {proc.returncode}):\n{out[-3000:]}")
  lines = [l for l in out.splitlines() if l.strip()]
  return usage.ru_maxrss / 1e6, wall, lines[-1] if lines else ""


def stored_bytes_per_example(data_dir: str) -> float:
  """Bytes of the tfrecord shards per stored example (both splits)."""
  total, count = 0, 0
  for dirpath, _, files in os.walk(data_dir):
    total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files if ".tfrecord" in f)
  import json  # pylint: disable=import-outside-toplevel
  for dirpath, _, files in os.walk(data_dir):
    if "dataset_info.json" in files:
      with open(os.path.join(dirpath, "dataset_info.json"), encoding="utf-8") as f:
        info = json.load(f)
      count += sum(sum(int(n) for n in s["shardLengths"]) for s in info["splits"])
  return total / max(count, 1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="4000,16000", help="training images per run")
  parser.add_argument("--test", type=int, default=500, help="test images per run")
  parser.add_argument("--scene", action="store_true", help="also store the VGG19 scene")
  parser.add_argument("--root", default="/tmp/mlzsl_prepare_bench")
  parser.add_argument("--repo", default=REPO, help="checkout whose prepare is measured")
  parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  repo = os.path.abspath(args.repo)
  rng = np.random.default_rng(0)
  os.makedirs(args.root, exist_ok=True)
  weights = ""
  if args.scene:
    weights = os.path.join(args.root, "vgg19_fc_random.npz")
    if not os.path.exists(weights):
      write_scene_weights(weights, rng)
  print(f"prepare of NUS-WIDE-layout files ({repo}); scene: "
        f"{'vgg19 (random fc6/fc7, real shapes)' if args.scene else 'none'}", flush=True)
  print("| train + test images | peak RSS (GB) | wall (s) | images/s |")
  print("|---|---|---|---|")
  rows = []
  for n in sizes:
    manual = os.path.join(args.root, f"nus_{n}_{args.test}")
    data_dir = os.path.join(args.root, f"tfds_{n}_{args.test}")
    shutil.rmtree(data_dir, ignore_errors=True)
    if not os.path.exists(os.path.join(manual, nus_wide.TEST_NAMES)):
      shutil.rmtree(manual, ignore_errors=True)
      write_lists(manual, rng)
      write_split(manual, "train", n, rng)
      write_split(manual, "test", args.test, rng)
    rss, wall, _ = run_prepare(repo, manual, data_dir, weights)
    per_example = stored_bytes_per_example(data_dir)
    rows.append((n, rss, wall, per_example))
    print(f"| {n:,} + {args.test:,} | {rss:.2f} | {wall:.1f} | {(n + args.test) / wall:.0f} |",
          flush=True)
    if not args.keep:
      shutil.rmtree(data_dir, ignore_errors=True)
      shutil.rmtree(manual, ignore_errors=True)
  (n0, rss0, _, _), (n1, rss1, wall1, per_example) = rows[0], rows[-1]
  rate = (n1 + args.test) / wall1
  print(f"\npeak growth from {n0:,} to {n1:,} training images: {rss1 - rss0:+.2f} GB "
        f"({(rss1 - rss0) * 1e6 / max(n1 - n0, 1):+.1f} KB per image); stored "
        f"{per_example / 1e3:.0f} KB per example")
  print("\n| extrapolated (at the measured images/s and stored size) | images | time | "
        "peak RSS (GB) |")
  print("|---|---|---|---|")
  slope = max(rss1 - rss0, 0.0) / max(n1 - n0, 1)  # GB per training image, as measured
  for name, (train, test) in (("NUS-WIDE", NUS_WIDE_REAL), ("Open Images (plain path)",
                                                            OPEN_IMAGES_REAL)):
    # Peak = the largest run's peak + the larger of: the measured growth per image, and the
    # growth of tfds' largest bucket (split / 1000 records, read back whole).
    bucket_growth = (max(train, test) - n1) / BUCKETS * per_example / 1e9
    growth = max(slope * (train - n1), bucket_growth, 0.0)
    seconds = (train + test) / rate
    print(f"| {name} | {train + test:,} | {seconds / 3600:.1f} h | {rss1 + growth:.2f} |")


if __name__ == "__main__":
  main()
