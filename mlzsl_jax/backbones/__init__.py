"""Image and text backbones that turn raw inputs into the features the models read.

CLIP (OpenAI / open_clip / Hugging Face releases): ``clip`` (Flax vision and text towers),
``clip_weights`` (released weight files -> Flax parameters, the architecture read from the
file), ``clip_tokenizer`` (byte-level BPE), ``clip_preprocess`` (CLIP's image pipeline).
Modules are imported by name (``from mlzsl_jax.backbones import clip``); nothing here
imports torch.
"""
