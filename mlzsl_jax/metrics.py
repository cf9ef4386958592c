"""Evaluation metrics for multi-label (and single-label) zero-shot learning, in NumPy.

Protocol: shared/spec/metrics.md (LESA ``core/utils.py`` and BiAM ``util_nus.py``).

Label states: 1 = positive, -1 = negative, 0 = unknown (not annotated).

* Per-label AP drops the unknown entries of the label, ranks the rest by score (descending)
  and equals ``sklearn.metrics.average_precision_score``, including its tie rule: tied scores
  form one threshold, ``AP = sum_i (R_i - R_{i-1}) * P_i`` over the distinct thresholds.
  A label with no positive gets AP = 0.
* ``map`` is the official mAP: the mean over *all* evaluated labels, the no-positive ones
  counting 0. ``map_with_positives`` is the mean over labels with >= 1 positive only.
* P/R/F1@K are "overall" (micro-averaged): per image the K highest-scoring labels are
  predicted (ties: any K of them); P = TP / (K * N) (predictions on unknown labels count in
  the denominator), R = TP / #(pairs with state 1), F1 = 2PR / (P + R) (0 when P + R = 0).

All work is chunked (columns for AP, rows for top-K) so that NUS-WIDE sized inputs
(107,859 x 1006) never need a full-size temporary.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# Elements per chunk of the chunked computations (about 32 MB per int64 temporary).
_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- validation


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
  """Returns ``x`` as an array, raising ValueError unless it is 2-D."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [images, labels]; expected ndim 2, got ndim {x.ndim} "
                     f"(shape {x.shape})")
  return x


def _check_scores(scores: np.ndarray) -> np.ndarray:
  """Validates ``scores: [images, labels]``: 2-D, real numbers, all finite."""
  scores = _as_2d("scores", scores)
  if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)
          or scores.dtype == np.bool_):
    raise ValueError(f"scores must be real numbers; expected a float or int dtype, got "
                     f"{scores.dtype}")
  if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores).all():
    bad = int(np.size(scores) - np.count_nonzero(np.isfinite(scores)))
    raise ValueError(f"scores must be finite; expected no NaN/inf, got {bad} non-finite values")
  return scores


def _check_labels(labels: np.ndarray) -> np.ndarray:
  """Validates ``labels: [images, labels]``: 2-D, every entry in {-1, 0, 1}."""
  labels = _as_2d("labels", labels)
  if labels.size == 0:
    return labels
  if np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
    lo, hi = int(labels.min()), int(labels.max())
    ok = lo >= -1 and hi <= 1
  elif np.issubdtype(labels.dtype, np.floating):
    ok = bool(((labels == 1) | (labels == -1) | (labels == 0)).all())
  else:
    raise ValueError(f"labels must hold the states -1/0/1; expected an int or float dtype, got "
                     f"{labels.dtype}")
  if not ok:
    bad = np.unique(labels[(labels != 1) & (labels != -1) & (labels != 0)])[:5]
    raise ValueError(f"labels must only contain the states -1, 0, 1; expected values in "
                     f"{{-1, 0, 1}}, got {bad.tolist()}")
  return labels


