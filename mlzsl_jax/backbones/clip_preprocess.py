"""CLIP's image pre-processing on the host, in NumPy + PIL, equal to the reference.

Reference: OpenAI CLIP ``clip/clip.py`` ``_transform(n_px)`` and open_clip's evaluation transform
(``open_clip/transform.py`` ``image_transform(..., is_train=False)``, default
``resize_mode='shortest'`` with a square size), both torchvision on PIL images::

  Resize(S, interpolation=BICUBIC)   # shortest side -> S, aspect ratio kept
  CenterCrop(S)
  convert('RGB')                     # AFTER resize and crop
  ToTensor()                         # uint8 -> float32 / 255, [3, S, S]
  Normalize(mean=(0.48145466, 0.4578275, 0.40821073),
            std=(0.26862954, 0.26130258, 0.27577711))

What torchvision does on a PIL image, and so what ``preprocess_pil`` does:

- Resize (``_compute_resized_output_size``): with ``short, long = (w, h) if w <= h else (h, w)``
  the short side becomes ``S`` and the long side ``int(S * long / short)`` (truncated, not
  rounded). An image already at that size is returned unchanged; otherwise
  ``img.resize((new_w, new_h), BICUBIC)``: PIL's own filter, which widens its support when
  downscaling (antialiased). PIL's resize depends on the mode: 'P' and '1' are resized with
  NEAREST whatever filter is asked; 'RGBA' and 'LA' are premultiplied by alpha ('RGBa', 'La'),
  resized, then un-premultiplied; other modes (e.g. 'L', 'RGB', 'CMYK', 'I;16') per channel.
- CenterCrop: top ``int(round((h - S) / 2.0))``, left ``int(round((w - S) / 2.0))`` with Python's
  half-to-even ``round`` (an excess of 1 -> offset 0, 3 -> 2, 5 -> 2, 7 -> 4), then
  ``img.crop((left, top, left + S, top + S))``. No padding is ever needed after the resize.
- ``convert('RGB')`` last: alpha is dropped, NOT composited on any background (after the
  premultiplied resize a fully transparent pixel is black; if no resize happened it keeps its
  stored colour); 'P' maps through its palette (a ``transparency`` entry is ignored); 'L'/'LA'
  replicate grey; 'CMYK' uses PIL's profile-free ``(255 - C) * (255 - K) / 255`` per channel;
  16/32-bit modes ('I;16', 'I', 'F') are clipped to [0, 255], not rescaled (a 16-bit greyscale
  PNG comes out nearly white).
- ToTensor + Normalize: ``x = uint8 / 255`` in float32, then ``(x - mean) / std`` in float32;
  the same IEEE operations as torch's ``div(255)``, ``sub_``, ``div_`` (bit-identical).

EXIF orientation is NOT applied (neither reference calls ``ImageOps.exif_transpose``): a photo
stored sideways with an Orientation tag is processed as stored. Output is NHWC ([S, S, 3]) for
our NHWC network. Hugging Face's ``CLIPImageProcessor`` differs in places (it converts to RGB
first, compositing alpha on white, and crops at ``(h - S) // 2``); see
``tests/test_clip_preprocess.py``.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGE_SIZE = 224

PREPROCESSING = ("PIL open (no EXIF transpose) -> resize shortest side to S, long side "
                 "int(S * long / short), BICUBIC -> center crop S x S at "
                 "int(round((side - S) / 2)) -> convert('RGB') -> /255 -> "
                 "(x - [0.48145466, 0.4578275, 0.40821073]) / [0.26862954, 0.26130258, "
                 "0.27577711] (OpenAI CLIP _transform / open_clip eval transform, torchvision "
                 "Resize(S, BICUBIC) + CenterCrop(S) + convert RGB + ToTensor + Normalize)")


def _pil():
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("image decoding needs Pillow: pip install pillow") from e
  return Image


def _check_size(size) -> int:
  if (isinstance(size, bool) or not isinstance(size, numbers.Integral) or int(size) <= 0):
    raise ValueError(f"size must be a positive int, got {size!r}")
  return int(size)


def resize_output_size(height: int, width: int, size: int) -> tuple[int, int]:
  """(new_height, new_width) of torchvision's ``Resize(size)``: the shorter side (the width
  on a tie) becomes ``size``, the longer ``int(size * long / short)``."""
  size = _check_size(size)
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got height={height} width={width}")
  if width <= height:
    return int(size * height / width), size
  return size, int(size * width / height)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
  """(top, left) of torchvision's ``CenterCrop(size)`` on a [height, width] image that is at
  least ``size`` on both sides: ``int(round((side - size) / 2.0))``, half to even."""
  size = _check_size(size)
  if height < size or width < size:
    raise ValueError(f"center crop {size} needs an image at least that big, got "
                     f"height={height} width={width}")
  return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def normalize(rgb: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] (already resized and cropped) -> float32 [H, W, 3], ToTensor + Normalize
  with CLIP's mean and std."""
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"normalize: expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
  x = rgb.astype(np.float32) / np.float32(255)
  return (x - CLIP_MEAN) / CLIP_STD


def preprocess_pil(image, size: int = IMAGE_SIZE) -> np.ndarray:
  """PIL image (any mode) -> float32 [size, size, 3]: bicubic resize of the shortest side to
  ``size``, center crop, convert('RGB'), /255, CLIP normalisation, in the reference's order."""
  size = _check_size(size)
  image_module = _pil()
  if not isinstance(image, image_module.Image):
    raise TypeError(f"preprocess_pil: expected a PIL image, got {type(image).__name__}")
  width, height = image.size
  new_h, new_w = resize_output_size(height, width, size)
  if (new_h, new_w) != (height, width):
    image = image.resize((new_w, new_h), image_module.Resampling.BICUBIC)
  top, left = center_crop_offsets(new_h, new_w, size)
  image = image.crop((left, top, left + size, top + size))
  rgb = image.convert("RGB")
  return normalize(np.asarray(rgb, dtype=np.uint8))


def load_image(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
  """Decode ``path`` and apply ``preprocess_pil`` -> float32 [size, size, 3]. Raises (OSError,
  PIL's UnidentifiedImageError (an OSError), ValueError...) on an unreadable, truncated or corrupt
  file: the whole image is decoded here, not lazily."""
  size = _check_size(size)
  image_module = _pil()
  with image_module.open(path) as img:
    img.load()  # full decode now, so truncated data fails here
    return preprocess_pil(img, size)
