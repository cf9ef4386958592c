"""Image listing and the official BiAM preprocessing.

Source (``akshitac8/BiAM``, ``feature_extraction/dataset_nus.py`` and
``extract_openimages_{train,val,test}.py``; files named ``*_CONV5_4_VGG_NO_CENTERCROP*``):

  Image.open(f).convert('RGB')
  transforms.Resize((224, 224))     # bilinear, both sides to 224: aspect ratio NOT kept
  # transforms.CenterCrop(224)      # commented out: no crop
  transforms.ToTensor()             # uint8 -> float32 / 255, [3, H, W]
  transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

torchvision's ``Resize`` on a PIL image calls ``img.resize((w, h), Image.BILINEAR)`` (PIL's
bilinear filter, which widens its support when downscaling, i.e. antialiased), so
``load_image`` does exactly that with PIL, then the same float32 arithmetic
(``x / 255``, then ``(x - mean) / std``). EXIF orientation is not applied (neither does
torchvision). Output is NHWC ([H, W, 3]) for our NHWC network.

Image keys: the official h5 keys are the image's path below the image folder with '/'
replaced by '_' (``filename.replace('/', '_')``; ``test_img_names.pkl`` holds e.g.
``actor_0002_174174086.jpg`` for ``Flickr/actor/0002_174174086.jpg``); ``image_key`` does
the same with the path relative to the folder given.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_SIZE = (224, 224)
PREPROCESSING = ("PIL open -> convert('RGB') -> resize((W, H), BILINEAR) -> /255 -> "
                 "(x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] (official BiAM "
                 "feature_extraction, torchvision Resize((224, 224)) + ToTensor + Normalize, "
                 "no center crop)")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _pil():
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("image decoding needs Pillow: pip install pillow") from e
  return Image


def image_key(rel_path: str) -> str:
  """Official h5 key stem of an image: its relative path with '/' -> '_'."""
  return rel_path.replace(os.sep, "/").replace("/", "_")


def list_images(image_dir: str | os.PathLike,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Relative POSIX paths of every image file below ``image_dir`` (recursive, extension
  case-insensitive), sorted: the same list on every host and every run.

  Raises ValueError when two paths map to the same ``image_key`` (e.g. ``a/b_c.jpg`` and
  ``a_b/c.jpg``), since their features would collide in the output.
  """
  root = os.fspath(image_dir)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist")
  exts = tuple(e.lower() for e in extensions)
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in filenames:
      if name.lower().endswith(exts) and not name.startswith("."):
        found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
  found.sort()
  seen: dict[str, str] = {}
  for rel in found:
    key = image_key(rel)
    if key in seen:
      raise ValueError(f"image folder {root!r}: {seen[key]!r} and {rel!r} both map to the "
                       f"key {key!r} ('/' -> '_'); rename one")
    seen[key] = rel
  return found


def preprocess(rgb: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] (already resized) -> float32 [H, W, 3], ToTensor + Normalize."""
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"preprocess: expected uint8 [H, W, 3], got {rgb.dtype} "
                     f"{list(rgb.shape)}")
  x = rgb.astype(np.float32) / np.float32(255)
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def load_image(path: str | os.PathLike, size: Sequence[int] = IMAGE_SIZE) -> np.ndarray:
  """Decode ``path`` -> RGB -> bilinear resize to ``size`` (height, width) -> normalised
  float32 [height, width, 3]. Raises (OSError / ValueError / PIL errors) on an unreadable,
  truncated or corrupt file: the whole image is decoded here, not lazily."""
  image_module = _pil()
  with image_module.open(path) as img:
    img.load()  # full decode now, so truncated data fails here
    rgb = img.convert("RGB")
  h, w = int(size[0]), int(size[1])
  rgb = rgb.resize((w, h), image_module.Resampling.BILINEAR)
  return preprocess(np.asarray(rgb, dtype=np.uint8))
