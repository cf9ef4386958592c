"""Any model on NUS-WIDE or Open Images, on CLIP tokens with CLIP label embeddings (or the
VGG19 features with GloVe), including the training-free ``clip_zero_shot``.

  python -m mlzsl_jax.main train --config configs/clip_models.py:model=fast0tag,data=nus_wide \\
      --config.data.data_dir=/data/tfds --workdir workdirs/fast0tag_nus_clip
  python -m mlzsl_jax.main evaluate --config configs/clip_models.py:model=clip_zero_shot \\
      --config.data.data_dir=/data/tfds --workdir workdirs/clip_zero_shot_nus
  python scripts/compare_models.py --data nus_wide --backbone clip_vit_b16 ...  (one table)

The dataset, training length and evaluation block are those of ``configs/biam_<data>.py``
(BiAM's protocol, one plain phase); ``biam`` and ``lesa`` take their own paper configs
(``configs/<model>_<data>.py``); every other model takes its module's defaults
(``model_config()``, ``loss_config()``; the shared ``ranking_sorted`` loss where it has none).
The dataset must be prepared from an extract folder first (docs/clip.md).

Config arguments: model (a registered model), data (nus_wide | open_images), backbone
(clip_vit_b16 default, or another CLIP release, or vgg19), smoke (tiny model widths, tests).
"""

import importlib
import importlib.util
import os

from mlzsl_jax.config_base import parse_arg
from mlzsl_jax.models import registered_models

DATASETS = ("nus_wide", "open_images")
PAPER_CONFIGS = ("biam", "lesa")  # models with a configs/<model>_<data>.py of their paper


def _config_module(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  args = parse_arg(arg, model="clip_zero_shot", data="nus_wide", backbone="clip_vit_b16",
                   smoke=False)
  if args.data not in DATASETS:
    raise ValueError(f"config argument data={args.data!r}: expected one of {DATASETS}")
  if args.model not in registered_models():
    raise ValueError(f"config argument model={args.model!r}: expected one of "
                     f"{registered_models()}")
  paper = args.model if args.model in PAPER_CONFIGS else "biam"
  c = _config_module(f"{paper}_{args.data}").get_config(f"backbone={args.backbone}")
  if args.model not in PAPER_CONFIGS:
    module = importlib.import_module(f"mlzsl_jax.models.{args.model}")
    c.model = module.model_config()
    c.loss = module.loss_config() if hasattr(module, "loss_config") else c.loss
    if "num_seen" in c.model:  # ConSE's classifier is over the seen labels
      c.model.num_seen = len(c.data.seen_labels)
    if args.model == "clip_zero_shot":
      c.train.num_epochs = 0  # nothing to train: main evaluate scores it as built
  if args.smoke:
    for field, value in (("channels", 8), ("heads", 2), ("out_dim", 16),
                         ("hidden_sizes", (16,)), ("label_chunk", 0)):
      if field in c.model:
        c.model[field] = value
  return c
