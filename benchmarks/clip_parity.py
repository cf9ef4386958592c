"""Our CLIP towers at the full ViT-B/16 size against the torch references, with timings.

``tests/test_clip_towers.py`` checks the towers and the weight loader at tiny sizes; this
script does the same at the released OpenAI ViT-B/16 size (embed 512; vision width 768,
12 layers, 12 heads, patch 16, image 224; text width 512, 12 layers, 8 heads, context 77;
QuickGELU), random weights, nothing downloaded, in both released layouts:

  - open_clip's ``CLIP`` (the OpenAI / open_clip state-dict layout), its numpy state dict
    written as ``.safetensors`` with ``mlzsl_jax.backbones.safetensors_io``;
  - Hugging Face ``transformers.CLIPModel`` (vision 768 / 12 layers / 12 heads, text
    512 / 12 / 8, projection 512, quick_gelu), written with ``save_pretrained``.

The torch models and their outputs come from ``tests/clip_reference.py`` (the references the
tests use): the script puts the repository's ``tests/`` folder on ``sys.path`` to import it.
Each file is loaded with ``clip_weights.load_clip`` in float32 and with
``dtype=jnp.bfloat16`` (parameters stay float32) and run jitted (the model's state is an
argument of the jitted function, not a constant) on ``--batch`` random NHWC images and
``--texts`` random token rows. Per layout x dtype it prints one table row:

  - class / tokens / text: max |ours - ref| / max |ref| against the float32 torch output
    (the bfloat16 rows against the same float32 reference);
  - load (s): ``load_clip`` of the file (read, convert, place);
  - compile (s): the first call of the jitted image tower (trace + compile + one run);
  - images/s, texts/s: steady state of the jitted image / text tower at ``--batch`` /
    ``--texts``, best of ``--repeats`` calls after the first;
  - torch images/s, texts/s: the reference's eager forward (image tower: class + every
    patch token through the projection; text tower), best of ``--repeats``, same threads.

Everything is written to a temporary folder that is removed at the end; nothing goes into
the repository. Exit status 1 when a float32 error exceeds 1e-5 (a correctness check; no
timing is checked), else 0. Also prints the process's peak RSS. ``--size tiny`` runs the
tests' tiny widths (seconds) to check the script itself.

Needs torch, transformers and open_clip_torch (``make setup-torch``; not project
dependencies). Full size: ~70 s and ~2.8 GB peak RSS on the 2-core CPU. On a shared machine
the rates vary up to 2x between runs (best-of-N does not hide another process holding a
core for seconds); compare ours and torch within one run, and rerun.

  .venv/bin/python benchmarks/clip_parity.py [--size full|tiny] [--batch 4] [--texts 8]
      [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))  # clip_reference: the tests' torch references
sys.dont_write_bytecode = True  # no __pycache__ in tests/ (nothing is written to the repo)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mlzsl_jax.backbones import clip_weights, safetensors_io  # noqa: E402
from threads import pin_threads  # noqa: E402  (benchmarks/threads.py)

F32_TOL = 1e-5  # max |ours - ref| / max |ref|, float32 (as tests/test_clip_towers.py)

# Architectures, in the keyword arguments of clip_reference's builders.
SIZES = {
    "full": {  # OpenAI ViT-B/16
        "open_clip": dict(embed_dim=512, vision_width=768, vision_layers=12, patch=16,
                          image_size=224, text_width=512, text_layers=12, text_heads=8),
        "hf": dict(embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12,
                   patch=16, image_size=224, text_width=512, text_layers=12, text_heads=8),
    },
    "tiny": {  # tests/test_clip_towers.py's
        "open_clip": dict(embed_dim=48, vision_width=128, vision_layers=2, patch=8,
                          image_size=32, text_width=128, text_layers=2, text_heads=2),
        "hf": dict(embed_dim=40, vision_width=64, vision_layers=2, vision_heads=4, patch=8,
                   image_size=32, text_width=64, text_layers=2, text_heads=2),
    },
}


def relative_error(ours, ref) -> float:
  """max |ours - ref| / max |ref|."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def best_time(fn, repeats: int) -> float:
  """Best wall time of ``repeats`` calls of ``fn`` (which blocks until done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


# ------------------------------------------------------------------------------ torch side


def build_reference(layout: str, arch: dict, folder: str):
  """(torch model, weight path) of ``layout`` with random weights, saved under ``folder``."""
  import clip_reference as ref  # pylint: disable=import-outside-toplevel
  if layout == "open_clip":
    model = ref.open_clip_model(**arch)
    path = os.path.join(folder, "open_clip_model.safetensors")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    safetensors_io.write_safetensors(path, state)
    del state
  else:
    model = ref.hf_clip_model(**arch)
    path = os.path.join(folder, "hf")
    model.save_pretrained(path)
  return model, path


def torch_image_forward(layout: str, model):
  """pixels [B, 3, S, S] -> (class, tokens): the reference's image tower, as our
  ``encode_image`` (every token through the final LayerNorm and the projection)."""
  import torch  # pylint: disable=import-outside-toplevel

  def open_clip_forward(pixels):
    model.visual.output_tokens = True
    pooled, tokens = model.visual(pixels)
    model.visual.output_tokens = False
    return pooled, tokens @ model.visual.proj

  def hf_forward(pixels):
    hidden = model.vision_model(pixel_values=pixels).last_hidden_state
    projected = model.visual_projection(model.vision_model.post_layernorm(hidden))
    return projected[:, 0], projected[:, 1:]

  forward = open_clip_forward if layout == "open_clip" else hf_forward
  return torch.no_grad()(forward)


def torch_text_forward(layout: str, model):
  import torch  # pylint: disable=import-outside-toplevel

  def open_clip_forward(ids):
    return model.encode_text(ids)

  def hf_forward(ids):
    return model.text_projection(model.text_model(input_ids=ids).pooler_output)

  return torch.no_grad()(open_clip_forward if layout == "open_clip" else hf_forward)


def reference_side(layout: str, model, images: np.ndarray, ids: np.ndarray, repeats: int
                   ) -> tuple[dict[str, np.ndarray], float, float]:
  """(the reference outputs of tests/clip_reference.py, torch images/s, torch texts/s)."""
  import torch  # pylint: disable=import-outside-toplevel
  import clip_reference as ref  # pylint: disable=import-outside-toplevel
  outputs = (ref.open_clip_outputs if layout == "open_clip" else ref.hf_outputs)(
      model, images, ids)
  pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  tokens = torch.from_numpy(ids.astype(np.int64))
  image_fn, text_fn = torch_image_forward(layout, model), torch_text_forward(layout, model)
  image_fn(pixels)  # warm-up (the outputs above already ran once; one more is cheap)
  image_s = best_time(lambda: image_fn(pixels), repeats)
  text_fn(tokens)
  text_s = best_time(lambda: text_fn(tokens), repeats)
  return outputs, len(images) / image_s, len(ids) / text_s


# ------------------------------------------------------------------------------ our side


def ours_side(path: str, dtype, images: np.ndarray, ids: np.ndarray, want, repeats: int
              ) -> dict[str, float]:
  """load_clip + jitted towers: errors against ``want`` and the timings of one row."""
  start = time.perf_counter()
  model = clip_weights.load_clip(path, dtype=dtype)
  jax.block_until_ready(nnx.state(model))
  load_s = time.perf_counter() - start
  graphdef, state = nnx.split(model)
  del model

  @jax.jit
  def image_tower(state, x):
    return nnx.merge(graphdef, state).encode_image(x)

  @jax.jit
  def text_tower(state, t):
    return nnx.merge(graphdef, state).encode_text(t)

  x, t = jnp.asarray(images), jnp.asarray(ids.astype(np.int32))
  start = time.perf_counter()
  image_out = jax.block_until_ready(image_tower(state, x))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  text_out = jax.block_until_ready(text_tower(state, t))
  text_compile_s = time.perf_counter() - start
  image_s = best_time(lambda: jax.block_until_ready(image_tower(state, x)), repeats)
  text_s = best_time(lambda: jax.block_until_ready(text_tower(state, t)), repeats)
  if image_out["tokens"].shape != want["tokens"].shape:
    raise SystemExit(f"{path}: tokens {image_out['tokens'].shape}, reference "
                     f"{want['tokens'].shape}")
  return {"class": relative_error(image_out["class"], want["class"]),
          "tokens": relative_error(image_out["tokens"], want["tokens"]),
          "text": relative_error(text_out, want["text"]),
          "load_s": load_s, "compile_s": compile_s, "text_compile_s": text_compile_s,
          "images_per_s": len(images) / image_s, "texts_per_s": len(ids) / text_s}


# ------------------------------------------------------------------------------ main


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="full",
                      help="full: OpenAI ViT-B/16; tiny: the tests' widths (smoke run)")
  parser.add_argument("--batch", type=int, default=4, help="images per call")
  parser.add_argument("--texts", type=int, default=8, help="token rows per call")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls (best is kept)")
  parser.add_argument("--layouts", default="open_clip,hf", help="open_clip and/or hf")
  parser.add_argument("--threads", type=int, default=0, help="cores to use (0: all)")
  args = parser.parse_args()
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise SystemExit(f"needs torch, transformers and open_clip_torch (make setup-torch): {e}")
  transformers.utils.logging.disable_progress_bar()  # save_pretrained's shard bar
  threads = pin_threads(args.threads)
  layouts = args.layouts.split(",")

  wall_start = time.perf_counter()
  rng = np.random.RandomState(0)
  arch = SIZES[args.size]
  side = arch["open_clip"]["image_size"]
  images = rng.randn(args.batch, side, side, 3).astype(np.float32)
  import clip_reference as ref  # pylint: disable=import-outside-toplevel
  ids = ref.random_token_ids(rng, args.texts)
  print(f"CLIP towers vs torch references, size {args.size}, {args.batch} images "
        f"{side}x{side}, {args.texts} token rows; JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__}, {threads} threads",
        flush=True)

  rows = []
  folder = tempfile.mkdtemp(prefix="mlzsl_clip_parity_")
  try:
    for layout in layouts:
      start = time.perf_counter()
      model, path = build_reference(layout, arch[layout], folder)
      build_s = time.perf_counter() - start
      want, torch_ips, torch_tps = reference_side(layout, model, images, ids, args.repeats)
      del model
      gc.collect()
      print(f"  {layout}: reference built and saved in {build_s:.1f} s", flush=True)
      for dtype_name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        row = ours_side(path, dtype, images, ids, want, args.repeats)
        row.update(layout=layout, dtype=dtype_name, torch_ips=torch_ips, torch_tps=torch_tps)
        rows.append(row)
        print(f"  {layout} {dtype_name}: done", flush=True)
        gc.collect()
      if os.path.isdir(path):  # free the disk before the next layout
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
  finally:
    shutil.rmtree(folder, ignore_errors=True)

  print("\n| layout | dtype | class | tokens | text | load (s) | compile (s) | images/s | "
        "texts/s | torch images/s | torch texts/s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  failed = []
  for r in rows:
    if r["dtype"] == "float32":
      failed += [f"{r['layout']} {k} {r[k]:.1e}" for k in ("class", "tokens", "text")
                 if not r[k] <= F32_TOL]
    torch_cells = (f"{r['torch_ips']:.2f} | {r['torch_tps']:.1f}" if r["dtype"] == "float32"
                   else "- | -")  # torch runs float32 only
    print(f"| {r['layout']} | {r['dtype']} | {r['class']:.1e} | {r['tokens']:.1e} | "
          f"{r['text']:.1e} | {r['load_s']:.2f} | {r['compile_s']:.1f} "
          f"(text {r['text_compile_s']:.1f}) | {r['images_per_s']:.2f} | "
          f"{r['texts_per_s']:.1f} | {torch_cells} |")
  peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
  print(f"\nerrors: max |ours - torch float32| / max |torch float32|; float32 tolerance "
        f"{F32_TOL:.0e}. Wall time {time.perf_counter() - wall_start:.0f} s, peak RSS "
        f"{peak_gb:.2f} GB.")
  if failed:
    print("FAIL (float32 above tolerance): " + "; ".join(failed))
    return 1
  print("OK: every float32 error within tolerance")
  return 0


if __name__ == "__main__":
  sys.exit(main())
