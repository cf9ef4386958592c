"""Multi-label ZSL / GZSL metrics on the accelerator (JAX, jit-compiled).

The same metrics, keys and rules as ``mlzsl_jax.metrics.evaluate_multilabel`` (protocol:
shared/spec/metrics.md), computed on device so that NUS-WIDE's 107,859 x 1006 test
matrix takes a fraction of a second instead of a minute of NumPy:

* Per-label AP: the label's column is sorted once by score (descending; unknown entries,
  state 0, get the key +inf after negation so they sort last and carry no positive), the
  true positives are a cumulative sum, and sklearn's tie rule is applied exactly: tied scores
  form one threshold and share the precision at the END of their group,
  ``AP = sum over groups of (#positives in the group / #positives) * precision at its end``.
  The group ends are found by comparing neighbouring sorted keys and the previous group's TP
  count by a running maximum. A label with no positive gets AP = 0 (and counts 0 in "map").
  Columns are processed in fixed-size blocks (``label_block`` columns, the last block padded
  with repeated columns whose results are dropped) under ``lax.map``, so one compile serves
  every block and the temporaries stay at ``label_block x images`` elements.
* P/R/F1@K: ``lax.top_k`` with the largest K once; the TP count for every k <= K comes from
  one cumulative sum over the K hits. Ties at the K-th place: ``lax.top_k`` keeps the lower
  column index (of the view's column order); NumPy's ``argpartition`` keeps any of them, so
  the two can differ only on rows whose K-th and (K+1)-th scores tie.

Precision: scores are cast to float32 on device (float64 scores that differ only below
float32 resolution become ties); every count (TP, positives, kept images) is int32 and each
per-label AP is summed in float32; the means over labels and P/R/F1 are then formed on the
host in float64 from the per-label APs and the exact integer counts. Results equal
``metrics.evaluate_multilabel`` to ~1e-6 absolute (tested at 1e-5).

Inputs may be NumPy arrays or (sharded) ``jax.Array``; validation (shapes, dtypes, finite
scores, label states in {-1, 0, 1}) runs as one small jitted reduction, so it works on
sharded and multi-process global arrays too. Sorting along the rows of a row-sharded array
lets XLA gather the rows it needs; no layout is imposed.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mlzsl_jax import metrics

# Columns per AP block: temporaries are a few arrays of label_block x images elements
# (256 x 107,859 ~ 28M: ~0.1 GB each in float32/int32).
DEFAULT_LABEL_BLOCK = 256


# ----------------------------------------------------------------------------- validation


def _is_real(dtype) -> bool:
  """Whether ``dtype`` is a float, int or bool dtype (what scores may be)."""
  return (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
          or dtype == jnp.bool_)


def _as_array(name: str, x) -> jax.Array | np.ndarray:
  """``x`` unchanged if it is a jax.Array, else as a NumPy array; ValueError unless 2-D."""
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [images, labels]; expected ndim 2, got ndim {x.ndim} "
                     f"(shape {x.shape})")
  return x


@jax.jit
def _count_invalid(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(# non-finite scores, # labels not in {-1, 0, 1}) of ``scores, labels: [images, L]``."""
  if jnp.issubdtype(scores.dtype, jnp.floating):
    nonfinite = jnp.sum(~jnp.isfinite(scores), dtype=jnp.int32)
  else:
    nonfinite = jnp.zeros((), jnp.int32)
  bad = jnp.sum((labels != 1) & (labels != -1) & (labels != 0), dtype=jnp.int32)
  return nonfinite, bad


