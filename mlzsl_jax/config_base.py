"""Every knob with its default. Config files in ``configs/`` start from ``base_config()``.

Conventions (see shared/design.md): ``get_config(arg)`` returns a fully specified, locked
ConfigDict, so an unknown key or a wrong type fails at start naming the key.
"""

from __future__ import annotations

import ml_collections

from mlzsl_jax.models import biam


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 3483
  c.dtype = "float32"  # compute dtype; params stay float32

  c.data = ml_collections.ConfigDict()
  c.data.name = ""
  c.data.data_dir = ""  # '' = the dataset's default location
  c.data.embedding = ""  # label-embedding source(s) stored with the dataset, comma-separated
  c.data.seen_labels = (0,)  # label ids used for training
  c.data.unseen_labels = (0,)  # label ids never seen in training (ZSL)
  c.data.train_split = "train"
  c.data.test_split = "test"

  c.model = biam.model_config()  # another model: c.model = <module>.model_config()

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "ranking"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # 'adam' (torch Adam, L2 in the gradient) or 'rmsprop' (TF1)
  c.optimizer.lr = 1e-3
  c.optimizer.b1 = 0.9  # adam beta1 / rmsprop momentum
  c.optimizer.b2 = 0.999  # adam beta2 / rmsprop decay
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 5e-4  # L2 added to the gradient (torch Adam), not AdamW
  c.optimizer.schedule = "warmup_cosine"  # or 'constant'
  c.optimizer.warmup_epochs = 3
  c.optimizer.lr_min = 5e-4

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global, over all devices and processes
  c.train.num_epochs = 40
  c.train.shuffle_buffer = 16384
  c.train.drop_images_without_positive = True
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 0  # 0: evaluate only at the end
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 3
  c.train.prefetch = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "multilabel"  # or 'single_label' (per-class top-1, GZSL H; DEM's benchmarks)
  c.eval.batch_size = 256
  c.eval.ks = (3, 5)
  c.eval.exclude_images_without_positive = False
  c.eval.chance_seeds = 3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1
  # (regex on a parameter path like 'stem/conv/kernel', axis name per trailing dimension).
  # Default: the output dimension of every kernel and bias over 'model' (column split).
  c.mesh.partition_rules = ((r".*/kernel", ("model",)), (r".*/bias", ("model",)))
  return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'a=1,b=x' -> ConfigDict with typed values, starting from ``defaults``.

  Unknown switches fail with the switch's name.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r}: unknown; known: {sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return out