def _check_pair(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates ``scores`` and ``labels`` (both [images, labels]) and that their shapes match."""
  scores = _as_2d("scores", scores)
  labels = _as_2d("labels", labels)
  if scores.shape != labels.shape:
    raise ValueError(f"scores and labels must have the same shape; expected labels.shape == "
                     f"scores.shape == {scores.shape}, got labels.shape {labels.shape}")
  return _check_scores(scores), _check_labels(labels)


def _check_k(k: int, num_columns: int, name: str = "k") -> int:
  """Validates a top-K size: an integer with 1 <= k <= num_columns."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"{name} must be an int; expected an int in [1, {num_columns}], got {k!r}")
  if not 1 <= k <= num_columns:
    raise ValueError(f"{name} must be in [1, number of label columns]; expected 1 <= {name} <= "
                     f"{num_columns}, got {k}")
  return int(k)


def _check_ids(name: str, ids: Sequence[int], num_labels: int) -> np.ndarray:
  """Validates a list of label column ids: 1-D ints in [0, num_labels), no duplicates."""
  arr = np.asarray(ids)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D sequence of column ids; expected ndim 1, got ndim "
                     f"{arr.ndim}")
  if arr.size == 0:
    return arr.astype(np.int64)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must hold integer column ids; expected an int dtype, got "
                     f"{arr.dtype}")
  if arr.min() < 0 or arr.max() >= num_labels:
    raise ValueError(f"{name} out of range; expected ids in [0, {num_labels}), got min "
                     f"{int(arr.min())}, max {int(arr.max())}")
  if np.unique(arr).size != arr.size:
    raise ValueError(f"{name} must not repeat a column id; expected {arr.size} distinct ids, got "
                     f"{np.unique(arr).size}")
  return arr.astype(np.int64)


# ----------------------------------------------------------------------------- AP and mAP


