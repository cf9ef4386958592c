"""BiAM on Open Images v4 (7186 seen + 400 unseen labels) from the official BiAM files.

  python -m mlzsl_jax.main reproduce --config configs/biam_open_images.py:scene=vgg19 \\
      --config.data.manual_dir=/path/to/BiAM/datasets/OpenImages \\
      --config.data.scene_weights=/path/to/vgg19-dcbb9e9d.pth --workdir workdirs/biam_oi

The first run builds the tfds dataset (mlzsl_jax/data/open_images.py; ~1.7 M training images,
~340 GB at fp16; for a cluster build with Apache Beam see that module's docstring).

Values of the official run (akshitac8/BiAM HEAD scripts/train_openimages.sh ->
train_openimages.py; scripts/evaluate_openimages.sh -> evaluate_openimages.py): heads 16,
Adam lr 1e-4, betas (0.9, 0.999), L2 weight decay 5e-4 in the gradient (torch Adam), batch 32,
10 epochs, no learning-rate scheduler (``--cosinelr_scheduler`` not passed: constant lr), seed
3483; training drops images without a positive seen label; P/R/F1 at K = 10 and 20; the
official Open Images evaluation protocol (mlzsl_jax/metrics_open_images.py). Label embeddings:
the official GloVe vectors, each row L2-normalised ("glove"). Labels: seen = 0..7185
(classes-trainable.txt), unseen = 7186..7585 (the top_400_unseen.csv rows of unseen_labels.pkl).
As train_openimages.py, training drops images with more than 40 positive labels
(``train.max_positive_labels``). Not reproduced: it draws its h5 files at random with
replacement and trains on the first 640 images of each; we read every training image once
per epoch in a shuffled order.

Protocol (``get_phases``: one phase). train_openimages.py has no validation split, no model
selection and no fine-tune phase, and tests nothing while training: its checkpoints (every
100 h5 files) were scored on the test set by a separate script, which loads one checkpoint
for the ZSL and another for the GZSL numbers (a choice made on the test set). Here a test
pass follows every epoch (``eval.test_epochs``), all recorded in evals.json and the final
table, and the final evaluation scores the last epoch's parameters.

Memory for 7586 labels: BiAM scores labels in chunks of 1024 (``model.label_chunk``: region
scores [B, 196, 1024] at a time instead of [B, 196, 7586]) and the loss is the sort-based
form of the same ranking loss (``ranking_sorted``: O(L log L) per image instead of the L x L
pair matrix).

Scene feature (``scene=``): ``vgg19`` = the official architecture, VGG19's frozen fc6/fc7 of
the region features, computed once when the dataset is prepared (``data.scene_weights``, the
torchvision file) and stored with it; ``mean_region`` (default) = a learned projection of the
mean region feature, NOT the paper's architecture.

Config arguments: ``backbone=vgg19|clip_vit_b16|...`` (CLIP tokens of an extract folder,
docs/clip.md); ``protocol=official`` (default, the paper's table) or ``per_label``
(textbook per-label AP); ``scene=mean_region|vgg19``; ``smoke=True``: tiny sizes for tests.
"""

from mlzsl_jax.config_base import FSDP_PARTITION_RULES, base_config, parse_arg, set_backbone
from mlzsl_jax.models import biam

NUM_SEEN, NUM_UNSEEN = 7186, 400
SCENES = ("mean_region", "vgg19")


def get_config(arg: str | None = None):
  args = parse_arg(arg, protocol="official", smoke=False, scene="mean_region",
                   backbone="vgg19")
  if args.protocol not in ("official", "per_label"):
    raise ValueError(f"config argument protocol={args.protocol!r}: expected 'official' or "
                     f"'per_label'")
  if args.scene not in SCENES:
    raise ValueError(f"config argument scene={args.scene!r}: expected one of {SCENES}")
  c = base_config()
  c.seed = 3483
  c.data.name = "open_images"
  c.data.manual_dir = ""  # BiAM's datasets/OpenImages folder (needed for the first build only)
  # 'vgg19': the dataset stores VGG19's fc7 scene feature (built with data.scene_weights, the
  # torchvision vgg19-dcbb9e9d.pth file, needed for the first build only); 'none': no scene.
  c.data.scene = "vgg19" if args.scene == "vgg19" else "none"
  c.data.scene_weights = ""
  c.data.embedding = "glove"
  c.data.seen_labels = tuple(range(NUM_SEEN))
  c.data.unseen_labels = tuple(range(NUM_SEEN, NUM_SEEN + NUM_UNSEEN))
  c.data.train_split = "train"
  c.data.test_split = "test"
  c.model = biam.model_config()
  c.model.channels = 256
  c.model.heads = 16
  c.model.out_dim = 512
  c.model.top_k = 6
  c.model.scene_source = "dataset" if args.scene == "vgg19" else "mean_region"
  set_backbone(c, args.backbone, args.scene)  # vgg19, or a CLIP release (docs/clip.md)
  c.model.label_chunk = 1024
  c.loss.name = "ranking_sorted"
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "constant"
  c.train.batch_size = 32
  # parameters and Adam's state split over the data axis too (FSDP; config_base): less
  # HBM traffic per chip on a slice, identical on one device
  c.mesh.partition_rules = FSDP_PARTITION_RULES
  c.train.num_epochs = 10
  c.train.drop_images_without_positive = True
  c.train.max_positive_labels = 40  # train_openimages.py: images with > 40 positives dropped
  c.train.log_every_steps = 1000
  c.train.checkpoint_every_steps = 5000
  c.eval.protocol = f"open_images_{args.protocol}"
  c.eval.ks = (10, 20)
  c.eval.batch_size = 128
  if args.smoke:
    c.model.channels = 16
    c.model.heads = 2
    c.model.out_dim = 16
    c.model.label_chunk = 2048
    c.train.batch_size = 4
    c.train.num_epochs = 1
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 2
    c.eval.batch_size = 6
    c.eval.chance_seeds = 1
  return c


def get_phases(arg: str | None = None) -> dict[str, dict]:
  """train_openimages.py: one phase, a test pass after every epoch (module docstring)."""
  epochs = get_config(arg).train.num_epochs
  return {"train": {"eval.test_epochs": tuple(range(1, epochs + 1))}}
