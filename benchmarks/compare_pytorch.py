"""Our jitted BiAM train step vs the same model run eagerly in PyTorch, side by side on CPU.

One process, NUS-WIDE shapes (196 regions x 512, 925 seen labels, 300-d embeddings, 4096-d
scene, channels 256, heads 8), both frameworks on the same cores and thread count:
  1. equality on shared random weights (ours copied into ``torch_biam.TorchBiAM``): eval-mode
     scores, and, dropout off, one train-mode loss and the gradients of a few tensors;
  2. ``--steps`` timed steps of each, interleaved (after ``--warmup``): ours is
     ``mlzsl_jax.step_lib.Trainer``'s jitted train step, config, data shapes and random batches as
     benchmarks/train_throughput.py (``bench_config``, ``SHAPES['nus_wide']``);
     torch's is forward, ranking loss, backward, ``torch.optim.Adam(weight_decay=5e-4)``;
  3. FLOPs per image from XLA's cost analysis of our step, and the CPU's float32 matmul
     peak measured now (2048^3, best of several, jnp and torch); prints s/step, images/s,
     GFLOP/s, % of that peak, and the speed-up of ours over torch.

Needs torch (not a project dependency): ``.venv/bin/pip install torch``.

  .venv/bin/python benchmarks/compare_pytorch.py [--batch 32] [--steps 10] [--warmup 2]
      [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import torch_biam
from threads import pin_threads
from mlzsl_jax import step as step_lib
from mlzsl_jax import sharding as shd
from mlzsl_jax import train
from mlzsl_jax.data.source import DatasetMeta
from train_throughput import SHAPES, bench_config, bench_meta, random_batch

NUS_WIDE = SHAPES["nus_wide"]

CHECK_TOL = 1e-4  # scores and loss: max |ours - torch| / max |torch|
# Gradients: ||ours - torch64|| / ||torch64||. Any two float32 runs differ by ~1e-3 here:
# ReLU / LeakyReLU inputs within ~1e-6 of 0 can change sign between them (a kink), which
# moves that element's gradient by up to 80%; a wrong formula gives O(1).
GRAD_TOL = 1e-2
CHECKED_GRADS = ("stem/conv/kernel", "stem/bn/scale", "region_context/w_q/kernel",
                 "region_context/ff2/bias", "scene_context/w_g/kernel",
                 "scene_context/refine/conv/kernel", "fuse/kernel", "label_proj/kernel")


def relative_error(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs|."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


def norm_error(ours, theirs) -> float:
  """||ours - theirs||_2 / ||theirs||_2."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def torch_model(config, meta: DatasetMeta, *, dropout: bool) -> torch_biam.TorchBiAM:
  m = config.model
  return torch_biam.TorchBiAM(
      feature_dim=meta.feature_dim,
      emb_dim=int(np.shape(meta.embedding(config.data.embedding))[1]),
      grid_shape=meta.grid_shape,
      scene_dim=meta.scene_dim, channels=m.channels, heads=m.heads, out_dim=m.out_dim,
      top_k=m.top_k, mask_zero_scores=m.mask_zero_scores,
      attn_dropout=m.attn_dropout if dropout else 0.0,
      scene_dropout=m.scene_dropout if dropout else 0.0)


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {k: torch.tensor(np.asarray(v, np.float32)) for k, v in batch.items()}


