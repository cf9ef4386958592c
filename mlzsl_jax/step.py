"""The jitted, sharded train step and everything it is built from: model, loss, optimizer,
learning-rate schedule, state layout. Imports no TensorFlow, tfds or clu, so that benchmarks
and users on a machine with only JAX, Flax, Optax and orbax can compile and run the exact
step that training runs (``benchmarks/train_throughput.py``, ``benchmarks/gpu_suite.py``).

``Trainer(config, meta, mesh, steps_per_epoch)`` holds the compiled functions:
  train_step(state, batch, label_emb) -> (state, metrics)
      batch: features [batch, regions, feature_dim], labels int8 [batch, seen],
             scene [batch, scene_dim] (optional); label_emb [seen, emb_dim]
  predict(params, model_state, batch, (label_emb, ...)) -> (scores [batch, labels_i], ...)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mlzsl_jax import losses
from mlzsl_jax import sharding as shd
from mlzsl_jax.data.source import DatasetMeta
from mlzsl_jax.models import get_model_builder
from mlzsl_jax.registry import Registry


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree of arrays; checkpointed as is)."""
  step: jax.Array  # [] int32
  params: dict  # nested dict of float32 arrays (trained)
  model_state: dict  # nested dict, e.g. BatchNorm running stats (not trained)
  opt_state: Any
  rng: jax.Array  # [2] uint32, base key; the key of step s is fold_in(rng, s)


@dataclasses.dataclass(frozen=True)
class LabelSplit:
  seen: tuple[int, ...]
  unseen: tuple[int, ...]


def label_split(config: ml_collections.ConfigDict, meta: DatasetMeta) -> LabelSplit:
  """Seen/unseen label ids from the config, validated against the dataset."""
  seen, unseen = tuple(config.data.seen_labels), tuple(config.data.unseen_labels)
  if not seen and not unseen and meta.default_split is not None:
    seen, unseen = meta.default_split  # the dataset's own split (a user's folder dataset)
  for field, ids in (("data.seen_labels", seen), ("data.unseen_labels", unseen)):
    if not ids:
      raise ValueError(f"config field {field} is empty")
    bad = [i for i in ids if not 0 <= i < meta.num_labels]
    if bad:
      raise ValueError(f"config field {field}: label ids {bad[:5]} out of range "
                       f"[0, {meta.num_labels}) of dataset {meta.name!r}")
    if len(set(ids)) != len(ids):
      raise ValueError(f"config field {field} has repeated label ids")
  both = set(seen) & set(unseen)
  if both:
    raise ValueError(f"config fields data.seen_labels and data.unseen_labels share ids "
                     f"{sorted(both)[:5]}")
  return LabelSplit(seen, unseen)


def compute_dtype(config) -> Any:
  try:
    return jnp.dtype(config.dtype)
  except TypeError as e:
    raise ValueError(f"config field dtype={config.dtype!r}: not a dtype "
                     "(e.g. 'float32', 'bfloat16')") from e


def label_inputs(config, meta: DatasetMeta):
  """What the model is told about every label: the embedding source named by
  ``config.data.embedding`` as an array [labels, dim], or, for a comma-separated list of
  sources (multi-modal models), a dict source -> [labels, dim_source]."""
  sources = [s.strip() for s in config.data.embedding.split(",") if s.strip()]
  if not sources:
    raise ValueError("config field data.embedding is empty; name a label-embedding source")
  arrays = {s: np.asarray(meta.embedding(s)) for s in sources}
  return arrays[sources[0]] if len(sources) == 1 else arrays


def label_dims(inputs) -> int | dict[str, int]:
  """Per-label input width(s) of ``label_inputs``: an int, or a dict per source."""
  if isinstance(inputs, dict):
    return {k: int(v.shape[1]) for k, v in inputs.items()}
  return int(inputs.shape[1])


