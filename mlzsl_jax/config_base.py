"""Every knob with its default. Config files in ``configs/`` start from ``base_config()``.

Conventions (the project's design notes, outside this repository): ``get_config(arg)`` returns a fully specified, locked
ConfigDict, so an unknown key or a wrong type fails at start naming the key.
"""

from __future__ import annotations

import ml_collections

from mlzsl_jax.models import biam


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 3483
  c.dtype = "float32"  # compute dtype; params stay float32
  # Platform the run must use: 'auto' (MLZSL_PLATFORM, SLURM GPUs or the host's devices
  # decide; see mlzsl_jax/accelerator.py), 'gpu', 'tpu', or 'cpu' (a CPU run on purpose).
  c.platform = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.name = ""
  c.data.data_dir = ""  # '' = the dataset's default location
  c.data.embedding = ""  # label-embedding source(s) stored with the dataset, comma-separated
  # data.embedding=clip (mlzsl_jax/data/clip_labels.py): CLIP text embeddings of the label
  # names, computed once from these weights (file or HF folder) and stored with the dataset.
  c.data.clip_weights = ""
  c.data.clip_vocab = ""  # '' = beside the weights, or open_clip's packaged vocabulary
  c.data.clip_templates = "ensemble"  # 'ensemble' | 'mkt' | 'name' (backbones/clip_text.py)
  c.data.seen_labels = (0,)  # label ids used for training
  c.data.unseen_labels = (0,)  # label ids never seen in training (ZSL)
  c.data.train_split = "train"
  c.data.test_split = "test"
  # How several processes share the data (see mlzsl_jax/data/pipeline.py): 'examples' = each
  # reads 1/P of the examples (batches depend on P); 'batches' = each reads everything and
  # keeps its rows of every global batch (same batches for any P, P-fold reading).
  c.data.process_split = "examples"

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
  c.optimizer.schedule = "warmup_cosine"  # or 'constant', 'val_plateau'
  c.optimizer.warmup_epochs = 3
  c.optimizer.lr_min = 5e-4
  # schedule 'val_plateau' (LESA): x plateau_decay when an exponential moving average
  # (weight plateau_signal) of the validation metric eval.select_metric falls, then
  # plateau_patience validations of cool-down; never below plateau_min_scale * lr.
  c.optimizer.plateau_signal = 0.3
  c.optimizer.plateau_patience = 5
  c.optimizer.plateau_decay = 0.8
  c.optimizer.plateau_min_scale = 1e-3

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global, over all devices and processes
  c.train.num_epochs = 40
  c.train.shuffle_buffer = 16384
  c.train.drop_images_without_positive = True
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 3
  c.train.prefetch = 2
  # SIGTERM: save at the next step boundary and exit 0 (one process: the very next step).
  # With several processes the flags are exchanged every N steps so all hosts stop at the
  # same step; the exchange is a blocking all-gather (the host waits for the step), so a
  # small N costs host/device overlap: 10 steps is far inside any preemption grace period.
  c.train.preemption_check_every_steps = 10
  c.train.profile_steps = (0, 0)  # (first, last) step to trace with jax.profiler; (0, 0) off
  # A step whose loss, gradients or new parameters are not finite: 'stop' (exit non-zero,
  # naming the step and the last good checkpoint) or 'skip' (drop that update; stop after
  # max_consecutive_skips in a row). A non-finite state is never checkpointed.
  c.train.on_nonfinite = "stop"
  # Resuming a workdir whose config.json has other model / data / label-split fields is
  # refused (naming them) unless this is True.
  c.train.allow_config_change = False
  c.train.max_consecutive_skips = 10
  # Start (at step 0, with a fresh optimizer) from the parameters and BatchNorm statistics of
  # another run's checkpoint: 'DIR' (a checkpoint folder, e.g. WORKDIR/best: its latest step)
  # or 'DIR:STEP'. Used by fine-tune phases (mlzsl_jax/phases.py); ignored once this workdir
  # has its own checkpoints (a resumed run continues from them).
  c.train.init_from = ""
  # Drop training images with more than this many positive (seen) labels; 0 = keep all.
  # BiAM's Open Images script keeps images with <= 40 positives.
  c.train.max_positive_labels = 0
  # Train this many steps instead of num_epochs epochs (0 = num_epochs * steps per epoch);
  # LESA's scripts count iterations.
  c.train.num_steps = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "multilabel"  # or 'single_label' (per-class top-1, GZSL H; DEM's benchmarks)
  c.eval.batch_size = 256
  c.eval.ks = (3, 5)
  c.eval.exclude_images_without_positive = False
  c.eval.chance_seeds = 3
  # Where the multi-label metrics run: 'device' (JAX: sort + cumsum AP, lax.top_k), 'host'
  # (NumPy), 'auto' = device on GPU / TPU, host on CPU. Same numbers (tests); the chance
  # level's random draws differ between the two (jax.random vs NumPy).
  c.eval.metrics_on = "auto"
  # Validation-based model selection (mlzsl_jax/selection.py): after each epoch listed in
  # val_epochs (1-based) the split val_split is scored; the checkpoint with the best
  # select_metric ('<view>/<metric>', views seen / zsl / gzsl; ties -> the later epoch) is
  # kept in WORKDIR/best. '' = no validation.
  c.eval.val_split = ""
  c.eval.val_epochs = ()
  c.eval.val_steps = ()  # validation after these steps too (LESA validates every N steps)
  c.eval.select_metric = "seen/f1@5"
  # Test passes after these epochs (besides the final one), recorded in WORKDIR/evals.json.
  c.eval.test_epochs = ()
  c.eval.test_steps = ()
  # Which parameters the test passes and the final evaluation score: 'latest' (the current
  # ones), 'best' (the validation-selected checkpoint, as BiAM's train_nus.py test()), or
  # 'latest,best' (both, LESA's end of training); results.json holds the first.
  c.eval.test_checkpoint = "latest"
  # Further splits the final evaluation also scores (results.json 'splits'; `report --split`),
  # e.g. colour_digits' 'test_binding'.
  c.eval.extra_test_splits = ()

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1
  # (regex on a parameter path like 'stem/conv/kernel', axis name per trailing dimension).
  # Default: the output dimension of every kernel and bias over 'model' (column split).
  c.mesh.partition_rules = ((r".*/kernel", ("model",)), (r".*/bias", ("model",)))
  return c


