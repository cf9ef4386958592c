"""Figures of a trained workdir: PR curves, per-label AP, per-label region-score maps.

  python -m mlzsl_jax.main plots --config CONFIG --workdir DIR [--examples=0,5]

writes into ``DIR/plots/``:
  pr_curves.png       micro-averaged precision-recall curves, ZSL and GZSL (state-0 pairs
                      ignored), with the positive rate (a random ranking) as a dashed line;
  per_label_ap.png    AP of every label, GZSL (seen and unseen coloured apart) and ZSL;
  region_map_<i>.png  for test example i and a region-based model (BiAM, LESA, one attention
                      per label): the input image (where the dataset stores one, e.g.
                      digits_mosaic) and, per label present in the image, the model's region
                      map over it;
and logs the same figures as TensorBoard images (``DIR`` event files, tag ``plots/<name>``).

matplotlib is imported only here (``pip install matplotlib``; pinned in requirements.txt).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import nnx

from mlzsl_jax import step as step_lib
from mlzsl_jax import hooks
from mlzsl_jax import metrics

def _pyplot():
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("plots need matplotlib: pip install matplotlib (pinned in "
                      "requirements.txt)") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


# ----------------------------------------------------------------------------- numbers


def micro_pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Micro-averaged precision-recall curve over all (image, label) pairs.

  Args:
    scores: [images, labels] float; labels: [images, labels] states 1 / -1 / 0 (0 ignored).

  Returns:
    (precision [T], recall [T]) at each distinct score threshold, highest threshold first.
  """
  valid = labels != 0
  s = np.asarray(scores, np.float64)[valid]
  pos = (np.asarray(labels)[valid] == 1)
  if pos.sum() == 0:
    return np.zeros(1), np.zeros(1)
  order = np.argsort(-s, kind="stable")
  s, pos = s[order], pos[order]
  tp = np.cumsum(pos)
  ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tied group
  return tp[ends] / (ends + 1.0), tp[ends] / tp[-1]


