"""Open Images (v4) evaluation: the official BiAM protocol, quirk included, and a per-label one.

Source: BiAM HEAD (``akshitac8/BiAM`` commit 4e391f1; ``evaluate_openimages.py`` last changed in
d6a917f, ``util_openimages.compute_AP`` / ``compute_F1``). spec/metrics.md "Open Images".

Label states: 1 = positive, -1 = negative, 0 = unknown (not annotated). Three views:

* ZSL   = ``zsl_scores [N, U]`` (the model given the U = 400 unseen embeddings only) against
  ``labels[:, S:]``;
* GZSL  = ``gzsl_scores [N, S+U]`` (all embeddings, seen first) against ``labels``;
* seen  = ``gzsl_scores[:, :S]`` against ``labels[:, :S]`` (optional: ``include_seen``; the
  official script scores the seen view with the model given the seen embeddings only, which is
  the same thing for a model that scores each label independently of the others, like BiAM).

Per view, ``protocol="official"`` (bit for bit what the script computes, tie order aside):

1. rows: keep the images with at least one positive among the view's columns;
2. AP columns: ZSL all U columns; GZSL and seen only the columns with at least one annotated
   (non-zero) entry among the kept images (4,728 of the 7,186 seen labels in their test set);
3. "AP_j" (``compute_AP``): take the kept rows where label j is annotated, then ALL annotated
   entries of those rows over every AP column of the view, flattened, ranked by score
   descending; AP = mean over the positives of precision at their rank; AP_j = 0 when that
   block holds no positive (so a ZSL column nobody annotated counts as 0). Not a per-label AP:
   two labels annotated on the same images get the same "AP". ``map`` = mean of AP_j over the
   AP columns; ``weighted_map`` = sum_j w_j AP_j / sum_j w_j with w_j = number of kept images
   positive for j (what the script logs as "WEIGHTED ... AP");
4. P/R/F1@K ("overall", ``compute_F1``): per kept image the K highest-scoring labels are
   predicted; P = TP / (K * kept images), R = TP / #(kept pairs with state 1), F1 = 2PR/(P+R),
   computed on: ZSL the U columns; seen the AP columns (``map_prediction_7186``); GZSL ALL S+U
   columns, rows filtered but columns NOT (the script passes ``prediction_7586, lab_7586`` to
   ``compute_F1``, not ``map_prediction_7586``). spec/metrics.md says "on the same filtered
   matrices" for GZSL; the official code filters only the rows there, and we follow the code.

``protocol="per_label"`` keeps steps 1, 2 and 4 and replaces step 3 by the textbook per-label AP
(``mlzsl_jax.metrics.average_precision_per_label``): label j's annotated kept images ranked by
their score for j; 0 when j has no positive; ``map`` / ``weighted_map`` over the same columns
and with the same weights as the official protocol.

Ties: tied scores form one threshold (sklearn's rule, as ``mlzsl_jax.metrics``); the official
code sorts with ``torch.sort``, whose order among tied scores is unspecified, so no
implementation matches it on tied scores. Where the script divides 0 by 0 (F1 with P = R = 0)
it prints nan; we return 0, as ``mlzsl_jax.metrics``. A view with no kept image: every value
nan.

Work is O(number of annotated entries) after one chunked pass over the dense matrices: the
official "AP_j" costs sum over kept rows of (annotated entries of the row)^2, small for Open
Images (about 10 annotated labels per test image).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from mlzsl_jax import metrics

PROTOCOLS = ("official", "per_label")
# Rows per chunk of the dense passes (keeps temporaries near 32 M elements).
_CHUNK_ELEMENTS = 1 << 25


@dataclasses.dataclass(frozen=True)
class _Entries:
  """The annotated (state != 0) entries of the kept rows of one view, in row-major order.

  Attributes:
    row: int64 [E] kept-row number (0..num_rows-1), non-decreasing.
    col: int64 [E] column of the view (0..num_cols-1).
    score: float64 [E].
    positive: bool [E] state == 1.
    num_rows: kept images.
    num_cols: columns of the view.
  """

  row: np.ndarray
  col: np.ndarray
  score: np.ndarray
  positive: np.ndarray
  num_rows: int
  num_cols: int


def _entries(scores: np.ndarray, labels: np.ndarray, cols: np.ndarray) -> _Entries:
  """Annotated entries of ``scores, labels [N, all]`` restricted to ``cols``, rows with a
  positive among ``cols`` only (step 1). Chunked over rows: no dense copy of the inputs."""
  rows, ecols, escores, epos = [], [], [], []
  kept = 0
  step = max(1, _CHUNK_ELEMENTS // max(cols.size, 1))
  contiguous = cols.size > 0 and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size))
  for start in range(0, labels.shape[0], step):
    if contiguous:  # a slice: a view, not a copy
      lab = labels[start:start + step, cols[0]:cols[0] + cols.size]
      sco = scores[start:start + step, cols[0]:cols[0] + cols.size]
    else:
      lab = labels[start:start + step][:, cols]
      sco = scores[start:start + step][:, cols]
    keep = np.flatnonzero((lab == 1).any(axis=1))
    r, c = np.nonzero(lab[keep] != 0)
    rows.append(r + kept)
    ecols.append(c)
    escores.append(sco[keep[r], c].astype(np.float64))
    epos.append(lab[keep[r], c] == 1)
    kept += keep.size
  if not rows:  # no image at all
    rows, ecols, escores, epos = [np.zeros(0, np.int64)] * 3 + [np.zeros(0, bool)]
  return _Entries(row=np.concatenate(rows).astype(np.int64),
                  col=np.concatenate(ecols).astype(np.int64),
                  score=np.concatenate(escores), positive=np.concatenate(epos),
                  num_rows=kept, num_cols=int(cols.size))


def _ap(score: np.ndarray, positive: np.ndarray) -> float:
  """AP of ``score [n]`` ranked descending with ``positive [n]`` (sklearn tie rule), 0 when
  there is no positive."""
  if not positive.any():
    return 0.0
  states = np.where(positive, 1, -1).astype(np.int8)[:, None]
  return float(metrics.average_precision_per_label(score[:, None], states)[0])


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of ``arange(s, s + l)`` for each (s, l), vectorised."""
  total = int(lengths.sum())
  before = np.cumsum(lengths) - lengths
  return np.repeat(starts - before, lengths) + np.arange(total)


