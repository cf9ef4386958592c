"""Chooses the demo's seen/unseen digit split from TRAINING-pool digits only.

For every 3-digit unseen set (120 of them) a ridge regression maps single train-pool digit
images (64 pixels) of the 7 seen digits to their class embeddings, fitted on half of the
seen-digit images. On the held-out train-pool images (the other half of the seen digits and
every image of the unseen digits) each unseen label ranks the images by the cosine between
the predicted and the label's embedding: the mean AP over the unseen labels, divided by the
chance AP (their frequency), is the split's zero-shot probe score, the same quantity the demo
reports (ZSL mAP against chance). Also shown: top-1 among the 3 unseen digits on their images.
Test-pool images are never read.

  .venv/bin/python scripts/choose_digits_split.py [--seed 0] [--embedding attributes]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from mlzsl_jax.data import attributes, digits_mosaic

EMBEDDINGS = {"attributes": attributes.attribute_embeddings,
              "attributes_centred": attributes.centred_attribute_embeddings}


def average_precision(relevant: np.ndarray, scores: np.ndarray) -> float:
  """AP of a ranking (tie-free scores): mean precision at the ranks of the relevant items."""
  order = np.argsort(-scores)
  hits = relevant[order].astype(np.float64)
  ranks = np.arange(1, len(hits) + 1)
  return float(np.sum(np.cumsum(hits) / ranks * hits) / max(hits.sum(), 1))


def probe(x: np.ndarray, y: np.ndarray, emb: np.ndarray, unseen: tuple[int, ...],
          ridge: float = 1.0) -> tuple[float, float]:
  """x [N, 64] pixels, y [N] digits, emb [10, E] -> (mAP / chance, top-1 among unseen)."""
  seen_idx = np.where(~np.isin(y, unseen))[0]
  fit = seen_idx[::2]
  held = np.r_[seen_idx[1::2], np.where(np.isin(y, unseen))[0]]
  xs = np.c_[x[fit], np.ones(len(fit))]
  w = np.linalg.solve(xs.T @ xs + ridge * np.eye(xs.shape[1]), xs.T @ emb[y[fit]])
  pred = np.c_[x[held], np.ones(len(held))] @ w
  pred /= np.linalg.norm(pred, axis=1, keepdims=True) + 1e-12
  scores = pred @ emb.T  # [held, 10]
  ratio = np.mean([average_precision(y[held] == l, scores[:, l]) / np.mean(y[held] == l)
                   for l in unseen])
  on_unseen = np.isin(y[held], unseen)
  choice = np.asarray(unseen)[np.argmax(scores[on_unseen][:, list(unseen)], axis=1)]
  return float(ratio), float(np.mean(choice == y[held][on_unseen]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0, help="data.seed of the dataset")
  parser.add_argument("--embedding", default="attributes", choices=sorted(EMBEDDINGS))
  parser.add_argument("--top", type=int, default=10)
  args = parser.parse_args()
  images, targets = digits_mosaic.load_digit_images()
  pool = digits_mosaic.split_pools(len(images), args.seed)["train"]
  x = images[pool].reshape(len(pool), -1).astype(np.float64) / 16.0
  y = targets[pool]
  emb = EMBEDDINGS[args.embedding]().astype(np.float64)
  ranked = sorted(((*probe(x, y, emb, u), u) for u in itertools.combinations(range(10), 3)),
                  reverse=True)
  ratios = np.array([r for r, _, _ in ranked])
  print(f"{args.embedding}, data.seed={args.seed}: 120 splits; probe ZSL mAP / chance: "
        f"median {np.median(ratios):.2f}, min {ratios.min():.2f}, max {ratios.max():.2f}")
  for ratio, top1, unseen in ranked[:args.top]:
    print(f"unseen {unseen}: mAP/chance {ratio:.2f}, top-1 among unseen {top1:.3f} "
          f"(chance 0.333)")


if __name__ == "__main__":
  main()
