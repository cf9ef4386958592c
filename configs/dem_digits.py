"""DEM (semantic -> visual embedding) on the shipped digits.

Two forms, chosen by the config argument:
  configs/dem_digits.py                         multi-label digits_mosaic (the comparison
                                                table): labels scored by -||mean-pooled
                                                region feature - embedded label||^2
  configs/dem_digits.py:single_label=True,variant=single|fusion|text
                                                DEM's own benchmark shape: one digit per
                                                image, one 64-pixel visual feature, per-class
                                                top-1 ZSL and GZSL (u, s, H)
Semantic sources: 'single' = the seven-segment table (`seven_segment`); 'fusion' = seven
segments + sentence embeddings of the label names when the optional `sentence` extra was
installed at dataset build time (`words=True`), else seven segments + the handwritten-stroke
facts (`strokes`, the default, needs nothing optional); 'text' = a BiLSTM over one written
description per digit (`description_tokens`).

  python -m mlzsl_jax.main train --config configs/dem_digits.py:single_label=True,variant=fusion \\
      --workdir workdirs/dem_fusion
"""

from mlzsl_jax.config_base import demo_config, parse_arg
from mlzsl_jax.data import attributes
from mlzsl_jax.models import dem


def get_config(arg: str | None = None):
  args = parse_arg(arg, smoke=False, single_label=False, variant="single", words=False,
                   data="mosaic")
  c = demo_config(args.data, smoke=args.smoke, single_digit=args.single_label)
  if args.data == "colours" and args.variant != "single":
    raise ValueError(f"config argument variant={args.variant!r}: the fusion and text variants "
                     "use digits_mosaic's label sources; use data=mosaic")
  c.model = dem.model_config()
  c.loss = dem.loss_config()
  c.model.variant = args.variant
  # Official sizes keep the hidden layer between the semantic and the visual width
  # (85 -> 300 -> 1024 on old AwA); here 7..15 -> 128 -> 16 (mosaic regions) or 64 (digits).
  c.model.hidden = 128
  c.model.l2_lambda = 1e-3  # AwA GBU value
  if args.data == "mosaic":
    c.data.embedding = "seven_segment" if args.single_label else "attributes"
  if args.variant == "fusion":
    second = "sentence" if args.words else "strokes"
    c.model.fusion_sources = ("seven_segment", second)
    c.model.fusion_weights = (3.0, 1.0)  # official: word + 3 * attributes
    c.model.fusion_l2_lambdas = (1e-2, 1e-3)  # official: attributes 1e-2, words 1e-3
    c.data.embedding = f"seven_segment,{second}"
  elif args.variant == "text":
    c.data.embedding = "description_tokens"
    c.model.vocab_size = len(attributes.description_vocab()) + 1  # + padding id 0
    c.model.token_dim = 32
    c.model.lstm_dim = 64
  elif args.variant != "single":
    raise ValueError(f"config argument variant={args.variant!r}: expected single, fusion or text")
  # Official optimiser: Adam lr 1e-4, batch 64, the weight decay is in the objective
  # (model 'regularizer'), not in the optimizer.
  c.optimizer.lr = 1e-4
  c.optimizer.schedule = "constant"
  c.optimizer.weight_decay = 0.0
  c.train.batch_size = 64
  c.train.num_epochs = 2 if args.smoke else 30
  return c