def region_map_to_pixels(region_map: np.ndarray, grid_shape: tuple[int, int],
                         image_shape: tuple[int, int]) -> np.ndarray:
  """[regions] (row-major over ``grid_shape``) -> [H, W]: each region fills its block of the
  image (nearest-neighbour upsampling; H, W multiples of the grid)."""
  gh, gw = grid_shape
  h, w = image_shape
  if h % gh or w % gw:
    raise ValueError(f"image {image_shape} is not a whole number of {grid_shape} regions")
  grid = np.asarray(region_map).reshape(gh, gw)
  return np.repeat(np.repeat(grid, h // gh, axis=0), w // gw, axis=1)


def peak_cell(region_map: np.ndarray, grid_shape: tuple[int, int],
              cells: tuple[int, int]) -> int:
  """Row-major index of the mosaic cell (of a ``cells`` grid over the image) that holds the
  region with the largest value of ``region_map: [regions]``."""
  gh, gw = grid_shape
  r = int(np.argmax(np.asarray(region_map)))
  row, col = divmod(r, gw)
  # The region's centre, in units of the image's height / width, decides its cell.
  return int((row + 0.5) / gh * cells[0]) * cells[1] + int((col + 0.5) / gw * cells[1])


def peak_hits(maps: np.ndarray, examples: Sequence[dict], label_ids: Sequence[int],
              grid_shape: tuple[int, int], cells: tuple[int, int],
              cell_key: str = "cell_digits") -> np.ndarray:
  """For each present label: does its region map peak on a cell holding that label?

  Args:
    maps: [examples, regions, len(label_ids)] region maps.
    examples: dicts with 'labels' [all labels] states and ``cell_key`` [cells] (label id per
      cell, -1 blank; row-major over ``cells``): 'cell_digits' (digits_mosaic) or
      'cell_labels' (colour_digits).
    label_ids: the dataset label id of each map column.

  Returns:
    [examples, len(label_ids)] int8: 1 hit, 0 miss, -1 label absent from the example.
  """
  out = np.full((len(examples), len(label_ids)), -1, np.int8)
  for e, (ex, m) in enumerate(zip(examples, maps)):
    for j, label in enumerate(label_ids):
      if ex["labels"][label] == 1:
        out[e, j] = int(ex[cell_key][peak_cell(m[:, j], grid_shape, cells)] == label)
  return out


# ----------------------------------------------------------------------------- figures


def _save(fig, path: str) -> np.ndarray:
  """Writes ``fig`` to ``path`` (PNG) and returns its pixels [H, W, 3] uint8 for TensorBoard."""
  fig.canvas.draw()
  pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  fig.savefig(path, dpi=fig.dpi)
  _pyplot().close(fig)
  return pixels


def plot_pr_curves(views: dict[str, tuple[np.ndarray, np.ndarray]], path: str,
                   title: str = "") -> np.ndarray:
  """``views``: {'ZSL': (scores [N, L], labels [N, L]), 'GZSL': ...} -> PNG at ``path``."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
  for (name, (scores, labels)), color in zip(views.items(), ("tab:orange", "tab:blue")):
    precision, recall = micro_pr_curve(scores, labels)
    valid = labels != 0
    rate = float((labels[valid] == 1).mean()) if valid.any() else 0.0
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    ax.plot(recall, precision, color=color, label=f"{name} (micro AP {100 * ap:.1f})")
    ax.axhline(rate, color=color, linestyle="--", linewidth=0.8,
               label=f"{name} random ({100 * rate:.1f})")
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
         title=title or "precision-recall (micro over image-label pairs)")
  ax.legend(loc="upper right", fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


def plot_per_label_ap(ap_gzsl: np.ndarray, ap_zsl: np.ndarray, names: Sequence[str],
                      num_seen: int, path: str, max_labels: int = 60) -> np.ndarray:
  """Bar charts of per-label AP: GZSL over seen + unseen labels (``names`` in that order,
  seen first) and ZSL over the unseen ones. Above ``max_labels`` labels the bars are sorted
  and unlabelled."""
  plt = _pyplot()
  unseen_names = list(names[num_seen:])
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100,
                           gridspec_kw={"width_ratios": [max(len(names), 1),
                                                         max(len(unseen_names), 1) + 2]})
  colors = ["tab:blue"] * num_seen + ["tab:orange"] * (len(names) - num_seen)
  for ax, ap, labels, cols, title in (
      (axes[0], ap_gzsl, list(names), colors, "GZSL per-label AP (blue seen, orange unseen)"),
      (axes[1], ap_zsl, unseen_names, ["tab:orange"] * len(unseen_names), "ZSL per-label AP")):
    ap = 100 * np.asarray(ap)
    order = np.argsort(-ap) if len(ap) > max_labels else np.arange(len(ap))
    ax.bar(np.arange(len(ap)), ap[order], color=[cols[i] for i in order])
    if len(ap) <= max_labels:
      ax.set_xticks(np.arange(len(ap)), [labels[i] for i in order], rotation=90, fontsize=8)
    ax.set(ylim=(0, 100), ylabel="AP x100", title=title)
    ax.axhline(ap.mean() if len(ap) else 0, color="k", linewidth=0.8, linestyle=":")
  fig.tight_layout()
  return _save(fig, path)


def plot_region_maps(image: np.ndarray | None, maps: np.ndarray, grid_shape: tuple[int, int],
                     label_names: Sequence[str], titles: Sequence[str], path: str,
                     suptitle: str = "") -> np.ndarray:
  """One panel for the image (if any) and one per label: the label's region map [R]
  (``maps: [labels, regions]``) drawn over the image, its peak region outlined in cyan."""
  plt = _pyplot()
  n = len(maps) + (image is not None)
  fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), dpi=100, squeeze=False)
  axes = list(axes[0])
  shape = image.shape[:2] if image is not None else grid_shape
  if image is not None:
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input", fontsize=9)
    axes.pop(0).axis("off")
  gh, gw = grid_shape
  for ax, region_map, name, title in zip(axes, maps, label_names, titles):
    if image is not None:
      ax.imshow(image, cmap="gray")
      ax.imshow(region_map_to_pixels(region_map, grid_shape, shape), cmap="inferno",
                alpha=0.6)
    else:
      ax.imshow(np.asarray(region_map).reshape(grid_shape), cmap="inferno")
    # The peak region, outlined (pixel units: one region = shape / grid pixels).
    row, col = divmod(int(np.argmax(region_map)), gw)
    rh, rw = shape[0] / gh, shape[1] / gw
    ax.add_patch(plt.Rectangle((col * rw - 0.5, row * rh - 0.5), rw, rh, fill=False,
                               edgecolor="cyan", linewidth=2))
    ax.set_title(f"{name}\n{title}", fontsize=9)
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


# ----------------------------------------------------------------------------- workdir


def test_examples(source, split: str, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
  """The examples at ``indices`` (file order) of ``split`` as NumPy dicts, with the
  dataset's picture fields ('image', ...) where the source has ``pictures(split)``."""
  wanted = sorted(set(int(i) for i in indices))
  if wanted and wanted[0] < 0:
    raise ValueError(f"--examples {list(indices)}: indices must be >= 0")
  n = source.meta.num_examples.get(split)
  if n is not None and wanted and wanted[-1] >= n:
    raise ValueError(f"--examples {list(indices)}: split {split!r} has {n} examples")
  found = {}
  ds = source.as_tf_dataset(split)
  if hasattr(source, "pictures"):
    ds = tf.data.Dataset.zip(ds, source.pictures(split)).map(lambda a, b: {**a, **b})
  for i, ex in enumerate(ds.take(wanted[-1] + 1 if wanted else 0)):
    if i in wanted:
      found[i] = {k: np.asarray(v) for k, v in ex.items()}
  return [found[i] for i in indices]


def example_region_maps(trainer, meta, state, examples: Sequence[dict],
                        label_ids: Sequence[int]) -> np.ndarray:
  """Region maps [examples, regions, len(label_ids)] of the trained model (eval mode)."""
  make_map = hooks.REGION_MAPS.get(trainer.config.model.name)
  model = nnx.merge(trainer.graphdef, state.params, state.model_state)
  emb = jax.tree.map(lambda a: jnp.asarray(a[np.asarray(label_ids)]),
                     step_lib.label_inputs(trainer.config, meta))
  feats = jnp.asarray(np.stack([ex["features"] for ex in examples]))
  scene = (jnp.asarray(np.stack([ex["scene"] for ex in examples]))
           if all("scene" in ex for ex in examples) else None)
  with jax.sharding.use_abstract_mesh(trainer.mesh.abstract_mesh):
    return np.asarray(make_map(model, feats, emb, scene), np.float32)


def plot_workdir(config, workdir: str, examples: Sequence[int] = (0,),
                 localize: int = 100) -> list[str]:
  """Restores the latest checkpoint of ``workdir`` and writes its figures (see module doc).

  Where the dataset records which label fills which cell (digits_mosaic's 'cell_digits')
  and the model has region maps, also counts over the first ``localize`` test images how
  often a present label's map peaks on a cell holding it (seen / unseen), printed and written
  to ``plots/localization.json``.
  """
  from clu import metric_writers

  from mlzsl_jax import evaluate, restore

  source, trainer, state, step = restore.restore(config, workdir, "latest")
  meta = source.meta
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  zsl, gzsl, labels = evaluate.collect_scores(trainer, source, state, config)
  if jax.process_index() > 0:  # every process helped score the test split; one draws
    return []
  split = trainer.split
  num_seen = len(split.seen)
  ids = list(split.seen) + list(split.unseen)
  names = [meta.label_names[i] for i in ids]
  figures: dict[str, np.ndarray] = {}
  figures["pr_curves"] = plot_pr_curves(
      {"ZSL": (zsl, labels[:, num_seen:]), "GZSL": (gzsl, labels)},
      os.path.join(out_dir, "pr_curves.png"),
      f"{config.model.name} on {meta.name} ({config.data.test_split}), step {step}")
  figures["per_label_ap"] = plot_per_label_ap(
      metrics.average_precision_per_label(gzsl, labels),
      metrics.average_precision_per_label(zsl, labels[:, num_seen:]), names, num_seen,
      os.path.join(out_dir, "per_label_ap.png"))
  if config.model.name in hooks.REGION_MAPS.names():
    exs = test_examples(source, config.data.test_split, examples)
    maps = example_region_maps(trainer, meta, state, exs, ids)  # [E, R, L], seen then unseen
    for i, ex, m in zip(examples, exs, maps):
      present = [j for j, lab in enumerate(ids) if ex["labels"][lab] == 1]
      titles = [("unseen" if j >= num_seen else "seen") + f", score {gzsl[i, j]:.2f}"
                for j in present]
      figures[f"region_map_{i}"] = plot_region_maps(
          ex.get("image"), m.T[present], meta.grid_shape, [names[j] for j in present],
          titles, os.path.join(out_dir, f"region_map_{i}.png"),
          f"{config.model.name}: region maps of test example {i} (labels present)")
    cells = tuple(config.data.get("cells", ()) or getattr(getattr(source, "params", None),
                                                          "cells", ()))
    cell_key = next((k for k in ("cell_digits", "cell_labels") if k in exs[0]), None)
    if localize and cells and cell_key:
      first = test_examples(source, config.data.test_split,
                            range(min(localize, len(labels))))
      hits = peak_hits(example_region_maps(trainer, meta, state, first, ids), first, ids,
                       meta.grid_shape, cells, cell_key)
      summary = {group: {"hits": int((part == 1).sum()), "present": int((part >= 0).sum())}
                 for group, part in (("seen", hits[:, :num_seen]),
                                     ("unseen", hits[:, num_seen:]))}
      summary["images"] = len(first)
      with open(os.path.join(out_dir, "localization.json"), "w") as f:
        json.dump(summary, f, indent=2)
      print(f"region-map peak on the label's own cell, first {len(first)} test images: "
            + ", ".join(f"{g} {v['hits']}/{v['present']}" for g, v in summary.items()
                        if g != "images"), flush=True)
  writer = metric_writers.create_default_writer(workdir, asynchronous=False)
  writer.write_images(step, {f"plots/{k}": v[None] for k, v in figures.items()})
  writer.flush()
  return [os.path.join(out_dir, f"{k}.png") for k in figures]