def _check_values(name: str, scores, labels) -> tuple[jax.Array, jax.Array]:
  """Checks dtypes, puts NumPy inputs on device once, then counts bad values there.

  Raises ValueError for a non-real dtype, a non-finite score or a label state not in
  {-1, 0, 1}. Returns (scores, labels) as jax.Arrays (jax.Array inputs unchanged).
  """
  if not _is_real(scores.dtype):
    raise ValueError(f"{name} must be real numbers; expected a float or int dtype, got "
                     f"{scores.dtype}")
  if not _is_real(labels.dtype):
    raise ValueError(f"labels must hold the states -1/0/1; expected an int or float dtype, got "
                     f"{labels.dtype}")
  scores, labels = (x if isinstance(x, jax.Array) else jax.device_put(x)
                    for x in (scores, labels))
  nonfinite, bad = (int(v) for v in _count_invalid(scores, labels))
  if nonfinite:
    raise ValueError(f"{name} must be finite; expected no NaN/inf, got {nonfinite} non-finite "
                     "values")
  if bad:
    raise ValueError(f"labels must only contain the states -1, 0, 1; expected values in "
                     f"{{-1, 0, 1}}, got {bad} other values")
  return scores, labels


def _check_same_shape(name: str, scores, labels_shape: tuple[int, ...]) -> None:
  """ValueError unless ``scores.shape == labels_shape``."""
  if tuple(scores.shape) != tuple(labels_shape):
    raise ValueError(f"{name} and labels must have matching shapes; expected {name}.shape == "
                     f"{tuple(labels_shape)}, got {tuple(scores.shape)}")


# ----------------------------------------------------------------------------- AP


