"""CLIP image pre-processing (``mlzsl_jax.backbones.clip_preprocess``) on real image files.

Reference 1, the authority: the torchvision evaluation transform of OpenAI CLIP / open_clip
(``Resize(S, BICUBIC)``, ``CenterCrop(S)``, ``convert('RGB')``, ``ToTensor``, ``Normalize``)
written out plainly below with PIL calls and scalar float32 arithmetic (torchvision itself is
not installed; its rules are restated from its source: long side ``int(S * long / short)``,
crop offset ``int(round((side - S) / 2.0))``). ``load_image`` must equal it bit for bit on every
mode (RGB, L, RGBA, P, P + transparency, LA, CMYK, I;16, EXIF-rotated JPEG).

Reference 2: Hugging Face ``CLIPImageProcessorPil`` (transformers 5's ``CLIPImageProcessor``
needs torchvision and falls back to this class). It agrees (<= 1e-5) on RGB and greyscale
images whose crop offsets agree. It differs, and the tests pin down exactly how:
  - crop offset ``(side - S) // 2`` (floor) instead of half-to-even ``round``: a one-pixel shift
    when the excess ``side - S`` is 3 mod 4 (e.g. 640x427 -> 335x224, excess 111: 55 vs 56);
    with that offset substituted, HF equals the reference;
  - RGB conversion BEFORE the resize, compositing alpha on white: RGBA / LA / P-with-
    transparency differ (the reference resizes premultiplied alpha and then drops it, so
    transparent areas are black); with 'white composite first' substituted, HF equals it;
  - 'P' images: the reference resizes palette indices with NEAREST (PIL forces it), HF
    converts to RGB first and resizes with BICUBIC; CMYK and I;16 also differ (conversion is
    non-linear / clips, so converting before or after the resize is not the same).
(Measured: with both substitutions HF's output is bit-identical to the reference here.)
"""

import numpy as np
import pytest

import clip_reference as ref
from PIL import Image

from mlzsl_jax.backbones import clip_preprocess as cp

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
S = 224


# ------------------------------------------------------------------ synthetic image files

def pattern(h, w, channels, seed, lo=0, hi=255):
 """Seeded structured content: per-channel gradients + sinusoids + noise, in [lo, hi]."""
 rng = np.random.default_rng(seed)
 y, x = np.mgrid[0:h, 0:w].astype(np.float64)
 planes = []
 for c in range(channels):
  fx, fy = rng.uniform(0.5, 4.0, 2)
  v = (0.5 + 0.25 * np.sin(2 * np.pi * (fx * x / w + fy * y / h + c / 3))
       + 0.2 * (x / w - y / h) + rng.normal(0, 0.08, (h, w)))
  planes.append(lo + np.clip(v, 0, 1) * (hi - lo))
 return np.stack(planes, -1)


def _u8(a):
 return np.round(a).astype(np.uint8)


def _write_images(root):
 """name -> path of every test image (width x height in the name)."""
 paths = {}

 def save(name, img, **kw):
  paths[name] = str(root / name)
  img.save(paths[name], **kw)

 # RGB: landscape much larger, very tall, small (upscaled), exact size, portrait, odd sizes
 for i, (w, h, ext) in enumerate([(640, 427, "jpg"), (225, 1000, "png"), (100, 57, "png"),
                                  (224, 224, "jpg"), (333, 500, "jpg"), (224, 227, "png"),
                                  (229, 224, "png"), (301, 199, "jpg")]):
  save(f"rgb_{w}x{h}.{ext}", Image.fromarray(_u8(pattern(h, w, 3, seed=i))),
       **({"quality": 92} if ext == "jpg" else {}))
 save("grey_L_199x301.png", Image.fromarray(_u8(pattern(301, 199, 1, 10)[..., 0]), "L"))
 save("grey_L_640x427.jpg", Image.fromarray(_u8(pattern(427, 640, 1, 11)[..., 0]), "L"))
 rgba = _u8(pattern(180, 250, 4, 12))
 rgba[:60, :, 3] = 0                       # a fully transparent band, the rest varying alpha
 rgba[60:90, :, 3] = 255
 save("rgba_250x180.png", Image.fromarray(rgba, "RGBA"))
 pal = Image.fromarray(_u8(pattern(317, 211, 3, 13))).quantize(48)
 save("palette_P_211x317.png", pal)
 save("palette_P_transparent_211x317.png", pal, transparency=0)
 save("la_160x240.png", Image.fromarray(_u8(pattern(240, 160, 2, 14)), "LA"))
 save("cmyk_300x200.jpg", Image.fromarray(_u8(pattern(200, 300, 4, 15)), "CMYK"), quality=95)
 # 16-bit greyscale: values 0..1023, so part of the image is below 255 and part clips
 g16 = np.round(pattern(77, 123, 1, 16, 0, 1023)[..., 0]).astype(np.uint16)
 save("grey_I16_123x77.png", Image.fromarray(g16))
 exif = Image.Exif()
 exif[0x0112] = 6                          # Orientation: rotate 90 CW to display
 save("exif_rot6_320x240.jpg", Image.fromarray(_u8(pattern(240, 320, 3, 17))), exif=exif,
      quality=92)
 return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
 return _write_images(tmp_path_factory.mktemp("clip_images"))


