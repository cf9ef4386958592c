"""LESA (shared multi-attention, CVPR 2020) on the shipped digits demo.

Official NUS-WIDE settings kept: T = 10 attention modules sharing one MLP, the first 2x2 conv
+ BatchNorm + ReLU block, constant L2-normalised label embeddings, loss weights
λ_dist 0.1 / λ_rel 0.001 / λ_div 0.01, TF1 RMSProp (lr 1e-3, decay 0.9, momentum 0.9,
epsilon 1.0) with a constant learning rate. Not implemented: the official learning-rate decay
(x0.8 when an exponential moving average of validation F1 drops, patience 5 evaluations); it
needs a validation split and evaluation inside the training loop, so the rate stays constant.
Scaled to digits: the conv block's width (512 = VGG's width on NUS-WIDE, kept equal to the
input there) becomes 64 for 16-d 4x4-pixel regions, the width the BiAM demo uses, so the two
rows compare attention mechanisms at a similar capacity; its 2x2 window over the 6x6 grid
sees 8x8 pixels, one digit's size.

  python -m mlzsl_jax.main train --config configs/lesa_digits.py --workdir workdirs/lesa
  --config configs/lesa_digits.py:smoke=True   tiny sizes for tests
"""

from mlzsl_jax.config_base import demo_config, parse_arg
from mlzsl_jax.models import lesa


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, data="mosaic")
  c = demo_config(args.data, smoke=args.smoke)
  c.model = lesa.model_config()
  c.model.conv_channels = 64  # see above; official 512 on 512-d VGG regions
  c.model.num_modules = 10  # official T
  c.loss = lesa.loss_config()  # official weights
  c.optimizer.name = "rmsprop"  # TF1 RMSPropOptimizer(lr, decay, momentum, epsilon)
  c.optimizer.lr = 1e-3
  c.optimizer.b2 = 0.9  # decay
  c.optimizer.b1 = 0.9  # momentum
  c.optimizer.eps = 1.0  # epsilon (inside the sqrt, TF1)
  c.optimizer.weight_decay = 0.0  # the script adds no L2 to the gradients
  c.optimizer.schedule = "constant"  # the EMA-of-F1 decay is not implemented (see above)
  if args.smoke:
    c.model.conv_channels = 16
    c.model.num_modules = 4
  return c
