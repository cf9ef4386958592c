"""Independent torch CLIP references for the parity tests (random weights, nothing
downloaded):

- Hugging Face ``transformers.CLIPModel`` built from a ``CLIPConfig`` (the HF layout);
- open_clip's own ``CLIP`` (the OpenAI / open_clip state-dict layout), from the installed
  ``open_clip_torch`` wheel. Importing ``open_clip`` needs torchvision (not installable next
  to the local torch wheel), so its ``model.py`` is loaded as a submodule of a stand-in
  package, with the one torchvision name it imports (only used by ResNet towers) stubbed.

``make setup-torch`` installs both (pinned); tests skip without them, except where
``MLZSL_REQUIRE_CLIP_REFERENCES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np
import pytest

REQUIRED = os.environ.get("MLZSL_REQUIRE_CLIP_REFERENCES") == "1"


def need(module: str):
  """``pytest.importorskip`` that fails instead of skipping in CI."""
  if REQUIRED:
    return importlib.import_module(module)
  return pytest.importorskip(module)


def open_clip_dir() -> str:
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    if REQUIRED:
      raise ImportError("open_clip_torch is not installed (make setup-torch)")
    pytest.skip("open_clip_torch is not installed (make setup-torch)")
  return list(spec.submodule_search_locations)[0]


def open_clip_model_module():
  """open_clip's ``model.py`` (its ``CLIP`` class), loaded without importing open_clip."""
  name = "_open_clip_reference"
  if f"{name}.model" in sys.modules:
    return sys.modules[f"{name}.model"]
  need("torch")
  folder = open_clip_dir()
  package = types.ModuleType(name)
  package.__path__ = [folder]
  sys.modules[name] = package
  try:  # hf_model.py imports transformers, which probes for torchvision: import it first
    import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pass
  # The one torchvision name utils.py imports, stubbed while model.py loads and removed
  # again (transformers probes for torchvision and must not find a stub).
  stubs = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.ops",
                                            "torchvision.ops.misc")
           if n not in sys.modules}
  if "torchvision.ops.misc" in stubs:
    stubs["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
  sys.modules.update(stubs)
  try:
    spec = importlib.util.spec_from_file_location(f"{name}.model",
                                                  os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
  finally:
    for n in stubs:
      sys.modules.pop(n, None)
  return module


def open_clip_model(*, embed_dim, vision_width, vision_layers, patch, image_size,
                    text_width, text_layers, text_heads, context=77, vocab=49408,
                    quick_gelu=True, seed=0):
  """open_clip ``CLIP`` (OpenAI layout) with random weights, in eval mode, float32."""
  import torch  # pylint: disable=import-outside-toplevel
  module = open_clip_model_module()
  torch.manual_seed(seed)
  model = module.CLIP(
      embed_dim=embed_dim,
      vision_cfg=dict(width=vision_width, layers=vision_layers, patch_size=patch,
                      image_size=image_size, head_width=64),
      text_cfg=dict(width=text_width, layers=text_layers, heads=text_heads,
                    context_length=context, vocab_size=vocab),
      quick_gelu=quick_gelu).eval()
  with torch.no_grad():  # open_clip zero-inits nothing that matters, but make every
    for p in model.parameters():  # parameter non-trivial so a mixed-up key shows
      p.add_(0.02 * torch.randn_like(p))
  return model


def hf_clip_model(*, embed_dim, vision_width, vision_layers, vision_heads, patch, image_size,
                  text_width, text_layers, text_heads, activation="quick_gelu", seed=0):
  """transformers ``CLIPModel`` with random weights, eval mode, float32."""
  torch = need("torch")
  transformers = need("transformers")
  torch.manual_seed(seed)
  config = transformers.CLIPConfig(
      text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width,
                       num_attention_heads=text_heads, num_hidden_layers=text_layers,
                       vocab_size=49408, max_position_embeddings=77, hidden_act=activation),
      vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width,
                         num_attention_heads=vision_heads, num_hidden_layers=vision_layers,
                         image_size=image_size, patch_size=patch, hidden_act=activation),
      projection_dim=embed_dim)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model


def hf_outputs(model, images: np.ndarray, token_ids: np.ndarray) -> dict[str, np.ndarray]:
  """{"class": [B, D], "tokens": [B, N, D], "text": [T, D]} of a HF ``CLIPModel``; tokens =
  every patch through post_layernorm and visual_projection (MKT's patch embedding)."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    hidden = model.vision_model(pixel_values=pixels).last_hidden_state
    projected = model.visual_projection(model.vision_model.post_layernorm(hidden))
    text = model.text_model(input_ids=torch.from_numpy(token_ids.astype(np.int64)))
    text = model.text_projection(text.pooler_output)
  return {"class": projected[:, 0].numpy(), "tokens": projected[:, 1:].numpy(),
          "text": text.numpy()}


def open_clip_outputs(model, images: np.ndarray, token_ids: np.ndarray) -> dict[str, np.ndarray]:
  """The same from open_clip's ``CLIP``: its image embedding, its (ln_post'd) patch tokens
  times ``visual.proj``, its text embedding."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    model.visual.output_tokens = True
    pooled, tokens = model.visual(pixels)
    model.visual.output_tokens = False
    text = model.encode_text(torch.from_numpy(token_ids.astype(np.int64)))
    tokens = tokens @ model.visual.proj
  return {"class": pooled.numpy(), "tokens": tokens.numpy(), "text": text.numpy()}


def random_token_ids(rng: np.random.RandomState, rows: int, context: int = 77) -> np.ndarray:
  """[rows, context] CLIP-like ids: start token, random BPE ids, end token, zero padding."""
  ids = np.zeros((rows, context), np.int64)
  for r in range(rows):
    n = rng.randint(0, context - 1)
    ids[r, 0] = 49406
    ids[r, 1:n + 1] = rng.randint(1, 49406, size=n)
    ids[r, n + 1] = 49407
  return ids


def random_state_dict(spec, layout: str = "openai", seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 tensors under every key, at every shape, that a CLIP release of
  ``spec`` holds in ``layout`` ("openai" / "hf"); no torch needed. Scaled so activations
  stay O(1) through the blocks."""
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(seed)
  out = {}
  for _, keys, _, shapes in clip_weights.conversion_plan(layout, spec):
    for key, shape in zip(keys, shapes):
      fan_in = shape[-1] if len(shape) > 1 else 1
      scale = 0.02 if len(shape) <= 1 else fan_in ** -0.5
      value = rng.randn(*shape) * scale
      if key.endswith(("ln_1.weight", "ln_2.weight", "layer_norm1.weight",
                       "layer_norm2.weight", "ln_pre.weight", "ln_post.weight",
                       "ln_final.weight", "pre_layrnorm.weight", "post_layernorm.weight",
                       "final_layer_norm.weight")):
        value = 1 + value
      out[key] = np.asarray(value, np.float32)
  out["logit_scale"] = np.asarray(np.log(100.0), np.float32)
  return out


def write_synthetic_vocab(path) -> None:
  """A BPE vocabulary file in open_clip's .gz format with made-up merges (pairs of byte
  symbols), so tokenizer-dependent code runs without the real vocabulary: 49,408 ids, the
  real special tokens, nonsense but deterministic word pieces."""
  import gzip  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip_tokenizer  # pylint: disable=import-outside-toplevel
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  symbols = [chr(c) for c in printable] + [chr(256 + n) for n in range(256 - len(printable))]
  merges = [f"{a} {b}" for a in symbols for b in symbols][:clip_tokenizer.NUM_MERGES]
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("#version: synthetic\n" + "\n".join(merges) + "\n")