# ------------------------------------------------------- reference 1: torchvision semantics

def ref_output_size(h, w, size):
 """torchvision ``_compute_resized_output_size((h, w), [size])`` -> (new_h, new_w)."""
 short, long = (w, h) if w <= h else (h, w)
 new_short, new_long = size, int(size * long / short)
 new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
 return new_h, new_w


def ref_crop_offset(side, size):
 return int(round((side - size) / 2.0))


def floor_crop_offset(side, size):        # Hugging Face's rule
 return (side - size) // 2


def ref_normalize(rgb):
 """ToTensor + Normalize on uint8 [H, W, 3], one scalar float32 computation per level."""
 out = np.empty(rgb.shape, np.float32)
 for c in range(3):
  table = np.array([(np.float32(v) / np.float32(255) - np.float32(MEAN[c])) / np.float32(STD[c])
                    for v in range(256)], np.float32)
  out[..., c] = table[rgb[..., c]]
 return out


def reference(img, size=S, crop_offset=ref_crop_offset, first=None):
 """The CLIP eval transform on a PIL image. ``first`` (a function of the image) runs before
 the resize: used only to restate what Hugging Face does."""
 if first is not None:
  img = first(img)
 w, h = img.size
 new_h, new_w = ref_output_size(h, w, size)
 if (new_h, new_w) != (h, w):               # torchvision returns the image untouched
  img = img.resize((new_w, new_h), Image.BICUBIC)
 top, left = crop_offset(new_h, size), crop_offset(new_w, size)
 img = img.crop((left, top, left + size, top + size))
 img = img.convert("RGB")
 return ref_normalize(np.asarray(img))


def reference_file(path, size=S, **kw):
 with Image.open(path) as img:
  return reference(img, size, **kw)


def test_output_size_and_crop_rules():
 # torchvision: long side truncated (640x427 -> 335.74 -> 335, not 336)
 for (h, w), want in {(427, 640): (224, 335), (1000, 225): (995, 224), (57, 100): (224, 392),
                      (224, 224): (224, 224), (500, 333): (336, 224), (227, 224): (227, 224),
                      (301, 199): (338, 224), (199, 301): (224, 338)}.items():
  assert ref_output_size(h, w, S) == want
  assert cp.resize_output_size(h, w, S) == want
 # half-to-even rounding of the excess / 2: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 385.5 -> 386
 for excess, want in {0: 0, 1: 0, 2: 1, 3: 2, 4: 2, 5: 2, 6: 3, 7: 4, 111: 56, 771: 386}.items():
  assert ref_crop_offset(S + excess, S) == want
  assert cp.center_crop_offsets(S + excess, S, S) == (want, 0)
  assert cp.center_crop_offsets(S, S + excess, S) == (0, want)


def test_reference_arithmetic_matches_torch():
 """ToTensor's ``div(255)`` and Normalize's ``sub_(mean).div_(std)`` in torch float32 give
 the same bits as the scalar reference and as the module, for all 256 levels."""
 torch = ref.need("torch")
 levels = np.stack([np.arange(256, dtype=np.uint8)] * 3, -1)[None]          # [1, 256, 3]
 t = torch.from_numpy(levels.transpose(2, 0, 1).copy()).to(torch.float32).div(255)
 t = t.sub_(torch.tensor(MEAN).view(-1, 1, 1)).div_(torch.tensor(STD).view(-1, 1, 1))
 want = t.numpy().transpose(1, 2, 0)
 np.testing.assert_array_equal(ref_normalize(levels), want)
 np.testing.assert_array_equal(cp.normalize(levels), want)
 np.testing.assert_array_equal(cp.CLIP_MEAN, np.float32(MEAN))
 np.testing.assert_array_equal(cp.CLIP_STD, np.float32(STD))