def build_model(config, meta: DatasetMeta, seed: int):
  """(graphdef, params, model_state) of the configured model; the dicts are pure pytrees."""
  build = get_model_builder(config.model.name)
  model = build(config.model, feature_dim=meta.feature_dim,
                emb_dim=label_dims(label_inputs(config, meta)),
                grid_shape=meta.grid_shape, scene_dim=meta.scene_dim,
                dtype=compute_dtype(config), rngs=nnx.Rngs(params=seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def lr_schedule(opt_cfg, steps_per_epoch: int, num_epochs: int) -> Callable[[Any], Any]:
  """Learning rate as a function of the step; changes once per epoch, as the official code.

  'warmup_cosine': epochs 0..w-1 use lr*(e+1)/w; then cosine from lr to lr_min over the
  remaining epochs. 'constant': lr. 'val_plateau': lr at first, then set from the validation
  metrics by ``ScheduledEvaluations`` (held in the optimizer state: ``AdaptiveLRState``).
  """
  lr, lr_min, warm = opt_cfg.lr, opt_cfg.lr_min, opt_cfg.warmup_epochs
  if opt_cfg.schedule in ("constant", "val_plateau"):  # val_plateau: the start rate
    return lambda step: jnp.asarray(lr, jnp.float32)
  if opt_cfg.schedule != "warmup_cosine":
    raise ValueError(f"config field optimizer.schedule={opt_cfg.schedule!r}: expected "
                     "'warmup_cosine', 'constant' or 'val_plateau'")
  decay_epochs = max(num_epochs - warm, 1)

  def schedule(step):
    epoch = jnp.asarray(step, jnp.float32) // steps_per_epoch
    warm_lr = lr * (epoch + 1) / max(warm, 1)
    t = jnp.clip(epoch - warm, 0, decay_epochs)
    cos_lr = lr_min + (lr - lr_min) * 0.5 * (1 + jnp.cos(math.pi * t / decay_epochs))
    return jnp.where(epoch < warm, warm_lr, cos_lr)
  return schedule


class AdaptiveLRState(NamedTuple):
  """Optimizer state of ``scale_by_adaptive_lr``: the current learning rate."""
  lr: jax.Array  # [] float32


def scale_by_adaptive_lr(lr: float) -> optax.GradientTransformation:
  """Scales updates by -lr, with lr held in the optimizer state (set from the host between
  steps with ``set_adaptive_lr``; checkpointed with the state, so a resume keeps it)."""
  def init(params):
    del params
    return AdaptiveLRState(lr=jnp.asarray(lr, jnp.float32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: (-state.lr * u).astype(u.dtype), updates), state
  return optax.GradientTransformation(init, update)


def _is_adaptive(x) -> bool:
  return isinstance(x, AdaptiveLRState)


def set_adaptive_lr(opt_state, lr: jax.Array):
  """``opt_state`` with every ``AdaptiveLRState`` learning rate set to ``lr``."""
  return jax.tree.map(lambda x: x._replace(lr=lr) if _is_adaptive(x) else x, opt_state,
                      is_leaf=_is_adaptive)


def adaptive_lr(opt_state) -> jax.Array | None:
  """The learning rate held by ``opt_state`` (None without ``scale_by_adaptive_lr``)."""
  found = [x.lr for x in jax.tree.leaves(opt_state, is_leaf=_is_adaptive) if _is_adaptive(x)]
  return found[0] if found else None


OPTIMIZERS: Registry[Callable] = Registry("optimizer", "optimizer.name")


def _learning_rate(opt_cfg, schedule) -> optax.GradientTransformation:
  if opt_cfg.schedule == "val_plateau":
    return scale_by_adaptive_lr(opt_cfg.lr)
  return optax.scale_by_learning_rate(schedule)


@OPTIMIZERS.register("adam")
def _adam(opt_cfg, schedule) -> optax.GradientTransformation:
  """torch.optim.Adam with weight_decay: L2 term added to the gradient before Adam (BiAM)."""
  return optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay),
                     optax.scale_by_adam(opt_cfg.b1, opt_cfg.b2, opt_cfg.eps),
                     _learning_rate(opt_cfg, schedule))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(opt_cfg, schedule) -> optax.GradientTransformation:
  """TF1 RMSPropOptimizer (LESA): decay b2, momentum b1, eps inside the sqrt, mean-square
  accumulator started at 1; weight_decay as an L2 term added to the gradient. The rate
  scales the update before the momentum, as TF1 does (so a changed rate acts on new
  gradients only)."""
  if opt_cfg.schedule == "val_plateau":
    return optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay),
                       optax.scale_by_rms(decay=opt_cfg.b2, eps=opt_cfg.eps,
                                          initial_scale=1.0, eps_in_sqrt=True),
                       scale_by_adaptive_lr(opt_cfg.lr), optax.trace(decay=opt_cfg.b1))
  return optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay),
                     optax.rmsprop(schedule, decay=opt_cfg.b2, eps=opt_cfg.eps,
                                   initial_scale=1.0, eps_in_sqrt=True,
                                   momentum=opt_cfg.b1))


