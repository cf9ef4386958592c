"""Figures: PR curve and region-map geometry against loop references; the plots command's PNGs
and TensorBoard images; a trained BiAM's region-score peaks land on the digits' cells."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from mlzsl_jax import workdir as wd
from mlzsl_jax import evaluate, hooks, plots, restore, train
from mlzsl_jax.sweep import apply_overrides, load_config_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pr_curve_ref(scores, labels):
  """Loop reference: one (precision, recall) point per distinct threshold, high to low."""
  pairs = [(scores[i, j], labels[i, j] == 1) for i in range(scores.shape[0])
           for j in range(scores.shape[1]) if labels[i, j] != 0]
  total_pos = sum(p for _, p in pairs)
  out = []
  for t in sorted({s for s, _ in pairs}, reverse=True):
    predicted = [p for s, p in pairs if s >= t]
    tp = sum(predicted)
    out.append((tp / len(predicted), tp / total_pos))
  return np.array(out)


@pytest.mark.parametrize("seed", range(3))
def test_micro_pr_curve_matches_loop_reference(seed):
  rng = np.random.default_rng(seed)
  scores = np.round(rng.normal(size=(9, 5)), 1)  # ties
  labels = rng.choice([-1, 0, 1], size=(9, 5), p=[0.6, 0.1, 0.3])
  precision, recall = plots.micro_pr_curve(scores, labels)
  ref = pr_curve_ref(scores, labels)
  np.testing.assert_allclose(np.stack([precision, recall], 1), ref, atol=1e-12)


def test_region_geometry_matches_loop_reference():
  rng = np.random.default_rng(0)
  grid, cells, image = (6, 6), (3, 3), (24, 24)
  for _ in range(20):
    region_map = rng.normal(size=36)
    pixels = plots.region_map_to_pixels(region_map, grid, image)
    for y in range(24):
      for x in range(24):
        assert pixels[y, x] == region_map[(y // 4) * 6 + x // 4]
    # Loop reference: the cell holding the arg-max region's pixels.
    r = int(np.argmax(region_map))
    ys, xs = np.nonzero(plots.region_map_to_pixels(np.arange(36) == r, grid, image))
    want = {(y // 8) * 3 + x // 8 for y, x in zip(ys, xs)}
    assert want == {plots.peak_cell(region_map, grid, cells)}
  with pytest.raises(ValueError, match="whole number"):
    plots.region_map_to_pixels(np.zeros(36), grid, (25, 24))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A small BiAM trained on digits_mosaic (seen digits localise after ~1 minute of CPU)."""
  module, _ = load_config_module(os.path.join(ROOT, "configs", "biam_digits.py"))
  tmp = tmp_path_factory.mktemp("plots")
  config = apply_overrides(module.get_config(), {
      "data.data_dir": str(tmp / "tfds"), "data.num_train": 2000, "data.num_test": 96,
      "train.num_epochs": 4, "train.log_every_steps": 1000, "eval.batch_size": 48,
      "eval.chance_seeds": 1, "model.channels": 32, "model.out_dim": 64})
  workdir = str(tmp / "work")
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_plots_command_writes_pngs_and_tensorboard_images(trained):
  config, workdir = trained
  paths = plots.plot_workdir(config, workdir, examples=[0, 3], localize=20)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["per_label_ap.png", "pr_curves.png", "region_map_0.png",
                   "region_map_3.png"]
  for path in paths:
    assert os.path.getsize(path) > 5000
    with Image.open(path) as im:
      assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 250
  import tensorflow as tf
  tags = set()
  for event_file in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      tags |= {v.tag for v in event.summary.value}
  assert {"plots/pr_curves", "plots/per_label_ap", "plots/region_map_0"} <= tags
  loc = json.load(open(os.path.join(workdir, "plots", "localization.json")))
  assert loc["images"] == 20 and loc["seen"]["present"] > 20
  with pytest.raises(ValueError, match="split 'test' has 96 examples"):
    plots.plot_workdir(config, workdir, examples=[96])


def test_region_score_peak_of_a_present_seen_digit_lies_on_its_cell(trained):
  config, workdir = trained
  source, trainer, state, _ = restore.restore(config, workdir, "latest")
  examples = plots.test_examples(source, "test", range(48))
  seen = list(config.data.seen_labels)
  maps = plots.example_region_maps(trainer, source.meta, state, examples, seen)
  hit_table = plots.peak_hits(maps, examples, seen, source.meta.grid_shape,
                              tuple(config.data.cells))
  hits, total = 0, 0
  for ex, m in zip(examples, maps):  # loop reference of peak_hits, then the claim itself
    for j, digit in enumerate(seen):
      if ex["labels"][digit] == 1:
        cell = plots.peak_cell(m[:, j], source.meta.grid_shape, tuple(config.data.cells))
        hits += int(ex["cell_digits"][cell] == digit)
        total += 1
  assert int((hit_table == 1).sum()) == hits and int((hit_table >= 0).sum()) == total
  # A random cell would hold the digit ~1/9 of the time; the trained model's peak nearly
  # always does (the demo model: 181 of 185).
  assert total > 50 and hits / total >= 0.8, (hits, total)


def test_restoring_with_another_config_names_the_differing_fields(trained):
  config, workdir = trained
  assert wd.config_differences(config, workdir) == []
  other = apply_overrides(config, {"model.top_k": 2, "data.unseen_labels": (1, 2, 8)})
  assert wd.config_differences(other, workdir) == [
      "model.top_k: trained with 4, now 2",
      "data.unseen_labels: trained with [1, 2, 7], now [1, 2, 8]"]


@pytest.mark.parametrize("name", ["biam", "lesa", "attention_per_label"])
def test_region_maps_of_each_region_model_match_its_outputs(name):
  """BiAM: its region scores; one attention per label: that label's attention; LESA: the
  attention of the module with the label's highest module score (loops over the outputs)."""
  import importlib

  import jax.numpy as jnp
  from flax import nnx

  from mlzsl_jax.models.registry import get_model_builder
  module = importlib.import_module(f"mlzsl_jax.models.{name}")
  cfg = module.model_config()
  for field, value in (("channels", 8), ("heads", 2), ("out_dim", 6), ("top_k", 2),
                       ("conv_channels", 8), ("num_modules", 3),
                       ("scene_source", "mean_region")):
    if field in cfg:
      cfg[field] = value
  model = get_model_builder(name)(cfg, feature_dim=6, emb_dim=5, grid_shape=(3, 4),
                                  scene_dim=0, dtype=jnp.float32, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.normal(size=(2, 12, 6)).astype(np.float32))
  emb = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
  maps = np.asarray(hooks.REGION_MAPS.get(name)(model, feats, emb, None))
  out = {k: np.asarray(v) for k, v in model(feats, emb, None, train=False).items()}
  assert maps.shape == (2, 12, 4)
  for b in range(2):
    for lab in range(4):
      if name == "biam":
        want = out["region_scores"][b, :, lab]
      elif name == "attention_per_label":
        want = out["attention"][b, lab, :]
      else:
        best = max(range(out["module_scores"].shape[1]),
                   key=lambda t: out["module_scores"][b, t, lab])
        want = out["attention"][b, best, :]
      np.testing.assert_allclose(maps[b, :, lab], want, rtol=1e-5, atol=1e-6)
