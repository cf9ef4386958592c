"""CLIP towers and weight files against independent torch implementations (random weights
in the released layouts): open_clip's ``CLIP`` (OpenAI layout: .safetensors, .pt, a
TorchScript archive) and Hugging Face's ``CLIPModel`` (a ``save_pretrained`` folder).
Tiny sizes here; the full ViT-B/16 size is ``benchmarks/clip_parity.py``."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import clip_reference as ref
from mlzsl_jax.backbones import clip as clip_lib
from mlzsl_jax.backbones import clip_weights, safetensors_io

OPENAI = dict(embed_dim=48, vision_width=128, vision_layers=2, patch=8, image_size=32,
              text_width=128, text_layers=2, text_heads=2)
HF = dict(embed_dim=40, vision_width=64, vision_layers=2, vision_heads=4, patch=8,
          image_size=32, text_width=64, text_layers=2, text_heads=2)
RTOL = 1e-5  # max |ours - reference| / max |reference|, float32


def relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.RandomState(0)
  return rng.randn(4, 32, 32, 3).astype(np.float32), ref.random_token_ids(rng, 5)


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory, inputs):
  """open_clip CLIP (QuickGELU) saved three ways + its outputs on ``inputs``."""
  torch = ref.need("torch")
  model = ref.open_clip_model(**OPENAI)
  folder = tmp_path_factory.mktemp("openai")
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  safetensors_io.write_safetensors(folder / "clip.safetensors", state)
  torch.save(model.state_dict(), folder / "clip.pt")
  images, ids = inputs
  with warnings.catch_warnings():  # the tracer's notes about shape checks it freezes
    warnings.simplefilter("ignore")
    traced = torch.jit.trace(model, (torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                     torch.from_numpy(ids)), check_trace=False)
  (folder / "jit").mkdir()
  traced.save(str(folder / "jit" / "ViT-tiny.pt"))
  return folder, state, ref.open_clip_outputs(model, images, ids)


def check_outputs(model, inputs, want, rtol=RTOL):
  images, ids = inputs
  image_out = jax.jit(lambda x: model.encode_image(x))(images)
  text_out = jax.jit(lambda t: model.encode_text(t))(jnp.asarray(ids))
  assert image_out["tokens"].shape == want["tokens"].shape
  for name, got in (("class", image_out["class"]), ("tokens", image_out["tokens"]),
                    ("text", text_out)):
    err = relative_error(got, want[name])
    assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("name", ["clip.safetensors", "clip.pt", "jit/ViT-tiny.pt"])
def test_openai_layout_matches_open_clip(openai_files, inputs, name):
  folder, _, want = openai_files
  model = clip_weights.load_clip(folder / name)
  assert model.spec == clip_lib.ClipSpec(
      clip_lib.VisionSpec(width=128, layers=2, heads=2, patch=8, image_size=32),
      clip_lib.TextSpec(width=128, layers=2, heads=2, context=77, vocab=49408),
      embed_dim=48, activation="quick_gelu")
  check_outputs(model, inputs, want)


def test_open_clip_config_sets_gelu(tmp_path, inputs):
  """open_clip's own trainings use exact GELU; their open_clip_config.json says so."""
  model = ref.open_clip_model(**OPENAI, quick_gelu=False, seed=1)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  safetensors_io.write_safetensors(tmp_path / "open_clip_model.safetensors", state)
  (tmp_path / "open_clip_config.json").write_text(json.dumps(
      {"model_cfg": {"embed_dim": 48, "quick_gelu": False,
                     "vision_cfg": {"width": 128, "head_width": 64},
                     "text_cfg": {"heads": 2}}}))
  ours = clip_weights.load_clip(tmp_path)  # the folder: finds the file and the config
  assert ours.spec.activation == "gelu"
  check_outputs(ours, inputs, ref.open_clip_outputs(model, *inputs))
  # Without the config the file alone says nothing: QuickGELU, a different function.
  os.remove(tmp_path / "open_clip_config.json")
  wrong = clip_weights.load_clip(tmp_path)
  assert wrong.spec.activation == "quick_gelu"
  with pytest.raises(AssertionError, match="relative error"):
    check_outputs(wrong, inputs, ref.open_clip_outputs(model, *inputs))


def test_hf_folder_matches_transformers(tmp_path, inputs):
  """GELU and 4 vision heads (not width / 64): both come from config.json."""
  model = ref.hf_clip_model(**HF, activation="gelu")
  model.save_pretrained(tmp_path)
  ours = clip_weights.load_clip(tmp_path)
  assert (ours.spec.vision.heads, ours.spec.text.heads, ours.spec.activation) == (4, 2, "gelu")
  check_outputs(ours, inputs, ref.hf_outputs(model, *inputs))