def _ap_block(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """AP of each row of ``scores: [labels, images]`` (already transposed), sklearn tie rule.

  Unknown entries (state 0) get the score -inf so they sort after every annotated entry (all
  real scores are finite) and carry no positive; the annotated entries are then a prefix.
  """
  num_cols, num_rows = scores.shape
  valid = labels != 0
  key = np.where(valid, scores.astype(np.float64, copy=False), -np.inf)
  order = np.argsort(-key, axis=1)
  key = np.take_along_axis(key, order, axis=1)
  positive = np.take_along_axis(labels == 1, order, axis=1)
  tp = np.cumsum(positive, axis=1, dtype=np.int64)
  precision = tp / np.arange(1, num_rows + 1, dtype=np.float64)
  # A threshold ends where the next score differs; tied scores share the precision at the end
  # of their group (sklearn's distinct-threshold rule).
  group_end = np.ones((num_cols, num_rows), dtype=bool)
  group_end[:, :-1] = key[:, :-1] != key[:, 1:]
  end_index = np.where(group_end, np.arange(num_rows), num_rows)
  end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
  precision_at_end = np.take_along_axis(precision, end_index, axis=1)
  num_positive = tp[:, -1]
  total = np.where(positive, precision_at_end, 0.0).sum(axis=1)
  return np.where(num_positive > 0, total / np.maximum(num_positive, 1), 0.0)


def _ap_columns(scores: np.ndarray, labels: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Per-label AP of the columns ``cols`` of ``scores, labels: [images, all labels]`` -> [C]."""
  num_rows = scores.shape[0]
  ap = np.zeros(cols.size, dtype=np.float64)
  if num_rows == 0:
    return ap
  step = max(1, _CHUNK_ELEMENTS // num_rows)
  for start in range(0, cols.size, step):
    chunk = cols[start:start + step]
    ap[start:start + chunk.size] = _ap_block(np.ascontiguousarray(scores[:, chunk].T),
                                             np.ascontiguousarray(labels[:, chunk].T))
  return ap


def labels_with_positive(labels: np.ndarray) -> np.ndarray:
  """Which labels have at least one positive image.

  Args:
    labels: [images, labels] states 1 / -1 / 0.

  Returns:
    bool [labels]: True where the column holds at least one state 1.
  """
  labels = _check_labels(labels)
  return (labels == 1).any(axis=0)


def average_precision_per_label(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Average precision of each label over its annotated images.

  For label j the images with state 0 are dropped; the rest are ranked by score (descending).
  AP_j equals ``sklearn.metrics.average_precision_score`` (tied scores form one threshold,
  AP = sum over distinct thresholds of (R_i - R_{i-1}) * P_i); on tie-free scores this is the
  mean over positives of precision at the positive's rank. AP_j = 0 when label j has no
  positive (see ``labels_with_positive`` for which labels those are).

  Args:
    scores: [images, labels] float, finite.
    labels: [images, labels] states 1 / -1 / 0.

  Returns:
    ap: float64 [labels].
  """
  scores, labels = _check_pair(scores, labels)
  return _ap_columns(scores, labels, np.arange(scores.shape[1]))


def _map_summary(ap: np.ndarray, has_positive: np.ndarray) -> dict[str, float]:
  """mAP figures from per-label ``ap: [labels]`` and ``has_positive: bool [labels]``."""
  official = float(ap.mean()) if ap.size else math.nan
  with_pos = float(ap[has_positive].mean()) if has_positive.any() else math.nan
  return {"map": official, "map_with_positives": with_pos}


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Official mAP and the mean over labels with a positive.

  Args:
    scores: [images, labels] float, finite.
    labels: [images, labels] states 1 / -1 / 0.

  Returns:
    {"map": mean of AP over ALL labels, no-positive labels counting 0 (the official figure),
     "map_with_positives": mean of AP over labels with >= 1 positive (nan if there is none)}.
    Fractions in [0, 1] (tables show them x100).
  """
  scores, labels = _check_pair(scores, labels)
  ap = _ap_columns(scores, labels, np.arange(scores.shape[1]))
  return _map_summary(ap, (labels == 1).any(axis=0))


# ----------------------------------------------------------------------------- P/R/F1 @ K


def _prf(tp: int, num_predicted: int, num_positive: int) -> dict[str, float]:
  """Precision, recall and F1 from counts (0 where a denominator is 0)."""
  p = tp / num_predicted if num_predicted else 0.0
  r = tp / num_positive if num_positive else 0.0
  f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
  return {"p": float(p), "r": float(r), "f1": float(f1)}


def _topk_counts(scores: np.ndarray, labels: np.ndarray, cols: np.ndarray,
                 ks: Sequence[int], exclude_images_without_positive: bool
                 ) -> tuple[dict[int, int], int, int]:
  """Counts for P/R/F1@K on the columns ``cols`` of ``scores, labels: [images, all labels]``.

  Returns:
    (true positives per k, number of images kept, number of pairs with state 1).
  """
  num_rows, num_cols = scores.shape[0], cols.size
  ks_sorted = sorted(set(int(k) for k in ks))
  kth = [k - 1 for k in ks_sorted]
  tp = {k: 0 for k in ks_sorted}
  kept, num_positive = 0, 0
  step = max(1, _CHUNK_ELEMENTS // max(num_cols, 1))
  for start in range(0, num_rows, step):
    sub_scores = scores[start:start + step][:, cols].astype(np.float64, copy=False)
    is_pos = labels[start:start + step][:, cols] == 1
    if exclude_images_without_positive:
      keep = is_pos.any(axis=1)
      sub_scores, is_pos = sub_scores[keep], is_pos[keep]
    kept += sub_scores.shape[0]
    num_positive += int(np.count_nonzero(is_pos))
    if sub_scores.shape[0] == 0:
      continue
    # Partitioning at every k at once: the first k columns are a top-k for each k in ks.
    top = np.argpartition(-sub_scores, kth, axis=1)[:, :ks_sorted[-1]]
    hit = np.take_along_axis(is_pos, top, axis=1)
    for k in ks_sorted:
      tp[k] += int(np.count_nonzero(hit[:, :k]))
  return tp, kept, num_positive


def precision_recall_f1_at_k(scores: np.ndarray, labels: np.ndarray, k: int,
                             exclude_images_without_positive: bool = False) -> dict[str, float]:
  """Overall (micro-averaged) precision, recall and F1 of the top-k labels of each image.

  Per image the k highest-scoring labels are predicted (ties: any k of them).
  TP = predicted pairs with state 1; P = TP / (k * N); R = TP / #(pairs with state 1);
  F1 = 2PR / (P + R), 0 when P + R == 0. A prediction on an unknown (0) label counts in the
  denominator of P but is never a TP.

  Args:
    scores: [images, labels] float, finite.
    labels: [images, labels] states 1 / -1 / 0.
    k: number of labels predicted per image, 1 <= k <= labels.
    exclude_images_without_positive: first drop images with no state-1 label (LESA's
      ``is_exclude``); N is then the number of kept images.

  Returns:
    {"p", "r", "f1"} as fractions in [0, 1].
  """
  scores, labels = _check_pair(scores, labels)
  k = _check_k(k, scores.shape[1])
  tp, kept, num_positive = _topk_counts(scores, labels, np.arange(scores.shape[1]), (k,),
                                        exclude_images_without_positive)
  return _prf(tp[k], k * kept, num_positive)


# ----------------------------------------------------------------------------- ZSL / GZSL


def _evaluate_columns(scores: np.ndarray, labels: np.ndarray, cols: np.ndarray,
                      ks: Sequence[int], exclude_images_without_positive: bool
                      ) -> dict[str, float]:
  """All multi-label metrics of one view (the columns ``cols``) of validated inputs."""
  ap = _ap_columns(scores, labels, cols)
  out = _map_summary(ap, (labels[:, cols] == 1).any(axis=0))
  tp, kept, num_positive = _topk_counts(scores, labels, cols, ks,
                                        exclude_images_without_positive)
  for k in ks:
    prf = _prf(tp[k], k * kept, num_positive)
    out[f"p@{k}"], out[f"r@{k}"], out[f"f1@{k}"] = prf["p"], prf["r"], prf["f1"]
  return out


def evaluate_view(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (3, 5),
                  exclude_images_without_positive: bool = False) -> dict[str, float]:
  """The multi-label metrics of one label set: every column of ``scores`` / ``labels``.

  Args:
    scores: [images, labels] float, finite.
    labels: [images, labels] states 1 / -1 / 0.
    ks: the K of P/R/F1@K, each 1 <= k <= labels.
    exclude_images_without_positive: as in ``evaluate_multilabel``.

  Returns:
    {"map", "map_with_positives", "p@k", "r@k", "f1@k" for k in ks}, fractions in [0, 1].
  """
  scores, labels = _check_pair(scores, labels)
  for k in ks:
    _check_k(k, scores.shape[1], name="ks")
  return _evaluate_columns(scores, labels, np.arange(scores.shape[1]), ks,
                           exclude_images_without_positive)


def _check_views(num_labels: int, seen_ids: Sequence[int], unseen_ids: Sequence[int],
                 ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Validates seen/unseen ids and ks; returns (ZSL columns, GZSL columns)."""
  seen = _check_ids("seen_ids", seen_ids, num_labels)
  unseen = _check_ids("unseen_ids", unseen_ids, num_labels)
  if unseen.size == 0:
    raise ValueError("unseen_ids must not be empty; expected >= 1 unseen column id, got 0")
  overlap = np.intersect1d(seen, unseen)
  if overlap.size:
    raise ValueError(f"seen_ids and unseen_ids must not overlap; expected no shared ids, got "
                     f"{overlap[:5].tolist()}")
  if len(ks) == 0:
    raise ValueError("ks must not be empty; expected >= 1 value of k, got ()")
  for k in ks:
    _check_k(k, unseen.size, name="ks")  # ZSL has the fewest columns
  return unseen, np.concatenate([seen, unseen])


def evaluate_multilabel(scores: np.ndarray, labels: np.ndarray, seen_ids: Sequence[int],
                        unseen_ids: Sequence[int], ks: Sequence[int] = (3, 5),
                        exclude_images_without_positive: bool = False,
                        zsl_scores: np.ndarray | None = None
                        ) -> dict[str, dict[str, float]]:
  """ZSL and GZSL multi-label metrics.

  ZSL uses the columns ``unseen_ids`` only; GZSL the columns ``seen_ids + unseen_ids`` (in
  that order). Scores of a view are taken by slicing ``scores`` (right for models that score
  each label independently of the others).

  Args:
    scores: [images, all labels] float, finite.
    labels: [images, all labels] states 1 / -1 / 0.
    seen_ids: [seen] column ids of the seen labels.
    unseen_ids: [unseen] column ids of the unseen labels, disjoint from ``seen_ids``.
    ks: the K of P/R/F1@K, each 1 <= k <= len(unseen_ids).
    exclude_images_without_positive: LESA's ``is_exclude`` for P/R/F1@K: drop the images with
      no positive among the view's columns before top-K. mAP always uses every image (LESA's
      ``evaluate_k`` applies the flag to F1 only).
    zsl_scores: optional [images, len(unseen_ids)] scores the model gave when asked about the
      unseen labels only (needed by models whose scores depend on the label set, e.g.
      ConSE); when given, ZSL uses them instead of slicing ``scores``.

  Returns:
    {"zsl": view, "gzsl": view}, each view {"map", "map_with_positives", "p@k", "r@k",
    "f1@k" for k in ks} as fractions in [0, 1].
  """
  scores, labels = _check_pair(scores, labels)
  zsl_cols, gzsl_cols = _check_views(scores.shape[1], seen_ids, unseen_ids, ks)
  if zsl_scores is not None:
    zsl_scores, zsl_labels = _check_pair(zsl_scores, labels[:, zsl_cols])
    zsl = _evaluate_columns(zsl_scores, zsl_labels, np.arange(len(zsl_cols)), ks,
                            exclude_images_without_positive)
  else:
    zsl = _evaluate_columns(scores, labels, zsl_cols, ks, exclude_images_without_positive)
  return {
      "zsl": zsl,
      "gzsl": _evaluate_columns(scores, labels, gzsl_cols, ks, exclude_images_without_positive),
  }


def chance_level(labels: np.ndarray, seen_ids: Sequence[int], unseen_ids: Sequence[int],
                 ks: Sequence[int] = (3, 5), seeds: Sequence[int] = (0, 1, 2),
                 exclude_images_without_positive: bool = False
                 ) -> dict[str, dict[str, float]]:
  """The metrics of ``evaluate_multilabel`` for uniformly random scores, mean over seeds.

  Scores for seed s are ``np.random.default_rng(s).random(labels.shape)``.

  Args:
    labels: [images, all labels] states 1 / -1 / 0.
    seen_ids, unseen_ids, ks, exclude_images_without_positive: as ``evaluate_multilabel``.
    seeds: the random seeds averaged over.

  Returns:
    Same structure as ``evaluate_multilabel``.
  """
  labels = _check_labels(labels)
  zsl_cols, gzsl_cols = _check_views(labels.shape[1], seen_ids, unseen_ids, ks)
  if len(seeds) == 0:
    raise ValueError("seeds must not be empty; expected >= 1 seed, got ()")
  runs = []
  for seed in seeds:
    scores = np.random.default_rng(seed).random(labels.shape)
    runs.append({
        "zsl": _evaluate_columns(scores, labels, zsl_cols, ks, exclude_images_without_positive),
        "gzsl": _evaluate_columns(scores, labels, gzsl_cols, ks,
                                  exclude_images_without_positive),
    })
  return {view: {key: float(np.mean([run[view][key] for run in runs]))
                 for key in runs[0][view]} for view in runs[0]}


# ----------------------------------------------------------------------------- table


def _cell(value: float) -> str:
  """A fraction as a percentage with one decimal ("nan" if undefined)."""
  return "nan" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def format_table(results: Mapping[str, Mapping[str, float]],
                 chance: Mapping[str, Mapping[str, float]] | None,
                 ks: Sequence[int] = (3, 5)) -> str:
  """A paper-style text table of ``evaluate_multilabel`` results (values x100, 1 decimal).

  Args:
    results: {"zsl": view, "gzsl": view} from ``evaluate_multilabel``.
    chance: the same structure from ``chance_level``, or None to omit the chance rows.
    ks: the K columns to show, each present in the views.

  Returns:
    The table: rows ZSL, GZSL (then "ZSL (chance)", "GZSL (chance)"), columns P@k R@k F1@k per
    k, mAP, mAP(pos), followed by a footnote on the mAP definitions.
  """
  header = ["Setting"]
  keys = []
  for k in ks:
    header += [f"P@{k}", f"R@{k}", f"F1@{k}"]
    keys += [f"p@{k}", f"r@{k}", f"f1@{k}"]
  header += ["mAP", "mAP(pos)"]
  keys += ["map", "map_with_positives"]
  rows = [("ZSL", results["zsl"]), ("GZSL", results["gzsl"])]
  if chance is not None:
    rows += [("ZSL (chance)", chance["zsl"]), ("GZSL (chance)", chance["gzsl"])]
  first = max(len(header[0]), *(len(name) for name, _ in rows))
  widths = [first] + [max(len(h), 5) for h in header[1:]]
  lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))]
  lines.append("-" * len(lines[0]))
  for name, view in rows:
    cells = [name] + [_cell(view[key]) for key in keys]
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(cells, widths))))
  lines.append("mAP: official mean of per-label AP over ALL evaluated labels (labels with no "
               "positive count as 0); mAP(pos): mean over labels with >= 1 positive only. "
               "P/R/F1@K: overall (micro) over images. All values x100.")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- single-label


