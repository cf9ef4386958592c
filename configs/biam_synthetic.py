"""BiAM on the synthetic dataset at NUS-WIDE shapes (196 regions x 512, 925 seen + 81 unseen
labels, 300-d embeddings), labels planted through their embeddings. For scale tests.

  python -m mlzsl_jax.main train --config configs/biam_synthetic.py --workdir workdirs/syn
  --config configs/biam_synthetic.py:small=True   small shapes (fast on CPU)
"""

from mlzsl_jax.config_base import base_config, parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, small=False)
  c = base_config()
  c.data.name = "synthetic"
  c.data.embedding = "random"
  c.data.seed = 0
  c.data.num_seen = 925
  c.data.num_unseen = 81
  c.data.grid = (14, 14)
  c.data.feature_dim = 512
  c.data.emb_dim = 300
  c.data.num_train = 1024
  c.data.num_test = 256
  c.data.labels_per_image = 3
  c.model.scene_source = "mean_region"  # synthetic data stores no scene feature
  c.train.num_epochs = 2
  c.train.log_every_steps = 10
  c.eval.ks = (3, 5)
  if args.small:
    c.data.num_seen, c.data.num_unseen = 45, 15
    c.data.grid = (4, 4)
    c.data.feature_dim = 32
    c.data.emb_dim = 16
    c.data.num_train, c.data.num_test = 256, 64
    c.model.channels, c.model.heads, c.model.out_dim = 16, 2, 32
  c.data.seen_labels = tuple(range(c.data.num_seen))
  c.data.unseen_labels = tuple(range(c.data.num_seen, c.data.num_seen + c.data.num_unseen))
  return c
