"""Evaluation: scores for every image of a split, then ZSL / GZSL metrics and a paper-style
table. Pure evaluation of a given state: restoring checkpoints is ``restore.py``'s job, so
neither this module nor ``train.py`` imports the other's callers."""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from mlzsl_jax import workdir as wd
from mlzsl_jax import errors
from mlzsl_jax import metrics
from mlzsl_jax import metrics_device
from mlzsl_jax import metrics_open_images
from mlzsl_jax import sharding as shd
from mlzsl_jax.data.source import DatasetSource
from mlzsl_jax.registry import Registry


def collect_scores(trainer, source: DatasetSource, state, config, split_name: str = ""
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores of the split ``split_name`` ('' = ``config.data.test_split``).

  Returns:
    zsl_scores [N, unseen] (the model given only the unseen embeddings),
    gzsl_scores [N, seen + unseen] (given all, seen first),
    labels [N, seen + unseen] states in the same column order.
  Rows are the test images in file order, each exactly once, on any number of processes:
  every process's labels and example indices travel through the same global arrays as its
  scores, so rows stay paired whatever rows each process held (``data.process_split``).
  """
  from mlzsl_jax.data import pipeline  # TensorFlow: loaded only to read data
  split = trainer.split
  embs = tuple(jax.device_put(e, trainer.repl) for e in (trainer.emb_unseen, trainer.emb_gzsl))
  order = np.asarray(split.seen + split.unseen)
  zsl, gzsl, labels, index = [], [], [], []
  split_name = split_name or config.data.test_split
  for batch, _ in pipeline.eval_batches(source, split=split_name,
                                        global_batch=config.eval.batch_size,
                                        data_shards=trainer.mesh.shape["data"],
                                        process_split=config.data.process_split,
                                        sharding=trainer.batch_sharding):
    device_batch = shd.host_to_global(
        {k: v for k, v in batch.items() if k not in ("labels", "index")},
        trainer.batch_sharding)
    outs = trainer.predict(state.params, state.model_state, device_batch, embs)
    if jax.process_count() > 1:
      rows = shd.host_to_global({k: batch[k] for k in ("labels", "index")},
                                trainer.batch_sharding)
      outs, rows = multihost_utils.process_allgather((outs, rows), tiled=True)
    else:
      rows = {k: batch[k] for k in ("labels", "index")}
    keep = np.asarray(rows["index"]) >= 0
    zsl.append(np.asarray(outs[0])[keep])
    gzsl.append(np.asarray(outs[1])[keep])
    labels.append(np.asarray(rows["labels"])[keep][:, order])
    index.append(np.asarray(rows["index"])[keep])
  index = np.concatenate(index)
  perm = np.argsort(index, kind="stable")
  if not np.array_equal(index[perm], np.arange(len(index))):
    raise RuntimeError(f"evaluation of split {split_name!r}: gathered example "
                       f"indices are not each of 0..{len(index) - 1} once (a data-pipeline "
                       "bug)")
  return (np.concatenate(zsl)[perm], np.concatenate(gzsl)[perm],
          np.concatenate(labels)[perm])


PROTOCOLS: Registry[Callable] = Registry("evaluation protocol", "eval.protocol")
# A protocol: (zsl_scores [N, U], gzsl_scores [N, S+U], labels [N, S+U], num_seen, config)
#   -> (result dict with 'zsl', 'gzsl' and 'chance' views, table text).


@PROTOCOLS.register("multilabel")
def _multilabel(zsl_scores, gzsl_scores, labels, num_seen: int, config) -> tuple[dict, str]:
  """spec/metrics.md multi-label protocol: mAP and P/R/F1@K, ZSL and GZSL, chance level."""
  seen_cols = range(num_seen)
  unseen_cols = range(num_seen, labels.shape[1])
  ks = tuple(config.eval.ks)
  exclude = config.eval.exclude_images_without_positive
  seeds = tuple(range(config.eval.chance_seeds))
  if metrics_on_device(config):
    labels_d = jax.device_put(labels)
    result = metrics_device.evaluate_multilabel_device(
        gzsl_scores, labels_d, seen_cols, unseen_cols, ks,
        exclude_images_without_positive=exclude, zsl_scores=zsl_scores)
    result["chance"] = metrics_device.chance_level_device(
        labels_d, seen_cols, unseen_cols, ks, seeds=seeds,
        exclude_images_without_positive=exclude)
  else:
    result = metrics.evaluate_multilabel(gzsl_scores, labels, seen_cols, unseen_cols, ks,
                                         exclude, zsl_scores=zsl_scores)
    result["chance"] = metrics.chance_level(labels, seen_cols, unseen_cols, ks, seeds=seeds,
                                            exclude_images_without_positive=exclude)
  return result, metrics.format_table(result, result["chance"], ks)


METRICS_PLACES = ("auto", "device", "host")


def metrics_on_device(config) -> bool:
  """``eval.metrics_on``: 'device' (JAX, metrics_device.py), 'host' (NumPy, metrics.py), or
  'auto' = device on GPU / TPU, host on CPU (where NumPy's sort is the faster one)."""
  place = config.eval.get("metrics_on", "auto")
  if place not in METRICS_PLACES:
    raise ValueError(f"config field eval.metrics_on={place!r}: expected one of "
                     f"{METRICS_PLACES}")
  return place == "device" or (place == "auto" and jax.default_backend() != "cpu")


@PROTOCOLS.register("single_label")
def _single_label(zsl_scores, gzsl_scores, labels, num_seen: int, config) -> tuple[dict, str]:
  """Single-label ZSL / GZSL (per-class top-1, harmonic mean), chance level, hubness."""
  true = metrics.single_label_classes(labels)
  result = metrics.evaluate_single_label(zsl_scores, gzsl_scores, true, num_seen)
  runs = []
  for seed in range(config.eval.chance_seeds):
    rng = np.random.default_rng(seed)
    runs.append(metrics.evaluate_single_label(rng.random(zsl_scores.shape),
                                              rng.random(gzsl_scores.shape), true, num_seen))
  result["chance"] = {view: {k: float(np.mean([r[view][k] for r in runs])) for k in runs[0][view]}
                      for view in ("zsl", "gzsl")}
  unseen_imgs = true >= num_seen
  result["zsl"]["hubness_skew"] = metrics.hubness_skewness(zsl_scores[unseen_imgs])
  table = metrics.format_single_label_table(result, result["chance"])
  table += (f"\nHubness (skewness of the 1-occurrence distribution over unseen prototypes): "
            f"{result['zsl']['hubness_skew']:.2f}")
  return result, table


for _protocol in metrics_open_images.PROTOCOLS:  # "open_images_official", "open_images_per_label"
  PROTOCOLS.register(f"open_images_{_protocol}")(
      metrics_open_images.evaluation_protocol(_protocol))


def evaluate_state(trainer, source: DatasetSource, state, config, split_name: str = ""
                   ) -> dict:
  """{'zsl': view, 'gzsl': view, 'chance': {'zsl', 'gzsl'}, 'num_images', 'table', ...} of
  the split ``split_name`` ('' = ``config.data.test_split``) under ``config.eval.protocol``."""
  t0 = time.perf_counter()
  zsl_scores, gzsl_scores, labels = collect_scores(trainer, source, state, config, split_name)
  check_finite_scores(config, state, split_name or config.data.test_split,
                      zsl_scores, gzsl_scores)
  protocol = PROTOCOLS.get(config.eval.protocol)
  result, table = protocol(zsl_scores, gzsl_scores, labels, len(trainer.split.seen), config)
  result["table"] = table
  result["num_images"] = int(len(labels))
  result["eval_seconds"] = time.perf_counter() - t0
  return result


def check_finite_scores(config, state, split: str, *scores: np.ndarray) -> None:
  """``errors.NonFiniteError`` naming the model and step when any score is NaN / inf."""
  bad = sum(int(np.size(x) - np.count_nonzero(np.isfinite(x))) for x in scores)
  if bad:
    raise errors.NonFiniteError(
        f"{config.model.name} at step {int(state.step)} produced {bad} non-finite (NaN/inf) "
        f"scores on split {split!r}: its parameters are not finite; evaluate an earlier "
        "checkpoint (--checkpoint=STEP) or retrain with a lower optimizer.lr")


def validation_views(trainer, source: DatasetSource, state, config, split_name: str
                     ) -> dict[str, dict[str, float]]:
  """Model-selection metrics of ``split_name`` (a validation split), no chance level.

  Returns {"seen": view over the seen labels only (the official BiAM validation: F1@5 over
  the 925 seen labels of val20), "zsl": view over the unseen labels, "gzsl": all}, each
  view {"map", "map_with_positives", "p@k", "r@k", "f1@k"} for k in ``eval.ks``.
  """
  zsl_scores, gzsl_scores, labels = collect_scores(trainer, source, state, config, split_name)
  check_finite_scores(config, state, split_name, zsl_scores, gzsl_scores)
  num_seen = len(trainer.split.seen)
  ks = tuple(config.eval.ks)
  exclude = config.eval.exclude_images_without_positive
  views = metrics.evaluate_multilabel(gzsl_scores, labels, range(num_seen),
                                      range(num_seen, labels.shape[1]), ks, exclude,
                                      zsl_scores=zsl_scores)
  views["seen"] = metrics.evaluate_view(gzsl_scores[:, :num_seen], labels[:, :num_seen], ks,
                                        exclude)
  return views


def flatten(result: dict) -> dict[str, float]:
  """{'zsl/map': ..., 'gzsl/f1@3': ...} for metric writers."""
  return {f"{view}/{k}": v for view in ("zsl", "gzsl") for k, v in result[view].items()}


SCENE_SOURCES = {
    "dataset": "scene feature stored with the dataset",
    "mean_region": "scene feature substitute: learned projection of the mean region feature",
}


def scene_description(config, meta) -> str:
  """Which scene feature the model reads, in words ('' when the model reads none)."""
  source = config.model.get("scene_source", "")
  if source == "dataset":
    return (f"scene feature: stored with the dataset ({meta.scene_dim}-d, "
            f"data.scene={config.data.get('scene', 'none')!r})")
  return SCENE_SOURCES.get(source, "")


def report(result: dict, config, workdir: str, step: int, *, trained_to_end: bool = False,
           train_seconds: float | None = None) -> str:
  """Prints the table (process 0) and writes ``results.json`` into ``workdir``.

  results.json: step, trained_to_end (True only when written by training's final
  evaluation: sweeps skip such points), the full config, the ZSL / GZSL / chance metrics,
  num_images, protocol, eval_seconds, train_seconds (wall time of this training run, from
  start or resume to the end) and the time it was written. Written atomically (a temporary
  file, then a rename), so a crash never leaves a truncated file.
  """
  table = result["table"]
  scene = SCENE_SOURCES.get(config.model.get("scene_source", ""), "")
  splits = result.get("splits", {})
  if jax.process_index() == 0:
    print(f"\n{config.model.name} on {config.data.name} ({config.data.test_split}, "
          f"{result['num_images']} images; ZSL = {len(config.data.unseen_labels)} unseen "
          f"labels, GZSL = {len(config.data.seen_labels) + len(config.data.unseen_labels)} "
          f"labels), step {step}; {scene + '; ' if scene else ''}"
          f"label embeddings: {config.data.embedding!r}\n{table}\n", flush=True)
    for name, extra in splits.items():
      print(f"the same on split {name!r} ({extra['num_images']} images):\n{extra['table']}\n",
            flush=True)
    path = os.path.join(workdir, wd.RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump({"step": step, "trained_to_end": trained_to_end,
                 "config": json.loads(config.to_json_best_effort()),
                 **{k: result[k] for k in ("zsl", "gzsl", "chance", "num_images")},
                 "splits": {name: {k: extra[k] for k in ("zsl", "gzsl", "chance",
                                                          "num_images")}
                            for name, extra in splits.items()},
                 "protocol": config.eval.protocol, "eval_seconds": result["eval_seconds"],
                 "train_seconds": train_seconds,
                 "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                f, indent=2)
    os.replace(path + ".tmp", path)
  return table