# Fully sharded data parallelism (FSDP / ZeRO-3): besides the 'model' split of the output
# dimension, every kernel's input dimension (second to last) is split over 'data', so that
# each chip holds, and Adam updates, 1/data of the parameters and optimizer state; XLA
# gathers the weights where a step uses them. Same results as replicated parameters (the
# same sums, in another order). On a TPU v5e slice it cut BiAM's NUS-WIDE train step from
# 28 to 20 MB of HBM traffic per image (``main compile``, docs/compile.md); with one chip
# along 'data' it changes nothing.
FSDP_PARTITION_RULES = ((r".*/kernel", ("data", "model")), (r".*/bias", ("model",)))


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


def set_backbone(c: ml_collections.ConfigDict, backbone: str, scene: str = "none") -> None:
  """The config argument ``backbone=`` of the NUS-WIDE / Open Images configs: 'vgg19' keeps
  the official features; a CLIP release reads an extract folder (``data.features_dir``),
  uses CLIP text label embeddings (``data.embedding=clip``) and the stored class embedding as
  the scene feature (``model.scene_source='dataset'`` where the model has one).
  ``scene`` is the config's scene= argument ('vgg19' cannot go with CLIP)."""
  from mlzsl_jax.backbones import clip as clip_lib  # pylint: disable=import-outside-toplevel
  choices = ("vgg19", *clip_lib.NAMED_SPECS)
  if backbone not in choices:
    raise ValueError(f"config argument backbone={backbone!r}: expected one of {choices}")
  c.data.backbone = backbone
  c.data.features_dir = ""  # the extract --out_dir (needed for the first build only)
  if backbone == "vgg19":
    return
  if scene == "vgg19":
    raise ValueError(f"config arguments backbone={backbone} and scene=vgg19: with a CLIP "
                     "backbone the scene feature is the class embedding")
  c.data.embedding = "clip"
  if "scene_source" in c.model:
    c.model.scene_source = "dataset"


DEMO_DATA = ("mosaic", "colours")


def demo_config(data: str = "mosaic", smoke: bool = False, single_digit: bool = False
                ) -> ml_collections.ConfigDict:
  """The shipped demo data for the ``configs/<model>_digits.py`` files (config argument
  ``data=``): 'colours' = ``colour_demo_config`` (coloured digits, compositional zero-shot),
  'mosaic' = ``digits_demo_config`` (grey digit mosaics)."""
  if data == "colours":
    if single_digit:
      raise ValueError("config argument single_label=True is a digits_mosaic shape; use "
                       "data=mosaic")
    return colour_demo_config(smoke)
  if data == "mosaic":
    return digits_demo_config(smoke, single_digit)
  raise ValueError(f"config argument data={data!r}: expected one of {DEMO_DATA}")


