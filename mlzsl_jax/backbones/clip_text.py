"""Label names -> CLIP text embeddings under a set of prompt templates.

As CLIP's zero-shot classifier is built: for each template, every label name is put in the
template, tokenized, run through the text tower and L2-normalised; the per-template vectors
of a label are averaged and the mean is L2-normalised again. With one template (MKT's "There
is a {} in the scene") that is just the normalised embedding of that one prompt.

Template sets (``TEMPLATE_SETS``, config field ``data.clip_templates``):
  "ensemble"  eight everyday photo prompts (ours; in the spirit of CLIP's ImageNet ensemble)
  "mkt"       MKT's single prompt
  "name"      the bare label name
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "ensemble": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of many {}.",
        "a close-up photo of a {}.",
        "a blurry photo of a {}.",
        "a bright photo of the {}.",
        "a picture showing a {}.",
        "an image that contains {}.",
    ),
    "mkt": ("There is a {} in the scene",),
    "name": ("{}",),
}


def templates(name: str) -> tuple[str, ...]:
  """The template set ``name``; ValueError naming the config field otherwise."""
  if name not in TEMPLATE_SETS:
    raise ValueError(f"config field data.clip_templates={name!r}: expected one of "
                     f"{sorted(TEMPLATE_SETS)}")
  return TEMPLATE_SETS[name]


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed_texts(texts: Sequence[str], model, tokenizer, batch_size: int = 256) -> np.ndarray:
  """texts -> float32 [len(texts), D], the text tower's projected output (not normalised).
  Rows are padded to ``batch_size`` so one compiled shape serves every batch."""
  import jax  # pylint: disable=import-outside-toplevel
  forward = jax.jit(lambda ids: model.encode_text(ids))
  context = model.spec.text.context
  out = []
  for start in range(0, len(texts), batch_size):
    chunk = list(texts[start:start + batch_size])
    ids = tokenizer.tokenize(chunk, context_length=context)
    padded = np.zeros((batch_size, context), ids.dtype)
    padded[:len(chunk)] = ids  # padding rows (all zeros) are computed and dropped
    out.append(np.asarray(forward(padded), np.float32)[:len(chunk)])
  width = model.spec.embed_dim
  return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def label_embeddings(label_names: Sequence[str], model, tokenizer,
                     template_set: str = "ensemble", batch_size: int = 256) -> np.ndarray:
  """float32 [labels, D], rows L2-normalised: the template-averaged CLIP text embedding of
  each label name (module docstring)."""
  chosen = templates(template_set)
  total = np.zeros((len(label_names), model.spec.embed_dim), np.float64)
  for template in chosen:
    prompts = [template.format(name) for name in label_names]
    total += _normalise(embed_texts(prompts, model, tokenizer, batch_size))
  return _normalise(total / len(chosen)).astype(np.float32)
