"""Tests of mlzsl_jax.metrics_device: equal to mlzsl_jax.metrics and to loop references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sklearn.metrics import average_precision_score

from mlzsl_jax import metrics
from mlzsl_jax import metrics_device as md

# One shape for every case (few compiles): 64 rows (divisible by 8 devices), 19 labels of which
# the last 5 are unseen; label_block 8 -> 3 GZSL blocks, the last one padded.
N, L, U = 64, 19, 5
SEEN, UNSEEN = list(range(L - U)), list(range(L - U, L))
KS = (1, 3, 5)
BLOCK = 8
TOL = 1e-5

# ----------------------------------------------------------------------------- references


def ref_ap_label(scores: np.ndarray, states: np.ndarray) -> float:
  """AP of one label by its definition (sklearn's): unknown (0) dropped; over the distinct
  scores t, descending, AP = sum (R(t) - R(previous t)) * P(t), where P(t), R(t) are the
  precision and recall of predicting "positive" for every score >= t; 0 with no positive."""
  kept = [(s, y) for s, y in zip(scores, states) if y != 0]
  num_pos = sum(1 for _, y in kept if y == 1)
  if num_pos == 0:
    return 0.0
  ap, prev_recall = 0.0, 0.0
  for t in sorted({s for s, _ in kept}, reverse=True):
    predicted = [y for s, y in kept if s >= t]
    tp = sum(1 for y in predicted if y == 1)
    recall = tp / num_pos
    ap += (recall - prev_recall) * tp / len(predicted)
    prev_recall = recall
  return ap


def ref_prf_lower_index(scores: np.ndarray, states: np.ndarray, k: int, exclude: bool
                        ) -> tuple[float, float, float]:
  """Loop overall P/R/F1@k; ties at the k-th place go to the lower column index."""
  tp, num_pred, num_pos = 0, 0, 0
  for row_scores, row_states in zip(scores, states):
    positives = sum(1 for y in row_states if y == 1)
    if exclude and positives == 0:
      continue
    num_pos += positives
    ranked = sorted(range(len(row_scores)), key=lambda j: (-row_scores[j], j))
    for j in ranked[:k]:
      num_pred += 1
      tp += row_states[j] == 1
  p = tp / num_pred if num_pred else 0.0
  r = tp / num_pos if num_pos else 0.0
  return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def random_case(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores [N, L], labels [N, L], zsl_scores [N, U]) float32 / int8 with unknown states, a
  column without positive, an all-unknown column and rows without positive; ``ties``: scores
  rounded to 1 decimal (many ties) else continuous."""
  rng = np.random.default_rng(seed)
  p_pos = rng.uniform(0.05, 0.4)
  labels = rng.choice(np.array([1, -1, 0], np.int8), size=(N, L), p=[p_pos, 0.8 - p_pos, 0.2])
  labels[:, 2] = np.where(labels[:, 2] == 1, -1, labels[:, 2])  # seen, no positive
  labels[:, L - 1] = np.where(labels[:, L - 1] == 1, 0, labels[:, L - 1])  # unseen, none
  labels[:, 5] = 0  # all unknown
  labels[rng.integers(N, size=4)] = np.where(labels[0] == 1, -1, labels[0])  # no positive
  scores = rng.standard_normal((N, L)).astype(np.float32)
  zsl_scores = rng.standard_normal((N, U)).astype(np.float32)
  if ties:
    scores, zsl_scores = np.round(scores, 1), np.round(zsl_scores, 1)
  return scores, labels, zsl_scores


def assert_same(got: dict, want: dict, keys=None) -> None:
  """Same views and keys (in order); values equal to TOL (on ``keys`` only if given)."""
  assert list(got) == list(want)
  for view in want:
    assert list(got[view]) == list(want[view])
    for key in keys or want[view]:
      assert all(isinstance(v, float) for v in got[view].values())
      assert got[view][key] == pytest.approx(want[view][key], abs=TOL), (view, key)


# ----------------------------------------------------------------------------- AP


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_per_label_matches_loop_reference_sklearn_and_numpy_with_ties(seed):
  scores, labels, _ = random_case(seed, ties=True)
  ap = md.average_precision_per_label_device(scores, labels, label_block=BLOCK)
  assert ap.shape == (L,) and ap.dtype == np.float32
  want = [ref_ap_label(scores[:, j], labels[:, j]) for j in range(L)]
  np.testing.assert_allclose(ap, want, atol=TOL)
  np.testing.assert_allclose(ap, metrics.average_precision_per_label(scores, labels), atol=TOL)
  for j in range(L):
    kept = labels[:, j] != 0
    if (labels[kept, j] == 1).any():
      assert ap[j] == pytest.approx(
          average_precision_score(labels[kept, j] == 1, scores[kept, j]), abs=TOL)
    else:
      assert ap[j] == 0.0


def test_ap_tie_rule_by_hand():
  # Ranked: 0.9(+), then a tie {0.5(-), 0.5(+), 0.5(-)}, then 0.1(+); unknown 0.95 ignored.
  # sklearn rule: 1/3 * 1 + 1/3 * (2/4) + 1/3 * (3/5); a sort-order rule could give 2/3 or 2/2.
  scores = np.array([[0.9], [0.5], [0.5], [0.5], [0.1], [0.95]], np.float32)
  labels = np.array([[1], [-1], [1], [-1], [1], [0]], np.int8)
  ap = md.average_precision_per_label_device(scores, labels)
  assert ap[0] == pytest.approx((1 + 2 / 4 + 3 / 5) / 3, abs=1e-6)


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("zsl_given", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_matches_numpy_tie_free(seed, exclude, zsl_given):
  scores, labels, zsl_scores = random_case(seed, ties=False)
  zsl_scores = zsl_scores if zsl_given else None
  want = metrics.evaluate_multilabel(scores, labels, SEEN, UNSEEN, KS, exclude,
                                     zsl_scores=zsl_scores)
  got = md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, KS,
                                      exclude_images_without_positive=exclude,
                                      zsl_scores=zsl_scores, label_block=BLOCK)
  assert_same(got, want)


@pytest.mark.parametrize("exclude", [False, True])
def test_evaluate_with_ties(exclude):
  """mAP equals NumPy exactly under ties; P/R/F1 follow the lower-column-index tie rule."""
  scores, labels, zsl_scores = random_case(3, ties=True)
  got = md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, KS,
                                      exclude_images_without_positive=exclude,
                                      zsl_scores=zsl_scores, label_block=BLOCK)
  want = metrics.evaluate_multilabel(scores, labels, SEEN, UNSEEN, KS, exclude,
                                     zsl_scores=zsl_scores)
  assert_same(got, want, keys=("map", "map_with_positives"))
  views = {"gzsl": (scores[:, SEEN + UNSEEN], labels[:, SEEN + UNSEEN]),
           "zsl": (zsl_scores, labels[:, UNSEEN])}
  for view, (view_scores, view_labels) in views.items():
    for k in KS:
      p, r, f1 = ref_prf_lower_index(view_scores, view_labels, k, exclude)
      assert got[view][f"p@{k}"] == pytest.approx(p, abs=TOL)
      assert got[view][f"r@{k}"] == pytest.approx(r, abs=TOL)
      assert got[view][f"f1@{k}"] == pytest.approx(f1, abs=TOL)