def test_sharded_batch_equals_one_device(openai_files, inputs):
  folder, _, _ = openai_files
  model = clip_weights.load_clip(folder / "clip.safetensors")
  images = np.concatenate([inputs[0]] * 2)  # 8 images, one per device
  forward = jax.jit(lambda x: model.encode_image(x))
  one = forward(jax.device_put(images, jax.devices()[0]))
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  many = forward(jax.device_put(images, NamedSharding(mesh, P("data"))))
  assert len(many["tokens"].sharding.device_set) == 8
  for name in ("class", "tokens"):
    np.testing.assert_allclose(np.asarray(many[name]), np.asarray(one[name]),
                               rtol=1e-6, atol=1e-6)


def test_bfloat16_within_stated_tolerance(openai_files, inputs):
  """bfloat16 compute (parameters float32): within 3% of the float32 reference's scale
  (bfloat16 keeps 8 bits of mantissa; errors add up over blocks)."""
  folder, _, want = openai_files
  model = clip_weights.load_clip(folder / "clip.safetensors", dtype=jnp.bfloat16)
  check_outputs(model, inputs, want, rtol=3e-2)


def test_weight_file_errors(openai_files, tmp_path):
  _, state, _ = openai_files

  def fails(tensors, match):
    path = tmp_path / "bad.safetensors"
    safetensors_io.write_safetensors(path, tensors)
    with pytest.raises(ValueError, match=match):
      clip_weights.load_clip(path)

  missing = {k: v for k, v in state.items() if k != "visual.ln_post.bias"}
  fails(missing, r"missing key 'visual.ln_post.bias' \(expected shape \[128\]\)")
  fails({**state, "visual.extra.weight": np.zeros((3, 4), np.float32)},
        r"unexpected key 'visual.extra.weight' with shape \[3, 4\]")
  fails({**state, "transformer.resblocks.1.mlp.c_fc.bias": np.zeros((7,), np.float32)},
        r"'transformer.resblocks.1.mlp.c_fc.bias' has shape \[7\], expected \[512\]")
  fails({"conv.weight": np.zeros((2, 2), np.float32)}, r"not a CLIP ViT state dict")
  good = tmp_path / "good.safetensors"
  safetensors_io.write_safetensors(good, state)
  truncated = tmp_path / "truncated.safetensors"
  truncated.write_bytes(good.read_bytes()[:-1000])
  with pytest.raises(ValueError, match=r"truncated.safetensors: tensor .*\(truncated\?\)"):
    clip_weights.load_clip(truncated)
  with pytest.raises(FileNotFoundError, match="do not exist"):
    clip_weights.load_clip(tmp_path / "nope.safetensors")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no CLIP weights in this folder"):
    clip_weights.load_clip(tmp_path / "empty")


def test_safetensors_round_trip(tmp_path):
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(0)
  tensors = {"a": rng.randn(3, 4).astype(np.float32), "b": rng.randn(5).astype(np.float16),
             "c": rng.randn(2, 2).astype(ml_dtypes.bfloat16), "d": np.arange(6, dtype=np.int64),
             "e": np.zeros((0, 3), np.float32), "f": np.float32(2.5).reshape(())}
  safetensors_io.write_safetensors(tmp_path / "t.safetensors", tensors, {"format": "np"})
  back, metadata = safetensors_io.read_safetensors(tmp_path / "t.safetensors")
  assert metadata == {"format": "np"} and sorted(back) == sorted(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k], v)
  reference = pytest.importorskip("safetensors.numpy")  # the reference reader, if installed
  theirs = reference.load_file(str(tmp_path / "t.safetensors"))
  for k in ("a", "b", "d"):
    np.testing.assert_array_equal(theirs[k], tensors[k])


def test_positional_resize_matches_torch_bicubic(openai_files, inputs):
  torch = ref.need("torch")
  rng = np.random.RandomState(1)
  table = rng.randn(1 + 5 * 5, 6).astype(np.float32)
  for grid in (3, 5, 7, 12):
    got = clip_weights.resize_positional(table, grid)
    grid_in = torch.from_numpy(table[1:].reshape(5, 5, 6).transpose(2, 0, 1))[None]
    want = torch.nn.functional.interpolate(grid_in, size=(grid, grid), mode="bicubic",
                                           align_corners=False)
    want = want[0].numpy().transpose(1, 2, 0).reshape(grid * grid, 6)
    np.testing.assert_array_equal(got[0], table[0])
    np.testing.assert_allclose(got[1:], want, rtol=1e-5, atol=1e-5)
  folder, _, _ = openai_files
  bigger = clip_weights.load_clip(folder / "clip.safetensors", image_size=48)
  assert bigger.spec.vision.image_size == 48
  out = bigger.encode_image(np.zeros((1, 48, 48, 3), np.float32))
  assert out["tokens"].shape == (1, 36, 48)
  with pytest.raises(ValueError, match="multiple of the patch size 8"):
    clip_weights.load_clip(folder / "clip.safetensors", image_size=50)


def test_named_specs_are_the_released_sizes():
  b16 = clip_lib.named_spec("clip_vit_b16")
  assert (b16.vision.grid, b16.vision.num_patches, b16.embed_dim) == (14, 196, 512)
  assert clip_lib.named_spec("clip_vit_l14_336").vision.grid == 24
  with pytest.raises(ValueError, match="clip_vit_b16"):
    clip_lib.named_spec("clip_vit_h14")
