"""Training: one jitted, sharded train step over a pure state pytree; the loop around it.

``train_and_evaluate(config, workdir)`` trains the configured model, checkpoints with orbax
(resuming automatically from ``workdir``), logs with clu, evaluates periodically and at the
end, and returns the final metrics.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mlzsl_jax import distributed
from mlzsl_jax import errors
from mlzsl_jax import evaluate
from mlzsl_jax import selection
from mlzsl_jax import sharding as shd
from mlzsl_jax.data.source import get_dataset
from mlzsl_jax import workdir as wd
from mlzsl_jax.step import (NONFINITE_POLICIES, Trainer, TrainState, all_finite, label_split,
                            set_adaptive_lr)


class NonFiniteGuard:
  """Host side of ``train.on_nonfinite``: reads the per-step 'finite' flags fetched with the
  metrics, before any checkpoint is written. 'stop': the first non-finite step ends training
  (``NonFiniteError``) and nothing after it is saved. 'skip': the device dropped that update;
  counted, and ``train.max_consecutive_skips`` of them in a row end training."""

  def __init__(self, config, mngr: ocp.CheckpointManager):
    self.policy = config.train.on_nonfinite
    if self.policy not in NONFINITE_POLICIES:
      raise ValueError(f"config field train.on_nonfinite={self.policy!r}: expected one of "
                       f"{NONFINITE_POLICIES}")
    self.max_in_a_row = int(config.train.max_consecutive_skips)
    if self.max_in_a_row < 1:
      raise ValueError(f"config field train.max_consecutive_skips={self.max_in_a_row}: "
                       "expected >= 1")
    self.config, self.mngr = config, mngr
    self.skipped, self.in_a_row = 0, 0

  def _hint(self) -> str:
    c = self.config
    return (f"try a lower optimizer.lr (now {c.optimizer.lr:g})"
            + (f", dtype='float32' (now {c.dtype!r})" if c.dtype != "float32" else "")
            + (", or train.on_nonfinite='skip' to drop such updates"
               if self.policy == "stop" else ""))

  def _stop(self, what: str) -> None:
    self.mngr.wait_until_finished()
    last = self.mngr.latest_step()
    where = (f"the last good checkpoint is step {last} in {self.mngr.directory} (nothing "
             "non-finite was saved)" if last is not None else "no checkpoint had been saved")
    raise errors.NonFiniteError(f"training stopped: {what}; {where}; {self._hint()}")

  def observe(self, host_metrics: list[dict], first_step: int) -> None:
    """``host_metrics``: fetched metrics of steps ``first_step``, ``first_step + 1``, ..."""
    for i, m in enumerate(host_metrics):
      if float(m["finite"]) >= 1.0:
        self.in_a_row = 0
        continue
      step = first_step + i
      if self.policy == "stop":
        self._stop(f"the loss or gradients became non-finite (NaN/inf) at step {step} "
                   f"(loss {float(m['loss']):g})")
      self.skipped += 1
      self.in_a_row += 1
      if self.in_a_row >= self.max_in_a_row:
        self._stop(f"{self.in_a_row} updates in a row were non-finite and skipped (the last "
                   f"at step {step}; {self.skipped} skipped in this run), "
                   "train.max_consecutive_skips")


def parse_init_from(spec: str) -> tuple[str, int | None]:
  """'DIR' -> (DIR, None = its latest step); 'DIR:STEP' -> (DIR, STEP)."""
  path, sep, step = spec.rpartition(":")
  if sep and step.isdigit():
    return os.path.expanduser(path), int(step)
  return os.path.expanduser(spec), None


def init_from_checkpoint(trainer: Trainer, spec: str) -> TrainState:
  """A fresh state (step 0, fresh optimizer) with the parameters and model state (BatchNorm
  statistics) of the checkpoint ``spec`` ('DIR' or 'DIR:STEP', config train.init_from)."""
  path, step = parse_init_from(spec)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config field train.init_from={spec!r}: no checkpoint folder "
                            f"{path!r}")
  mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(mngr.all_steps())
  step = steps[-1] if step is None and steps else step
  if step is None or step not in steps:
    raise FileNotFoundError(f"config field train.init_from={spec!r}: no checkpoint of step "
                            f"{step} in {path!r} (kept steps: {steps})")
  try:
    source = mngr.restore(step, args=ocp.args.StandardRestore(trainer.abstract_state()))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"config field train.init_from={spec!r}: the checkpoint of step {step} "
                     f"does not fit this model and optimizer: {e}") from e
  finally:
    mngr.close()
  fresh = trainer.init_state()
  if jax.process_index() == 0:
    print(f"starting from the parameters of {path} step {step} (fresh optimizer, step 0)",
          flush=True)
  return fresh.replace(params=source.params, model_state=source.model_state)


def restore_or_init(trainer: Trainer, mngr: ocp.CheckpointManager,
                    init_from: str = "") -> TrainState:
  """The latest checkpoint of ``mngr``; else the ``init_from`` parameters; else fresh."""
  latest = mngr.latest_step()
  if latest is None:
    return init_from_checkpoint(trainer, init_from) if init_from else trainer.init_state()
  if jax.process_index() == 0:
    print(f"resuming from checkpoint step {latest} in {mngr.directory}", flush=True)
  return mngr.restore(latest, args=ocp.args.StandardRestore(trainer.abstract_state()))


class ScheduledEvaluations:
  """Scheduled validation and test passes during training, the best checkpoint, and the
  validation-driven learning rate.

  Validation steps: the ends of the epochs in ``eval.val_epochs`` plus the steps in
  ``eval.val_steps``; there the split ``eval.val_split`` is scored
  (``evaluate.validation_views``) and, when its ``eval.select_metric`` is >= the best so far,
  the state is saved into WORKDIR/best. Test steps (``eval.test_epochs`` / ``eval.test_steps``):
  the test split is scored with the parameters named by ``eval.test_checkpoint`` ('latest',
  'best' or both). Every result is a record of WORKDIR/evals.json
  (``selection.EvalHistory``), written only after the checkpoints it refers to are on disk, so
  ``run`` is idempotent: calling it again for a step after a crash redoes exactly what is
  missing. With ``optimizer.schedule='val_plateau'`` the learning rate is a function of the
  recorded validation metrics (``selection.plateau_learning_rate``), set in the optimizer
  state after each validation and again on resume.
  """

  def __init__(self, trainer: Trainer, source, config, workdir: str,
               mngr: ocp.CheckpointManager, writer, steps_per_epoch: int, total_steps: int):
    ev = config.eval
    self.trainer, self.source, self.config, self.mngr, self.writer = (
        trainer, source, config, mngr, writer)
    self.spe, self.total_steps = steps_per_epoch, total_steps
    num_epochs = max(total_steps // steps_per_epoch, 1)
    self.val_split = ev.val_split

    def steps(epochs_field: str, steps_field: str) -> frozenset[int]:
      epochs = selection.check_points(ev[epochs_field], 1, num_epochs,
                                      f"eval.{epochs_field}", "epochs")
      extra = selection.check_points(ev[steps_field], 1, total_steps, f"eval.{steps_field}",
                                     "steps")
      return frozenset([e * steps_per_epoch for e in epochs] + list(extra))

    self.val_steps = steps("val_epochs", "val_steps")
    if self.val_steps and not self.val_split:
      raise ValueError("config fields eval.val_epochs / eval.val_steps are set but "
                       "eval.val_split is ''; name the validation split (e.g. 'val20')")
    if self.val_split:
      selection.parse_metric(ev.select_metric)
    self.test_steps = steps("test_epochs", "test_steps")
    self.test_checkpoints = selection.check_checkpoint_choices(ev.test_checkpoint,
                                                               "eval.test_checkpoint")
    self.plateau = config.optimizer.schedule == "val_plateau"
    if ("best" in self.test_checkpoints or self.plateau) and not self.val_steps:
      raise ValueError("config fields eval.test_checkpoint='best' and "
                       "optimizer.schedule='val_plateau' need validation: set "
                       "eval.val_split and eval.val_epochs or eval.val_steps")
    self.history = selection.EvalHistory(workdir)
    self.best_mngr = wd.best_checkpoint_manager(workdir) if self.val_steps else None

  def scheduled(self, step: int) -> bool:
    """A validation or test pass (and so a checkpoint) is due at ``step``."""
    return step in self.val_steps or step in self.test_steps

  def _missing(self, step: int, tests: bool) -> tuple[bool, list[str]]:
    val = step in self.val_steps and self.history.get("val", step) is None
    test = [c for c in self.test_checkpoints
            if tests and step in self.test_steps and self.history.get("test", step, c) is None]
    return val, test

  def run(self, step: int, state: TrainState, tests: bool = True) -> TrainState:
    """The evaluations scheduled at ``step`` not yet recorded; returns the state (with the
    learning rate the validations so far imply, under 'val_plateau')."""
    val, test = self._missing(step, tests)
    if val or test:
      self.mngr.wait_until_finished()
      if self.mngr.latest_step() != step:  # records only refer to checkpoints on disk
        self.mngr.save(step, args=ocp.args.StandardSave(state), force=True)
        self.mngr.wait_until_finished()
      if val:
        self._validate(step, state)
      for checkpoint in test:
        self.record_test(step, self.evaluate_test(state, step, checkpoint))
    return self.with_learning_rate(state, step)

  def _validate(self, step: int, state: TrainState) -> None:
    metric = self.config.eval.select_metric
    views = evaluate.validation_views(self.trainer, self.source, state, self.config,
                                      self.val_split)
    record = selection.make_record("val", step, self.spe, self.val_split, "latest", step,
                                   views, metric=metric)
    previous = selection.best_record(self.history.of_kind("val"), metric)
    value = selection.metric_value(record, metric)
    selected = value == value and (  # NaN never selected
        previous is None or value >= selection.metric_value(previous, metric))
    if selected and step not in self.best_mngr.all_steps():
      self.best_mngr.save(step, args=ocp.args.StandardSave(state), force=True)
      self.best_mngr.wait_until_finished()
    record["selected"] = bool(selected)
    self.history.add(record)
    self.writer.write_scalars(step, {f"val/{v}/{k}": x for v, m in views.items()
                                     for k, x in m.items()})
    best = selection.best_record(self.history.of_kind("val"), metric)
    if jax.process_index() == 0:
      print(f"validation ({self.val_split}) at step {step} (epoch {record['epoch']}): "
            f"{metric} {100 * value:.2f}{' (new best)' if selected else ''}; best: step "
            f"{best['step']} ({100 * selection.metric_value(best, metric):.2f})", flush=True)

  def learning_rate(self, step: int) -> float:
    """'val_plateau': the rate after the validations recorded up to ``step``."""
    o = self.config.optimizer
    values = [selection.metric_value(r, self.config.eval.select_metric)
              for r in self.history.of_kind("val") if r["step"] <= step]
    return selection.plateau_learning_rate(values, o.lr, signal=o.plateau_signal,
                                           patience=o.plateau_patience, decay=o.plateau_decay,
                                           min_scale=o.plateau_min_scale)

  def with_learning_rate(self, state: TrainState, step: int) -> TrainState:
    if not self.plateau:
      return state
    lr = jax.device_put(jnp.asarray(self.learning_rate(step), jnp.float32), self.trainer.repl)
    return state.replace(opt_state=set_adaptive_lr(state.opt_state, lr))

  def best_state(self) -> tuple[TrainState, int]:
    """(state, step) of the validation-selected checkpoint."""
    step = self.best_mngr.latest_step()
    if step is None:
      raise RuntimeError(f"eval.test_checkpoint='best' but {self.best_mngr.directory} holds "
                         "no checkpoint yet (no validation has run before this test pass: "
                         "schedule a validation at or before the first test)")
    return self.best_mngr.restore(
        step, args=ocp.args.StandardRestore(self.trainer.abstract_state())), step

  def evaluate_test(self, state: TrainState, step: int, checkpoint: str,
                    extra_splits: bool = False) -> dict:
    """The test-split evaluation of ``checkpoint`` ('latest' = ``state``, 'best'): the
    result dict of ``evaluate.evaluate_state`` plus 'params_step' and 'checkpoint', and with
    ``extra_splits`` the same for each split of ``eval.extra_test_splits`` under 'splits'."""
    if checkpoint == "best":
      state, step = self.best_state()
    result = evaluate.evaluate_state(self.trainer, self.source, state, self.config)
    result["params_step"], result["checkpoint"] = step, checkpoint
    if extra_splits:
      result["splits"] = {s: evaluate.evaluate_state(self.trainer, self.source, state,
                                                     self.config, s)
                          for s in self.config.eval.extra_test_splits}
    return result

  def record_test(self, step: int, result: dict) -> None:
    checkpoint = result["checkpoint"]
    if ((step not in self.test_steps and step != self.total_steps)  # the final one always
        or self.history.get("test", step, checkpoint) is not None):
      return
    self.history.add(selection.make_record(
        "test", step, self.spe, self.config.data.test_split, checkpoint,
        result["params_step"], {v: result[v] for v in ("zsl", "gzsl")}))
    prefix = "test" if checkpoint == "latest" else f"test_{checkpoint}"
    self.writer.write_scalars(step, {f"{prefix}/{k}": v
                                     for k, v in evaluate.flatten(result).items()})
    # The final evaluation of the first test checkpoint is printed by evaluate.report.
    final = step == self.total_steps and checkpoint == self.test_checkpoints[0]
    if jax.process_index() == 0 and not final:
      which = (f"best checkpoint, step {result['params_step']}" if checkpoint == "best"
               else "current parameters")
      print(f"test ({self.config.data.test_split}) at step {step} (epoch "
            f"{step / self.spe:g}; {which}):\n{result['table']}", flush=True)

  def close(self) -> None:
    if self.best_mngr is not None:
      self.best_mngr.wait_until_finished()
      self.best_mngr.close()


class PreemptionWatch:
  """Turns SIGTERM into "stop at the next step boundary".

  The handler only sets a flag; ``should_stop(step)`` is checked after each step. With
  several processes, every ``check_every`` steps all processes exchange their flags (a tiny
  all-gather), so all hosts stop at the same step and save the same checkpoint.
  """

  def __init__(self, check_every: int = 1):
    self.check_every = max(int(check_every), 1)
    self.flag = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    self.flag = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.flag
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray([self.flag], np.int32))
    return bool(np.any(flags))

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def profiler_options() -> jax.profiler.ProfileOptions:
  """XLA host and device events, without jaxlib's Python tracer: stopping that tracer walks
  every Python thread and segfaults (jaxlib 0.10.2) when one (a checkpoint or input thread)
  exits meanwhile; seen in about half of the profiled CLI runs."""
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  return options


class ProfileWindow:
  """Captures a ``jax.profiler`` trace of steps [first, last] (1-based, inclusive) into
  ``logdir`` (view with TensorBoard's profile plugin or Perfetto); (0, 0) = off."""

  def __init__(self, steps, logdir: str):
    self.first, self.last = (int(steps[0]), int(steps[1])) if steps else (0, 0)
    if self.first and self.last < self.first:
      raise ValueError(f"config field train.profile_steps={tuple(steps)}: expected "
                       "(first, last) with last >= first, or (0, 0) to disable")
    self.logdir, self.active = logdir, False

  def before(self, step: int):
    if self.first and step + 1 == self.first and jax.process_index() == 0:
      jax.profiler.start_trace(self.logdir, profiler_options=profiler_options())
      self.active = True

  def after(self, done: int, metrics):
    if self.active and done >= self.last:
      jax.block_until_ready(metrics)
      self.close()
      print(f"profile of steps {self.first}..{self.last} written to {self.logdir}", flush=True)

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the
  final evaluation {'zsl': {...}, 'gzsl': {...}, 'chance': {...}}.

  Scheduled validation / test passes and the best checkpoint: ``ScheduledEvaluations``. The
  final evaluation scores the parameters named by ``eval.test_checkpoint`` and writes
  ``results.json``.
  """
  # TensorFlow (the input pipeline) and clu (its writers import TensorFlow) load here, so
  # that importing this module needs neither.
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  workdir = wd.ensure_workdir(workdir)
  t_start = time.perf_counter()
  # Process 0 builds a missing dataset before the others read it (a shared data_dir).
  source = distributed.process_zero_first(lambda: get_dataset(config.data), "dataset ready")
  meta = source.meta
  split = label_split(config, meta)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  data_shards = mesh.shape["data"]
  process_split = pipeline.check_process_split(config.data.process_split)
  shd.local_batch_size(config.train.batch_size, "train.batch_size", data_shards)
  max_positive = int(config.train.max_positive_labels)
  n_read = pipeline.count_train_examples(source, config.data.train_split, split.seen,
                                         config.train.drop_images_without_positive,
                                         process_split, max_positive)
  # Equal on every process (with 'examples', the smallest shard's count decides).
  steps_per_epoch, n_train = pipeline.train_steps_per_epoch(
      n_read, config.train.batch_size, process_split)
  if steps_per_epoch == 0:
    raise ValueError(f"split {config.data.train_split!r} has {n_train} usable examples, "
                     f"fewer than one batch of train.batch_size={config.train.batch_size}")
  num_epochs = config.train.num_epochs
  total_steps = steps_per_epoch * num_epochs
  if config.train.num_steps:  # a length in steps (LESA counts iterations, not epochs)
    total_steps = int(config.train.num_steps)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
  trainer = Trainer(config, meta, mesh, steps_per_epoch)
  mngr = wd.checkpoint_manager(workdir, config)
  wd.check_resume_config(config, workdir, resuming=mngr.latest_step() is not None)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, wd.CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  evals = ScheduledEvaluations(trainer, source, config, workdir, mngr, writer,
                               steps_per_epoch, total_steps)
  state = restore_or_init(trainer, mngr, config.train.init_from)
  start = int(state.step)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  if jax.process_index() == 0:
    print(f"{config.model.name}: {n_params:,} parameters; {meta.name}: {n_train} training "
          f"images ({config.data.train_split}), {steps_per_epoch} steps/epoch x {num_epochs} "
          f"epochs = {total_steps} steps; mesh {dict(mesh.shape)}; {jax.process_count()} "
          f"process(es), data split by {process_split}; "
          f"{evaluate.scene_description(config, meta) or 'no scene feature'}", flush=True)

  batches = pipeline.prefetch_to_device(
      pipeline.train_batches(
          source, split=config.data.train_split, seen_ids=split.seen,
          global_batch=config.train.batch_size, seed=config.seed, start_step=start,
          steps_per_epoch=steps_per_epoch, shuffle_buffer=config.train.shuffle_buffer,
          drop_without_positive=config.train.drop_images_without_positive,
          data_shards=data_shards, prefetch=config.train.prefetch,
          process_split=process_split, sharding=trainer.batch_sharding,
          max_positive=max_positive),
      trainer.batch_sharding, size=config.train.prefetch)
  emb_seen = jax.device_put(trainer.emb_seen, trainer.repl)

  pending: list[dict] = []  # metrics of steps not yet on the host
  window: list[dict] = []  # on the host, not yet logged
  guard = NonFiniteGuard(config, mngr)
  t_last, step_last = time.perf_counter(), start
  preemption = PreemptionWatch(config.train.preemption_check_every_steps)
  profile = ProfileWindow(config.train.profile_steps, os.path.join(workdir, "profile"))
  try:
    # A resumed run first finishes the evaluations of the step it resumed at.
    state = evals.run(start, state, tests=start != total_steps)
    for step in range(start, total_steps):
      profile.before(step)
      state, metrics = trainer.train_step(state, next(batches), emb_seen)
      pending.append(metrics)
      done = step + 1
      profile.after(done, metrics)
      log_due = done % config.train.log_every_steps == 0 or done == total_steps
      stop = preemption.should_stop(done) and done != total_steps
      # Metrics (and their 'finite' flags) reach the host at log steps and before anything
      # is saved, so no non-finite state is ever written: the only host syncs in the loop.
      if log_due or stop or mngr.should_save(done) or evals.scheduled(done):
        host = jax.device_get(pending)
        guard.observe(host, done - len(host) + 1)
        window += host
        pending = []
      if log_due:
        host, window = window, []
        mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        mean["skipped_updates"] = float(sum(m["finite"] < 1 for m in host))
        now = time.perf_counter()
        sps = (done - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, done
        mean["steps_per_sec"] = sps
        mean["images_per_sec"] = sps * config.train.batch_size
        writer.write_scalars(done, mean)
        if jax.process_index() == 0:
          skipped = (f" ({mean['skipped_updates']:.0f} non-finite updates skipped)"
                     if mean["skipped_updates"] else "")
          print(f"step {done}/{total_steps} (epoch {(done - 1) // steps_per_epoch + 1}) "
                f"loss {mean['loss']:.4f} lr {mean['lr']:.2e} {sps:.1f} steps/s "
                f"{mean['images_per_sec']:.0f} img/s "
                f"ETA {_format_eta((total_steps - done) / sps)}{skipped}", flush=True)
      if stop:
        mngr.save(done, args=ocp.args.StandardSave(state), force=True)
        mngr.wait_until_finished()
        writer.flush()
        if jax.process_index() == 0:
          print(f"preempted (SIGTERM): checkpoint saved at step {done}; run the same command "
                "to resume", flush=True)
        return {"preempted_at": done}
      mngr.save(done, args=ocp.args.StandardSave(state))
      state = evals.run(done, state, tests=done != total_steps)
    if mngr.latest_step() != total_steps:
      mngr.save(total_steps, args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()
    state = evals.run(total_steps, state, tests=False)
    # The final evaluation: each of eval.test_checkpoint; results.json holds the first.
    results = [evals.evaluate_test(state, total_steps, c, extra_splits=i == 0)
               for i, c in enumerate(evals.test_checkpoints)]
    for result in results:
      evals.record_test(total_steps, result)
    result = results[0]
    writer.write_scalars(total_steps, evaluate.flatten(result))
    writer.flush()
    evaluate.report(result, config, workdir, step=result["params_step"], trained_to_end=True,
                    train_seconds=time.perf_counter() - t_start)
    return result
  finally:  # an exception still finishes the checkpoint writes already started
    preemption.restore()
    profile.close()
    mngr.wait_until_finished()
    evals.close()