def test_sharded_rows_give_the_same_result():
  scores, labels, zsl_scores = random_case(4, ties=True)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rows = NamedSharding(mesh, P("data", None))
  sharded = [jax.device_put(x, rows) for x in (scores, labels, zsl_scores)]
  assert len(sharded[0].sharding.device_set) == 8
  for zsl_given in (False, True):
    got = md.evaluate_multilabel_device(sharded[0], sharded[1], SEEN, UNSEEN, KS,
                                        zsl_scores=sharded[2] if zsl_given else None,
                                        label_block=BLOCK)
    want = md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, KS,
                                         zsl_scores=zsl_scores if zsl_given else None,
                                         label_block=BLOCK)
    assert_same(got, want)  # float32 sums may be reduced in another order


def test_no_images_matches_numpy():
  scores, labels = np.zeros((0, L), np.float32), np.zeros((0, L), np.int8)
  want = metrics.evaluate_multilabel(scores, labels, SEEN, UNSEEN, KS)
  got = md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, KS)
  assert str(got) == str(want)  # nan-aware equality


def test_chance_level_is_the_metrics_of_the_device_draw():
  _, labels, _ = random_case(5, ties=False)
  got = md.chance_level_device(labels, SEEN, UNSEEN, KS, seeds=(7,), label_block=BLOCK)
  draw = np.asarray(jax.random.uniform(jax.random.key(7), labels.shape, jnp.float32))
  want = metrics.evaluate_multilabel(draw, labels, SEEN, UNSEEN, KS)
  assert_same(got, want, keys=("map", "map_with_positives"))
  assert list(got["gzsl"]) == list(metrics.chance_level(labels, SEEN, UNSEEN, KS)["gzsl"])


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mutate, match", [
    (lambda s, y, z: (s[0], y, z), "scores must be 2-D"),
    (lambda s, y, z: (s, y[:, :-1], z), "matching shapes"),
    (lambda s, y, z: (np.where(np.arange(L) == 3, np.nan, s).astype(np.float32), y, z),
     "scores must be finite"),
    (lambda s, y, z: (s, np.where(np.arange(L) == 3, 2, y), z), "states -1, 0, 1"),
    (lambda s, y, z: (s, y, z[:, :-1]), "zsl_scores and labels must have matching shapes"),
    (lambda s, y, z: (s, y, np.full_like(z, np.inf)), "zsl_scores must be finite"),
    (lambda s, y, z: (s.astype(np.complex64), y, z), "must be real numbers"),
])
def test_bad_inputs_raise_value_error(mutate, match):
  scores, labels, zsl_scores = mutate(*random_case(0, ties=False))
  with pytest.raises(ValueError, match=match):
    md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, KS, zsl_scores=zsl_scores)


