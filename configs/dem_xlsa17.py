"""DEM on the xlsa17 benchmarks (AwA2 / CUB, GBU protocol) from the user's own files.

  python -m mlzsl_jax.main train --config configs/dem_xlsa17.py:subset=AWA2 \\
      --config.data.manual_dir=/path/to/xlsa17/data --workdir workdirs/dem_awa2

Official values (lzrobots/DeepEmbeddingModel_ZSL, AwA2_GBU.py / CUB1_GBU.py): raw class
attributes ('original_att'); AwA2 85 -> 1600 -> 2048, lambda 1e-3, Adam lr 1e-4, batch 64,
Euclidean 1-NN; CUB 312 -> 1200 -> 2048, lambda 1e-2, lr 1e-5, batch 100, cosine 1-NN.
Reported per-class top-1 (official README): AwA2 T1 67.1, GZSL u 30.5 / s 86.4 / H 45.1;
CUB T1 51.7, u 19.6 / s 57.9 / H 29.2.
"""

from mlzsl_jax.config_base import base_config, parse_arg
from mlzsl_jax.models import dem

# subset: (seen, unseen, hidden, l2_lambda, lr, batch, metric)
SUBSETS = {
    "AWA2": (40, 10, 1600, 1e-3, 1e-4, 64, "euclidean"),
    "AWA1": (40, 10, 1600, 1e-3, 1e-4, 64, "euclidean"),
    "CUB": (150, 50, 1200, 1e-2, 1e-5, 100, "cosine"),
}


def get_config(arg: str | None = None):
  args = parse_arg(arg, subset="AWA2")
  if args.subset.upper() not in SUBSETS:
    raise ValueError(f"config argument subset={args.subset!r}: expected one of {sorted(SUBSETS)}")
  seen, unseen, hidden, lam, lr, batch, metric = SUBSETS[args.subset.upper()]
  c = base_config()
  c.data.name = "xlsa17"
  c.data.subset = args.subset.upper()
  c.data.manual_dir = ""  # folder with res101.mat and att_splits.mat (needed for the build)
  c.data.embedding = "original_att"
  c.data.train_split = "trainval"
  c.data.test_split = "test"
  # Our xlsa17 label order puts the seen classes first (see mlzsl_jax/data/xlsa17.py).
  c.data.seen_labels = tuple(range(seen))
  c.data.unseen_labels = tuple(range(seen, seen + unseen))
  c.model = dem.model_config()
  c.model.hidden = hidden
  c.model.l2_lambda = lam
  c.model.metric = metric
  c.loss = dem.loss_config()
  c.optimizer.lr = lr
  c.optimizer.schedule = "constant"
  c.optimizer.weight_decay = 0.0  # the official weight decay is the model's regularizer
  c.train.batch_size = batch
  c.train.num_epochs = 100
  c.train.checkpoint_every_steps = 2000
  c.train.log_every_steps = 500
  c.eval.protocol = "single_label"
  c.eval.batch_size = 500
  return c