def colour_demo_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """``base_config()`` with the data, length and evaluation blocks of the demo on
  ``colour_digits`` (mlzsl_jax/data/colour_digits.py): 60 (colour, digit) labels, 12 of them
  unseen combinations; one 8x8x3 region per cell. Settings were chosen on a development
  instance (data.seed=1), never on this one's test split.

  Args:
    smoke: tiny sizes for tests.
  """
  from mlzsl_jax.data import colour_digits  # pylint: disable=import-outside-toplevel
  c = base_config()
  c.data.name = "colour_digits"
  c.data.embedding = "attributes"
  c.data.seen_labels = colour_digits.seen_pairs()
  c.data.unseen_labels = colour_digits.unseen_pairs()
  c.data.seed = 0
  c.data.num_train = 6000
  c.data.num_test = 2000
  c.data.patch = 8  # one region per cell: an object is one region
  c.data.min_objects = 2
  c.data.max_objects = 4
  c.data.p_distractor = 0.7
  _demo_training(c)
  # 12 unseen labels and ~0.6 unseen objects per test scene: K = 1 and 3.
  c.eval.ks = (1, 3)
  # Also scored: the test scenes where binding is needed (a present label's colour and digit
  # both occur on other objects too).
  c.eval.extra_test_splits = ("test_binding",)
  if smoke:
    _demo_smoke(c)
  return c


def _demo_training(c: ml_collections.ConfigDict) -> None:
  """The training-length block both demo datasets share."""
  c.train.batch_size = 32
  c.train.num_epochs = 10
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 200
  c.optimizer.warmup_epochs = 1
  c.optimizer.lr_min = 1e-4
  c.eval.batch_size = 200


def _demo_smoke(c: ml_collections.ConfigDict) -> None:
  """Tiny sizes for tests, both demo datasets."""
  c.data.num_train = 256
  c.data.num_test = 64
  c.train.num_epochs = 2
  c.train.log_every_steps = 4
  c.train.checkpoint_every_steps = 4
  c.eval.batch_size = 32


def digits_demo_config(smoke: bool = False, single_digit: bool = False
                       ) -> ml_collections.ConfigDict:
  """``base_config()`` with the data, training-length and evaluation blocks of the shipped
  digits demo; every ``configs/*_digits*.py`` starts from it and sets its model/loss/optimizer.

  Split: unseen digits 1, 2, 7, seen = the other 7: the first of the 120 splits ranked by
  ``scripts/choose_digits_split.py``, a linear zero-shot probe (ZSL mAP / chance) reading
  training-pool digits only, never the test pool (see configs/biam_digits.py for the history).

  Args:
    smoke: tiny sizes for tests.
    single_digit: one digit per image, one 64-pixel region (DEM's single-label benchmark
      shape: a single visual feature per image); evaluation per-class top-1 / GZSL H.
  """
  c = base_config()
  c.data.name = "digits_mosaic"
  c.data.embedding = "attributes"
  c.data.seen_labels = (0, 3, 4, 5, 6, 8, 9)
  c.data.unseen_labels = (1, 2, 7)
  c.data.seed = 0
  c.data.num_train = 6000
  c.data.num_test = 2000
  c.data.cells = (3, 3)  # mosaic of 3x3 cells of 8x8 pixels
  c.data.patch = 4  # 4x4-pixel regions: a 6x6 grid, each digit spans 2x2 regions
  c.data.min_digits = 2
  c.data.max_digits = 4
  # Classic zero-shot protocol: no unseen digit appears in any training image.
  c.data.train_without_unseen = True
  _demo_training(c)
  # NUS-WIDE tables use K = 3 and 5; with only 3 unseen digits, K = 3 would predict every
  # unseen label (recall 1 by construction) and K = 5 is undefined, so the demo uses K = 1, 2.
  c.eval.ks = (1, 2)
  if single_digit:
    c.data.cells = (1, 1)
    c.data.patch = 8  # the whole 8x8 digit is one region: a 64-d visual feature
    c.data.min_digits = c.data.max_digits = 1
    c.eval.protocol = "single_label"
  if smoke:
    _demo_smoke(c)
  return c