def test_bad_views_raise_value_error():
  scores, labels, _ = random_case(0, ties=False)
  with pytest.raises(ValueError, match="ks must be in"):
    md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, (U + 1,))
  with pytest.raises(ValueError, match="must not overlap"):
    md.evaluate_multilabel_device(scores, labels, SEEN + [L - 1], UNSEEN, KS)
  with pytest.raises(ValueError, match="label_block"):
    md.evaluate_multilabel_device(scores, labels, SEEN, UNSEEN, KS, label_block=0)


@pytest.mark.parametrize("place", ["host", "device"])
def test_evaluation_protocol_gives_the_same_numbers_on_host_and_device(place):
  """evaluate.py's multilabel protocol with eval.metrics_on = 'host' / 'device'."""
  from mlzsl_jax import evaluate
  from mlzsl_jax.config_base import base_config
  rng = np.random.default_rng(11)
  labels = rng.choice([-1, 0, 1], size=(40, 9), p=[0.6, 0.1, 0.3]).astype(np.int8)
  gzsl = rng.normal(size=(40, 9)).astype(np.float32)
  zsl = rng.normal(size=(40, 3)).astype(np.float32)
  config = base_config()
  config.eval.ks = (1, 2)
  config.eval.metrics_on = place
  result, table = evaluate._multilabel(zsl, gzsl, labels, 6, config)
  want = metrics.evaluate_multilabel(gzsl, labels, range(6), range(6, 9), (1, 2),
                                     zsl_scores=zsl)
  for view in ("zsl", "gzsl"):
    for key, value in want[view].items():
      assert result[view][key] == pytest.approx(value, abs=1e-5), (view, key)
  assert "ZSL (chance)" in table
  config.eval.metrics_on = "gpu"
  with pytest.raises(ValueError, match="eval.metrics_on='gpu'"):
    evaluate._multilabel(zsl, gzsl, labels, 6, config)
