"""``main compile``: a tiny config compiled for a TPU v5e 2x2 slice on this CPU machine
(libtpu's compiler, compile-only devices), its per-chip memory report against a hand count
under the partition rules, a program that cannot fit (exit 1, its largest buffers named),
the same config for 8 H100s (JAX's CUDA plugin, no GPU), and the HLO reading (collectives,
bytes per op) on a hand-written module.

libtpu and the CUDA plugin come from ``make setup-compile`` (.cache/); without them these
tests skip, except where ``MLZSL_REQUIRE_LIBTPU=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from mlzsl_jax import step
from mlzsl_jax.compile import chips, command, hlo, report, topology
from mlzsl_jax.data.source import dataset_shapes

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "biam_synthetic.py"


def _libtpu_available() -> bool:
  return (importlib.util.find_spec("libtpu") is not None
          or (pathlib.Path(topology.libtpu_dir()) / "libtpu").is_dir())


needs_libtpu = pytest.mark.skipif(
    not _libtpu_available() and os.environ.get("MLZSL_REQUIRE_LIBTPU") != "1",
    reason="libtpu not installed (make setup-compile)")
needs_cuda_plugin = pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda12_plugin") is None
    and not (pathlib.Path(topology.cuda_plugin_dir()) / "jax_cuda12_plugin").is_dir()
    and os.environ.get("MLZSL_REQUIRE_LIBTPU") != "1",
    reason="JAX's CUDA plugin not in .cache/cuda_plugin (make setup-compile)")


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "MLZSL_LIBTPU_DIR": topology.libtpu_dir(),
         "MLZSL_CUDA_PLUGIN_DIR": topology.cuda_plugin_dir()}
  return subprocess.run([sys.executable, "-m", "mlzsl_jax.main", "compile", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def tiny_config(mesh_model: int = 2):
  spec = importlib.util.spec_from_file_location("biam_synthetic_cfg", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("small=True")
  c.train.batch_size = c.eval.batch_size = 8
  c.mesh.data, c.mesh.model = 4 // mesh_model, mesh_model
  return c


@pytest.fixture(scope="module")
def compiled():
  """The tiny config's three programs for v5e:2x2 (4 chips) on a data=2 x model=2 mesh."""
  config = tiny_config()
  chip, devices = topology.devices("v5e:2x2")
  meta = dataset_shapes(config.data)
  programs = command.compile_all(config, meta, devices)
  return config, meta, chip, {p.name: p for p in programs}


def _hand_state_bytes(config, meta) -> tuple[int, int]:
  """(parameter bytes, model-state bytes) per chip: kernels and biases split over the 2-way
  'model' axis on their last dimension (the default rules), everything else replicated."""
  _, params, model_state = step.build_model(config, meta, 0)
  def per_chip(tree) -> int:
    total = 0
    import jax  # pylint: disable=import-outside-toplevel
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = str(path[-1].key)
      size = leaf.size * leaf.dtype.itemsize
      split = name in ("kernel", "bias") and leaf.shape[-1] % 2 == 0
      total += size // 2 if split else size
    return total
  return per_chip(params), per_chip(model_state)


