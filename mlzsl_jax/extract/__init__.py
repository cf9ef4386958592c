"""Feature extraction from raw images: a Flax VGG19 (torchvision layout) giving the region
grid and scene feature of the official BiAM features, a ResNet-101 (layer4 grid + 2048-d
pooled feature, the xlsa17 feature type), torchvision weight conversion, the
official preprocessing, and a sharded, resumable folder extractor.

  from mlzsl_jax.extract import extract_folder
  extract_folder("images/", "features/", "vgg19-dcbb9e9d.pth", batch_size=64)

Names are imported lazily (``python -m mlzsl_jax.extract.run`` must not find its own module
already imported by this package).
"""

import importlib

_EXPORTS = {
    "VGG19": "vgg19", "ResNet101": "resnet101",
    "image_key": "images", "list_images": "images", "load_image": "images",
    "ExtractSummary": "run", "extract_folder": "run", "iter_features": "run",
    "load_backbone": "run",
    "convert_state_dict": "torchvision_weights", "load_state_dict_file": "torchvision_weights",
    "load_vgg19": "torchvision_weights", "vgg19_from_state_dict": "torchvision_weights",
    "load_resnet101": "torchvision_weights",
    "resnet101_from_state_dict": "torchvision_weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'mlzsl_jax.extract' has no attribute {name!r}")
  return getattr(importlib.import_module(f"mlzsl_jax.extract.{_EXPORTS[name]}"), name)
