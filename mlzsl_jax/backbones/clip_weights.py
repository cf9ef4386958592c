"""Released CLIP weight files -> the Flax towers of ``mlzsl_jax.backbones.clip``.

Two layouts, told apart by their keys:
  "openai"  OpenAI CLIP / open_clip state dicts: ``visual.conv1.weight``,
            ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``,
            ``text_projection`` ... (``.pt`` / ``.bin`` / ``.safetensors``).
  "hf"      Hugging Face ``CLIPModel`` (``model.safetensors`` / ``pytorch_model.bin`` in a
            folder with ``config.json``): ``vision_model.embeddings.patch_embedding.weight``,
            ``...self_attn.q_proj.weight`` ... ``visual_projection.weight``.

The architecture (widths, blocks, patch, image side, context, vocabulary, joint width) is
read from the tensor shapes. Heads and the activation are not in the tensors: they come from
the ``config.json`` (HF) or ``open_clip_config.json`` beside the weights when there is one;
otherwise heads = width / 64 (every OpenAI and open_clip ViT) and the activation is
QuickGELU (OpenAI's releases; open_clip's own trainings use GELU and ship a config that says
so). ``activation=`` overrides.

Files are read without torch (``.safetensors``) or, for ``.pt`` / ``.bin`` / ``.pth``, with
``torch.load(weights_only=True)`` (no arbitrary unpickling); OpenAI's ``.pt`` releases are
TorchScript archives, which ``torch.jit.load`` reads (only their tensors are used).
Missing, unexpected and mis-shaped keys are errors naming the key and both shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

from mlzsl_jax.backbones import clip as clip_lib
from mlzsl_jax.backbones import safetensors_io

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILES = ("config.json", "open_clip_config.json")
# Buffers some releases carry that are not parameters.
IGNORED_KEYS = re.compile(r"(^|\.)position_ids$|^(input_resolution|context_length|vocab_size)$"
                          r"|(^|\.)attn_mask$")
TORCH_EXTRA = "pip install -e .[torch]"


@dataclasses.dataclass(frozen=True)
class WeightFile:
  """What ``read_weights`` found: the tensors, their layout and any config beside them."""
  path: str                      # the tensor file read
  tensors: dict[str, np.ndarray]
  layout: str                    # "openai" | "hf"
  config: dict[str, Any]         # config.json / open_clip_config.json (or {})
  config_path: str | None


# ---------------------------------------------------------------------------------- reading


def _is_torchscript(path: str) -> bool:
  """A TorchScript archive is a zip holding compiled code (``<name>/code/...``)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any("/code/" in name for name in archive.namelist())


def _torch_load(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path}: reading .pt/.bin/.pth weights needs torch ({TORCH_EXTRA}); "
                      "a .safetensors file needs nothing") from e
  try:
    if _is_torchscript(path):  # OpenAI's .pt releases: only the tensors are read
      obj = torch.jit.load(path, map_location="cpu").state_dict()
    else:
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
    raise ValueError(f"{path}: cannot read this torch file as a state dict "
                     f"(torch.load(weights_only=True)): {e}") from e
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if hasattr(value, "detach"):
      value = value.detach().cpu()
      value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    out[key] = np.asarray(value)
  return out