@needs_libtpu
def test_memory_report_matches_a_hand_count(compiled):
  config, meta, chip, programs = compiled
  assert chip.name == "v5e" and chip.hbm_bytes == 16 * 10**9
  train = programs["train_step"]
  assert train.devices_used == 4 and train.images_per_call == 8
  params, model_state = _hand_state_bytes(config, meta)
  args = dict(train.arguments)
  state = sum(v for k, v in args.items() if k.startswith("state/"))
  # params + Adam's mu and nu (same shapes and shardings) + BatchNorm statistics + the
  # scalars (step, the rng key, Adam's step count): at most a few bytes each.
  assert 0 < state - (3 * params + model_state) <= 64
  seen, regions, dim = len(config.data.seen_labels), meta.num_regions, meta.feature_dim
  batch = 8 // 2 * (regions * dim * 2 + seen)  # rows over the 2-way 'data' axis; f16 + int8
  assert sum(v for k, v in args.items() if k.startswith("batch/")) == batch
  assert args["label_emb/"] == seen * meta.embedding("random").shape[1] * 4  # replicated
  analysis = report.analyse(train)
  logical = sum(args.values())
  # XLA's own count pads every array to TPU tiles (at most 4 KiB per (8, 128) 32-bit tile
  # of the two minor dimensions); it never holds less than the logical bytes.
  leaves = len(args)
  assert logical <= analysis.arguments <= logical + leaves * 4 * 8 * 128 * 4
  assert analysis.aliased > 0  # the state is donated
  assert analysis.total == (analysis.arguments + analysis.outputs + analysis.temporaries
                            + analysis.generated_code - analysis.aliased)
  assert analysis.flops > 0 and analysis.bytes_accessed > 0
  kinds = {c.kind for c in analysis.collectives}
  assert "all-reduce" in kinds  # gradients summed over the data axis
  text = report.format_report(analysis, chip, 4, top_bytes=3, protocol_images=1000.0)
  assert "fits: yes" in text and "estimate (roofline, not measured)" in text
  assert len(re.findall(r"^\s+[\d,.]+ MiB ", text, re.M)) == 3  # the --top_bytes rows
  # on TPU BiAM's attention (forward, backward) and label top-k are Pallas kernels: no
  # [images per chip, heads, regions, regions] attention map in the program
  text = train.compiled.as_text()
  assert text.count('custom_call_target="tpu_custom_call"') == 3
  local, r = 8 // 2, meta.num_regions
  assert f"[{local},{config.model.heads},{r},{r}]" not in text
  assert programs["eval_forward"].compiled.as_text().count("tpu_custom_call") == 3  # ZSL, GZSL
  forward = report.analyse(programs["eval_forward"])
  assert forward.aliased == 0 and report.fits(forward, chip)
  metrics = programs["metrics"]
  assert metrics.devices_used == 1 and report.fits(report.analyse(metrics), chip)


@needs_libtpu
def test_a_program_that_cannot_fit_exits_1_naming_its_largest_buffers(tmp_path):
  """2^25 images per step (16 per chip of 1 KiB features each... 16 GiB of features per chip):
  beyond a v5e chip's 16 GB; the command says so, names the batch, and exits 1."""
  proc = _cli(f"--config={CONFIG}:small=True", "--topology=v5e:2x2",
              "--config.train.batch_size=33554432", "--config.eval.batch_size=8")
  out = proc.stdout
  assert proc.returncode == 1 and "train_step" in out, out[-2000:] + proc.stderr[-3000:]
  assert "train_step" in out and "does not fit" in out
  assert re.search(r"argument batch/features: [\d,.]+ MiB", out)
  assert out.strip().splitlines()[-1] == "fits: no"
  assert "Traceback" not in proc.stderr


@needs_cuda_plugin
def test_compiles_for_eight_h100s_without_a_gpu():
  """The CUDA plugin's compile-only devices for a card described from its facts: the same
  three programs, GPU memory per device, FLOP from the CPU twin (GPU programs carry no cost
  analysis), the gradients' all-reduce over the 8 GPUs."""
  proc = _cli(f"--config={CONFIG}:small=True", "--topology=h100:8",
              "--config.train.batch_size=16", "--config.eval.batch_size=16", "--top_bytes=2")
  out = proc.stdout
  assert proc.returncode == 0, out[-2000:] + proc.stderr[-3000:]
  assert "8 x NVIDIA H100 80GB HBM3" in out and "85.5 GB HBM" in out
  train = out.split("== train_step")[1].split("==")[0]
  assert "(8 device(s)" in train and "all-reduce" in train and "fits: yes" in train
  line = re.search(r"per chip per call: .*", train).group(0)
  assert "nan" not in line and "lowered for the CPU" in train
  assert out.count("fits: yes") == 4  # three programs and the verdict


