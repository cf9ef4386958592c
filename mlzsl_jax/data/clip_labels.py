"""``data.embedding=clip``: CLIP text embeddings of a dataset's label names, computed once
and stored with the dataset, for any dataset.

  data.embedding      = "clip" (or a list including it, e.g. "clip,glove")
  data.clip_weights   = a CLIP weight file / folder (``mlzsl_jax.backbones.clip_weights``):
                        needed the first time (at ``prepare``); afterwards only to check
  data.clip_vocab     = the BPE vocabulary (default: found beside the weights, or open_clip's)
  data.clip_templates = "ensemble" (default) | "mkt" | "name" (``backbones.clip_text``)

The embeddings [labels, D] (rows L2-normalised) are written next to the prepared dataset as
``<dataset dir>/clip_label_embeddings/<templates>.npz`` (atomic; no pickle) with the label
names, the template set and the weight file's size and SHA-256. Later runs read that file;
a different label list, or a different weight file given as ``data.clip_weights``, is an
error naming the file, never a silent mix.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

SOURCE = "clip"
FOLDER = "clip_label_embeddings"


def wanted(data_config) -> bool:
  """Whether ``data.embedding`` lists the CLIP source."""
  sources = [s.strip() for s in str(data_config.get("embedding", "")).split(",")]
  return SOURCE in sources


def _dataset_dir(source, data_config) -> str:
  builder = getattr(source, "builder", None)
  if builder is not None and getattr(builder, "data_dir", None):
    return os.fspath(builder.data_dir)
  root = data_config.get("data_dir", "") or os.path.join("~", "tensorflow_datasets")
  return os.path.join(os.path.expanduser(root), data_config.name)


def _fingerprint(path: str) -> tuple[int, str]:
  from mlzsl_jax.data import tfds_common  # pylint: disable=import-outside-toplevel
  return os.path.getsize(path), tfds_common.sha256_file(path)


def _weights_file(weights: str) -> str:
  from mlzsl_jax.backbones import clip_weights  # pylint: disable=import-outside-toplevel
  return clip_weights.read_weights(weights).path if os.path.isdir(weights) else weights


def compute(label_names, weights: str, vocab: str = "", template_set: str = "ensemble"
            ) -> np.ndarray:
  """float32 [labels, D] (module docstring), from the weight file; progress on stdout."""
  from mlzsl_jax.backbones import clip_text, clip_tokenizer, clip_weights  # pylint: disable=import-outside-toplevel
  clip_text.templates(template_set)  # a typo fails before the weights are read
  model = clip_weights.load_clip(weights)
  tokenizer = clip_tokenizer.load_tokenizer(weights, vocab or None)
  print(f"clip label embeddings: {len(label_names)} labels x "
        f"{len(clip_text.templates(template_set))} template(s) ({template_set}) with "
        f"{weights}", flush=True)
  return clip_text.label_embeddings(list(label_names), model, tokenizer, template_set)


def load_or_compute(label_names, folder: str, data_config) -> np.ndarray:
  """The stored embeddings of ``label_names`` under ``folder`` (computed and stored first
  when absent and ``data.clip_weights`` is given)."""
  template_set = str(data_config.get("clip_templates", "ensemble") or "ensemble")
  weights = str(data_config.get("clip_weights", "") or "")
  vocab = str(data_config.get("clip_vocab", "") or "")
  from mlzsl_jax.backbones import clip_text  # pylint: disable=import-outside-toplevel
  clip_text.templates(template_set)
  path = os.path.join(folder, FOLDER, f"{template_set}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as stored:
      names = [str(n) for n in stored["label_names"]]
      embeddings = np.asarray(stored["embeddings"], np.float32)
      sha = str(stored["weights_sha256"])
    if names != [str(n) for n in label_names]:
      raise ValueError(f"{path}: stored for a different label list ({len(names)} labels) "
                       f"than the dataset's ({len(label_names)}); delete it to recompute")
    if weights:
      _, got = _fingerprint(_weights_file(weights))
      if got != sha:
        raise ValueError(f"{path}: computed with CLIP weights of SHA-256 {sha[:12]}..., "
                         f"data.clip_weights={weights!r} is {got[:12]}...; delete the file "
                         "to recompute with these weights")
    return embeddings
  if not weights:
    raise ValueError(f"config field data.embedding lists 'clip' but {path} does not exist: "
                     "give data.clip_weights=FILE once (at prepare) to compute it")
  file = _weights_file(weights)
  embeddings = compute(label_names, weights, vocab, template_set)
  size, sha = _fingerprint(file)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, embeddings=embeddings, label_names=np.array([str(n) for n in label_names]),
           templates=np.array(clip_text.templates(template_set)),
           weights_sha256=np.array(sha), weights_size=np.array(size),
           weights_path=np.array(os.path.abspath(file)))
  os.replace(tmp, path)
  print(f"clip label embeddings: [{embeddings.shape[0]}, {embeddings.shape[1]}] -> {path}",
        flush=True)
  return embeddings


def add_to_source(source: Any, data_config) -> Any:
  """``source`` with ``meta.embeddings["clip"]`` when ``data.embedding`` asks for it (and the
  dataset does not store its own)."""
  if not wanted(data_config) or SOURCE in source.meta.embeddings:
    return source
  embeddings = load_or_compute(source.meta.label_names, _dataset_dir(source, data_config),
                               data_config)
  source.meta = dataclasses.replace(source.meta,
                                    embeddings={**source.meta.embeddings, SOURCE: embeddings})
  return source


def _register_name_embedder() -> None:
  from mlzsl_jax import hooks  # pylint: disable=import-outside-toplevel

  @hooks.NAME_EMBEDDERS.register("*:clip")
  def embed_clip_names(names, config) -> np.ndarray:
    """Any text: the CLIP text tower of data.clip_weights under data.clip_templates, as the
    dataset's label names were embedded."""
    from mlzsl_jax.backbones import clip_text, clip_tokenizer, clip_weights  # pylint: disable=import-outside-toplevel
    weights = clip_weights.weights_from_config(config)
    tokenizer = clip_tokenizer.load_tokenizer(weights, config.data.get("clip_vocab", "") or None)
    return clip_text.label_embeddings(list(names), clip_weights.cached_clip(weights), tokenizer,
                                      config.data.get("clip_templates", "ensemble"))


_register_name_embedder()
