"""``data.embedding=clip``: label names -> template-averaged CLIP text embeddings (against a
per-prompt loop), stored once with the dataset and checked on reuse (tiny random CLIP in the
OpenAI layout, a synthetic BPE vocabulary). Models trained on them: tests/test_clip_extract.py
(NUS-WIDE on CLIP tokens) and tests/test_multilabel_folder.py."""

import types
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import clip_reference as ref
from mlzsl_jax.backbones import clip as clip_lib
from mlzsl_jax.backbones import clip_text, clip_tokenizer, clip_weights, safetensors_io
from mlzsl_jax.data import clip_labels
from mlzsl_jax.data.source import DatasetMeta

SPEC = clip_lib.ClipSpec(clip_lib.VisionSpec(width=64, layers=1, heads=2, patch=8,
                                             image_size=16),
                         clip_lib.TextSpec(width=64, layers=2, heads=2), embed_dim=24)


def write_weights(folder: Path, seed: int) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "clip.safetensors"
  safetensors_io.write_safetensors(path, ref.random_state_dict(SPEC, seed=seed))
  ref.write_synthetic_vocab(folder / clip_tokenizer.OPEN_CLIP_VOCAB)  # found beside it
  return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  return write_weights(tmp_path_factory.mktemp("clip_a"), seed=0)


def loop_reference(names, model, tokenizer, templates):
  """One prompt at a time: normalise each, average over templates, normalise."""
  out = []
  for name in names:
    total = np.zeros(SPEC.embed_dim)
    for template in templates:
      ids = tokenizer.tokenize([template.format(name)])
      vec = np.asarray(model.encode_text(jnp.asarray(ids)), np.float64)[0]
      total += vec / np.linalg.norm(vec)
    mean = total / len(templates)
    out.append(mean / np.linalg.norm(mean))
  return np.array(out)


@pytest.mark.parametrize("template_set", ["ensemble", "mkt"])
def test_label_embeddings_match_a_per_prompt_loop(weights, template_set):
  model = clip_weights.load_clip(weights)
  tokenizer = clip_tokenizer.load_tokenizer(str(weights))
  names = ["sky", "scuba diving", "Dame’s rocket", "a very long label " * 6]
  got = clip_text.label_embeddings(names, model, tokenizer, template_set, batch_size=3)
  want = loop_reference(names, model, tokenizer, clip_text.templates(template_set))
  assert got.shape == (4, 24) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if template_set == "mkt":
    assert clip_text.templates("mkt") == ("There is a {} in the scene",)


def test_stored_once_then_checked(weights, tmp_path):
  names = ("cat", "dog", "boat")
  meta = DatasetMeta(name="toy", label_names=names, embeddings={}, grid_shape=(1, 1),
                     feature_dim=1, scene_dim=0, num_examples={})
  config = ml_collections.ConfigDict({"name": "toy", "data_dir": str(tmp_path),
                                      "embedding": "clip", "clip_weights": str(weights),
                                      "clip_vocab": "", "clip_templates": "mkt"})
  first = clip_labels.add_to_source(types.SimpleNamespace(meta=meta), config)
  stored = tmp_path / "toy" / "clip_label_embeddings" / "mkt.npz"
  assert stored.exists() and first.meta.embedding("clip").shape == (3, 24)
  config.clip_weights = ""  # later runs need no weights
  again = clip_labels.add_to_source(types.SimpleNamespace(meta=meta), config)
  np.testing.assert_array_equal(again.meta.embedding("clip"), first.meta.embedding("clip"))
  config.clip_weights = str(write_weights(tmp_path / "other", seed=1))
  with pytest.raises(ValueError, match=r"mkt.npz: computed with CLIP weights of SHA-256"):
    clip_labels.add_to_source(types.SimpleNamespace(meta=meta), config)
  other = DatasetMeta(**{**meta.__dict__, "label_names": ("cat", "dog")})
  with pytest.raises(ValueError, match=r"stored for a different label list"):
    clip_labels.add_to_source(types.SimpleNamespace(meta=other), config)
  config.clip_templates = "ensemble"
  config.clip_weights = ""
  with pytest.raises(ValueError, match=r"ensemble.npz does not exist: give "
                     r"data.clip_weights=FILE once"):
    clip_labels.add_to_source(types.SimpleNamespace(meta=meta), config)
  config.clip_templates = "ensembel"
  with pytest.raises(ValueError, match=r"data.clip_templates='ensembel': expected one of"):
    clip_labels.add_to_source(types.SimpleNamespace(meta=meta), config)