def per_class_top1(pred: np.ndarray, true: np.ndarray, classes: Sequence[int]) -> float:
  """Mean over ``classes`` of per-class top-1 accuracy.

  Args:
    pred: [images] int, predicted class ids.
    true: [images] int, true class ids.
    classes: [classes] the class ids averaged over; each must occur in ``true``.

  Returns:
    The mean per-class accuracy, a fraction in [0, 1].
  """
  pred, true = np.asarray(pred), np.asarray(true)
  classes = np.asarray(classes)
  if pred.ndim != 1 or true.ndim != 1 or pred.shape != true.shape:
    raise ValueError(f"pred and true must be 1-D of the same length; expected pred.shape == "
                     f"true.shape == (images,), got pred {pred.shape}, true {true.shape}")
  if classes.ndim != 1 or classes.size == 0:
    raise ValueError(f"classes must be a non-empty 1-D sequence; expected shape (classes,), got "
                     f"{classes.shape}")
  accs = []
  for c in classes:
    mask = true == c
    if not mask.any():
      raise ValueError(f"classes holds a class with no test image; expected every class in "
                       f"true, got class {c!r} absent")
    accs.append(np.mean(pred[mask] == c))
  return float(np.mean(accs))


def gzsl_harmonic(acc_seen: float, acc_unseen: float) -> float:
  """Harmonic mean H = 2 * acc_seen * acc_unseen / (acc_seen + acc_unseen), 0 if both are 0.

  Args:
    acc_seen: scalar, per-class top-1 on seen test images (GZSL predictions).
    acc_unseen: scalar, per-class top-1 on unseen test images (GZSL predictions).
  """
  total = acc_seen + acc_unseen
  return float(2 * acc_seen * acc_unseen / total) if total > 0 else 0.0


