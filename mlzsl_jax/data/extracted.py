"""Features written by ``extract`` (``mlzsl_jax.extract.run``) as a dataset builder's
feature source: ``data.features_dir`` = the extract ``--out_dir``.

The shards hold ``<key>-features`` [C, R] (float16 for CLIP, float32 for VGG19) and
``<key>-scene`` [D] per image, ``<key>`` being the official image name (the image's path
below the image folder with '/' -> '_'). ``ExtractedFeatures`` indexes them once (shard
attributes only), checks that every image a split lists was extracted, and reads one
image at a time.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import numpy as np

SHARD_GLOB = "features-*-of-*.h5"


class ExtractedFeatures:
  """key -> (features [R, C] float32, scene [D] float32) over the shards of one extract run.

  Args:
    out_dir: the extract run's ``--out_dir``.
    feature_shape: the [C, R] every image must have (the backbone's).
    backbone: "clip" / "VGG19" / "ResNet101": what the shards' ``architecture`` must say.
  """

  def __init__(self, out_dir: str, feature_shape: tuple[int, int], backbone: str):
    import h5py  # pylint: disable=import-outside-toplevel
    self.out_dir = os.path.abspath(os.path.expanduser(out_dir))
    self.feature_shape = tuple(feature_shape)
    paths = sorted(glob.glob(os.path.join(self.out_dir, SHARD_GLOB)))
    if not paths:
      raise FileNotFoundError(f"config field data.features_dir={out_dir!r}: no extract shards "
                              f"({SHARD_GLOB}) there; run `python -m mlzsl_jax.main extract "
                              f"--out_dir {out_dir} ...` first")
    self.shard_of: dict[str, str] = {}
    self.architecture = ""
    for path in paths:
      try:
        with h5py.File(path, "r") as f:
          arch = str(f.attrs.get("architecture", ""))
          keys = [k.decode() if isinstance(k, bytes) else str(k)
                  for k in np.asarray(f.attrs.get("image_keys", [])).ravel()]
      except OSError as e:
        raise ValueError(f"{path}: cannot read this extract shard (truncated?): {e}") from e
      got = json.loads(arch).get("backbone") if arch else None
      if got != backbone:
        raise ValueError(f"{path}: extracted with backbone {got!r}, expected {backbone!r} "
                         f"(config field data.features_dir / data.backbone)")
      if self.architecture and arch != self.architecture:
        raise ValueError(f"{path}: architecture {arch} differs from the other shards' "
                         f"({self.architecture}): two extract runs in one folder?")
      self.architecture = arch
      for key in keys:
        self.shard_of[key] = path
    self._open: dict[str, object] = {}

  def check_listed(self, names: Sequence[str], names_file: str) -> None:
    """ValueError naming the first listed image that was not extracted."""
    missing = [n for n in names if n not in self.shard_of]
    if missing:
      raise ValueError(f"{self.out_dir}: {len(missing)} image(s) listed in {names_file} were "
                       f"not extracted, e.g. {missing[0]!r} (unreadable? see "
                       f"{os.path.join(self.out_dir, 'unreadable.txt')}; or extracted from "
                       "another folder)")

  def read(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [R, C] float32, scene [D] float32) of image ``key``; ValueError naming the
    shard and key on a wrong shape, NaN/inf or unreadable data."""
    import h5py  # pylint: disable=import-outside-toplevel
    path = self.shard_of[key]
    if path not in self._open:
      self._open[path] = h5py.File(path, "r")
    f = self._open[path]
    try:
      feats = np.asarray(f[f"{key}-features"][()], np.float32)
      scene = np.asarray(f[f"{key}-scene"][()], np.float32)
    except (OSError, KeyError, RuntimeError, ValueError) as e:
      raise ValueError(f"{path}: cannot read image {key!r} (truncated?): {e}") from e
    if feats.shape != self.feature_shape:
      raise ValueError(f"{path}: key {key + '-features'!r}: expected shape "
                       f"{list(self.feature_shape)}, got {list(feats.shape)}")
    if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(scene))):
      raise ValueError(f"{path}: image {key!r} has NaN/inf features")
    return np.ascontiguousarray(feats.T), scene

  def close(self) -> None:
    for f in self._open.values():
      f.close()
    self._open.clear()


# One index per process (the plain path's, or each Beam worker's): (folder, shape) -> index.
_WORKER: dict[tuple[str, tuple[int, int]], ExtractedFeatures] = {}


def worker_features(out_dir: str, feature_shape: tuple[int, int],
                    backbone: str = "clip") -> ExtractedFeatures:
  """The process's ``ExtractedFeatures`` of ``out_dir`` (indexed once, then kept)."""
  key = (os.path.abspath(os.path.expanduser(out_dir)), tuple(feature_shape))
  if key not in _WORKER:
    _WORKER[key] = ExtractedFeatures(out_dir, feature_shape, backbone)
  return _WORKER[key]


def release_worker_features() -> None:
  for features in _WORKER.values():
    features.close()
  _WORKER.clear()


def extracted_layout(backbone: str) -> tuple[tuple[int, int], int, int]:
  """(grid_shape, feature_dim, scene_dim) of a CLIP release's patch tokens, by name."""
  from mlzsl_jax.backbones import clip as clip_lib  # pylint: disable=import-outside-toplevel
  spec = clip_lib.named_spec(backbone)
  return (spec.vision.grid,) * 2, spec.embed_dim, spec.embed_dim


def metadata(dataset: str, backbone: str, features: ExtractedFeatures,
             layout: tuple[tuple[int, int], int, int], labels_from: str) -> dict:
  """The dataset metadata fields of a build from an extract folder (they replace the
  official features' grid, dims and provenance)."""
  grid, dim, scene_dim = layout
  return {
      "grid_shape": list(grid), "feature_dim": dim, "scene_dim": scene_dim,
      "scene_feature": f"{backbone}_class_embedding",
      "features_dir": features.out_dir, "extract_architecture": features.architecture,
      "provenance": (
          f"{dataset}, features extracted with {backbone} (extract --out_dir "
          f"{features.out_dir}: CLIP patch tokens through ln_post and the projection, "
          f"[D, N] -> [N, D] float16; scene = the projected class token); labels, label "
          f"order, image order, splits and embeddings as the BiAM layout ({labels_from})")}


def backbone_option(data_config) -> tuple[str, str]:
  """(data.backbone, data.features_dir), validated: backbone 'vgg19' (the official features)
  or a CLIP release name (``mlzsl_jax.backbones.clip.NAMED_SPECS``)."""
  from mlzsl_jax.backbones import clip as clip_lib  # pylint: disable=import-outside-toplevel
  backbone = data_config.get("backbone", "vgg19") or "vgg19"
  choices = ("vgg19", *clip_lib.NAMED_SPECS)
  if backbone not in choices:
    raise ValueError(f"config field data.backbone={backbone!r}: expected one of {choices}")
  features_dir = data_config.get("features_dir", "") or ""
  if not isinstance(features_dir, str):
    raise ValueError(f"config field data.features_dir: expected a folder path string, got "
                     f"{features_dir!r}")
  return backbone, features_dir
