"""What several test files share: loop-based NumPy references, and the tiny train-step
set-up of the sharded == unsharded tests (a 10-label dataset description, its config,
batches, a few train steps)."""

import jax
import numpy as np

from mlzsl_jax import sharding as shd
from mlzsl_jax.config_base import base_config
from mlzsl_jax.data.source import DatasetMeta


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


# ----------------------------------------------------------------- tiny train steps
# 10 labels (0..6 seen, 7..9 unseen), a 4x4 grid of 10-d regions, batches of 8 images.

def tiny_meta(scene_dim: int = 12) -> DatasetMeta:
  """The tiny dataset: 'random' unit label embeddings [10, 6], grid (4, 4), 10-d regions,
  scene [scene_dim] (0: none), 8 training images."""
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(10, 6)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return DatasetMeta(name="tiny", label_names=tuple(map(str, range(10))),
                     embeddings={"random": emb}, grid_shape=(4, 4), feature_dim=10,
                     scene_dim=scene_dim, num_examples={"train": 8})


def tiny_config():
  """``base_config`` on the tiny dataset ('random' embeddings, labels 0..6 seen, 7..9
  unseen), batches of 8; the model and loss are the base config's (BiAM)."""
  c = base_config()
  c.data.name = "none"
  c.data.embedding = "random"
  c.data.seen_labels = tuple(range(7))
  c.data.unseen_labels = (7, 8, 9)
  c.train.batch_size = 8
  return c


def tiny_biam_config():
  """``tiny_config`` with a small BiAM: 8 channels, 2 heads, out_dim 8, top-3 pooling."""
  c = tiny_config()
  c.model.channels = 8
  c.model.heads = 2
  c.model.out_dim = 8
  c.model.top_k = 3
  return c


def tiny_batch(seed: int = 0, states=(-1, 1), scene_dim: int = 12) -> dict[str, np.ndarray]:
  """Batch ``seed``: features float16 [8, 16, 10], labels int8 [8, 7] drawn from ``states``
  (label 0 always positive), scene float16 [8, scene_dim] unless scene_dim is 0."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(list(states), size=(8, 7)).astype(np.int8)
  labels[:, 0] = 1
  batch = {"features": rng.normal(size=(8, 16, 10)).astype(np.float16), "labels": labels}
  if scene_dim:
    batch["scene"] = rng.normal(size=(8, scene_dim)).astype(np.float16)
  return batch


def train_steps(trainer, make_batch, n_steps: int = 2):
  """``n_steps`` train steps from ``trainer``'s initial state on the batches
  ``make_batch(0)``, ``make_batch(1)``, ...: (final state, each step's metrics dict)."""
  state = trainer.init_state()
  emb = jax.device_put(trainer.emb_seen, trainer.repl)
  metrics = []
  for i in range(n_steps):
    batch = shd.host_to_global(make_batch(i), trainer.batch_sharding)
    state, step_metrics = trainer.train_step(state, batch, emb)
    metrics.append(step_metrics)
  return state, metrics
