"""Loop-based NumPy references shared by several test files."""

import numpy as np


def ranking_loss_ref(scores, states):
  """spec/biam.md ranking loss: per image, the sum of hinges max(0, 1 + s_n - s_p) over
  (positive, negative) pairs / (pairs with a positive hinge + 1e-8); mean over images."""
  per_image = []
  for s, y in zip(scores, states):
    total, count = 0.0, 0
    for p in range(len(y)):
      for n in range(len(y)):
        if y[p] == 1 and y[n] == -1:
          h = max(0.0, 1 + s[n] - s[p])
          total += h
          count += h > 0
    per_image.append(total / (count + 1e-8))
  return np.mean(per_image)
