"""Evaluation: scores for every test image, then ZSL / GZSL metrics and a paper-style table."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mlzsl_jax import metrics
from mlzsl_jax import sharding as shd
from mlzsl_jax.data import pipeline
from mlzsl_jax.data.source import DatasetSource, get_dataset


def collect_scores(trainer, source: DatasetSource, state, config
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores of the test split.

  Returns:
    zsl_scores [N, unseen] (the model given only the unseen embeddings),
    gzsl_scores [N, seen + unseen] (given all, seen first),
    labels [N, seen + unseen] states in the same column order.
  """
  split = trainer.split
  embs = tuple(jax.device_put(e, trainer.repl) for e in (trainer.emb_unseen, trainer.emb_gzsl))
  order = np.asarray(split.seen + split.unseen)
  zsl, gzsl, labels = [], [], []
  for batch, n in pipeline.eval_batches(source, split=config.data.test_split,
                                        global_batch=config.eval.batch_size,
                                        data_shards=trainer.mesh.shape["data"]):
    device_batch = shd.host_to_global(
        {k: v for k, v in batch.items() if k != "labels"}, trainer.batch_sharding)
    outs = trainer.predict(state.params, state.model_state, device_batch, embs)
    outs = [multihost_utils.process_allgather(o, tiled=True) for o in outs]
    zsl.append(np.asarray(outs[0])[:n])
    gzsl.append(np.asarray(outs[1])[:n])
    labels.append(batch["labels"][:n][:, order])
  return np.concatenate(zsl), np.concatenate(gzsl), np.concatenate(labels)


def evaluate_state(trainer, source: DatasetSource, state, config) -> dict:
  """{'zsl': view, 'gzsl': view, 'chance': {'zsl', 'gzsl'}, 'num_images': N}."""
  t0 = time.perf_counter()
  zsl_scores, gzsl_scores, labels = collect_scores(trainer, source, state, config)
  s, u = len(trainer.split.seen), len(trainer.split.unseen)
  seen_cols, unseen_cols = range(s), range(s, s + u)
  ks = tuple(config.eval.ks)
  exclude = config.eval.exclude_images_without_positive
  result = metrics.evaluate_multilabel(gzsl_scores, labels, seen_cols, unseen_cols, ks,
                                       exclude, zsl_scores=zsl_scores)
  result["chance"] = metrics.chance_level(labels, seen_cols, unseen_cols, ks,
                                          seeds=tuple(range(config.eval.chance_seeds)),
                                          exclude_images_without_positive=exclude)
  result["num_images"] = int(len(labels))
  result["eval_seconds"] = time.perf_counter() - t0
  return result


def flatten(result: dict) -> dict[str, float]:
  """{'zsl/map': ..., 'gzsl/f1@3': ...} for metric writers."""
  return {f"{view}/{k}": v for view in ("zsl", "gzsl") for k, v in result[view].items()}


SCENE_SOURCES = {
    "dataset": "scene feature stored with the dataset",
    "mean_region": "scene feature substitute: learned projection of the mean region feature",
}


def report(result: dict, config, workdir: str, step: int) -> str:
  """Prints the table (process 0) and writes ``results.json`` into ``workdir``."""
  table = metrics.format_table(result, result["chance"], tuple(config.eval.ks))
  if jax.process_index() == 0:
    print(f"\n{config.model.name} on {config.data.name} ({config.data.test_split}, "
          f"{result['num_images']} images; ZSL = {len(config.data.unseen_labels)} unseen "
          f"labels, GZSL = {len(config.data.seen_labels) + len(config.data.unseen_labels)} "
          f"labels), step {step}; {SCENE_SOURCES.get(config.model.scene_source, '')}; "
          f"label embeddings: {config.data.embedding!r}\n{table}\n", flush=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"step": step, "config": json.loads(config.to_json_best_effort()),
                 **{k: result[k] for k in ("zsl", "gzsl", "chance", "num_images")},
                 "eval_seconds": result["eval_seconds"]}, f, indent=2)
  return table


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Restores the latest checkpoint in ``workdir`` and prints the evaluation table."""
  from mlzsl_jax import train

  workdir = train.ensure_workdir(workdir)
  source = get_dataset(config.data)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  trainer = train.Trainer(config, source.meta, mesh, steps_per_epoch=1)
  mngr = train.checkpoint_manager(workdir, config)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir {workdir!r}: no checkpoint under "
                            f"{os.path.join(workdir, 'checkpoints')}; train first")
  state = mngr.restore(step, args=ocp.args.StandardRestore(trainer.abstract_state()))
  result = evaluate_state(trainer, source, state, config)
  report(result, config, workdir, step)
  return result
