"""Any model on a user's own folder of images (dataset ``multilabel_folder``; docs/own-data.md).

  python -m mlzsl_jax.main extract --backbone clip_vit_b16 --weights ViT-B-16.safetensors \\
      --image_dir my_data/images --out_dir my_feats
  python -m mlzsl_jax.main train --config configs/own_data.py:model=biam \\
      --config.data.manual_dir=my_data --config.data.unseen="giraffe|zebra" \\
      --config.data.features_dir=my_feats --config.data.clip_weights=ViT-B-16.safetensors \\
      --workdir workdirs/my_biam

The label split is the folder's (seen = every label not in ``data.unseen``); label
embeddings are CLIP text embeddings of the label names (``data.embedding=clip``, with either
backbone). Config arguments: model (any registered model; clip_zero_shot is evaluated, not
trained; conse also needs --config.model.num_seen=<number of seen labels>), backbone
(clip_vit_b16 | another CLIP release | vgg19), k (the K of P/R/F1@K, 3), smoke (tiny widths
and lengths, tests).
"""

import importlib

from mlzsl_jax.config_base import base_config, parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, model="biam", backbone="clip_vit_b16", k=3, smoke=False)
  c = base_config()
  c.data.name = "multilabel_folder"
  c.data.manual_dir = ""  # the folder (images/, labels.csv, label_names.txt, ...)
  c.data.image_dir = "images"
  c.data.labels_file = "labels.csv"  # 'image,labels' rows ('|' between names), or .jsonl
  c.data.names_file = "label_names.txt"
  c.data.unseen = ""  # 'a|b|c', or a file in the folder, one name a line
  c.data.split_file = ""  # optional 'image,split' rows; '' = a seeded split
  c.data.test_fraction = 0.2
  c.data.seed = 0
  c.data.backbone = args.backbone
  c.data.features_dir = ""  # the extract --out_dir of images/
  c.data.embedding = "clip"
  c.data.seen_labels = ()  # () = the folder's split (data.unseen)
  c.data.unseen_labels = ()
  c.data.train_split, c.data.test_split = "train", "test"
  module = importlib.import_module(f"mlzsl_jax.models.{args.model}")
  c.model = module.model_config()
  if hasattr(module, "loss_config"):
    c.loss = module.loss_config()
  else:
    c.loss.name = "ranking_sorted"
  if "scene_source" in c.model:
    c.model.scene_source = "dataset"  # CLIP's class embedding / VGG19's fc7, as extracted
  c.train.num_epochs = 0 if args.model == "clip_zero_shot" else 20
  c.train.drop_images_without_positive = False
  c.eval.ks = (args.k,)
  c.eval.select_metric = f"seen/f1@{args.k}"
  if args.smoke:
    c.train.batch_size, c.train.num_epochs = 8, min(c.train.num_epochs, 2)
    c.optimizer.warmup_epochs = 0
    c.eval.batch_size = 8
    for field, value in (("channels", 8), ("heads", 2), ("out_dim", 16),
                         ("hidden_sizes", (16,))):
      if field in c.model:
        c.model[field] = value
  return c
