"""Zero-shot CLIP (``mlzsl_jax/models/clip_zero_shot.py``): no training, no checkpoint.

On a prepared CLIP dataset (docs/clip.md), the full table with the other models' protocol:
  python -m mlzsl_jax.main evaluate --config configs/clip_zero_shot.py:data=nus_wide \\
      --config.data.data_dir=/data/tfds --config.data.clip_weights=ViT-B-16.safetensors \\
      --workdir workdirs/clip_zero_shot_nus
Photos of any size with any words, no workdir and no dataset:
  python -m mlzsl_jax.main predict --config configs/clip_zero_shot.py \\
      --config.data.clip_weights=ViT-B-16.safetensors --inputs photo.jpg \\
      --labels "dog,beach,sunset,snow" --top_k 3

Config arguments: data (nus_wide | open_images), backbone (clip_vit_b16 | ...), mode (mkt |
global | local); ``--config.model.top_k`` / ``temperature`` / ``global_weight`` /
``local_weight`` as fields.
"""

import importlib.util
import os

from mlzsl_jax.config_base import parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, data="nus_wide", backbone="clip_vit_b16", mode="mkt")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_models.py")
  spec = importlib.util.spec_from_file_location("clip_models", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"model=clip_zero_shot,data={args.data},backbone={args.backbone}")
  c.model.mode = args.mode
  return c