def test_load_image_equals_reference(images):
 for name, path in images.items():
  got = cp.load_image(path)
  assert got.shape == (S, S, 3) and got.dtype == np.float32, name
  np.testing.assert_array_equal(got, reference_file(path), err_msg=name)


def test_size_336(images):
 for name in ["rgb_640x427.jpg", "rgb_225x1000.png", "rgba_250x180.png", "rgb_100x57.png"]:
  got = cp.load_image(images[name], size=336)
  assert got.shape == (336, 336, 3) and got.dtype == np.float32
  np.testing.assert_array_equal(got, reference_file(images[name], 336), err_msg=name)


def test_preprocess_pil_in_memory():
 img = Image.fromarray(_u8(pattern(90, 150, 3, 30)))
 np.testing.assert_array_equal(cp.preprocess_pil(img, 64), reference(img, 64))
 with pytest.raises(TypeError):
  cp.preprocess_pil(np.zeros((8, 8, 3), np.uint8), 8)


def test_modes_as_opened_and_per_mode_behaviour(images):
 """What PIL 13 does per mode, and that the order (convert last) matters for each."""
 modes = {n: Image.open(p).mode for n, p in images.items()}
 assert modes["grey_L_640x427.jpg"] == "L" and modes["rgba_250x180.png"] == "RGBA"
 assert modes["palette_P_211x317.png"] == "P" and modes["la_160x240.png"] == "LA"
 assert modes["cmyk_300x200.jpg"] == "CMYK" and modes["grey_I16_123x77.png"] == "I;16"

 def convert_first(img):
  return img.convert("RGB")

 # convert-after-resize differs from convert-first for these modes (and not for L / RGB)
 for name in ["rgba_250x180.png", "palette_P_211x317.png", "la_160x240.png",
              "cmyk_300x200.jpg", "grey_I16_123x77.png"]:
  assert not np.array_equal(cp.load_image(images[name]),
                            reference_file(images[name], first=convert_first)), name
 for name in ["grey_L_640x427.jpg", "rgb_640x427.jpg"]:
  np.testing.assert_array_equal(cp.load_image(images[name]),
                                reference_file(images[name], first=convert_first))

 # 'P' is resized with NEAREST whatever filter is asked: every output colour is a palette entry
 with Image.open(images["palette_P_211x317.png"]) as img:
  palette = {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3)}
 out = cp.load_image(images["palette_P_211x317.png"])
 rgb = np.round((out * cp.CLIP_STD + cp.CLIP_MEAN) * 255).astype(int)
 assert {tuple(c) for c in rgb.reshape(-1, 3)} <= palette

 # RGBA: alpha dropped, not composited; the fully transparent band (top 60 of 180 rows ->
 # about 74 of 224 after the resize) is black
 black = (0 - cp.CLIP_MEAN) / cp.CLIP_STD
 out = cp.load_image(images["rgba_250x180.png"])
 np.testing.assert_allclose(out[:70], np.broadcast_to(black, out[:70].shape), atol=1e-6)

 # I;16: clipped to 255, not rescaled
 with Image.open(images["grey_I16_123x77.png"]) as img:
  raw = np.asarray(img)
 assert raw.max() > 255 and raw.min() < 255
 out = cp.load_image(images["grey_I16_123x77.png"])
 white = (1 - cp.CLIP_MEAN) / cp.CLIP_STD
 frac_white = np.mean(np.all(np.isclose(out, white), -1))
 assert 0.5 < frac_white < 1.0


def test_exif_orientation_not_applied(images):
 from PIL import ImageOps
 path = images["exif_rot6_320x240.jpg"]
 with Image.open(path) as img:
  assert img.getexif().get(0x0112) == 6 and img.size == (320, 240)
  upright = ImageOps.exif_transpose(img)
  assert upright.size == (240, 320)
  got = cp.load_image(path)
  np.testing.assert_array_equal(got, reference(img))         # as stored
  assert not np.allclose(got, reference(upright), atol=0.1)  # not as displayed