def test_dataset_shapes_need_no_tensorflow():
  """``compile`` reads the paper datasets' shapes (and the synthetic one's) without
  TensorFlow, which the GPU machine's jax 0.11 environment does not have."""
  code = """
import sys
import ml_collections
from mlzsl_jax.data.source import dataset_shapes
def cfg(**kw):
  return ml_collections.ConfigDict(kw)
nus = dataset_shapes(cfg(name="nus_wide", scene="vgg19"))
oi = dataset_shapes(cfg(name="open_images"))
syn = dataset_shapes(cfg(name="synthetic", num_seen=19000, num_unseen=1000))
print(nus.num_labels, nus.scene_dim, nus.num_examples["train"], oi.num_labels, oi.scene_dim,
      syn.num_labels, syn.feature_dim, "tensorflow" in sys.modules)
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["1006", "4096", "161789", "7586", "0", "20000", "512",
                                 "False"]


@needs_libtpu
def test_a_batch_the_data_shards_do_not_divide_is_a_config_error(compiled):
  """As the input pipeline requires: each global batch a multiple of the 'data' shards."""
  config = tiny_config()  # data=2 x model=2 on v5e:2x2
  config.eval.batch_size = 7
  with pytest.raises(ValueError, match=r"eval.batch_size=7 must be a multiple of the mesh's 2"):
    command.run(config, "", "v5e:2x2", say=lambda s: None)


def test_topology_names_and_missing_libtpu(monkeypatch, tmp_path):
  assert topology.parse_name("v5p:4x4x8")[0].name == "v5p"
  assert topology.parse_name("h200:4x8")[0].platform == "gpu"
  for bad in ("v5e", "v7x:2x2", "a100:8", ":2x2"):
    with pytest.raises(ValueError, match="expected <generation>:<shape>"):
      topology.parse_name(bad)
  monkeypatch.setenv(topology.LIBTPU_ENV, str(tmp_path / "nowhere"))
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  with pytest.raises(topology.CompilerMissing, match="make setup-compile"):
    topology.use_libtpu()
  monkeypatch.setenv(topology.CUDA_PLUGIN_ENV, str(tmp_path / "nowhere"))
  with pytest.raises(topology.CompilerMissing, match="make setup-compile"):
    topology.use_cuda_plugin()
  with pytest.raises(ValueError, match="h100:<GPUs>"):
    topology.devices("h100:two")
  with pytest.raises(ValueError, match="no published figures"):
    chips.chip_for("TPU v9")


def test_hlo_collectives_and_bytes_per_op():
  """A hand-written optimised module: sizes are elements x dtype bytes, collectives are
  counted by kind (async starts once), and the top op by bytes comes first."""
  text = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (p0: bf16[32,196,512], p1: f32[512,256]) -> f32[32,256] {
  %p0 = bf16[32,196,512]{2,1,0:T(8,128)(2,1)} parameter(0)
  %p1 = f32[512,256]{1,0:T(8,128)} parameter(1)
  %fusion.1 = f32[32,196,256]{2,1,0} fusion(%p0, %p1), kind=kOutput, calls=%add, metadata={op_name="jit(f)/dot_general" stack_frame_id=3}
  %all-reduce-start = f32[512,256]{1,0} all-reduce-start(%p1), channel_id=1, to_apply=%add
  %all-reduce-done = f32[512,256]{1,0} all-reduce-done(%all-reduce-start)
  %all-gather = f32[64,256]{1,0} all-gather(%p1), dimensions={0}
  ROOT %reduce = f32[32,256]{1,0} fusion(%fusion.1), kind=kLoop, calls=%add
}
"""
  ops = hlo.parse_ops(text)
  by_name = {op.name: op for op in ops}
  fusion = by_name["fusion.1"]
  assert fusion.entry and fusion.op_name == "jit(f)/dot_general"
  assert fusion.operand_bytes == 32 * 196 * 512 * 2 + 512 * 256 * 4
  assert fusion.output_bytes == 32 * 196 * 256 * 4
  assert hlo.shape_bytes("(f32[2,3], s8[4], pred[])") == 24 + 4 + 1
  assert hlo.short_shape("bf16[32,196]{1,0:T(8,128)(2,1)}") == "bf16[32,196]"
  found = {c.kind: c for c in hlo.collectives(ops)}
  assert found["all-reduce"].count == 1 and found["all-reduce"].bytes == 512 * 256 * 4
  assert found["all-gather"].bytes == 64 * 256 * 4
  assert [op.name for op in hlo.top_ops(ops, 2)] == ["fusion.1", "reduce"]
  assert all(op.opcode != "parameter" for op in hlo.top_ops(ops, 10))
  assert not any(op.entry for op in ops if op.computation == "add")
  np.testing.assert_allclose(
      report.COLLECTIVE_FACTOR["all-reduce"] * found["all-reduce"].bytes, 2 * 512 * 256 * 4)