def _ap_columns(entries: _Entries, ap_cols: np.ndarray, protocol: str) -> np.ndarray:
  """AP of each column in ``ap_cols`` (view columns) under ``protocol`` -> float64 [len]."""
  e = entries
  # Entries of each kept row: [row_start[r], row_start[r + 1]) (row-major order).
  row_start = np.searchsorted(e.row, np.arange(e.num_rows + 1))
  # Entries of each column, as positions in the row-major arrays.
  by_col = np.argsort(e.col, kind="stable")
  col_start = np.searchsorted(e.col[by_col], np.arange(e.num_cols + 1))
  out = np.zeros(ap_cols.size, np.float64)
  for i, j in enumerate(ap_cols):
    in_col = by_col[col_start[j]:col_start[j + 1]]  # entries of column j
    if in_col.size == 0:
      continue  # nobody annotated j: 0 (both protocols)
    if protocol == "per_label":
      out[i] = _ap(e.score[in_col], e.positive[in_col])
    else:  # official: every annotated entry of the rows annotated for j
      rows = e.row[in_col]
      block = _gather_ranges(row_start[rows], row_start[rows + 1] - row_start[rows])
      out[i] = _ap(e.score[block], e.positive[block])
  return out


def _nan_view(ks: Sequence[int]) -> dict[str, float]:
  out = {"map": math.nan, "weighted_map": math.nan, "num_images": 0, "num_labels": 0}
  for k in ks:
    out[f"p@{k}"] = out[f"r@{k}"] = out[f"f1@{k}"] = math.nan
  return out


def _view(scores: np.ndarray, labels: np.ndarray, cols: np.ndarray, ks: Sequence[int],
          protocol: str, column_filter: bool, f1_on_ap_columns: bool, name: str
          ) -> dict[str, float]:
  """Metrics of one view: the columns ``cols`` of validated ``scores, labels [N, all]``."""
  e = _entries(scores, labels, cols)
  if e.num_rows == 0:
    return _nan_view(ks)
  annotated = np.bincount(e.col, minlength=e.num_cols) > 0
  ap_cols = np.flatnonzero(annotated) if column_filter else np.arange(e.num_cols)
  ap = _ap_columns(e, ap_cols, protocol)
  weight = np.bincount(e.col[e.positive], minlength=e.num_cols)[ap_cols].astype(np.float64)
  out = {
      "map": float(ap.mean()) if ap.size else math.nan,
      "weighted_map": float((weight * ap).sum() / weight.sum()) if weight.sum() else math.nan,
      "num_images": int(e.num_rows),
      "num_labels": int(ap_cols.size),
  }
  f1_cols = cols[ap_cols] if f1_on_ap_columns else cols
  for k in ks:
    if k > f1_cols.size:
      raise ValueError(f"ks: K={k} exceeds the {f1_cols.size} label columns of the {name} "
                       f"view's P/R/F1 matrix; expected each K <= {f1_cols.size}")
  # The rows kept by step 1 are exactly the rows with a positive among f1_cols (a positive is
  # annotated, so the seen view's column filter never removes one): LESA's is_exclude.
  tp, kept, num_positive = metrics._topk_counts(  # pylint: disable=protected-access
      scores, labels, f1_cols, ks, exclude_images_without_positive=True)
  assert kept == e.num_rows, (kept, e.num_rows)
  for k in ks:
    prf = metrics._prf(tp[k], k * kept, num_positive)  # pylint: disable=protected-access
    out[f"p@{k}"], out[f"r@{k}"], out[f"f1@{k}"] = prf["p"], prf["r"], prf["f1"]
  return out