def single_label_classes(labels: np.ndarray) -> np.ndarray:
  """True class per image from one-hot states: [images, classes] (one 1 per row) -> [images]."""
  labels = _check_labels(labels)
  counts = (labels == 1).sum(axis=1)
  if np.any(counts != 1):
    bad = np.where(counts != 1)[0]
    raise ValueError(f"labels: single-label evaluation expects exactly one positive per image; "
                     f"got {counts[bad[0]]} in image {bad[0]} ({bad.size} such images)")
  return np.argmax(labels == 1, axis=1)


def evaluate_single_label(zsl_scores: np.ndarray, gzsl_scores: np.ndarray, true: np.ndarray,
                          num_seen: int) -> dict[str, dict[str, float]]:
  """Single-label ZSL / GZSL (DEM's benchmarks; GBU protocol).

  Args:
    zsl_scores: [images, unseen] scores among the unseen classes only.
    gzsl_scores: [images, seen + unseen] scores among all classes, seen first.
    true: [images] true class in the GZSL column order.
    num_seen: number of seen classes (columns ``0..num_seen-1`` of ``gzsl_scores``).

  Returns:
    {"zsl": {"top1"}, "gzsl": {"acc_seen", "acc_unseen", "h"}}: ZSL = per-class top-1 over
    the unseen classes on the images of unseen classes, predicting among unseen classes only;
    GZSL = per-class top-1 among all classes on seen-class and unseen-class images, and their
    harmonic mean. Fractions in [0, 1].
  """
  gzsl_scores = _check_scores(_as_2d("gzsl_scores", gzsl_scores))
  zsl_scores = _check_scores(_as_2d("zsl_scores", zsl_scores))
  true = np.asarray(true)
  num_all = gzsl_scores.shape[1]
  if zsl_scores.shape != (gzsl_scores.shape[0], num_all - num_seen) or true.shape != (
      gzsl_scores.shape[0],):
    raise ValueError(f"zsl_scores must be [images, {num_all - num_seen}] and true [images]; "
                     f"got zsl_scores {zsl_scores.shape}, true {true.shape}")
  unseen_imgs = true >= num_seen
  seen_classes = np.unique(true[~unseen_imgs])
  unseen_classes = np.unique(true[unseen_imgs])
  zsl_pred = np.argmax(zsl_scores[unseen_imgs], axis=1) + num_seen
  top1 = per_class_top1(zsl_pred, true[unseen_imgs], unseen_classes)
  gzsl_pred = np.argmax(gzsl_scores, axis=1)
  acc_u = per_class_top1(gzsl_pred[unseen_imgs], true[unseen_imgs], unseen_classes)
  acc_s = (per_class_top1(gzsl_pred[~unseen_imgs], true[~unseen_imgs], seen_classes)
           if seen_classes.size else float("nan"))
  return {"zsl": {"top1": top1},
          "gzsl": {"acc_seen": acc_s, "acc_unseen": acc_u, "h": gzsl_harmonic(acc_s, acc_u)}}