def _read_tensors(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    tensors, _ = safetensors_io.read_safetensors(path)
    return tensors
  if path.endswith((".pt", ".pth", ".bin")):
    return _torch_load(path)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  raise ValueError(f"{path}: CLIP weights: expected a .safetensors, .pt, .pth, .bin or .npz "
                   "file, or a Hugging Face model folder")


def _find_weight_file(folder: str) -> str:
  for name in (*HF_WEIGHT_FILES, *OPEN_CLIP_WEIGHT_FILES):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise FileNotFoundError(f"{folder}: no CLIP weights in this folder (looked for "
                          f"{', '.join(HF_WEIGHT_FILES + OPEN_CLIP_WEIGHT_FILES)})")


def _read_config(folder: str) -> tuple[dict[str, Any], str | None]:
  for name in CONFIG_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        try:
          return json.load(f), path
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: not valid JSON ({e})") from e
  return {}, None


def detect_layout(tensors: Mapping[str, Any], source: str) -> str:
  """"openai" or "hf" from the keys; ValueError when neither CLIP layout's keys are there."""
  if "visual.conv1.weight" in tensors:
    return "openai"
  if "vision_model.embeddings.patch_embedding.weight" in tensors:
    return "hf"
  sample = ", ".join(sorted(tensors)[:5])
  raise ValueError(f"{source}: not a CLIP ViT state dict (no 'visual.conv1.weight' (OpenAI /"
                   f" open_clip) nor 'vision_model.embeddings.patch_embedding.weight' (Hugging"
                   f" Face); first keys: {sample or 'none'})")


def read_weights(path: str | os.PathLike) -> WeightFile:
  """Reads a CLIP weight file, or a folder holding one, and the config beside it."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"CLIP weights {path!r} do not exist")
  file = _find_weight_file(path) if os.path.isdir(path) else path
  config, config_path = _read_config(os.path.dirname(os.path.abspath(file)))
  tensors = _read_tensors(file)
  return WeightFile(path=file, tensors=tensors, layout=detect_layout(tensors, file),
                    config=config, config_path=config_path)


# ------------------------------------------------------------------------------ architecture


def _shape(tensors, key: str, source: str) -> tuple[int, ...]:
  if key not in tensors:
    raise ValueError(f"{source}: missing key {key!r} (needed to read the architecture)")
  return tuple(int(d) for d in np.shape(tensors[key]))


def _count_blocks(tensors, prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = {int(m.group(1)) for k in tensors if (m := pattern.match(k))}
  if found != set(range(len(found))):
    raise ValueError(f"blocks {prefix}N: expected N = 0..{max(found, default=-1)}, "
                     f"found {sorted(found)}")
  return len(found)


def _config_heads_activation(config: Mapping[str, Any], layout: str):
  """(vision heads, text heads, activation) the config states, None where it is silent."""
  if layout == "hf" or "vision_config" in config:
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    act = vision.get("hidden_act") or text.get("hidden_act")
    return vision.get("num_attention_heads"), text.get("num_attention_heads"), act
  model = config.get("model_cfg") or {}
  vision, text = model.get("vision_cfg") or {}, model.get("text_cfg") or {}
  v_heads = None
  if vision.get("width") and vision.get("head_width"):
    v_heads = int(vision["width"]) // int(vision["head_width"])
  act = None
  if "quick_gelu" in model:
    act = "quick_gelu" if model["quick_gelu"] else "gelu"
  return v_heads, text.get("heads"), act


def infer_spec(weights: WeightFile, activation: str | None = None) -> clip_lib.ClipSpec:
  """The ``ClipSpec`` the tensors (and the config beside them) describe."""
  t, src = weights.tensors, weights.path
  if weights.layout == "openai":
    conv = _shape(t, "visual.conv1.weight", src)
    v_pos = _shape(t, "visual.positional_embedding", src)
    embed = _shape(t, "visual.proj", src)[1]
    tok = _shape(t, "token_embedding.weight", src)
    t_pos = _shape(t, "positional_embedding", src)
    v_layers = _count_blocks(t, "visual.transformer.resblocks.")
    t_layers = _count_blocks(t, "transformer.resblocks.")
  else:
    conv = _shape(t, "vision_model.embeddings.patch_embedding.weight", src)
    v_pos = _shape(t, "vision_model.embeddings.position_embedding.weight", src)
    embed = _shape(t, "visual_projection.weight", src)[0]
    tok = _shape(t, "text_model.embeddings.token_embedding.weight", src)
    t_pos = _shape(t, "text_model.embeddings.position_embedding.weight", src)
    v_layers = _count_blocks(t, "vision_model.encoder.layers.")
    t_layers = _count_blocks(t, "text_model.encoder.layers.")
  grid = int(round((v_pos[0] - 1) ** 0.5))
  if grid * grid + 1 != v_pos[0]:
    raise ValueError(f"{src}: vision positional embedding has {v_pos[0]} rows, expected a "
                     "square grid + 1 (class token)")
  v_heads, t_heads, act = _config_heads_activation(weights.config, weights.layout)
  act = activation or act or "quick_gelu"
  act = {"quick_gelu": "quick_gelu", "gelu": "gelu"}.get(act)
  if act is None:
    raise ValueError(f"{weights.config_path or src}: activation {activation or act!r} is not "
                     f"supported (expected one of {clip_lib.ACTIVATIONS})")
  vision = clip_lib.VisionSpec(width=conv[0], layers=v_layers,
                               heads=int(v_heads or conv[0] // 64), patch=conv[-1],
                               image_size=conv[-1] * grid)
  text = clip_lib.TextSpec(width=tok[1], layers=t_layers, heads=int(t_heads or tok[1] // 64),
                           context=t_pos[0], vocab=tok[0])
  return clip_lib.ClipSpec(vision=vision, text=text, embed_dim=embed, activation=act)


# ------------------------------------------------------------------------------- conversion

Transform = Callable[[np.ndarray], np.ndarray]
_T: Transform = lambda w: w.T  # torch Linear [out, in] -> kernel [in, out]
_SAME: Transform = lambda w: w
_SCALAR: Transform = lambda w: w.reshape(())  # stored as [] or [1]
_CONV: Transform = lambda w: w.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]


def _block_sources(layout: str, prefix: str, width: int):
  """(our block parameter path, [source keys], combine, source shapes) of one block."""
  w = width
  if layout == "openai":
    return [
        (("ln_1", "scale"), [f"{prefix}ln_1.weight"], _SAME, [(w,)]),
        (("ln_1", "bias"), [f"{prefix}ln_1.bias"], _SAME, [(w,)]),
        (("qkv", "kernel"), [f"{prefix}attn.in_proj_weight"], _T, [(3 * w, w)]),
        (("qkv", "bias"), [f"{prefix}attn.in_proj_bias"], _SAME, [(3 * w,)]),
        (("out", "kernel"), [f"{prefix}attn.out_proj.weight"], _T, [(w, w)]),
        (("out", "bias"), [f"{prefix}attn.out_proj.bias"], _SAME, [(w,)]),
        (("ln_2", "scale"), [f"{prefix}ln_2.weight"], _SAME, [(w,)]),
        (("ln_2", "bias"), [f"{prefix}ln_2.bias"], _SAME, [(w,)]),
        (("fc", "kernel"), [f"{prefix}mlp.c_fc.weight"], _T, [(4 * w, w)]),
        (("fc", "bias"), [f"{prefix}mlp.c_fc.bias"], _SAME, [(4 * w,)]),
        (("proj", "kernel"), [f"{prefix}mlp.c_proj.weight"], _T, [(w, 4 * w)]),
        (("proj", "bias"), [f"{prefix}mlp.c_proj.bias"], _SAME, [(w,)]),
    ]
  qkv = [f"{prefix}self_attn.{n}_proj" for n in "qkv"]
  return [
      (("ln_1", "scale"), [f"{prefix}layer_norm1.weight"], _SAME, [(w,)]),
      (("ln_1", "bias"), [f"{prefix}layer_norm1.bias"], _SAME, [(w,)]),
      (("qkv", "kernel"), [k + ".weight" for k in qkv],
       lambda *ws: np.concatenate(ws, 0).T, [(w, w)] * 3),
      (("qkv", "bias"), [k + ".bias" for k in qkv],
       lambda *bs: np.concatenate(bs, 0), [(w,)] * 3),
      (("out", "kernel"), [f"{prefix}self_attn.out_proj.weight"], _T, [(w, w)]),
      (("out", "bias"), [f"{prefix}self_attn.out_proj.bias"], _SAME, [(w,)]),
      (("ln_2", "scale"), [f"{prefix}layer_norm2.weight"], _SAME, [(w,)]),
      (("ln_2", "bias"), [f"{prefix}layer_norm2.bias"], _SAME, [(w,)]),
      (("fc", "kernel"), [f"{prefix}mlp.fc1.weight"], _T, [(4 * w, w)]),
      (("fc", "bias"), [f"{prefix}mlp.fc1.bias"], _SAME, [(4 * w,)]),
      (("proj", "kernel"), [f"{prefix}mlp.fc2.weight"], _T, [(w, 4 * w)]),
      (("proj", "bias"), [f"{prefix}mlp.fc2.bias"], _SAME, [(w,)]),
  ]


def conversion_plan(layout: str, spec: clip_lib.ClipSpec):
  """[(our parameter path, source keys, combine, expected source shapes)] of every
  parameter of ``Clip(spec)`` (the vision positional embedding at the file's own grid)."""
  v, t, d = spec.vision, spec.text, spec.embed_dim
  vw, tw = v.width, t.width
  ln = lambda ours, theirs, w: [((*ours, "scale"), [theirs + ".weight"], _SAME, [(w,)]),
                                ((*ours, "bias"), [theirs + ".bias"], _SAME, [(w,)])]
  if layout == "openai":
    plan = [
        (("visual", "patch_kernel"), ["visual.conv1.weight"], _CONV, [(vw, 3, v.patch, v.patch)]),
        (("visual", "class_embedding"), ["visual.class_embedding"], _SAME, [(vw,)]),
        (("visual", "positional"), ["visual.positional_embedding"], _SAME,
         [(v.num_patches + 1, vw)]),
        *ln(("visual", "ln_pre"), "visual.ln_pre", vw),
        *ln(("visual", "ln_post"), "visual.ln_post", vw),
        (("visual", "proj"), ["visual.proj"], _SAME, [(vw, d)]),
        (("text", "token_embedding"), ["token_embedding.weight"], _SAME, [(t.vocab, tw)]),
        (("text", "positional"), ["positional_embedding"], _SAME, [(t.context, tw)]),
        *ln(("text", "ln_final"), "ln_final", tw),
        (("text", "proj"), ["text_projection"], _SAME, [(tw, d)]),
        (("logit_scale",), ["logit_scale"], _SCALAR, [()]),
    ]
    v_prefix, t_prefix = "visual.transformer.resblocks.", "transformer.resblocks."
  else:
    emb = "vision_model.embeddings."
    plan = [
        (("visual", "patch_kernel"), [emb + "patch_embedding.weight"], _CONV,
         [(vw, 3, v.patch, v.patch)]),
        (("visual", "class_embedding"), [emb + "class_embedding"], _SAME, [(vw,)]),
        (("visual", "positional"), [emb + "position_embedding.weight"], _SAME,
         [(v.num_patches + 1, vw)]),
        *ln(("visual", "ln_pre"), "vision_model.pre_layrnorm", vw),
        *ln(("visual", "ln_post"), "vision_model.post_layernorm", vw),
        (("visual", "proj"), ["visual_projection.weight"], _T, [(d, vw)]),
        (("text", "token_embedding"), ["text_model.embeddings.token_embedding.weight"], _SAME,
         [(t.vocab, tw)]),
        (("text", "positional"), ["text_model.embeddings.position_embedding.weight"], _SAME,
         [(t.context, tw)]),
        *ln(("text", "ln_final"), "text_model.final_layer_norm", tw),
        (("text", "proj"), ["text_projection.weight"], _T, [(d, tw)]),
        (("logit_scale",), ["logit_scale"], _SCALAR, [()]),
    ]
    v_prefix, t_prefix = "vision_model.encoder.layers.", "text_model.encoder.layers."
  for tower, prefix, n, width in (("visual", v_prefix, v.layers, vw),
                                  ("text", t_prefix, t.layers, tw)):
    for i in range(n):
      for path, keys, combine, shapes in _block_sources(layout, f"{prefix}{i}.", width):
        plan.append(((tower, "blocks", i, *path), keys, combine, shapes))
  return plan


def convert(weights: WeightFile, spec: clip_lib.ClipSpec) -> dict[str, Any]:
  """The nested pure dict of ``Clip(spec)``'s float32 parameters from ``weights``.

  Raises ValueError naming the key for a missing key, an unexpected key, or a shape that is
  not the one ``spec`` needs (found vs expected)."""
  params: dict[str, Any] = {}
  used = set()
  for path, keys, combine, shapes in conversion_plan(weights.layout, spec):
    arrays = []
    for key, want in zip(keys, shapes):
      if key not in weights.tensors:
        raise ValueError(f"{weights.path}: missing key {key!r} (expected shape {list(want)})")
      got = tuple(np.shape(weights.tensors[key]))
      if got != tuple(want) and not (want == () and got == (1,)):
        raise ValueError(f"{weights.path}: key {key!r} has shape {list(got)}, expected "
                         f"{list(want)}")
      arrays.append(np.asarray(weights.tensors[key], dtype=np.float32))
      used.add(key)
    node = params
    for step in path[:-1]:
      node = node.setdefault(step, {})
    node[path[-1]] = np.ascontiguousarray(combine(*arrays))
  unexpected = sorted(k for k in weights.tensors if k not in used and not IGNORED_KEYS.search(k))
  if unexpected:
    more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
    raise ValueError(f"{weights.path}: unexpected key {unexpected[0]!r} with shape "
                     f"{list(np.shape(weights.tensors[unexpected[0]]))}{more}: not a plain "
                     f"CLIP ViT of the {weights.layout} layout")
  return params


# ------------------------------------------------------------------ positional interpolation


def _cubic_weights(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
  """[out, in] matrix of bicubic interpolation (half-pixel centres, edge-clamped, Keys
  kernel with a = -0.75): torch's ``interpolate(mode="bicubic", align_corners=False)``."""
  def kernel(x):
    x = abs(x)
    if x <= 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0
  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    base = int(np.floor(src))
    frac = src - base
    for tap in range(-1, 3):
      m[i, min(max(base + tap, 0), in_size - 1)] += kernel(tap - frac)
  return m


def resize_positional(positional: np.ndarray, grid: int) -> np.ndarray:
  """[1 + g*g, W] (class row, then a g x g row-major grid) -> [1 + grid*grid, W]: the grid
  resized bicubically (as open_clip does for other image sizes), the class row kept."""
  old = int(round((positional.shape[0] - 1) ** 0.5))
  if old == grid:
    return positional
  table = positional[1:].reshape(old, old, -1).astype(np.float64)
  m = _cubic_weights(old, grid)
  resized = np.einsum("ih,hwc,jw->ijc", m, table, m).reshape(grid * grid, -1)
  return np.concatenate([positional[:1], resized.astype(positional.dtype)], axis=0)


# ------------------------------------------------------------------------------ entry point


def load_clip(weights: str | os.PathLike | WeightFile, *, image_size: int | None = None,
              activation: str | None = None, dtype=None) -> clip_lib.Clip:
  """A ``Clip`` holding the weights of a released file (or folder).

  Args:
    weights: a .safetensors / .pt / .bin / .npz file, a Hugging Face folder, or a
      ``WeightFile`` already read.
    image_size: image side to run at (default: the file's); another size interpolates the
      vision positional embedding (the patch size stays).
    activation: "quick_gelu" or "gelu" when neither the file nor its config says.
    dtype: compute dtype (default float32); parameters stay float32.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  file = weights if isinstance(weights, WeightFile) else read_weights(weights)
  spec = infer_spec(file, activation)
  params = convert(file, spec)
  if image_size is not None and int(image_size) != spec.vision.image_size:
    if int(image_size) % spec.vision.patch:
      raise ValueError(f"image_size {image_size}: expected a multiple of the patch size "
                       f"{spec.vision.patch} of {file.path}")
    spec = spec.with_image_size(int(image_size))
    params["visual"]["positional"] = resize_positional(params["visual"]["positional"],
                                                       spec.vision.grid)
  model = clip_lib.abstract_clip(spec, dtype=jnp.float32 if dtype is None else dtype)
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def weights_from_config(config) -> str:
  """``data.clip_weights`` of a run config; ValueError saying what is missing."""
  weights = config.data.get("clip_weights", "") or ""
  if not weights:
    raise ValueError("CLIP features / label names need the CLIP weights: "
                     "--config.data.clip_weights=FILE (the file the workdir's data used)")
  return weights


@functools.lru_cache(maxsize=2)
def cached_clip(path: str) -> clip_lib.Clip:
  """``load_clip(path)``, loaded once per process (predict reads photos and names with it)."""
  return load_clip(path)
