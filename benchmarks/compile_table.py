"""The scaling table of docs/compile.md: configs x TPU slices, compiled on this CPU machine.

For each (config, topology) it builds the run's train step for that slice (``main
compile``'s code, in this one process; libtpu from ``make setup-compile``), at a fixed
number of images per chip, and prints one markdown row: chips, whether it fits, per-chip
memory, FLOP and bytes per image, the roofline estimate (labelled: not measured) of images/s
for the slice and of the config's protocol (its phases' training image-epochs).
``--max_batch`` adds the largest per-chip batch that fits (searched on the slice itself).

  .venv/bin/python benchmarks/compile_table.py [--configs NAME,...] [--topologies T,...]
      [--per_chip 32] [--dtype bfloat16] [--max_batch]

Configs (name -> config file and overrides):
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")

from mlzsl_jax import sweep  # noqa: E402
from mlzsl_jax.compile import command, report, topology  # noqa: E402
from mlzsl_jax.data.source import dataset_shapes  # noqa: E402

CONFIGS = {
    "biam_nus_wide": ("biam_nus_wide.py", "scene=vgg19", {}),
    "biam_open_images": ("biam_open_images.py", "scene=vgg19", {}),
    "lesa_nus_wide": ("lesa_nus_wide.py", "", {}),
    # BiAM with the label axis over 'model' (mesh model=4) on synthetic labels
    "biam_20k_labels": ("biam_synthetic.py", "", {
        "data.num_seen": 19_000, "data.num_unseen": 1_000, "model.label_chunk": 1024,
        "mesh.model": 4, "loss.name": "ranking_sorted"}),
    "biam_100k_labels": ("biam_synthetic.py", "", {
        "data.num_seen": 95_000, "data.num_unseen": 5_000, "model.label_chunk": 1024,
        "mesh.model": 4, "loss.name": "ranking_sorted"}),
}
__doc__ += "".join(f"  {k}: configs/{f}{':' + a if a else ''} {o or ''}\n"
                   for k, (f, a, o) in CONFIGS.items())
TOPOLOGIES = ("v4:2x2x1", "v5e:4x4", "v5e:16x16", "v5p:4x4x4", "v6e:8x8")


def load_config(name: str, dtype: str):
  """(config, spec) of a table row's config, with its overrides and dtype."""
  file, arg, overrides = CONFIGS[name]
  path = os.path.join(REPO, "configs", file)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  overrides = {**overrides, "dtype": dtype}
  if "data.num_seen" in overrides:
    seen, unseen = overrides["data.num_seen"], overrides["data.num_unseen"]
    overrides["data.seen_labels"] = tuple(range(seen))
    overrides["data.unseen_labels"] = tuple(range(seen, seen + unseen))
  config = sweep.apply_overrides(module.get_config(arg or None), overrides, where=name)
  return config, f"{path}:{arg}" if arg else path


def row(name: str, topology_name: str, per_chip: int, dtype: str, max_batch: bool) -> str:
  config, spec = load_config(name, dtype)
  chip, devices = topology.devices(topology_name)
  data = len(devices) // int(config.mesh.model)
  config.train.batch_size = per_chip * data
  config.eval.batch_size = per_chip * data
  meta = dataset_shapes(config.data)
  start = time.perf_counter()
  program = command.compile_all(config, meta, devices, ("train_step",))[0]
  seconds = time.perf_counter() - start
  cells = [name, topology_name, str(len(devices)), f"{per_chip * data / len(devices):g}"]
  if program.compiled is None:
    return "| " + " | ".join(cells + ["no (compiler: out of memory)"] + ["-"] * 5) + " |"
  a = report.analyse(program)
  est = report.estimate(a, chip)
  pod = program.images_per_call / est.step_s
  epochs = command.protocol_images(spec, config, meta)
  per_image = program.images_per_call / len(devices)
  best = ""
  if max_batch:  # seeded with the compile above; each search step printed to stderr
    start = time.perf_counter()
    found = command.max_train_batch(
        config, meta, devices, chip, lambda line: print(line, file=sys.stderr, flush=True),
        known={int(config.train.batch_size): a.total})
    best = (f" | {found // data} ({found / len(devices):,.0f} per chip, "
            f"{time.perf_counter() - start:.0f} s)")
  cells += ["yes" if report.fits(a, chip) else "no", f"{a.total / 2**20:,.0f} MiB",
            f"{a.flops / per_image / 1e9:.2f} GFLOP, {a.bytes_accessed / per_image / 1e6:,.0f} MB",
            f"{pod:,.0f} ({est.bound})", report.duration(epochs / pod) if epochs else "-",
            f"{seconds:.0f} s"]
  return "| " + " | ".join(cells) + best + " |"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  parser.add_argument("--per_chip", type=int, default=32, help="train images per chip "
                      "(per data shard when the label axis is split)")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--max_batch", action="store_true")
  args = parser.parse_args()
  print(f"train step, {args.per_chip} images per data shard, {args.dtype}; estimates are "
        "rooflines (max(FLOP/peak, bytes/HBM bandwidth) + collectives/interconnect), not "
        "measurements", flush=True)
  head = ["config", "topology", "chips", "images/chip", "fits", "memory/chip",
          "per image", "est. images/s (slice)", "est. protocol", "compile"]
  if args.max_batch:
    head.append("largest batch per data shard (per chip; search)")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head), flush=True)
  for name in args.configs.split(","):
    for topo in args.topologies.split(","):
      print(row(name, topo, args.per_chip, args.dtype, args.max_batch), flush=True)


if __name__ == "__main__":
  main()