def test_unreadable_files_raise(tmp_path, images):
 data = open(images["rgb_640x427.jpg"], "rb").read()
 (tmp_path / "truncated.jpg").write_bytes(data[:len(data) // 2])
 (tmp_path / "empty.jpg").write_bytes(b"")
 (tmp_path / "text.jpg").write_text("not an image\n")
 with pytest.raises(OSError, match="truncated") as e:
  cp.load_image(tmp_path / "truncated.jpg")
 assert type(e.value) is OSError
 for name in ["empty.jpg", "text.jpg"]:
  with pytest.raises(OSError, match="cannot identify") as e:
   cp.load_image(tmp_path / name)
  assert type(e.value).__name__ == "UnidentifiedImageError"
 with pytest.raises(FileNotFoundError):
  cp.load_image(tmp_path / "missing.jpg")


@pytest.mark.parametrize("bad", [0, -3, 224.0, True, "224", None])
def test_bad_size(bad, images):
 with pytest.raises(ValueError, match="size"):
  cp.load_image(images["rgb_100x57.png"], size=bad)
 with pytest.raises(ValueError, match="size"):
  cp.preprocess_pil(Image.new("RGB", (10, 10)), bad)


def test_preprocessing_string():
 assert isinstance(cp.PREPROCESSING, str) and "\n" not in cp.PREPROCESSING
 assert "BICUBIC" in cp.PREPROCESSING and "0.48145466" in cp.PREPROCESSING


# --------------------------------------------------- reference 2: Hugging Face's processor

@pytest.fixture(scope="module")
def hf():
 ref.need("transformers")
 from transformers import CLIPImageProcessorPil  # pylint: disable=import-outside-toplevel
 proc = CLIPImageProcessorPil()      # default config: the CLIP one
 assert proc.size.shortest_edge == 224
 assert (proc.crop_size.height, proc.crop_size.width) == (224, 224)
 assert proc.resample == Image.BICUBIC and proc.do_convert_rgb
 np.testing.assert_array_equal(np.float32(proc.image_mean), np.float32(MEAN))
 np.testing.assert_array_equal(np.float32(proc.image_std), np.float32(STD))

 def run(path):
  with Image.open(path) as img:
   img.load()
   out = proc(images=img, return_tensors="np")["pixel_values"]
  return out[0].transpose(1, 2, 0)   # [3, H, W] -> [H, W, 3]
 return run


def _white_composite(img):
 """Hugging Face's convert_to_rgb: alpha (or palette transparency) composited on white."""
 if "A" in img.getbands() or img.info.get("transparency") is not None:
  rgba = img.convert("RGBA")
  return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)),
                               rgba).convert("RGB")
 return img.convert("RGB")


def test_hf_agrees_where_offsets_agree(images, hf):
 for name in ["rgb_333x500.jpg", "rgb_100x57.png", "rgb_224x224.jpg", "rgb_229x224.png",
              "rgb_301x199.jpg", "grey_L_199x301.png"]:
  with Image.open(images[name]) as img:
   nh, nw = ref_output_size(img.height, img.width, S)
  assert ref_crop_offset(nh, S) == floor_crop_offset(nh, S), name
  assert ref_crop_offset(nw, S) == floor_crop_offset(nw, S), name
  np.testing.assert_allclose(hf(images[name]), cp.load_image(images[name]), atol=1e-5,
                             rtol=0, err_msg=name)


def test_hf_differs_by_crop_offset(images, hf):
 """Excess 111 (640x427), 771 (225x1000), 3 (224x227): round vs floor differ by one pixel."""
 for name in ["rgb_640x427.jpg", "rgb_225x1000.png", "rgb_224x227.png",
              "grey_L_640x427.jpg"]:
  ours, theirs = cp.load_image(images[name]), hf(images[name])
  assert np.abs(ours - theirs).max() > 0.01, name
  np.testing.assert_allclose(theirs, reference_file(images[name], crop_offset=floor_crop_offset),
                             atol=1e-5, rtol=0, err_msg=name)


def test_hf_converts_before_resizing(images, hf):
 """HF converts to RGB (transparency composited on white) before resizing: differs on every
 mode where the order matters; with that order (and the floor crop) restated, equal."""
 for name in ["rgba_250x180.png", "la_160x240.png", "palette_P_transparent_211x317.png",
              "palette_P_211x317.png", "cmyk_300x200.jpg", "grey_I16_123x77.png"]:
  ours, theirs = cp.load_image(images[name]), hf(images[name])
  assert np.abs(ours - theirs).max() > 0.05, name
  np.testing.assert_allclose(
      theirs, reference_file(images[name], crop_offset=floor_crop_offset,
                             first=_white_composite), atol=1e-5, rtol=0, err_msg=name)