def _ap_block(scores_t: jax.Array, labels_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """AP (sklearn tie rule) of each row of ``scores_t: [C, images]`` float32.

  Args:
    scores_t: [C, images] float32, one label per row.
    labels_t: [C, images] int8 states 1 / -1 / 0 (0 = unknown, ignored).

  Returns:
    (ap float32 [C], number of positives int32 [C]); ap = 0 where there is no positive.
  """
  num_rows = scores_t.shape[1]
  key = jnp.where(labels_t != 0, -scores_t, jnp.inf)  # ascending key = descending score
  positive = (labels_t == 1).astype(jnp.int8)
  key, positive = lax.sort((key, positive), dimension=1, num_keys=1, is_stable=False)
  tp = jnp.cumsum(positive, axis=1, dtype=jnp.int32)
  last = jnp.ones((key.shape[0], 1), dtype=bool)
  group_end = jnp.concatenate([key[:, :-1] != key[:, 1:], last], axis=1)
  # TP count at the latest group end at or before each position (tp never decreases).
  tp_at_end = lax.cummax(jnp.where(group_end, tp, 0), axis=1)
  tp_before = jnp.pad(tp_at_end[:, :-1], ((0, 0), (1, 0)))
  rank = jnp.arange(1, num_rows + 1, dtype=jnp.float32)
  gained = (tp - tp_before).astype(jnp.float32)
  total = jnp.sum(jnp.where(group_end, gained * (tp.astype(jnp.float32) / rank), 0.0), axis=1)
  num_positive = tp[:, -1]
  ap = jnp.where(num_positive > 0, total / jnp.maximum(num_positive, 1).astype(jnp.float32),
                 0.0)
  return ap, num_positive


def _ap_columns(scores: jax.Array, labels: jax.Array, blocks: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """Per-label AP of the columns listed in ``blocks: [B, C]`` int32 (all blocks one shape).

  Args:
    scores: [images, all labels] float32.
    labels: [images, all labels] int8.
    blocks: [B, C] column ids of ``scores``.

  Returns:
    (ap float32 [B * C], number of positives int32 [B * C]) in the order of ``blocks``.
  """
  def one_block(cols):
    return _ap_block(jnp.take(scores, cols, axis=1).T, jnp.take(labels, cols, axis=1).T)

  ap, num_positive = lax.map(one_block, blocks)
  return ap.reshape(-1), num_positive.reshape(-1)


def _blocks(cols: np.ndarray, label_block: int) -> np.ndarray:
  """``cols`` [C] split into equal blocks [B, min(label_block, C)], padded with ``cols[0]``."""
  size = max(1, min(label_block, cols.size))
  num_blocks = -(-cols.size // size)
  padded = np.full(num_blocks * size, cols[0], dtype=np.int32)
  padded[:cols.size] = cols
  return padded.reshape(num_blocks, size)


@functools.partial(jax.jit, static_argnames=("label_block",))
def _ap_all(scores: jax.Array, labels: jax.Array, label_block: int) -> jax.Array:
  """Per-label AP of every column of ``scores, labels: [images, L]`` -> float32 [padded L]."""
  blocks = jnp.asarray(_blocks(np.arange(scores.shape[1]), label_block))
  return _ap_columns(scores.astype(jnp.float32), labels.astype(jnp.int8), blocks)[0]


def average_precision_per_label_device(scores, labels,
                                       label_block: int = DEFAULT_LABEL_BLOCK) -> np.ndarray:
  """Per-label AP on device, as ``metrics.average_precision_per_label`` (sklearn tie rule).

  Args:
    scores: [images, labels] real, finite; NumPy or jax.Array (cast to float32).
    labels: [images, labels] states 1 / -1 / 0 (0 = unknown, dropped).
    label_block: columns per block.

  Returns:
    ap: float32 [labels]; 0 for a label with no positive.
  """
  scores = _as_array("scores", scores)
  labels = _as_array("labels", labels)
  _check_same_shape("scores", scores, labels.shape)
  scores, labels = _check_values("scores", scores, labels)
  if scores.shape[0] == 0 or scores.shape[1] == 0:
    return np.zeros(scores.shape[1], np.float32)
  return np.asarray(_ap_all(scores, labels, label_block))[:scores.shape[1]]


# ----------------------------------------------------------------------------- top-K


def _topk_counts(scores_view: jax.Array, positive_view: jax.Array, kmax: int
                 ) -> dict[str, jax.Array]:
  """Counts for P/R/F1@k, every k <= kmax at once.

  Args:
    scores_view: [images, C] float32, the view's columns.
    positive_view: [images, C] bool, state == 1.
    kmax: the largest k.

  Returns:
    {"tp_at": int32 [kmax] (TP of the top-k for k = 1..kmax), "num_positive": int32 scalar,
     "images_with_positive": int32 scalar}.
  """
  _, top = lax.top_k(scores_view, kmax)
  hit = jnp.take_along_axis(positive_view, top, axis=1).astype(jnp.int32)
  return {
      "tp_at": jnp.sum(jnp.cumsum(hit, axis=1), axis=0, dtype=jnp.int32),
      "num_positive": jnp.sum(positive_view, dtype=jnp.int32),
      "images_with_positive": jnp.sum(jnp.any(positive_view, axis=1), dtype=jnp.int32),
  }


# ----------------------------------------------------------------------------- both views


@functools.partial(jax.jit, static_argnames=("kmax",))
def _evaluate_core(scores, labels, zsl_scores, gzsl_cols, zsl_cols, gzsl_blocks, zsl_blocks,
                   kmax: int) -> dict[str, jax.Array]:
  """Device part of ``evaluate_multilabel_device``: per-label APs and top-K counts.

  Args:
    scores: [images, L] scores (any real dtype; cast to float32).
    labels: [images, L] states (any real dtype; cast to int8).
    zsl_scores: [images, U] or None (then ZSL slices ``scores``).
    gzsl_cols: [G] int32 GZSL column ids; zsl_cols: [U] int32 ZSL (unseen) column ids.
    gzsl_blocks: [B, C] int32 blocked ``gzsl_cols``; zsl_blocks: [B', C'] blocked
      ``arange(U)`` (used only with ``zsl_scores``).
    kmax: the largest K.
  """
  scores = scores.astype(jnp.float32)
  labels = labels.astype(jnp.int8)
  positive = labels == 1
  out = {}
  out["gzsl_ap"], out["gzsl_num_pos"] = _ap_columns(scores, labels, gzsl_blocks)
  out["gzsl_topk"] = _topk_counts(jnp.take(scores, gzsl_cols, axis=1),
                                  jnp.take(positive, gzsl_cols, axis=1), kmax)
  zsl_positive = jnp.take(positive, zsl_cols, axis=1)
  if zsl_scores is None:
    zsl_view = jnp.take(scores, zsl_cols, axis=1)
  else:
    zsl_view = zsl_scores.astype(jnp.float32)
    out["zsl_ap"], out["zsl_num_pos"] = _ap_columns(zsl_view, jnp.take(labels, zsl_cols, axis=1),
                                                    zsl_blocks)
  out["zsl_topk"] = _topk_counts(zsl_view, zsl_positive, kmax)
  return out


def _view_result(ap: np.ndarray, num_positive: np.ndarray, topk: dict, num_images: int,
                 ks: Sequence[int], exclude_images_without_positive: bool) -> dict[str, float]:
  """One view's metrics dict (keys and order of ``metrics.evaluate_multilabel``), on host."""
  out = metrics._map_summary(ap.astype(np.float64), num_positive > 0)
  kept = int(topk["images_with_positive"]) if exclude_images_without_positive else num_images
  tp_at = np.asarray(topk["tp_at"])
  for k in ks:
    prf = metrics._prf(int(tp_at[k - 1]), k * kept, int(topk["num_positive"]))
    out[f"p@{k}"], out[f"r@{k}"], out[f"f1@{k}"] = prf["p"], prf["r"], prf["f1"]
  return out


def _evaluate_validated(scores, labels, zsl_cols: np.ndarray, gzsl_cols: np.ndarray,
                        ks: Sequence[int], exclude_images_without_positive: bool,
                        zsl_scores, label_block: int) -> dict[str, dict[str, float]]:
  """``evaluate_multilabel_device`` on inputs already validated."""
  num_images = scores.shape[0]
  if num_images == 0:  # nothing to put on device; the NumPy path gives the defined values
    return metrics.evaluate_multilabel(
        np.zeros(scores.shape, np.float32), np.zeros(labels.shape, np.int8),
        gzsl_cols[:gzsl_cols.size - zsl_cols.size], zsl_cols, ks,
        exclude_images_without_positive)
  ks = [int(k) for k in ks]
  zsl_blocks = None if zsl_scores is None else _blocks(np.arange(zsl_cols.size), label_block)
  out = jax.device_get(_evaluate_core(
      scores, labels, zsl_scores, gzsl_cols.astype(np.int32), zsl_cols.astype(np.int32),
      _blocks(gzsl_cols, label_block), zsl_blocks, kmax=max(ks)))
  num_gzsl, num_zsl = gzsl_cols.size, zsl_cols.size
  gzsl_ap, gzsl_num_pos = out["gzsl_ap"][:num_gzsl], out["gzsl_num_pos"][:num_gzsl]
  if zsl_scores is None:  # unseen columns are the last ones of the GZSL view
    zsl_ap, zsl_num_pos = gzsl_ap[num_gzsl - num_zsl:], gzsl_num_pos[num_gzsl - num_zsl:]
  else:
    zsl_ap, zsl_num_pos = out["zsl_ap"][:num_zsl], out["zsl_num_pos"][:num_zsl]
  return {
      "zsl": _view_result(zsl_ap, zsl_num_pos, out["zsl_topk"], num_images, ks,
                          exclude_images_without_positive),
      "gzsl": _view_result(gzsl_ap, gzsl_num_pos, out["gzsl_topk"], num_images, ks,
                           exclude_images_without_positive),
  }


def _prepare(scores, labels, seen_ids, unseen_ids, ks, zsl_scores):
  """Validates everything; returns (scores, labels, zsl_scores, zsl_cols, gzsl_cols)."""
  scores = _as_array("scores", scores)
  labels = _as_array("labels", labels)
  _check_same_shape("scores", scores, labels.shape)
  zsl_cols, gzsl_cols = metrics._check_views(scores.shape[1], seen_ids, unseen_ids, ks)
  scores, labels = _check_values("scores", scores, labels)
  if zsl_scores is not None:
    zsl_scores = _as_array("zsl_scores", zsl_scores)
    _check_same_shape("zsl_scores", zsl_scores, (labels.shape[0], zsl_cols.size))
    zsl_scores, _ = _check_values("zsl_scores", zsl_scores, np.zeros((), np.int8))
  return scores, labels, zsl_scores, zsl_cols, gzsl_cols


def evaluate_multilabel_device(scores, labels, seen_ids: Sequence[int],
                               unseen_ids: Sequence[int], ks: Sequence[int] = (3, 5), *,
                               exclude_images_without_positive: bool = False,
                               zsl_scores=None, label_block: int = DEFAULT_LABEL_BLOCK
                               ) -> dict[str, dict[str, float]]:
  """ZSL and GZSL multi-label metrics on device; same result as ``metrics.evaluate_multilabel``.

  ZSL uses the columns ``unseen_ids``; GZSL the columns ``seen_ids + unseen_ids`` (that
  order). Without ``zsl_scores`` the ZSL APs are the GZSL APs of the unseen columns (the same
  scores and labels), so each column is sorted once.

  Precision: counts int32, per-label AP summed in float32 (scores cast to float32), means and
  P/R/F1 in float64 on the host; agrees with the NumPy version to ~1e-6.

  Args:
    scores: [images, all labels] real, finite; NumPy or (sharded) jax.Array.
    labels: [images, all labels] states 1 / -1 / 0; NumPy or jax.Array.
    seen_ids: [seen] column ids of the seen labels.
    unseen_ids: [unseen] column ids of the unseen labels, disjoint from ``seen_ids``.
    ks: the K of P/R/F1@K, each 1 <= k <= len(unseen_ids).
    exclude_images_without_positive: drop images with no positive among the view's columns
      before P/R/F1@K (LESA's ``is_exclude``); mAP always uses every image.
    zsl_scores: optional [images, len(unseen_ids)] scores given by the model for the unseen
      labels only; when given, ZSL uses them instead of slicing ``scores``.
    label_block: columns per AP block (memory ~ a few x label_block x images x 4 bytes).

  Returns:
    {"zsl": view, "gzsl": view}, each view {"map", "map_with_positives", "p@k", "r@k",
    "f1@k" for k in ks} as Python floats in [0, 1] — the keys of
    ``metrics.evaluate_multilabel``.
  """
  if label_block < 1:
    raise ValueError(f"label_block must be >= 1; expected a positive int, got {label_block}")
  scores, labels, zsl_scores, zsl_cols, gzsl_cols = _prepare(scores, labels, seen_ids,
                                                             unseen_ids, ks, zsl_scores)
  return _evaluate_validated(scores, labels, zsl_cols, gzsl_cols, ks,
                             exclude_images_without_positive, zsl_scores, label_block)


def chance_level_device(labels, seen_ids: Sequence[int], unseen_ids: Sequence[int],
                        ks: Sequence[int] = (3, 5), seeds: Sequence[int] = (0, 1, 2), *,
                        exclude_images_without_positive: bool = False,
                        label_block: int = DEFAULT_LABEL_BLOCK) -> dict[str, dict[str, float]]:
  """``metrics.chance_level`` on device: metrics of uniformly random scores, mean over seeds.

  The scores for seed s are ``jax.random.uniform(jax.random.key(s), labels.shape)`` drawn on
  device (float32), so the figures are chance level like the NumPy version's but not the
  same draws (they differ from ``metrics.chance_level`` by sampling noise, not by rule).

  Args:
    labels: [images, all labels] states 1 / -1 / 0; NumPy or jax.Array.
    seen_ids, unseen_ids, ks, exclude_images_without_positive: as
      ``evaluate_multilabel_device``.
    seeds: the random seeds averaged over.

  Returns:
    Same structure as ``evaluate_multilabel_device``.
  """
  if len(seeds) == 0:
    raise ValueError("seeds must not be empty; expected >= 1 seed, got ()")
  labels = _as_array("labels", labels)
  zsl_cols, gzsl_cols = metrics._check_views(labels.shape[1], seen_ids, unseen_ids, ks)
  _, labels = _check_values("labels", np.zeros((), np.float32), labels)
  draw = jax.jit(functools.partial(jax.random.uniform, shape=labels.shape, dtype=jnp.float32),
                 out_shardings=labels.sharding)
  runs = [_evaluate_validated(draw(jax.random.key(seed)), labels, zsl_cols, gzsl_cols, ks,
                              exclude_images_without_positive, None, label_block)
          for seed in seeds]
  return {view: {key: float(np.mean([run[view][key] for run in runs]))
                 for key in runs[0][view]} for view in runs[0]}
