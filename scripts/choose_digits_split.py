"""Chooses the demo's seen/unseen digit split from TRAINING-pool digits only.

For every 3-digit unseen set (120 of them), a ridge regression maps single train-pool digit
images (64 pixels) of the 7 seen digits to their attribute embeddings; the train-pool images
of the 3 unseen digits are then classified by the nearest unseen attribute vector (cosine).
Test-pool images are never read. Prints the splits ranked by this zero-shot probe accuracy
(chance = 1/3).

  .venv/bin/python scripts/choose_digits_split.py [--seed 0] [--top 10]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from mlzsl_jax.data import attributes, digits_mosaic


def probe_accuracy(x: np.ndarray, y: np.ndarray, emb: np.ndarray, unseen: tuple[int, ...],
                   ridge: float = 1.0) -> float:
  """x [N, 64] pixels, y [N] digits, emb [10, A] -> top-1 accuracy among the unseen digits."""
  seen_mask = ~np.isin(y, unseen)
  xs = np.c_[x[seen_mask], np.ones(seen_mask.sum())]
  target = emb[y[seen_mask]]
  w = np.linalg.solve(xs.T @ xs + ridge * np.eye(xs.shape[1]), xs.T @ target)
  xu = np.c_[x[~seen_mask], np.ones((~seen_mask).sum())]
  pred = xu @ w
  pred /= np.linalg.norm(pred, axis=1, keepdims=True) + 1e-12
  choice = np.asarray(unseen)[np.argmax(pred @ emb[list(unseen)].T, axis=1)]
  return float(np.mean(choice == y[~seen_mask]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0, help="data.seed of the dataset")
  parser.add_argument("--top", type=int, default=10)
  args = parser.parse_args()
  images, targets = digits_mosaic.load_digit_images()
  pool = digits_mosaic.split_pools(len(images), args.seed)["train"]
  x = images[pool].reshape(len(pool), -1).astype(np.float64) / 16.0
  y = targets[pool]
  emb = attributes.attribute_embeddings().astype(np.float64)
  ranked = sorted(((probe_accuracy(x, y, emb, u), u)
                   for u in itertools.combinations(range(10), 3)), reverse=True)
  accs = np.array([a for a, _ in ranked])
  print(f"{len(ranked)} splits; probe top-1 among 3 unseen: median {np.median(accs):.3f}, "
        f"min {accs.min():.3f}, max {accs.max():.3f} (chance 0.333)")
  for acc, unseen in ranked[:args.top]:
    print(f"unseen {unseen}: {acc:.3f}")
  for acc, unseen in ranked:
    if unseen == (3, 6, 9):
      print(f"(unseen (3, 6, 9): {acc:.3f})")


if __name__ == "__main__":
  main()
