"""Dataset config fields read and checked without TensorFlow (``main compile`` runs where it
is not installed): integers, the folder of the official files, BiAM's scene feature, and the
region layout a config selects."""

from __future__ import annotations

import os

import numpy as np

from mlzsl_jax.data import extracted

SCENE_CHOICES = ("none", "vgg19")
SCENE_DIM = 4096  # VGG19 fc7's width: the scene feature's length with torchvision's weights


def int_field(data_config, name: str, default: int) -> int:
  """``data.<name>`` as an int (numpy ints too, bools not); ValueError naming the field."""
  value = data_config.get(name, default)
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
    raise ValueError(f"config field data.{name}: expected an int, got {value!r}")
  return int(value)


def manual_dir_option(data_config) -> str:
  """``data.manual_dir`` (the folder of the official files): a path string, '' when not
  given; ValueError naming the field otherwise."""
  manual_dir = data_config.get("manual_dir", "") or ""
  if not isinstance(manual_dir, str):
    raise ValueError(f"config field data.manual_dir: expected a folder path string, got "
                     f"{manual_dir!r}")
  return manual_dir


def scene_option(data_config) -> tuple[str, str]:
  """(data.scene, data.scene_weights) of a data config, validated: scene in
  ``SCENE_CHOICES`` ('none' default), weights a path string ('' when not given)."""
  scene = data_config.get("scene", "none")
  scene = "none" if scene is None else scene
  if not isinstance(scene, str) or scene not in SCENE_CHOICES:
    raise ValueError(f"config field data.scene={scene!r}: expected one of {SCENE_CHOICES} "
                     "('vgg19': BiAM's scene feature, VGG19 fc7 of the region features, "
                     "computed once when the dataset is prepared from data.scene_weights)")
  weights = data_config.get("scene_weights", "") or ""
  if not isinstance(weights, (str, os.PathLike)):
    raise ValueError(f"config field data.scene_weights: expected a file path string, got "
                     f"{weights!r}")
  weights = os.fspath(weights)
  return scene, os.path.abspath(os.path.expanduser(weights)) if weights else ""


def region_layout(data_config, grid_shape: tuple[int, int], feature_dim: int
                  ) -> tuple[tuple[int, int], int, int, int]:
  """(grid_shape, feature_dim, scene_dim, clip_dim) of the dataset ``data.backbone`` and
  ``data.scene`` select, read from no file: the official grid (``grid_shape`` x
  ``feature_dim``; scene_dim ``SCENE_DIM`` with data.scene='vgg19', else 0) or the extract
  backbone's; clip_dim is the CLIP label embedding's (clip_vit_b16's with the official
  features, else the backbone's)."""
  scene, _ = scene_option(data_config)
  backbone, _ = extracted.backbone_option(data_config)
  if backbone != "vgg19":
    grid, dim, scene_dim = extracted.extracted_layout(backbone)
    return grid, dim, scene_dim, dim
  return (tuple(grid_shape), feature_dim, SCENE_DIM if scene == "vgg19" else 0,
          extracted.extracted_layout("clip_vit_b16")[1])
