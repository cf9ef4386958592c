"""Feature extraction: VGG19 forward and torchvision-name conversion against a NumPy
reference computed directly from a torchvision-layout state dict; the official
preprocessing; the sharded, resumable folder extractor (unreadable images, crash + resume,
process sharding, data parallelism). Small widths and 64x64 images keep the real layer
structure (16 convs, 5 pools, fc6/fc7) at a 4x4 region grid and a 2x2 pooled grid."""

import io
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mlzsl_jax.extract import images as img_lib
from mlzsl_jax.extract import run as run_lib
from mlzsl_jax.extract import torchvision_weights as tvw

CHANNELS = (4, 8, 8, 16, 16)
FC = 24
SIZE = (64, 64)        # -> region grid 4x4 (16 regions), pooled 2x2, fc6 input 16*2*2 = 64
# torchvision vgg19's 'features' indices of the 16 convs (cfg "E", conv+ReLU, pool per stage)
TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def random_state_dict(seed=0, channels=CHANNELS, fc=FC, size=SIZE, fc8=True):
  """Official torchvision names and (scaled-down) shapes, He-scaled random values."""
  rng = np.random.default_rng(seed)
  sd, in_ch = {}, 3
  stages = [2, 2, 4, 4, 4]
  convs = iter(TORCHVISION_CONV_INDICES)
  for width, n in zip(channels, stages):
    for _ in range(n):
      i = next(convs)
      sd[f"features.{i}.weight"] = (rng.standard_normal((width, in_ch, 3, 3)) *
                                    np.sqrt(2 / (9 * in_ch))).astype(np.float32)
      sd[f"features.{i}.bias"] = (0.1 * rng.standard_normal(width)).astype(np.float32)
      in_ch = width
  fc_in = channels[-1] * (size[0] // 32) * (size[1] // 32)
  for name, (o, i) in {"classifier.0": (fc, fc_in), "classifier.3": (fc, fc),
                       "classifier.6": (10, fc)}.items():
    if name == "classifier.6" and not fc8:
      continue
    sd[f"{name}.weight"] = (rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32)
    sd[f"{name}.bias"] = (0.1 * rng.standard_normal(o)).astype(np.float32)
  return sd


# ------------------------------------------------ NumPy reference, torch layout (NCHW)

def conv3x3_ref(x, w, b):
  """x [B, Cin, H, W], w [Cout, Cin, 3, 3] (torch), padding 1: explicit loop over the 9
  kernel offsets."""
  bsz, _, h, wd = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((bsz, w.shape[0], h, wd)) + b[None, :, None, None]
  for dy in range(3):
    for dx in range(3):
      out += np.einsum("oi,bihw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
  return out


def maxpool_ref(x):
  """2x2 stride 2 over [B, C, H, W], loops over the 4 window offsets."""
  out = np.full((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2), -np.inf)
  for dy in range(2):
    for dx in range(2):
      out = np.maximum(out, x[:, :, dy::2, dx::2])
  return out


def vgg19_ref(sd, images_nhwc):
  """-> (features [B, C, R] = conv5_4 after ReLU .view(B, C, -1), scene [B, fc])."""
  x = np.transpose(images_nhwc, (0, 3, 1, 2)).astype(np.float64)
  convs = iter(TORCHVISION_CONV_INDICES)
  for stage, n in enumerate([2, 2, 4, 4, 4]):
    for _ in range(n):
      i = next(convs)
      x = np.maximum(conv3x3_ref(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"]), 0)
    if stage < 4:
      x = maxpool_ref(x)
  feats = x.reshape(x.shape[0], x.shape[1], -1)
  flat = maxpool_ref(x).reshape(x.shape[0], -1)  # torch x.view(B, -1): (C, H, W) order
  h6 = np.maximum(flat @ sd["classifier.0.weight"].T + sd["classifier.0.bias"], 0)
  scene = np.maximum(h6 @ sd["classifier.3.weight"].T + sd["classifier.3.bias"], 0)
  return feats, scene


def assert_close(got, want, rtol=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, atol=rtol * scale, rtol=rtol)


@pytest.fixture(scope="module")
def state_dict():
  return random_state_dict()


@pytest.fixture(scope="module")
def model(state_dict):
  return tvw.vgg19_from_state_dict(state_dict)


# ------------------------------------------------------------------ backbone + conversion

def test_forward_matches_numpy_reference_from_state_dict(state_dict, model):
  x = np.random.default_rng(1).standard_normal((2, *SIZE, 3)).astype(np.float32)
  out = model(jnp.asarray(x))
  feats, scene = vgg19_ref(state_dict, x)
  assert out["regions"].shape == (2, 16, CHANNELS[-1]) and out["scene"].shape == (2, FC)
  assert model.grid_shape == (4, 4)
  # ours [B, R, C] with region r = row * 4 + col; official [B, C, R]
  assert_close(np.swapaxes(np.asarray(out["regions"]), 1, 2), feats)
  assert_close(out["scene"], scene)
  assert (np.asarray(out["regions"]) >= 0).all()  # after conv5_4's ReLU
  assert_close(model.scene_from_regions(out["regions"]), scene)


def test_fc6_flattens_in_torch_chw_order():
  """fc6 = identity on the pooled grid: the scene must be pooled.transpose(C, H, W).ravel()."""
  c5 = CHANNELS[-1]
  sd = random_state_dict(fc=c5 * 4)
  sd["classifier.0.weight"] = np.eye(c5 * 4, dtype=np.float32)
  sd["classifier.3.weight"] = np.eye(c5 * 4, dtype=np.float32)
  for k in ("classifier.0.bias", "classifier.3.bias"):
    sd[k] = np.zeros_like(sd[k])
  m = tvw.vgg19_from_state_dict(sd)
  grid = np.random.default_rng(2).random((1, 4, 4, c5)).astype(np.float32)  # [B, H, W, C]
  pooled = grid.reshape(1, 2, 2, 2, 2, c5).max(axis=(2, 4))              # [B, 2, 2, C]
  want = np.transpose(pooled, (0, 3, 1, 2)).reshape(1, -1)               # (C, H, W)
  np.testing.assert_allclose(np.asarray(m.scene_from_grid(jnp.asarray(grid))), want,
                             rtol=1e-6)
  hwc = pooled.reshape(1, -1)
  assert not np.allclose(want, hwc)  # the check would catch an (H, W, C) flatten


def test_conversion_layout_and_real_vgg19_shapes(state_dict):
  assert list(tvw.conv_feature_indices().values()) == TORCHVISION_CONV_INDICES
  params, arch = tvw.convert_state_dict(state_dict)
  assert arch == {"channels": CHANNELS, "fc_dim": FC, "image_size": SIZE}
  np.testing.assert_array_equal(params["conv2_1"]["kernel"][1, 2, 3, 4],
                                state_dict["features.5.weight"][4, 3, 1, 2])
  np.testing.assert_array_equal(params["fc6"]["kernel"], state_dict["classifier.0.weight"].T)
  assert "fc8" not in params
  # The ImageNet file's shapes (zero-memory views): 224x224, 25088 -> 4096.
  real = tvw.expected_shapes((64, 128, 256, 512, 512), 4096, (224, 224))
  assert real["classifier.0.weight"] == (4096, 25088)
  assert real["features.34.weight"] == (512, 512, 3, 3)
  views = {k: np.broadcast_to(np.float32(0), s) for k, s in real.items()}
  assert tvw.infer_architecture(views) == {"channels": (64, 128, 256, 512, 512),
                                           "fc_dim": 4096, "image_size": (224, 224)}
  assert len(real) == 36  # 16 convs + fc6 + fc7, weight and bias each


@pytest.mark.parametrize("change, match", [
    (lambda sd: sd.pop("features.7.bias"), r"'features.7.bias' missing"),
    (lambda sd: sd.__setitem__("features.7.weight", np.zeros((8, 5, 3, 3), np.float32)),
     r"'features.7.weight': expected shape \[8, 8, 3, 3\], got \[8, 5, 3, 3\]"),
    (lambda sd: sd.__setitem__("features.1.running_mean", np.zeros(4, np.float32)),
     r"vgg19_bn"),
    (lambda sd: sd.__setitem__("classifier.3.bias", np.full(FC, np.nan, np.float32)),
     r"'classifier.3.bias': contains NaN"),
    (lambda sd: sd.__setitem__("classifier.0.weight", np.zeros((FC, 63), np.float32)),
     r"'classifier.0.weight'.*square pooled grid"),
    (lambda sd: sd.pop("features.0.weight"), r"'features.0.weight' missing"),
    (lambda sd: sd.__setitem__("features.0.bias", np.zeros(4, np.int64)), r"floating"),
])
def test_conversion_errors_name_the_key(change, match):
  sd = random_state_dict()
  change(sd)
  with pytest.raises(ValueError, match=match):
    tvw.convert_state_dict(sd, source="vgg.pth")


def test_weights_files(tmp_path, state_dict, model):
  path = tmp_path / "vgg.npz"
  np.savez(path, **state_dict)
  loaded = tvw.load_vgg19(str(path))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, *SIZE, 3)), jnp.float32)
  np.testing.assert_array_equal(loaded(x)["scene"], model(x)["scene"])
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    tvw.load_vgg19(str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match="expected a path, a state dict or a VGG19"):
    tvw.load_vgg19(3)


# --------------------------------------------------------------------------- preprocessing

def test_preprocessing_is_the_official_transform(tmp_path):
  rgb = np.random.default_rng(4).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "x.png")
  got = img_lib.load_image(tmp_path / "x.png", (32, 48))
  # torchvision: PIL resize((w, h), BILINEAR) -> ToTensor (/255) -> Normalize(mean, std)
  resized = np.asarray(Image.fromarray(rgb).resize((48, 32), Image.Resampling.BILINEAR))
  want = (resized.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)
          ) / np.array([0.229, 0.224, 0.225], np.float32)
  assert got.shape == (32, 48, 3) and got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  # grey and palette images are converted to RGB first
  Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
  g = img_lib.load_image(tmp_path / "g.png", (8, 8))
  assert g.shape == (8, 8, 3)


