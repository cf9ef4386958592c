"""One attention per label (LESA's comparison row) on the shipped digits demo.

Same backbone, embeddings and optimizer as configs/lesa_digits.py (the 2x2 conv block at
width 64, constant L2-normalised label embeddings, TF1 RMSProp lr 1e-3 / decay 0.9 /
momentum 0.9 / epsilon 1.0, constant rate; LESA's EMA-of-F1 decay is not implemented), so the
two rows differ only in the attention: here a bilinear attention per label (f_rᵀ·W_a·e_j,
softmax over the 36 regions) with its own W_a, trained with the plain hinge ranking loss.

  python -m mlzsl_jax.main train --config configs/attention_per_label_digits.py \
      --workdir workdirs/attention_per_label
  --config configs/attention_per_label_digits.py:smoke=True   tiny sizes for tests
"""

from mlzsl_jax.config_base import demo_config, parse_arg
from mlzsl_jax.models import attention_per_label


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, data="mosaic")
  c = demo_config(args.data, smoke=args.smoke)
  c.model = attention_per_label.model_config()
  c.model.conv_channels = 64  # as configs/lesa_digits.py (official 512 on 512-d VGG regions)
  c.model.share_projection = False  # a separate W_a for the attention
  c.loss = attention_per_label.loss_config()  # 'ranking'
  c.optimizer.name = "rmsprop"  # TF1 RMSPropOptimizer(lr, decay, momentum, epsilon)
  c.optimizer.lr = 1e-3
  c.optimizer.b2 = 0.9  # decay
  c.optimizer.b1 = 0.9  # momentum
  c.optimizer.eps = 1.0  # epsilon (inside the sqrt, TF1)
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  if args.smoke:
    c.model.conv_channels = 16
  return c