def _check_inputs(zsl_scores, gzsl_scores, labels, num_seen, ks, protocol
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, tuple[int, ...]]:
  gzsl_scores, labels = metrics._check_pair(gzsl_scores, labels)  # pylint: disable=protected-access
  num_labels = labels.shape[1]
  if isinstance(num_seen, bool) or not isinstance(num_seen, (int, np.integer)) or not (
      0 <= num_seen < num_labels):
    raise ValueError(f"num_seen must be an int in [0, {num_labels}) (labels has {num_labels} "
                     f"columns, seen first); got {num_seen!r}")
  num_seen = int(num_seen)
  zsl_scores = metrics._check_scores(np.asarray(zsl_scores))  # pylint: disable=protected-access
  want = (labels.shape[0], num_labels - num_seen)
  if zsl_scores.shape != want:
    raise ValueError(f"zsl_scores must have shape [images, unseen] = {list(want)} (labels "
                     f"{list(labels.shape)}, num_seen {num_seen}); got {list(zsl_scores.shape)}")
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
  ks = tuple(ks)
  if not ks:
    raise ValueError("ks must not be empty; expected >= 1 value of K, got ()")
  for k in ks:
    metrics._check_k(k, want[1], name="ks")  # pylint: disable=protected-access
  return zsl_scores, gzsl_scores, labels, num_seen, ks


def evaluate_open_images(zsl_scores: np.ndarray, gzsl_scores: np.ndarray, labels: np.ndarray,
                         num_seen: int, ks: Sequence[int] = (10, 20),
                         protocol: str = "official", include_seen: bool = False
                         ) -> dict[str, dict[str, float]]:
  """Open Images ZSL / GZSL metrics (see the module docstring for the exact protocol).

  Args:
    zsl_scores: [N, U] scores of the model given the U unseen embeddings only.
    gzsl_scores: [N, S+U] scores given all embeddings, seen columns first.
    labels: [N, S+U] states 1 / -1 / 0, same column order.
    num_seen: S.
    ks: the K of P/R/F1@K, each <= U (and <= the seen view's AP columns if ``include_seen``).
    protocol: "official" (BiAM's script, reproduces the paper's table) or "per_label".
    include_seen: also return the seen-only view the script logs ("SEEN AP on 4728 classes").

  Returns:
    {"zsl": view, "gzsl": view} (+ "seen"), each view {"map", "weighted_map", "p@k", "r@k",
    "f1@k" for k in ks (fractions in [0, 1]), "num_images" (kept images), "num_labels" (AP
    columns)}.
  """
  zsl_scores, gzsl_scores, labels, num_seen, ks = _check_inputs(
      zsl_scores, gzsl_scores, labels, num_seen, ks, protocol)
  num_labels = labels.shape[1]
  unseen_labels = labels[:, num_seen:]
  out = {
      "zsl": _view(zsl_scores, unseen_labels, np.arange(num_labels - num_seen), ks, protocol,
                   column_filter=False, f1_on_ap_columns=False, name="ZSL"),
      "gzsl": _view(gzsl_scores, labels, np.arange(num_labels), ks, protocol,
                    column_filter=True, f1_on_ap_columns=False, name="GZSL"),
  }
  if include_seen:
    out["seen"] = _view(gzsl_scores, labels, np.arange(num_seen), ks, protocol,
                        column_filter=True, f1_on_ap_columns=True, name="seen")
  return out