def hubness_skewness(scores, k: int = 1) -> float:
  """Skewness of the k-occurrence distribution: the hubness diagnostic of the paper.

  N_k(j) = how many images have prototype j among their k nearest (highest scores; ties go
  to the lower index), over ALL L prototypes (zeros included); the result is the population
  skewness E[(N - μ)³] / σ³ (``scipy.stats.skew`` with its default ``bias=True``); NaN when
  every prototype has the same count (σ = 0), as scipy.

  Args:
    scores: [N, L] (higher = nearer), numpy or jax.
    k: neighbours per image, 1 <= k <= L.
  """
  s = np.asarray(scores, np.float64)
  if s.ndim != 2:
    raise ValueError(f"scores: expected [images, labels], got shape {s.shape}")
  if not 1 <= k <= s.shape[1]:
    raise ValueError(f"k={k} must be in [1, {s.shape[1]}] (labels)")
  nearest = np.argsort(-s, axis=1, kind="stable")[:, :k]
  counts = np.bincount(nearest.ravel(), minlength=s.shape[1]).astype(np.float64)
  centred = counts - counts.mean()
  var = np.mean(centred ** 2)
  if var == 0:
    return math.nan
  return float(np.mean(centred ** 3) / var ** 1.5)


def format_single_label_table(results: Mapping[str, Mapping[str, float]],
                              chance: Mapping[str, Mapping[str, float]] | None) -> str:
  """Text table of ``evaluate_single_label`` results (x100): ZSL top-1 | GZSL u, s, H."""
  header = f"{'Setting':<10}  {'ZSL T1':>6}  {'GZSL u':>6}  {'GZSL s':>6}  {'H':>6}"
  rows = [("model", results)] + ([("chance", chance)] if chance is not None else [])
  lines = [header, "-" * len(header)]
  for name, r in rows:
    cells = [r["zsl"]["top1"], r["gzsl"]["acc_unseen"], r["gzsl"]["acc_seen"], r["gzsl"]["h"]]
    lines.append(f"{name:<10}  " + "  ".join(f"{_cell(v):>6}" for v in cells))
  lines.append("Per-class mean top-1 (x100). ZSL: among unseen classes on unseen-class images; "
               "GZSL: among all classes, u = unseen-class images, s = seen-class images, "
               "H = harmonic mean.")
  return "\n".join(lines)