def test_listing_keys_and_collisions(tmp_path):
  for rel in ("b/z.png", "a/y.JPG", "x.png", "a/notes.txt", ".hidden.png"):
    os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
    (tmp_path / rel).write_bytes(b"")
  assert img_lib.list_images(tmp_path) == ["a/y.JPG", "b/z.png", "x.png"]
  assert img_lib.image_key("actor/0002_174174086.jpg") == "actor_0002_174174086.jpg"
  (tmp_path / "a_y.JPG").write_bytes(b"")
  with pytest.raises(ValueError, match="both map to the key 'a_y.JPG'"):
    img_lib.list_images(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    img_lib.list_images(tmp_path / "nope")


# ------------------------------------------------------------------------------ extraction

GOOD = ["a/img0.png", "a/img1.png", "a/img2.png", "b/img3.png", "b/img4.jpg", "c_img5.png"]
BAD = ["a/trunc.png", "b/corrupt.png"]
SHARD = 3  # sorted: [img0 img1 img2] [trunc corrupt img3] [img4.jpg c_img5]


def write_folder(root):
  rng = np.random.default_rng(5)
  for i, rel in enumerate(GOOD):
    os.makedirs(root / os.path.dirname(rel), exist_ok=True)
    rgb = rng.integers(0, 256, (40 + 3 * i, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / rel, quality=95) if rel.endswith(".jpg") else \
        Image.fromarray(rgb).save(root / rel)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(buf, "PNG")
  (root / "a/trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  (root / "b/corrupt.png").write_bytes(b"this is not an image at all")
  (root / "b/readme.txt").write_text("ignored")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  write_folder(root)
  return root


@pytest.fixture(scope="module")
def expected(folder, model):
  """key -> (features [C, R], scene [S]) from one direct forward of every good image."""
  x = np.stack([img_lib.load_image(folder / rel, SIZE) for rel in GOOD])
  out = model(jnp.asarray(x))
  feats = np.swapaxes(np.asarray(out["regions"]), 1, 2)
  return {img_lib.image_key(rel): (feats[i], np.asarray(out["scene"][i]))
          for i, rel in enumerate(GOOD)}


def read_all(out_dir):
  got = {}
  for path in sorted(out_dir.glob("features-*.h5")):
    with h5py.File(path, "r") as f:
      for name in f:
        key, field = name.rsplit("-", 1)
        assert f[name].dtype == np.float32
        got.setdefault(key, {})[field] = np.asarray(f[name])
  return got


def check_outputs(out_dir, expected):
  got = read_all(out_dir)
  assert sorted(got) == sorted(expected)
  for key, (feats, scene) in expected.items():
    assert got[key]["features"].shape == (CHANNELS[-1], 16)  # official [C, R]
    assert_close(got[key]["features"], feats, rtol=1e-5)
    assert_close(got[key]["scene"], scene, rtol=1e-5)
  lines = (out_dir / "unreadable.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in lines] == BAD
  assert all(len(line.split("\t")[1]) > 0 for line in lines)
  assert not list(out_dir.glob("*.tmp*"))


def extract(folder, out_dir, model, **kw):
  kw.setdefault("devices", jax.devices()[:2])
  kw.setdefault("batch_size", 2)
  return run_lib.extract_folder(str(folder), str(out_dir), model, shard_size=SHARD,
                                num_workers=2, progress=False, **kw)


def test_extract_folder_outputs_and_unreadable(folder, model, expected, tmp_path):
  s = extract(folder, tmp_path, model)
  assert (s.num_images, s.extracted, s.already_done) == (8, 6, 0)
  assert [p for p, _ in s.unreadable] == BAD
  assert [os.path.basename(p) for p in s.shard_paths] == [
      "features-00000-of-00003.h5", "features-00001-of-00003.h5",
      "features-00002-of-00003.h5"]
  check_outputs(tmp_path, expected)
  with h5py.File(tmp_path / "features-00001-of-00003.h5", "r") as f:
    assert list(f.attrs["image_keys"]) == ["b_img3.png"]
    assert list(f.attrs["shard_paths"]) == ["a/trunc.png", "b/corrupt.png", "b/img3.png"]
    assert list(f.attrs["grid_shape"]) == [4, 4]
  keys = [k for k, _ in run_lib.iter_features(str(tmp_path))]
  assert keys == [img_lib.image_key(r) for r in GOOD]
  # a second run finds everything done
  s2 = extract(folder, tmp_path, model)
  assert (s2.extracted, s2.already_done) == (0, 8)
  check_outputs(tmp_path, expected)


def test_resume_after_crash(folder, model, expected, tmp_path):
  class Crash(Exception):
    pass

  def crash(k, path):
    assert os.path.exists(path)
    raise Crash(k)

  with pytest.raises(Crash):
    extract(folder, tmp_path, model, on_shard_written=crash)
  assert sorted(p.name for p in tmp_path.glob("features-*")) == ["features-00000-of-00003.h5"]
  (tmp_path / "features-00001-of-00003.h5.tmp").write_bytes(b"half-written")  # crash debris
  s = extract(folder, tmp_path, model)
  assert (s.already_done, s.extracted, len(s.unreadable)) == (3, 3, 2)
  check_outputs(tmp_path, expected)  # every image once, same values

  # the folder changed since the shards were written: refuse to mix
  extra = folder / "a/img1b.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(extra)
  try:
    with pytest.raises(ValueError, match="new out_dir"):
      extract(folder, tmp_path, model)
  finally:
    extra.unlink()


def test_process_sharding_and_data_parallel(folder, model, expected, tmp_path):
  s1 = extract(folder, tmp_path, model, process_index=1, process_count=2)
  assert [os.path.basename(p) for p in s1.shard_paths] == ["features-00001-of-00003.h5"]
  assert (s1.num_images, s1.extracted) == (3, 1)
  s0 = extract(folder, tmp_path, model, process_index=0, process_count=2)
  assert [os.path.basename(p) for p in s0.shard_paths] == [
      "features-00000-of-00003.h5", "features-00002-of-00003.h5"]
  assert (s0.num_images, s0.extracted) == (5, 5)
  check_outputs(tmp_path, expected)
  # all 8 (simulated) local devices, one image per device per call
  s = extract(folder, tmp_path / "dp", model, devices=jax.devices(), batch_size=8)
  assert s.extracted == 6
  check_outputs(tmp_path / "dp", expected)


def test_command_line(folder, state_dict, expected, tmp_path, capsys):
  np.savez(tmp_path / "vgg.npz", **state_dict)
  out = tmp_path / "out"
  s = run_lib.main(["--image_dir", str(folder), "--out_dir", str(out), "--vgg19_weights",
                    str(tmp_path / "vgg.npz"), "--batch_size", str(jax.device_count()),
                    "--shard_size", "3", "--num_workers", "2"])
  assert s.extracted == 6
  assert "extracted 6 image(s)" in capsys.readouterr().out
  check_outputs(out, expected)


def test_extract_errors(folder, model, tmp_path):
  with pytest.raises(ValueError, match="batch_size=3: expected a positive multiple of the 2"):
    extract(folder, tmp_path, model, batch_size=3)
  with pytest.raises(ValueError, match="shard_size"):
    run_lib.extract_folder(str(folder), str(tmp_path), model, shard_size=0)
  with pytest.raises(ValueError, match="process_index=2"):
    extract(folder, tmp_path, model, process_index=2, process_count=2)
  (tmp_path / "features-00000-of-00009.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="different plan"):
    extract(folder, tmp_path, model)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="no image files"):
    extract(empty, tmp_path / "o", model)


# ------------------------------------------------------------------- torch, when installed

def test_against_torch_vgg19_layout(tmp_path, state_dict, model):
  torch = pytest.importorskip("torch")
  nn = torch.nn
  layers, in_ch = [], 3
  for width, n in zip(CHANNELS, [2, 2, 4, 4, 4]):
    for _ in range(n):
      layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
      in_ch = width
    layers.append(nn.MaxPool2d(2, 2))
  features = nn.Sequential(*layers)  # torchvision make_layers(cfg "E")
  fc_in = CHANNELS[-1] * 4
  classifier = nn.Sequential(nn.Linear(fc_in, FC), nn.ReLU(True), nn.Dropout(),
                             nn.Linear(FC, FC), nn.ReLU(True), nn.Dropout(), nn.Linear(FC, 10))
  net = nn.Module()
  net.features, net.classifier = features, classifier
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
  net.eval()
  x = np.random.default_rng(6).standard_normal((2, *SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    grid = net.features[:-1](torch.from_numpy(x).permute(0, 3, 1, 2))  # conv5_4 + ReLU
    # BiAM's vgg_net: features[-1:] then classifier[0:-2] on x.view(-1, 512, 14, 14)
    scene = net.classifier[:-2](net.features[-1:](grid).reshape(2, -1))
  out = model(jnp.asarray(x))
  assert_close(np.swapaxes(np.asarray(out["regions"]), 1, 2), grid.reshape(2, grid.shape[1], -1))
  assert_close(out["scene"], scene.numpy())
  # a real .pth written by torch.save, read with torch.load(weights_only=True)
  torch.save(net.state_dict(), tmp_path / "vgg19.pth")
  loaded = tvw.load_vgg19(str(tmp_path / "vgg19.pth"))
  np.testing.assert_array_equal(loaded(jnp.asarray(x))["scene"], out["scene"])
  torch.save({"not": "weights"}, tmp_path / "bad.pth")
  with pytest.raises(ValueError, match="bad.pth.*key 'not'"):
    tvw.load_vgg19(str(tmp_path / "bad.pth"))
  # torchvision's ToTensor + Normalize in torch ops (its PIL Resize is img.resize((w, h),
  # BILINEAR)), against load_image
  rgb = np.random.default_rng(7).integers(0, 256, (45, 61, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "p.png")
  pic = Image.open(tmp_path / "p.png").convert("RGB").resize((64, 64), Image.BILINEAR)
  t = torch.from_numpy(np.array(pic, np.uint8)).permute(2, 0, 1).contiguous()
  t = t.to(torch.float32).div(255)
  t = t.sub_(torch.tensor([0.485, 0.456, 0.406])[:, None, None])
  t = t.div_(torch.tensor([0.229, 0.224, 0.225])[:, None, None])
  np.testing.assert_array_equal(img_lib.load_image(tmp_path / "p.png", SIZE),
                                t.permute(1, 2, 0).numpy())


# ------------------------------------------------------- scene head alone (BiAM's vgg_net)
# Shared with tests/test_nus_wide.py and tests/test_open_images.py (write_scene_weights).

SCENE_FC = 8  # tiny fc width; the head's input is the real 14x14x512 grid (fc6 in: 25088)


def scene_state_dict(seed=0, fc=SCENE_FC, region_dim=512, grid=(14, 14)):
  """fc6/fc7 under torchvision's names (input region_dim x pooled grid), plus a conv and fc8
  entry as in the real file (ignored by the head)."""
  rng = np.random.default_rng(seed)
  fc_in = region_dim * (grid[0] // 2) * (grid[1] // 2)
  return {
      "features.0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
      "features.0.bias": np.zeros(4, np.float32),
      "classifier.0.weight": (rng.standard_normal((fc, fc_in)) *
                              np.sqrt(2 / fc_in)).astype(np.float32),
      "classifier.0.bias": (0.1 * rng.standard_normal(fc)).astype(np.float32),
      "classifier.3.weight": (rng.standard_normal((fc, fc)) * np.sqrt(2 / fc)).astype(np.float32),
      "classifier.3.bias": (0.1 * rng.standard_normal(fc)).astype(np.float32),
      "classifier.6.weight": rng.standard_normal((10, fc)).astype(np.float32),
      "classifier.6.bias": np.zeros(10, np.float32),
  }


def write_scene_weights(folder, stem="vgg19", seed=0, fc=SCENE_FC, sd=None):
  """A torchvision-layout weights file: ``.pth`` by torch.save when torch is installed, else
  ``.npz`` (both read by ``load_state_dict_file``). Returns its path (str)."""
  sd = scene_state_dict(seed, fc) if sd is None else sd
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    path = os.path.join(folder, f"{stem}.npz")
    np.savez(path, **sd)
    return path
  path = os.path.join(folder, f"{stem}.pth")
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  return path


def scene_head_loop_ref(sd, regions, grid=(14, 14)):
  """BiAM's vgg_net on regions [B, h*w, C] (row-major, region r = row * w + col), written out:
  the 2x2 max-pool window by window over the grid, the flatten by torch's (C, H, W) index
  c * (h/2 * w/2) + i * (w/2) + j, then fc6, ReLU, fc7, ReLU (eval: no dropout)."""
  bsz, _, ch = regions.shape
  h, w = grid
  ph, pw = h // 2, w // 2
  flat = np.zeros((bsz, ch * ph * pw))
  for i in range(ph):
    for j in range(pw):
      window = [regions[:, (2 * i + di) * w + 2 * j + dj, :] for di in (0, 1) for dj in (0, 1)]
      pooled = np.max(np.stack(window), axis=0)  # [B, C]
      for c in range(ch):
        flat[:, c * ph * pw + i * pw + j] = pooled[:, c]
  h6 = np.maximum(flat @ sd["classifier.0.weight"].T.astype(np.float64)
                  + sd["classifier.0.bias"], 0)
  return np.maximum(h6 @ sd["classifier.3.weight"].T.astype(np.float64)
                    + sd["classifier.3.bias"], 0)


def test_scene_head_matches_loop_reference_vgg19_and_torch(tmp_path, state_dict, model):
  from mlzsl_jax.extract import scene_head as sh
  sd = scene_state_dict(seed=4)
  path = write_scene_weights(tmp_path, sd=sd)
  head = sh.load_scene_head(path)  # conv and fc8 keys are ignored
  assert (head.fc_dim, head.region_dim, head.grid_shape, head.fc_in) == (
      SCENE_FC, 512, (14, 14), 25088)
  regions = (np.abs(np.random.default_rng(5).standard_normal((3, 196, 512))) * 3
             ).astype(np.float32)
  got = sh.scene_from_regions(head, regions)
  assert got.dtype == jnp.float32 and got.shape == (3, SCENE_FC)
  want = scene_head_loop_ref(sd, regions)
  assert (want > 0).any() and (want == 0).any()  # both sides of the ReLU are exercised
  assert_close(got, want)
  # VGG19.scene_from_grid runs the same code: equal on the tiny network's fc6/fc7.
  small = sh.load_scene_head(state_dict, region_dim=CHANNELS[-1], grid_shape=(4, 4))
  grid_regions = np.random.default_rng(6).random((2, 16, CHANNELS[-1])).astype(np.float32)
  np.testing.assert_array_equal(sh.scene_from_regions(small, grid_regions),
                                model.scene_from_regions(jnp.asarray(grid_regions)))
  assert_close(small(jnp.asarray(grid_regions)),
               scene_head_loop_ref(state_dict, grid_regions, grid=(4, 4)))
  torch = pytest.importorskip("torch")
  nn = torch.nn
  # The official code: vgg19.features[-1:] (MaxPool2d(2, 2)) on x.view(-1, 512, 14, 14) of
  # the stored [512, 196] features, then classifier[0:-2] on the flatten, eval mode.
  classifier = nn.Sequential(nn.Linear(25088, SCENE_FC), nn.ReLU(True), nn.Dropout(),
                             nn.Linear(SCENE_FC, SCENE_FC), nn.ReLU(True), nn.Dropout(),
                             nn.Linear(SCENE_FC, 10))
  classifier.load_state_dict({k[len("classifier."):]: torch.from_numpy(v)
                              for k, v in sd.items() if k.startswith("classifier.")})
  classifier.eval()
  official = torch.from_numpy(np.ascontiguousarray(np.swapaxes(regions, 1, 2)))  # [B, 512, 196]
  with torch.no_grad():
    x = nn.MaxPool2d(2, 2)(official.view(-1, 512, 14, 14))
    scene = classifier[:-2](x.view(x.size(0), -1))
  assert_close(got, scene.numpy())


@pytest.mark.parametrize("change, match", [
    (lambda sd: sd.pop("classifier.3.bias"), r"bad\.(pth|npz).*'classifier\.3\.bias' missing"),
    (lambda sd: sd.pop("classifier.0.weight"), r"bad\.(pth|npz).*'classifier\.0\.weight' missing"),
    (lambda sd: sd.__setitem__("classifier.0.weight", np.zeros((8, 4096), np.float32)),
     r"'classifier\.0\.weight': expected shape \[8, 25088\], got \[8, 4096\]"),
    (lambda sd: sd.__setitem__("classifier.3.weight", np.zeros((8, 9), np.float32)),
     r"'classifier\.3\.weight': expected shape \[8, 8\], got \[8, 9\]"),
])
def test_scene_head_weight_errors_name_file_and_key(change, match, tmp_path):
  from mlzsl_jax.extract import scene_head as sh
  sd = scene_state_dict()
  change(sd)
  with pytest.raises(ValueError, match=match):
    sh.load_scene_head(write_scene_weights(tmp_path, "bad", sd=sd))


# -------------------------------------------------------------------------------- ResNet-101

RN_BLOCKS, RN_WIDTH = (2, 1, 2, 1), 4  # real bottlenecks (downsample + identity), small
RN_CH = RN_WIDTH * 8 * 4               # layer4 channels (2048 for ResNet-101)


def random_resnet_state_dict(seed=0, blocks=RN_BLOCKS, width=RN_WIDTH):
  """torchvision resnet names and shapes (with fc and num_batches_tracked), random values."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in tvw.resnet_expected_shapes(blocks, width).items():
    if key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, shape)
    elif key.endswith(("running_mean", "bias")):
      sd[key] = 0.1 * rng.standard_normal(shape)
    elif key.endswith("weight") and len(shape) == 1:  # BN scale
      sd[key] = rng.uniform(0.5, 1.0, shape)
    else:
      sd[key] = rng.standard_normal(shape) * np.sqrt(1 / np.prod(shape[1:]))
    sd[key] = sd[key].astype(np.float32)
    if key.endswith("running_var"):
      sd[key[:-len("running_var")] + "num_batches_tracked"] = np.array(7, np.int64)
  sd["fc.weight"] = rng.standard_normal((10, width * 32)).astype(np.float32)
  sd["fc.bias"] = np.zeros(10, np.float32)
  return sd


def conv_ref(x, w, stride, pad):
  """torch Conv2d (no bias) on [B, Cin, H, W], w [Cout, Cin, k, k]: loop over offsets."""
  k = w.shape[-1]
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  ho = (x.shape[2] + 2 * pad - k) // stride + 1
  wo = (x.shape[3] + 2 * pad - k) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for dy in range(k):
    for dx in range(k):
      patch = xp[:, :, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
      out += np.einsum("oi,bihw->bohw", w[:, :, dy, dx], patch)
  return out


def bn_ref(x, sd, prefix):
  g = lambda f: sd[f"{prefix}.{f}"][None, :, None, None]  # noqa: E731
  return (x - g("running_mean")) / np.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")


def resnet_ref(sd, images_nhwc, blocks=RN_BLOCKS):
  """-> (layer4 [B, C, H/32, W/32], pooled [B, C]) straight from the torchvision dict."""
  x = np.transpose(images_nhwc, (0, 3, 1, 2)).astype(np.float64)
  x = np.maximum(bn_ref(conv_ref(x, sd["conv1.weight"], 2, 3), sd, "bn1"), 0)
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho = (x.shape[2] - 1) // 2 + 1
  pooled = np.full((x.shape[0], x.shape[1], ho, ho), -np.inf)
  for dy in range(3):
    for dx in range(3):
      pooled = np.maximum(pooled, xp[:, :, dy:dy + 2 * (ho - 1) + 1:2, dx:dx + 2 * (ho - 1) + 1:2])
  x = pooled
  for s, n in enumerate(blocks, start=1):
    for i in range(n):
      p = f"layer{s}.{i}"
      stride = 2 if s > 1 and i == 0 else 1
      y = np.maximum(bn_ref(conv_ref(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"), 0)
      y = np.maximum(bn_ref(conv_ref(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"), 0)
      y = bn_ref(conv_ref(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
      if f"{p}.downsample.0.weight" in sd:
        x = bn_ref(conv_ref(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd,
                   f"{p}.downsample.1")
      x = np.maximum(y + x, 0)
  return x, x.mean(axis=(2, 3))


@pytest.fixture(scope="module")
def resnet_sd():
  return random_resnet_state_dict()


@pytest.fixture(scope="module")
def resnet(resnet_sd):
  return tvw.resnet101_from_state_dict(resnet_sd, image_size=SIZE)


def jit_call(model, x):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, jnp.asarray(x))


def test_resnet_forward_matches_numpy_reference(resnet_sd, resnet):
  x = np.random.default_rng(8).standard_normal((2, *SIZE, 3)).astype(np.float32)
  out = jit_call(resnet, x)
  grid, pooled = resnet_ref(resnet_sd, x)
  assert resnet.grid_shape == (2, 2) and out["regions"].shape == (2, 4, RN_CH)
  assert_close(np.swapaxes(np.asarray(out["regions"]), 1, 2), grid.reshape(2, RN_CH, -1))
  assert_close(out["pooled"], pooled)


def test_resnet_conversion_and_real_shapes(resnet_sd):
  params, arch = tvw.convert_resnet_state_dict(resnet_sd)
  assert arch == {"blocks": RN_BLOCKS, "width": RN_WIDTH}
  assert set(params["layer1_0"]) >= {"downsample_conv", "downsample_bn"}
  assert "downsample_conv" not in params["layer1_1"]
  np.testing.assert_array_equal(params["layer3_0"]["bn2"]["var"],
                                resnet_sd["layer3.0.bn2.running_var"])
  # torchvision's documented parameter counts (with fc / fc8): resnet101 44,549,160,
  # vgg19 143,667,240
  real = tvw.resnet_expected_shapes((3, 4, 23, 3), 64)
  n = sum(int(np.prod(s)) for k, s in real.items() if "running" not in k)
  assert n + 2048 * 1000 + 1000 == 44_549_160
  vgg = tvw.expected_shapes((64, 128, 256, 512, 512), 4096, (224, 224))
  assert sum(int(np.prod(s)) for s in vgg.values()) + 4096 * 1000 + 1000 == 143_667_240
  views = {k: np.broadcast_to(np.float32(0), s) for k, s in real.items()}
  assert tvw.infer_resnet_architecture(views) == {"blocks": (3, 4, 23, 3), "width": 64}


@pytest.mark.parametrize("change, match", [
    (lambda sd: sd.pop("layer2.0.downsample.1.running_var"),
     r"'layer2.0.downsample.1.running_var' missing"),
    (lambda sd: sd.__setitem__("layer4.0.conv2.weight", np.zeros((32, 32, 1, 1), np.float32)),
     r"'layer4.0.conv2.weight': expected shape \[32, 32, 3, 3\], got \[32, 32, 1, 1\]"),
    (lambda sd: [sd.pop(k) for k in list(sd) if ".conv3." in k], r"BasicBlock"),
    (lambda sd: sd.__setitem__("layer1.0.extra.weight", np.zeros(1, np.float32)),
     r"unexpected keys \['layer1.0.extra.weight'\]"),
])
def test_resnet_conversion_errors(change, match):
  sd = random_resnet_state_dict()
  change(sd)
  with pytest.raises(ValueError, match=match):
    tvw.convert_resnet_state_dict(sd, source="rn.pth")


def test_extract_folder_resnet(folder, resnet, tmp_path):
  s = extract(folder, tmp_path, resnet, backbone="resnet101")
  assert s.extracted == 6
  x = np.stack([img_lib.load_image(folder / rel, SIZE) for rel in GOOD])
  out = jit_call(resnet, x)
  got = dict(run_lib.iter_features(str(tmp_path)))
  for i, rel in enumerate(GOOD):
    item = got[img_lib.image_key(rel)]
    assert set(item) == {"regions", "pooled"} and item["regions"].shape == (4, RN_CH)
    assert_close(item["regions"], out["regions"][i], rtol=1e-5)
    assert_close(item["pooled"], out["pooled"][i], rtol=1e-5)
  with pytest.raises(ValueError, match="attribute 'architecture'"):  # VGG19 into ResNet shards
    extract(folder, tmp_path, tvw.vgg19_from_state_dict(random_state_dict()))
  with pytest.raises(ValueError, match="alexnet.*unknown extract backbone; registered: .*vgg19"):
    extract(folder, tmp_path, resnet, backbone="alexnet")


def test_resnet_against_torch_layout(tmp_path, resnet_sd, resnet):
  torch = pytest.importorskip("torch")
  nn = torch.nn

  class Bottleneck(nn.Module):  # torchvision's (v1.5: stride on the 3x3 conv)
    def __init__(self, inplanes, planes, stride, downsample):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.downsample = downsample

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = torch.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  net = nn.Module()
  net.conv1 = nn.Conv2d(3, RN_WIDTH, 7, 2, 3, bias=False)
  net.bn1 = nn.BatchNorm2d(RN_WIDTH)
  inplanes = RN_WIDTH
  for s, n in enumerate(RN_BLOCKS, start=1):
    planes, layer = RN_WIDTH * 2 ** (s - 1), []
    for i in range(n):
      stride = 2 if s > 1 and i == 0 else 1
      down = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                            nn.BatchNorm2d(planes * 4)) if i == 0 else None)
      layer.append(Bottleneck(inplanes, planes, stride, down))
      inplanes = planes * 4
    setattr(net, f"layer{s}", nn.Sequential(*layer))
  net.fc = nn.Linear(inplanes, 10)
  net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in resnet_sd.items()})
  net.eval()
  x = np.random.default_rng(9).standard_normal((2, *SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    h = torch.relu(net.bn1(net.conv1(torch.from_numpy(x).permute(0, 3, 1, 2))))
    h = nn.functional.max_pool2d(h, 3, 2, 1)
    for s in range(1, 5):
      h = getattr(net, f"layer{s}")(h)
  out = jit_call(resnet, x)
  assert_close(np.swapaxes(np.asarray(out["regions"]), 1, 2), h.reshape(2, RN_CH, -1).numpy())
  assert_close(out["pooled"], h.mean((2, 3)).numpy())
  torch.save(net.state_dict(), tmp_path / "rn.pth")
  loaded = tvw.load_resnet101(str(tmp_path / "rn.pth"), image_size=SIZE)
  np.testing.assert_array_equal(jit_call(loaded, x)["pooled"], out["pooled"])