def make_optimizer(opt_cfg, schedule) -> optax.GradientTransformation:
  """The optimizer named ``optimizer.name`` with learning-rate ``schedule``."""
  return OPTIMIZERS.get(opt_cfg.name)(opt_cfg, schedule)


class Trainer:
  """Holds the compiled functions of one (config, dataset, mesh); no training loop state."""

  def __init__(self, config, meta: DatasetMeta, mesh, steps_per_epoch: int):
    self.config, self.meta, self.mesh = config, meta, mesh
    self.split = label_split(config, meta)
    inputs = label_inputs(config, meta)
    rows = lambda ids: jax.tree.map(lambda a: a[list(ids)], inputs)  # noqa: E731
    self.emb_seen = rows(self.split.seen)
    self.emb_unseen = rows(self.split.unseen)
    self.emb_gzsl = rows(self.split.seen + self.split.unseen)
    self.schedule = lr_schedule(config.optimizer, steps_per_epoch, config.train.num_epochs)
    self.tx = make_optimizer(config.optimizer, self.schedule)
    self.loss_fn = losses.get_loss(config.loss.name)
    self.graphdef, params, model_state = build_model(config, meta, config.seed)
    abstract = jax.eval_shape(lambda: self._fresh_state(params, model_state))
    self.state_shardings = shd.tree_shardings(abstract, mesh,
                                              list(config.mesh.partition_rules))
    self.batch_sharding = shd.batch_sharding(mesh)
    self.repl = shd.replicated(mesh)
    self._init_params = (params, model_state)
    self.train_step = jax.jit(self._train_step,
                              in_shardings=(self.state_shardings, self.batch_sharding,
                                            self.repl),
                              out_shardings=(self.state_shardings, self.repl),
                              donate_argnums=0)
    self.predict = jax.jit(self._predict)

  def _fresh_state(self, params, model_state) -> TrainState:
    return TrainState(step=jnp.zeros([], jnp.int32), params=params, model_state=model_state,
                      opt_state=self.tx.init(params),
                      rng=jax.random.key_data(jax.random.key(self.config.seed + 1)))

  @property
  def has_parameters(self) -> bool:
    """False for a training-free model (clip_zero_shot): nothing to train or restore."""
    return bool(jax.tree.leaves(self._init_params[0]))

  def init_state(self) -> TrainState:
    """A fresh, sharded state (same values on any mesh)."""
    return jax.jit(self._fresh_state, out_shardings=self.state_shardings)(*self._init_params)

  def abstract_state(self) -> TrainState:
    shapes = jax.eval_shape(self._fresh_state, *self._init_params)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, self.state_shardings)

  def _train_step(self, state: TrainState, batch: dict, label_emb: jax.Array):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_of(params):
      model = nnx.merge(self.graphdef, params, state.model_state)
      with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):  # models may constrain axes
        out = model(batch["features"], label_emb, batch.get("scene"), train=True,
                    rngs=nnx.Rngs(dropout=key))
      loss, aux = self.loss_fn(out, batch["labels"], self.config.loss)
      if "regularizer" in out:  # e.g. weight decay written into the model's objective
        aux = {**aux, "regularizer": out["regularizer"]}
        loss = loss + out["regularizer"]
      _, _, new_model_state = nnx.split(model, nnx.Param, ...)
      return loss, (aux, nnx.to_pure_dict(new_model_state))

    (loss, (aux, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # On the device, fetched with the other metrics: loss, gradients and new parameters all
    # finite. 'skip' keeps the old state where they are not (NonFiniteGuard counts them).
    finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(params)
    if self.config.train.on_nonfinite == "skip":
      keep = lambda new, old: jax.tree.map(  # noqa: E731
          lambda a, b: jnp.where(finite, a, b), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      model_state = keep(model_state, state.model_state)
    lr = adaptive_lr(state.opt_state)
    metrics = {"loss": loss, "lr": self.schedule(state.step) if lr is None else lr,
               "grad_norm": optax.tree.norm(grads), "finite": finite.astype(jnp.float32),
               **aux}
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  def _predict(self, params, model_state, batch: dict, label_embs: tuple) -> tuple:
    """Scores [B, L_i] for each label-embedding set in ``label_embs`` (eval mode)."""
    model = nnx.merge(self.graphdef, params, model_state)
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
      return tuple(model(batch["features"], e, batch.get("scene"), train=False)["scores"]
                   for e in label_embs)


def all_finite(tree) -> jax.Array:
  """[] bool: every element of every leaf of ``tree`` is finite (no overflowing norm)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


NONFINITE_POLICIES = ("stop", "skip")