def _affine(base, per_image):
  return lambda rows: base + per_image * rows


@pytest.mark.parametrize("per_shard_bytes,max_calls", [
    (_affine(10 * 2**20, 3 * 2**20), 6),      # ~5,400 images per chip fit a v5e chip
    (_affine(2**30, 5_000_000), 6),
    (_affine(17 * 10**9, 1000), 1),            # even one row per shard does not fit
    # memory growing faster than the first points say (as measured for BiAM on v5e)
    (lambda rows: 60 * 2**20 + 3 * 2**20 * rows + 2000 * rows**2, 10),
    # the compiler gives no figure (out of memory) above 3,000 rows per shard
    (lambda rows: None if rows > 3000 else 64 * 2**20 + 6 * 2**20 * rows, 10),
    # a step (a buffer changes layout) at 1,000 rows per shard
    (lambda rows: 64 * 2**20 + 5 * 2**20 * rows + (2**29 if rows > 1000 else 0), 10),
    # near the HBM XLA recomputes instead of storing: memory falls back, then grows again
    (lambda rows: 39 * 2**20 + 2 * 2**20 * rows - (2**30 if rows > 7560 else 0), 10),
])
def test_max_batch_search_finds_the_limit_within_a_64th(per_shard_bytes, max_calls):
  """The search against per-chip memories the compiler could report (affine, growing faster,
  out of memory with no figure, a step): the answer fits, the next batch 1/64 larger does
  not, in a handful of compiles; a batch compiled before (``known``) is not compiled again."""
  chip, data = chips.chip_for("TPU v5 lite"), 4
  calls = []

  def fits(batch):
    used = per_shard_bytes(batch // data)
    return used is not None and used <= chip.hbm_bytes

  def measure(batch):
    calls.append(batch)
    assert batch % data == 0 and batch > 0
    return per_shard_bytes(batch // data)

  config = tiny_config(mesh_model=1)
  best = command.max_train_batch(config, None, list(range(data)), chip, lambda s: None,
                                 measure=measure)
  exact = 0  # the largest fitting multiple of data, by bisection over rows per shard
  lo, hi = 0, 1 << 18
  while lo < hi:
    mid = (lo + hi + 1) // 2
    lo, hi = (mid, hi) if fits(mid * data) else (lo, mid - 1)
  exact = lo * data
  assert len(calls) <= max_calls, calls
  if exact == 0:
    assert best == 0
    return
  assert best % data == 0 and fits(best)
  assert exact - max(data, exact // 64) <= best <= exact
  calls.clear()
  again = command.max_train_batch(config, None, list(range(data)), chip, lambda s: None,
                                  measure=measure, known={128: measure(128)})
  assert again == best or (fits(again) and exact - max(data, exact // 64) <= again)
  assert calls.count(128) == 1  # the known point's own call above, not the search's


def test_out_of_memory_message_gives_the_required_bytes():
  """The search's figure for a batch the compiler refused: the bytes its message names."""
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (16.90G) exceeds available HBM (15.75G).")
  assert command.programs.required_bytes(message) == int(16.90 * 2**30)
  assert command.programs.required_bytes("RESOURCE_EXHAUSTED: out of memory") is None