def flat(tree, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
  return out


def top_k_indices(region: np.ndarray, k: int) -> np.ndarray:
  """region [B, R, L] -> indices of the k largest regions per (image, label) [B, k, L]."""
  return np.argsort(-region, axis=1, kind="stable")[:, :k, :]


def check_equal(trainer: step_lib.Trainer, params, model_state, batch: dict[str, np.ndarray],
                emb: np.ndarray) -> tuple[list[tuple[str, float, float, float, bool]], int]:
  """Ours vs torch on the same weights and batch: ([row], flips) with rows
  (what, error ours vs torch float32, ours vs torch float64, torch float32 vs float64, ok)
  for the eval scores [B, L] and, dropout off, the train-mode loss (``relative_error``, ok
  when ours vs torch float32 <= ``CHECK_TOL``) and the gradients of ``CHECKED_GRADS``
  (``norm_error``, ok when ours vs torch float64, the exact reference, <= ``GRAD_TOL``).

  Where a label's 6th and 7th best regions are closer than float32 rounding (~1e-5), the
  frameworks may pick different top-k regions and the gradient jumps; torch's gradients are
  therefore taken with our top-k selection, and ``flips`` counts the (image, label) pairs
  whose own float32 selections differ.
  """
  config, meta = trainer.config, trainer.meta
  k = config.model.top_k
  ours_eval = np.asarray(trainer.predict(params, model_state, batch, (emb,))[0])

  no_dropout = config.copy_and_resolve_references()
  no_dropout.model.attn_dropout = no_dropout.model.scene_dropout = 0.0
  graphdef = step_lib.build_model(no_dropout, meta, no_dropout.seed)[0]

  def loss_of(p, s):  # the loss of Trainer._train_step, dropout off
    model = nnx.merge(graphdef, p, s)
    out = model(batch["features"], emb, batch["scene"], train=True,
                rngs=nnx.Rngs(dropout=jax.random.key(0)))
    return trainer.loss_fn(out, batch["labels"], config.loss)[0], out["region_scores"]
  (loss, region), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
      params, model_state)
  ours_idx = top_k_indices(np.asarray(region), k)
  ours = {"eval scores": ours_eval, "train loss": np.asarray(loss),
          **{f"grad {n}": g for n, g in flat(jax.device_get(grads)).items()}}

  theirs, flips = {}, 0
  for dtype in (torch.float32, torch.float64):
    tb = {key: v.to(dtype) for key, v in to_torch(batch).items()}
    t_emb = torch.tensor(emb, dtype=dtype)
    model = torch_model(config, meta, dropout=False)
    torch_biam.load_from_flax(model, params, model_state)
    model.to(dtype).eval()
    with torch.no_grad():
      out = {"eval scores": model(tb["features"], t_emb, tb["scene"]).numpy()}
    model.train()
    t_region = model.region_scores(tb["features"], t_emb, tb["scene"])
    out["train loss"] = torch_biam.ranking_loss(
        torch.topk(t_region, k, dim=1)[0].mean(dim=1), tb["labels"]).item()
    if dtype == torch.float32:
      own_idx = top_k_indices(t_region.detach().numpy(), k)
      flips = int(np.sum(np.any(np.sort(own_idx, 1) != np.sort(ours_idx, 1), axis=1)))
    t_scores = torch.gather(t_region, 1, torch.tensor(ours_idx)).mean(dim=1)
    torch_biam.ranking_loss(t_scores, tb["labels"]).backward()
    out.update({f"grad {n}": g for n, g in torch_biam.flax_layout_grads(model, params).items()})
    theirs[dtype] = out

  rows = []
  for what in ["eval scores", "train loss"] + [f"grad {n}" for n in CHECKED_GRADS]:
    t32, t64 = theirs[torch.float32][what], theirs[torch.float64][what]
    grad = what.startswith("grad")
    err = norm_error if grad else relative_error
    e32, e64, torch_err = err(ours[what], t32), err(ours[what], t64), err(t32, t64)
    rows.append((what, e32, e64, torch_err, e64 <= GRAD_TOL if grad else e32 <= CHECK_TOL))
  return rows, flips


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Best-of-``repeats`` float32 GFLOP/s of an n^3 matmul in jnp and in torch."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
  out = {}
  f = jax.jit(jnp.matmul)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.tensor(a), torch.tensor(b)
  runs = {"jnp": lambda: f(ja, jb).block_until_ready(), "torch": lambda: torch.mm(ta, tb)}
  for name, run in runs.items():
    run()
    best = min(_timed(run) for _ in range(repeats))
    out[name] = 2 * n ** 3 / best / 1e9
  return out


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32, help="batch size (images per step)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per framework")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per framework")
  parser.add_argument("--threads", type=int, default=0,
                      help="cores/threads for both frameworks (0: all available)")
  args = parser.parse_args()
  threads = pin_threads(args.threads)

  config = bench_config("biam", NUS_WIDE, args.batch, "float32")
  meta = bench_meta(NUS_WIDE)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  trainer = step_lib.Trainer(config, meta, mesh, steps_per_epoch=1000)
  state = trainer.init_state()
  params, model_state = jax.device_get((state.params, state.model_state))
  emb = np.asarray(trainer.emb_seen)
  rng = np.random.default_rng(0)
  host_batches = [random_batch(NUS_WIDE, args.batch, rng) for _ in range(2)]

  # 1. equality on shared weights
  checks, flips = check_equal(trainer, params, model_state, host_batches[0], emb)
  print(f"equality check, ours vs torch on the same weights, batch {args.batch}: scores and "
        f"loss max|diff| / max|ref| (ok: <= {CHECK_TOL:.0e} vs torch32); gradients "
        f"||diff|| / ||ref|| (ok: <= {GRAD_TOL:.0e} vs torch64: float32 ReLU kinks give "
        "~1e-3); loss and gradients with dropout off and, for torch, our top-"
        f"{config.model.top_k} regions (own float32 selections differ at near-ties for "
        f"{flips} of {args.batch * emb.shape[0]} (image, label) pairs)")
  header = ("", "ours-torch32", "ours-torch64", "torch32-torch64")
  print("  " + "  ".join(h.rjust(16) if i else h.ljust(40) for i, h in enumerate(header)))
  for what, e32, e64, torch_err, ok in checks:
    print(f"  {what.ljust(40)}  {e32:16.1e}  {e64:16.1e}  {torch_err:16.1e}  "
          f"{'ok' if ok else 'MISMATCH'}")
  if not all(row[-1] for row in checks):
    raise SystemExit("ours and torch disagree beyond the tolerance: not timing")

  # 2. timings: ours (compiled Trainer step) and torch eager, same process and cores
  batches = [shd.host_to_global(b, trainer.batch_sharding) for b in host_batches]
  emb_dev = jax.device_put(trainer.emb_seen, trainer.repl)
  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, batches[0], emb_dev).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  model = torch_model(config, meta, dropout=True)
  torch_biam.load_from_flax(model, params, model_state)
  opt = torch_biam.make_optimizer(model, lr=config.optimizer.lr,
                                  betas=(config.optimizer.b1, config.optimizer.b2),
                                  eps=config.optimizer.eps,
                                  weight_decay=config.optimizer.weight_decay)
  t_batches, t_emb = [to_torch(b) for b in host_batches], torch.tensor(emb)
  holder = {"state": state}

  def jax_step(i):
    holder["state"], metrics = compiled(holder["state"], batches[i % 2], emb_dev)
    jax.block_until_ready((holder["state"], metrics))

  def torch_step(i):
    torch_biam.train_step(model, opt, t_batches[i % 2], t_emb).item()

  steps = {"JAX (jit, Trainer step)": jax_step, "PyTorch eager": torch_step}
  for i in range(args.warmup):
    for fn in steps.values():
      fn(i)
  times = {name: [] for name in steps}
  for i in range(args.steps):  # interleaved; the order alternates every step
    for name in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
      times[name].append(_timed(lambda: steps[name](i)))

  # 3. peak and table
  peaks = matmul_peak()
  peak = max(peaks.values())
  print(f"\nBiAM train step, NUS-WIDE shapes (196x512 regions, 925 seen labels, 4096-d "
        f"scene), batch {args.batch}, CPU: {platform.processor() or platform.machine()}, "
        f"{threads} threads, torch {torch.__version__}, jax {jax.__version__}")
  print(f"  XLA compile {compile_s:.1f} s; {flops / args.batch / 1e9:.2f} GFLOP/image "
        f"(XLA cost analysis of our step, used for both); float32 matmul 2048^3 peak: "
        f"jnp {peaks['jnp']:.1f}, torch {peaks['torch']:.1f} GFLOP/s (peak = the larger)")
  print(f"  {args.steps} interleaved steps each after {args.warmup} warm-up; s/step is the "
        "median (mean in brackets)")
  header = ("framework", "s/step", "images/s", "GFLOP/s", "% of peak")
  table = []
  for name, ts in times.items():
    med = statistics.median(ts)
    table.append((name, f"{med:.3f} ({statistics.mean(ts):.3f})", f"{args.batch / med:.1f}",
                  f"{flops / med / 1e9:.1f}", f"{100 * flops / med / 1e9 / peak:.1f}"))
  widths = [max(len(r[c]) for r in table + [header]) for c in range(len(header))]
  for row in [header] + table:
    print("  " + "  ".join(v.ljust(w) if c == 0 else v.rjust(w)
                           for c, (v, w) in enumerate(zip(row, widths))))
  jax_s, torch_s = (statistics.median(ts) for ts in times.values())
  print(f"  speed-up of JAX over PyTorch eager (torch s/step / JAX s/step): "
        f"{torch_s / jax_s:.2f}x")


if __name__ == "__main__":
  main()
