"""Tests of mlzsl_jax.metrics against loop references, sklearn and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlzsl_jax import metrics

# ----------------------------------------------------------------------------- references


def ref_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Loop AP per label on tie-free scores: mean over positives of precision at their rank.

  scores, labels: [images, labels] -> ap [labels]; AP = 0 for a label with no positive.
  """
  num_images, num_labels = scores.shape
  ap = np.zeros(num_labels)
  for j in range(num_labels):
    kept = [(scores[i, j], labels[i, j]) for i in range(num_images) if labels[i, j] != 0]
    kept.sort(key=lambda pair: -pair[0])
    num_pos = sum(1 for _, state in kept if state == 1)
    if num_pos == 0:
      continue
    hits, total = 0, 0.0
    for rank, (_, state) in enumerate(kept, start=1):
      if state == 1:
        hits += 1
        total += hits / rank
    ap[j] = total / num_pos
  return ap


def ref_prf(scores: np.ndarray, labels: np.ndarray, k: int, exclude: bool) -> tuple:
  """Loop overall P/R/F1@k; scores, labels: [images, labels]."""
  tp, num_pred, num_pos = 0, 0, 0
  for i in range(scores.shape[0]):
    row_pos = [j for j in range(scores.shape[1]) if labels[i, j] == 1]
    if exclude and not row_pos:
      continue
    num_pos += len(row_pos)
    ranked = sorted(range(scores.shape[1]), key=lambda j: -scores[i, j])
    for j in ranked[:k]:
      num_pred += 1
      if labels[i, j] == 1:
        tp += 1
  p = tp / num_pred if num_pred else 0.0
  r = tp / num_pos if num_pos else 0.0
  f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
  return p, r, f1


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Tie-free scores and states [N, L] with 0s, no-positive columns, all-unknown columns and
  rows without positives."""
  rng = np.random.default_rng(seed)
  n, l = int(rng.integers(1, 50)), int(rng.integers(1, 14))
  p_pos, p_unk = rng.uniform(0.05, 0.5), rng.uniform(0.0, 0.4)
  labels = rng.choice(np.array([1, -1, 0], np.int8), size=(n, l),
                      p=[p_pos, 1 - p_pos - p_unk, p_unk])
  if l > 2:
    labels[:, rng.integers(l)] = np.where(labels[:, 0] == 1, -1, labels[:, 0])  # no positive
    labels[:, rng.integers(l)] = 0  # all unknown
  if n > 2:
    labels[rng.integers(n)] = np.where(labels[0] == 1, 0, labels[0])  # row without positive
  scores = rng.standard_normal((n, l)) * rng.uniform(0.1, 10)
  return scores, labels


SEEDS = list(range(24))

# ----------------------------------------------------------------------------- AP / mAP


@pytest.mark.parametrize("seed", SEEDS)
def test_ap_and_map_match_loop_reference(seed):
  scores, labels = random_case(seed)
  want = ref_ap(scores, labels)
  got = metrics.average_precision_per_label(scores, labels)
  assert got.dtype == np.float64 and got.shape == (labels.shape[1],)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)

  has_pos = np.array([(labels[:, j] == 1).any() for j in range(labels.shape[1])])
  np.testing.assert_array_equal(metrics.labels_with_positive(labels), has_pos)
  summary = metrics.mean_average_precision(scores, labels)
  assert summary["map"] == pytest.approx(want.mean(), abs=1e-10)
  if has_pos.any():
    assert summary["map_with_positives"] == pytest.approx(want[has_pos].mean(), abs=1e-10)
  else:
    assert math.isnan(summary["map_with_positives"])


@pytest.mark.parametrize("seed", range(6))
def test_ap_chunked_matches_unchunked(seed, monkeypatch):
  rng = np.random.default_rng(100 + seed)
  scores = rng.standard_normal((37, 11))
  labels = rng.choice(np.array([1, -1, 0], np.int8), size=(37, 11), p=[0.3, 0.5, 0.2])
  whole = metrics.evaluate_multilabel(scores, labels, [0, 2, 4, 6, 8], [1, 3, 5, 7, 9, 10])
  monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 40)  # 1 column / 3 rows per chunk
  np.testing.assert_allclose(metrics.average_precision_per_label(scores, labels),
                             ref_ap(scores, labels), rtol=0, atol=1e-10)
  chunked = metrics.evaluate_multilabel(scores, labels, [0, 2, 4, 6, 8], [1, 3, 5, 7, 9, 10])
  for view in ("zsl", "gzsl"):
    for key, value in whole[view].items():
      assert chunked[view][key] == pytest.approx(value, abs=1e-12), (view, key)


@pytest.mark.parametrize("seed", range(8))
def test_ap_matches_sklearn(seed):
  rng = np.random.default_rng(200 + seed)
  n, l = int(rng.integers(20, 300)), int(rng.integers(1, 20))
  labels = rng.choice(np.array([1, -1, 0], np.int8), size=(n, l), p=[0.15, 0.6, 0.25])
  scores = rng.standard_normal((n, l)).astype(np.float32 if seed % 2 else np.float64)
  got = metrics.average_precision_per_label(scores, labels)
  checked = 0
  for j in range(l):
    mask = labels[:, j] != 0
    if not (labels[mask, j] == 1).any():
      assert got[j] == 0.0
      continue
    want = average_precision_score(labels[mask, j] == 1, scores[mask, j])
    assert got[j] == pytest.approx(want, abs=1e-10)
    checked += 1
  assert checked > 0


def test_ap_ties_follow_sklearn():
  # Hand case: tied top pair (one pos, one neg) then a positive.
  # Thresholds: 1.0 -> P=1/2, R=1/2; 0.0 -> P=2/3, R=1. AP = 1/2*1/2 + 1/2*2/3 = 7/12.
  scores = np.array([[1.0], [1.0], [0.0]])
  labels = np.array([[1], [-1], [1]])
  assert metrics.average_precision_per_label(scores, labels)[0] == pytest.approx(7 / 12,
                                                                                 abs=1e-12)
  rng = np.random.default_rng(7)
  for _ in range(10):
    n, l = int(rng.integers(5, 200)), int(rng.integers(1, 8))
    scores = rng.integers(0, 4, size=(n, l)).astype(np.float64)  # heavy ties
    labels = rng.choice(np.array([1, -1, 0], np.int8), size=(n, l), p=[0.3, 0.5, 0.2])
    got = metrics.average_precision_per_label(scores, labels)
    for j in range(l):
      mask = labels[:, j] != 0
      if (labels[mask, j] == 1).any():
        want = average_precision_score(labels[mask, j] == 1, scores[mask, j])
        assert got[j] == pytest.approx(want, abs=1e-10)


def test_map_counts_no_positive_labels_as_zero():
  scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.7, 0.6]])
  labels = np.array([[1, -1, 0], [-1, -1, 0], [-1, -1, 0]])
  summary = metrics.mean_average_precision(scores, labels)
  assert summary["map"] == pytest.approx(1 / 3)
  assert summary["map_with_positives"] == pytest.approx(1.0)
  none = metrics.mean_average_precision(scores, -np.abs(labels))
  assert none["map"] == 0.0 and math.isnan(none["map_with_positives"])


# ----------------------------------------------------------------------------- P/R/F1 @ K


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("exclude", [False, True])
def test_prf_matches_loop_reference(seed, exclude):
  scores, labels = random_case(seed)
  for k in sorted({1, min(3, labels.shape[1]), labels.shape[1]}):
    got = metrics.precision_recall_f1_at_k(scores, labels, k,
                                           exclude_images_without_positive=exclude)
    p, r, f1 = ref_prf(scores, labels, k, exclude)
    assert got["p"] == pytest.approx(p, abs=1e-12)
    assert got["r"] == pytest.approx(r, abs=1e-12)
    assert got["f1"] == pytest.approx(f1, abs=1e-12)


def test_prf_unknown_prediction_counts_in_precision_only():
  scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
  labels = np.array([[0, 1, -1], [-1, -1, -1]])
  # k=2: row0 predicts {0 (unknown), 1 (pos)}, row1 predicts {2, 1} (negatives). TP = 1.
  got = metrics.precision_recall_f1_at_k(scores, labels, 2)
  assert got["p"] == pytest.approx(1 / 4) and got["r"] == pytest.approx(1.0)
  assert got["f1"] == pytest.approx(2 * 0.25 / 1.25)
  # Excluding row1 (no positive): P = 1/2.
  got = metrics.precision_recall_f1_at_k(scores, labels, 2, exclude_images_without_positive=True)
  assert got["p"] == pytest.approx(1 / 2) and got["r"] == pytest.approx(1.0)
  # No TP at all: F1 is 0, not nan.
  got = metrics.precision_recall_f1_at_k(scores, labels, 1)
  assert got == {"p": 0.0, "r": 0.0, "f1": 0.0}


# ----------------------------------------------------------------------------- ZSL / GZSL


@pytest.mark.parametrize("exclude", [False, True])
def test_evaluate_multilabel_selects_columns(exclude):
  rng = np.random.default_rng(11)
  n, l = 120, 17
  scores = rng.standard_normal((n, l))
  labels = rng.choice(np.array([1, -1, 0], np.int8), size=(n, l), p=[0.1, 0.7, 0.2])
  seen, unseen = [0, 3, 4, 8, 9, 12, 15, 16], [14, 1, 2, 6, 10, 11]
  labels[:, 5] = 1  # column 5 belongs to neither view: must not influence anything
  scores[:, 5] = 100.0
  out = metrics.evaluate_multilabel(scores, labels, seen, unseen, ks=(3, 5),
                                    exclude_images_without_positive=exclude)
  views = {"zsl": unseen, "gzsl": seen + unseen}
  for view, cols in views.items():
    s, y = scores[:, cols], labels[:, cols]
    want = metrics.mean_average_precision(s, y)
    for k in (3, 5):
      prf = metrics.precision_recall_f1_at_k(s, y, k, exclude_images_without_positive=exclude)
      want.update({f"p@{k}": prf["p"], f"r@{k}": prf["r"], f"f1@{k}": prf["f1"]})
    assert set(out[view]) == set(want)
    for key in want:
      assert out[view][key] == pytest.approx(want[key], abs=1e-12), (view, key)
  assert out["zsl"] != out["gzsl"]


def test_chance_level_near_prevalence_and_deterministic():
  rng = np.random.default_rng(3)
  n, l, prevalence = 3000, 30, 0.2
  labels = np.where(rng.random((n, l)) < prevalence, 1, -1).astype(np.int8)
  seen, unseen = list(range(20)), list(range(20, 30))
  chance = metrics.chance_level(labels, seen, unseen, ks=(3,), seeds=(0, 1))
  for view in ("zsl", "gzsl"):
    assert chance[view]["map"] == pytest.approx(prevalence, abs=0.03)
    assert chance[view]["p@3"] == pytest.approx(prevalence, abs=0.03)
  again = metrics.chance_level(labels, seen, unseen, ks=(3,), seeds=(0, 1))
  assert again == chance
  runs = [metrics.evaluate_multilabel(np.random.default_rng(s).random(labels.shape), labels,
                                      seen, unseen, ks=(3,)) for s in (0, 1)]
  for view in ("zsl", "gzsl"):
    for key in chance[view]:
      assert chance[view][key] == pytest.approx((runs[0][view][key] + runs[1][view][key]) / 2)


def test_format_table_rows_columns_and_footnote():
  view = {"map": 0.1234, "map_with_positives": 0.2, "p@3": 0.5, "r@3": 0.25, "f1@3": 1 / 3}
  table = metrics.format_table({"zsl": view, "gzsl": view}, {"zsl": view, "gzsl": view}, (3,))
  lines = table.splitlines()
  assert lines[0].split() == ["Setting", "P@3", "R@3", "F1@3", "mAP", "mAP(pos)"]
  assert lines[2].split() == ["ZSL", "50.0", "25.0", "33.3", "12.3", "20.0"]
  assert lines[3].split()[0] == "GZSL"
  assert lines[4].startswith("ZSL (chance)") and lines[5].startswith("GZSL (chance)")
  assert "no positive count as 0" in table
  assert "(chance)" not in metrics.format_table({"zsl": view, "gzsl": view}, None, (3,))


# ----------------------------------------------------------------------------- validation


def _good() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return rng.standard_normal((6, 5)), rng.choice(np.array([1, -1, 0]), size=(6, 5))


def test_bad_inputs_raise_with_argument_name():
  scores, labels = _good()
  with pytest.raises(ValueError, match="labels.*same shape|same shape.*labels"):
    metrics.evaluate_multilabel(scores, labels[:, :4], [0, 1], [2, 3], ks=(1,))
  with pytest.raises(ValueError, match="scores.*2-D"):
    metrics.average_precision_per_label(scores[0], labels[0])
  bad = labels.copy()
  bad[2, 3] = 2
  with pytest.raises(ValueError, match=r"labels.*-1, 0, 1.*\[2\]"):
    metrics.evaluate_multilabel(scores, bad, [0, 1], [2, 3], ks=(1,))
  nan = scores.copy()
  nan[1, 1] = np.nan
  with pytest.raises(ValueError, match="scores must be finite"):
    metrics.evaluate_multilabel(nan, labels, [0, 1], [2, 3], ks=(1,))
  with pytest.raises(ValueError, match="scores must be finite"):
    metrics.precision_recall_f1_at_k(nan, labels, 1)
  with pytest.raises(ValueError, match="unseen_ids out of range.*got min 2, max 5"):
    metrics.evaluate_multilabel(scores, labels, [0, 1], [2, 5], ks=(1,))
  with pytest.raises(ValueError, match="seen_ids out of range"):
    metrics.evaluate_multilabel(scores, labels, [-1, 1], [2, 3], ks=(1,))
  with pytest.raises(ValueError, match="seen_ids and unseen_ids must not overlap.*\\[2\\]"):
    metrics.evaluate_multilabel(scores, labels, [0, 2], [2, 3], ks=(1,))
  with pytest.raises(ValueError, match="ks.*expected 1 <= ks <= 2, got 3"):
    metrics.evaluate_multilabel(scores, labels, [0, 1], [2, 3], ks=(3,))
  with pytest.raises(ValueError, match="k must be in"):
    metrics.precision_recall_f1_at_k(scores, labels, 6)
  with pytest.raises(ValueError, match="labels"):
    metrics.chance_level(bad, [0, 1], [2, 3], ks=(1,))


# ----------------------------------------------------------------------------- single-label


def test_per_class_top1_and_harmonic():
  true = np.array([0, 0, 0, 0, 1, 1, 2])
  pred = np.array([0, 0, 0, 1, 1, 2, 2])
  # class 0: 3/4, class 1: 1/2, class 2: 1/1.
  assert metrics.per_class_top1(pred, true, [0, 1, 2]) == pytest.approx((0.75 + 0.5 + 1) / 3)
  assert metrics.per_class_top1(pred, true, [1, 2]) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="classes"):
    metrics.per_class_top1(pred, true, [3])
  assert metrics.gzsl_harmonic(0.6, 0.3) == pytest.approx(2 * 0.18 / 0.9)
  assert metrics.gzsl_harmonic(0.0, 0.0) == 0.0
  assert metrics.gzsl_harmonic(0.5, 0.0) == 0.0


def test_separate_zsl_scores_replace_the_sliced_columns():
  rng = np.random.default_rng(11)
  scores = rng.normal(size=(40, 9))
  labels = rng.choice([-1, 1], size=(40, 9)).astype(np.int8)
  seen, unseen = [0, 1, 2, 3, 4, 5], [6, 7, 8]
  sliced = metrics.evaluate_multilabel(scores, labels, seen, unseen, ks=(1, 2))
  same = metrics.evaluate_multilabel(scores, labels, seen, unseen, ks=(1, 2),
                                     zsl_scores=scores[:, unseen])
  assert same == sliced
  other = rng.normal(size=(40, 3))
  got = metrics.evaluate_multilabel(scores, labels, seen, unseen, ks=(1, 2), zsl_scores=other)
  expected = metrics.evaluate_multilabel(np.concatenate([scores[:, seen], other], 1),
                                         labels, seen, unseen, ks=(1, 2))
  assert got["zsl"] == expected["zsl"] and got["gzsl"] == sliced["gzsl"]
  with pytest.raises(ValueError, match="same shape"):
    metrics.evaluate_multilabel(scores, labels, seen, unseen, ks=(1, 2),
                                zsl_scores=rng.normal(size=(40, 2)))


@pytest.mark.parametrize("seed", range(5))
def test_single_label_zsl_gzsl_against_loop_reference(seed):
  rng = np.random.default_rng(seed)
  num_seen, num_unseen, n = 4, 3, 60
  true = rng.integers(0, num_seen + num_unseen, size=n)
  true[:num_seen + num_unseen] = np.arange(num_seen + num_unseen)  # every class present
  gzsl = rng.normal(size=(n, num_seen + num_unseen))
  zsl = rng.normal(size=(n, num_unseen))
  labels = -np.ones((n, num_seen + num_unseen), np.int8)
  labels[np.arange(n), true] = 1
  np.testing.assert_array_equal(metrics.single_label_classes(labels), true)
  got = metrics.evaluate_single_label(zsl, gzsl, true, num_seen)

  def per_class(pred_of, classes, images):
    accs = []
    for c in classes:
      rows = [i for i in images if true[i] == c]
      accs.append(sum(pred_of(i) == c for i in rows) / len(rows))
    return sum(accs) / len(accs)

  unseen_imgs = [i for i in range(n) if true[i] >= num_seen]
  seen_imgs = [i for i in range(n) if true[i] < num_seen]
  top1 = per_class(lambda i: num_seen + int(np.argmax(zsl[i])),
                   range(num_seen, num_seen + num_unseen), unseen_imgs)
  acc_u = per_class(lambda i: int(np.argmax(gzsl[i])), range(num_seen, num_seen + num_unseen),
                    unseen_imgs)
  acc_s = per_class(lambda i: int(np.argmax(gzsl[i])), range(num_seen), seen_imgs)
  assert got["zsl"]["top1"] == pytest.approx(top1)
  assert got["gzsl"]["acc_unseen"] == pytest.approx(acc_u)
  assert got["gzsl"]["acc_seen"] == pytest.approx(acc_s)
  h = 2 * acc_s * acc_u / (acc_s + acc_u) if acc_s + acc_u else 0.0
  assert got["gzsl"]["h"] == pytest.approx(h)


def test_single_label_rejects_multi_label_rows():
  labels = np.array([[1, 1, -1], [1, -1, -1]], np.int8)
  with pytest.raises(ValueError, match="exactly one positive per image"):
    metrics.single_label_classes(labels)