def chance_level(labels: np.ndarray, num_seen: int, ks: Sequence[int] = (10, 20),
                 protocol: str = "official", seeds: Sequence[int] = (0, 1, 2),
                 include_seen: bool = False) -> dict[str, dict[str, float]]:
  """``evaluate_open_images`` for uniformly random scores, mean over ``seeds``.

  Scores for seed s: ``np.random.default_rng(s).random(labels.shape, dtype=np.float32)`` as
  the GZSL scores; the ZSL scores are their unseen columns (random scores are independent per
  label). Memory: one float32 [N, S+U] array at a time.
  """
  labels = metrics._check_labels(labels)  # pylint: disable=protected-access
  if len(seeds) == 0:
    raise ValueError("seeds must not be empty; expected >= 1 seed, got ()")
  runs = []
  for seed in seeds:
    scores = np.random.default_rng(seed).random(labels.shape, dtype=np.float32)
    runs.append(evaluate_open_images(scores[:, num_seen:], scores, labels, num_seen, ks,
                                     protocol, include_seen))
  return {view: {key: float(np.mean([run[view][key] for run in runs])) for key in runs[0][view]}
          for view in runs[0]}


def _cell(value: float) -> str:
  return "nan" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def format_table(results: Mapping[str, Mapping[str, float]],
                 chance: Mapping[str, Mapping[str, float]] | None,
                 ks: Sequence[int] = (10, 20), protocol: str = "official") -> str:
  """Paper-style text table (x100, one decimal) of ``evaluate_open_images`` results.

  Rows ZSL, GZSL (and "Seen" when present), then the same for ``chance``; columns P@k R@k
  F1@k per k, mAP, wmAP (label-weighted), #labels (AP columns), #images (kept); a footnote
  names the protocol.
  """
  header = ["Setting"] + [f"{m}@{k}" for k in ks for m in ("P", "R", "F1")] + [
      "mAP", "wmAP", "#labels", "#images"]
  names = [("ZSL", "zsl"), ("GZSL", "gzsl"), ("Seen", "seen")]
  rows = [(n, results[v]) for n, v in names if v in results]
  if chance is not None:
    rows += [(f"{n} (chance)", chance[v]) for n, v in names if v in chance]
  width0 = max(len(header[0]), *(len(n) for n, _ in rows))
  widths = [width0] + [max(len(h), 5) for h in header[1:]]

  def line(cells):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))

  lines = [line(header)]
  lines.append("-" * len(lines[0]))
  for name, view in rows:
    cells = [name] + [_cell(view[f"{m}@{k}"]) for k in ks for m in ("p", "r", "f1")]
    cells += [_cell(view["map"]), _cell(view["weighted_map"]),
              str(int(round(view["num_labels"]))), str(int(round(view["num_images"])))]
    lines.append(line(cells))
  if protocol == "official":
    note = ("Open Images protocol 'official' (BiAM evaluate_openimages.py): images with >= 1 "
            "positive; mAP = mean over the labels of 'AP_j' computed on ALL annotated entries "
            "of the images annotated for j (not a per-label AP); GZSL/Seen: labels annotated "
            "at least once; GZSL P/R/F1 over all labels.")
  else:
    note = ("Open Images protocol 'per_label': images and labels as 'official', mAP = mean "
            "of the textbook per-label AP over the images annotated for each label.")
  lines.append(note + " wmAP: AP weighted by the label's number of positive images. "
               "P/R/F1@K: overall (micro). All values x100.")
  return "\n".join(lines)


def evaluation_protocol(protocol: str):
  """An ``mlzsl_jax.evaluate.PROTOCOLS`` entry for ``protocol`` ("official" / "per_label"):
  ``fn(zsl_scores, gzsl_scores, labels, num_seen, config) -> (result, table)`` with result
  {"zsl", "gzsl", "chance": {"zsl", "gzsl"}}; reads ``config.eval.ks`` and
  ``config.eval.chance_seeds`` (chance: that many seeds, 0 = no chance rows)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")

  def run(zsl_scores, gzsl_scores, labels, num_seen: int, config) -> tuple[dict, str]:
    ks = tuple(config.eval.ks)
    result = evaluate_open_images(zsl_scores, gzsl_scores, labels, num_seen, ks, protocol)
    seeds = tuple(range(int(config.eval.chance_seeds)))
    result["chance"] = chance_level(labels, num_seen, ks, protocol, seeds) if seeds else None
    return result, format_table(result, result["chance"], ks, protocol)

  run.__name__ = f"open_images_{protocol}"
  run.__doc__ = f"Open Images protocol {protocol!r} (mlzsl_jax.metrics_open_images)."
  return run
