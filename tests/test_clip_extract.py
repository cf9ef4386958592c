"""``extract --backbone clip_vit*``: CLIP patch tokens (float16, [D, N]) and the class
embedding as the scene feature, in the official h5 layout, from a folder of real PNG/JPEG
files with random weights in the OpenAI layout (no torch needed)."""

import io
import os

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

import clip_reference as ref
from mlzsl_jax.backbones import clip as clip_lib
from mlzsl_jax.backbones import clip_preprocess, clip_weights, safetensors_io
from mlzsl_jax.extract import images as img_lib
from mlzsl_jax.extract import run as run_lib

SPEC = clip_lib.ClipSpec(clip_lib.VisionSpec(width=64, layers=2, heads=2, patch=8,
                                             image_size=32),
                         clip_lib.TextSpec(width=64, layers=1, heads=2), embed_dim=24)
GOOD = ["a/img0.png", "a/img1.jpg", "b/grey.png", "b/rgba.png", "c.png"]
BAD = ["b/broken.jpg"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("clip_extract")
  images = root / "images"
  rng = np.random.default_rng(3)
  for i, rel in enumerate(GOOD):
    os.makedirs(images / os.path.dirname(rel) if os.path.dirname(rel) else images,
                exist_ok=True)
    rgb = rng.integers(0, 256, (37 + 5 * i, 50, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    img = img.convert("L") if "grey" in rel else img
    img = img.convert("RGBA") if "rgba" in rel else img
    img.save(images / rel, quality=95) if rel.endswith(".jpg") else img.save(images / rel)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
  (images / BAD[0]).write_bytes(buf.getvalue()[:200])
  weights = root / "clip.safetensors"
  safetensors_io.write_safetensors(weights, ref.random_state_dict(SPEC))
  model = clip_weights.load_clip(weights)
  x = np.stack([clip_preprocess.load_image(images / rel, 32) for rel in GOOD])
  out = jax.jit(lambda im: model.encode_image(im))(x)
  expected = {img_lib.image_key(rel): (np.asarray(out["tokens"][i]).T,
                                       np.asarray(out["class"][i]))
              for i, rel in enumerate(GOOD)}
  return images, weights, expected


def test_cli_writes_tokens_and_scene_then_resumes(setup, tmp_path, capsys):
  images, weights, expected = setup
  out = tmp_path / "feats"
  argv = ["--image_dir", str(images), "--out_dir", str(out), "--backbone", "clip_vit",
          "--weights", str(weights), "--batch_size", "8", "--shard_size", "4",
          "--num_workers", "2"]
  summary = run_lib.main(argv)
  assert (summary.extracted, len(summary.unreadable)) == (len(GOOD), 1)
  assert "extracted 5 image(s)" in capsys.readouterr().out
  got = {}
  for path in sorted(out.glob("features-*.h5")):
    with h5py.File(path, "r") as f:
      assert "PIL open (no EXIF transpose)" in f.attrs["preprocessing"]
      assert '"patch": 8' in f.attrs["architecture"]
      for key in f.attrs["image_keys"]:
        key = key.decode() if isinstance(key, bytes) else key
        assert f[f"{key}-features"].dtype == np.float16
        got[key] = (np.asarray(f[f"{key}-features"]), np.asarray(f[f"{key}-scene"]))
  assert sorted(got) == sorted(expected)
  for key, (tokens, scene) in expected.items():
    assert got[key][0].shape == (24, 16)  # [D, N]: the official [C, R] layout
    np.testing.assert_allclose(got[key][0], tokens, rtol=1e-3, atol=1e-3)  # float16
    np.testing.assert_allclose(got[key][1], scene, rtol=1e-5, atol=1e-6)
  assert (out / "unreadable.txt").read_text().startswith(BAD[0] + "\t")
  again = run_lib.main(argv)  # every shard finished: nothing is redone
  assert (again.extracted, again.already_done) == (0, len(GOOD) + len(BAD))
  # iter_features gives the tokens back as [N, D] float32, like VGG19's regions
  key, feats = next(run_lib.iter_features(str(out)))
  assert feats["regions"].shape == (16, 24) and feats["regions"].dtype == np.float32


def test_release_name_is_checked_against_the_file(setup, tmp_path):
  images, weights, _ = setup
  with pytest.raises(ValueError, match=r"--backbone clip_vit_b16 expects a ViT with width "
                     r"768, layers 12, patch 16, image_size 224; the file holds width 64"):
    run_lib.extract_folder(str(images), str(tmp_path), str(weights),
                           backbone="clip_vit_b16", progress=False)
  with pytest.raises(ValueError, match=r"unknown extract backbone; registered: .*clip_vit_b16"):
    run_lib.extract_folder(str(images), str(tmp_path), str(weights), backbone="clip_rn50",
                           progress=False)


# ------------------------------------------------ NUS-WIDE on extracted CLIP tokens, trained

def load_config(name: str, arg: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def nus_clip(setup, tmp_path_factory):
  """Official lists + label-only h5 files, the images extracted with CLIP (a tiny "release"
  registered as clip_vit_tiny while this module runs), a synthetic BPE vocabulary; returns
  a function that fills a config's data block with those paths."""
  import test_nus_wide as nus_files  # the official-layout writer of the NUS-WIDE tests
  from mlzsl_jax.backbones import clip_tokenizer  # pylint: disable=import-outside-toplevel

  _, weights, _ = setup
  root = tmp_path_factory.mktemp("nus_clip")
  content = nus_files.official_content()
  names = content["train_names"] + content["test_names"]
  content["skip"] = [(n, "-features") for n in names]  # the h5 files hold labels only
  source_dir = nus_files.write_files(root / "NUS-WIDE", content)
  images = root / "images"
  rng = np.random.default_rng(0)
  for name in names:  # 'actor_0002_174174086.jpg' is the key of actor/0002_174174086.jpg
    folder, rest = name.split("_", 1)
    (images / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / folder / rest)
  feats = root / "feats"
  run_lib.extract_folder(str(images), str(feats), str(weights), backbone="clip_vit",
                         batch_size=8, progress=False)
  ref.write_synthetic_vocab(root / clip_tokenizer.OPEN_CLIP_VOCAB)

  def fill(config):
    config.unlock()
    config.data.manual_dir = str(source_dir)
    config.data.features_dir = str(feats)
    config.data.data_dir = str(root / "tfds")
    config.data.clip_weights = str(weights)
    config.data.clip_vocab = str(root / clip_tokenizer.OPEN_CLIP_VOCAB)
    config.data.mix_slices = 2
    config.train.batch_size, config.train.num_epochs = 8, min(config.train.num_epochs, 2)
    config.optimizer.warmup_epochs = 0
    config.eval.batch_size = 8
    config.lock()
    return config

  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(clip_lib.NAMED_SPECS, "clip_vit_tiny", SPEC)
    yield fill, content, feats


def test_nus_wide_prepares_and_trains_on_extracted_clip_tokens(nus_clip, tmp_path):
  """The dataset stores the patch tokens [N, D] and the class embedding as the scene; BiAM
  trains and evaluates on it with CLIP label embeddings
  (configs/biam_nus_wide.py:backbone=<a CLIP release>)."""
  from mlzsl_jax import train  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.data import get_dataset, nus_wide  # pylint: disable=import-outside-toplevel

  fill, content, feats = nus_clip
  config = load_config("biam_nus_wide", "backbone=clip_vit_tiny")
  config.unlock()
  config.model.channels, config.model.heads, config.model.out_dim = 8, 2, 16
  fill(config)
  with pytest.warns(UserWarning, match="official release has"):
    source = get_dataset(config.data)
  meta = source.meta
  assert (meta.grid_shape, meta.feature_dim, meta.scene_dim) == ((4, 4), 24, 24)
  assert meta.embedding("clip").shape == (1006, 24)
  assert source.builder.data_dir.endswith(os.path.join("nus_wide", "clip_vit_tiny",
                                                       nus_wide.DATA_VERSION))
  stored = {ex["image_id"].decode(): ex for ex in source.as_tf_dataset("test").as_numpy_iterator()}
  tokens = dict(run_lib.iter_features(str(feats)))
  key = content["test_names"][0]
  np.testing.assert_array_equal(stored[key]["features"], tokens[key]["regions"].astype(np.float16))
  np.testing.assert_array_equal(stored[key]["scene"], tokens[key]["scene"].astype(np.float16))
  np.testing.assert_array_equal(stored[key]["labels"], content["test_labels"][0])

  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0.0 <= result["zsl"]["map"] <= 1.0 and np.isfinite(result["gzsl"]["map"])

  # predict: a photo of another size, free text, the workdir's CLIP backbone and templates
  from mlzsl_jax import predict  # pylint: disable=import-outside-toplevel
  photo = tmp_path / "photo.jpg"
  Image.fromarray(np.random.default_rng(5).integers(0, 256, (61, 90, 3), dtype=np.uint8)
                  ).save(photo)
  out = predict.predict(config, str(tmp_path / "run"), [str(photo)],
                        ["a red car", "sky", "dame’s rocket"], top_k=2,
                        out_dir=str(tmp_path / "maps"))
  assert [len(r["top"]) for r in out] == [2] and os.path.exists(out[0]["figure"])
  best = max(out[0]["scores"], key=out[0]["scores"].get)
  assert out[0]["top"][0][0] == best


def test_glove_workdir_names_the_unknown_word():
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mlzsl_jax import predict  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({"data": {"name": "nus_wide", "embedding": "glove"}})
  with pytest.raises(ValueError, match=r"label name 'scuba diving': not one of the dataset's "
                     r"label names.*use a CLIP workdir"):
    predict.embed_label_names(config, ["scuba diving"])


def test_predict_with_clip_zero_shot_needs_no_workdir(setup, tmp_path):
  """Photos of any size and any words, no workdir and no dataset: the scores are the loop
  reference's on the CLIP tower outputs and the ensemble text embeddings; one region-map PNG
  per photo."""
  from mlzsl_jax import predict  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.backbones import clip_text, clip_tokenizer  # pylint: disable=import-outside-toplevel
  _, weights, _ = setup
  vocab = tmp_path / clip_tokenizer.OPEN_CLIP_VOCAB
  ref.write_synthetic_vocab(vocab)
  config = load_config("clip_zero_shot", "")
  config.unlock()
  config.data.clip_weights, config.data.clip_vocab = str(weights), str(vocab)
  config.lock()
  photos = []
  for i, size in enumerate(((200, 300), (50, 41))):
    photos.append(str(tmp_path / f"p{i}.jpg"))
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
                    ).save(photos[-1])
  names = ["a dog on a beach", "sunset", "snow"]
  out = predict.predict(config, None, photos, names, top_k=3, out_dir=str(tmp_path / "maps"))
  model = clip_weights.load_clip(weights)
  emb = clip_text.label_embeddings(names, model, clip_tokenizer.load_tokenizer(
      str(weights), str(vocab)), "ensemble")
  for result, photo in zip(out, photos):
    image = model.encode_image(clip_preprocess.load_image(photo, 32)[None])
    want = loop_zero_shot(np.asarray(image["tokens"], np.float64),
                          np.asarray(image["class"], np.float64), emb.astype(np.float64),
                          "mkt", 18)[0]
    np.testing.assert_allclose([result["scores"][n] for n in names], want, rtol=1e-4,
                               atol=1e-6)
    assert os.path.exists(result["figure"])
  from mlzsl_jax.models import fast0tag  # pylint: disable=import-outside-toplevel
  config.unlock()
  config.model = fast0tag.model_config()  # a model with parameters needs its workdir
  with pytest.raises(ValueError, match="has trained parameters; give its --workdir"):
    predict.predict(config, None, photos, names)


def loop_zero_shot(tokens, scene, label_emb, mode, top_k, temperature=100.0):
  """clip_zero_shot's scores [B, L] with loops (shared/spec-independent reference)."""
  def unit(v):
    return v / np.linalg.norm(v)
  b, n, _ = tokens.shape
  out = np.zeros((b, len(label_emb)))
  for i in range(b):
    g = np.array([unit(scene[i]) @ unit(e) for e in label_emb])
    loc = []
    for e in label_emb:
      cos = sorted((unit(tokens[i, r]) @ unit(e) for r in range(n)), reverse=True)
      loc.append(np.mean(cos[:min(top_k, n)]))
    loc = np.array(loc)
    if mode == "global":
      out[i] = g
    elif mode == "local":
      out[i] = loc
    else:
      sg = np.exp(temperature * g - np.max(temperature * g))
      sl = np.exp(temperature * loc - np.max(temperature * loc))
      out[i] = 0.5 * sg / sg.sum() + 0.5 * sl / sl.sum()
  return out


@pytest.mark.parametrize("mode", ["global", "local", "mkt"])
def test_clip_zero_shot_scores_match_loops(mode):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.models import clip_zero_shot  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(2)
  tokens, scene = rng.normal(size=(3, 7, 5)), rng.normal(size=(3, 5))
  label_emb = rng.normal(size=(4, 5))
  config = clip_zero_shot.model_config()
  config.mode, config.top_k, config.temperature = mode, 3, 2.0
  model = clip_zero_shot.build(config, feature_dim=5, emb_dim=5, grid_shape=(1, 7),
                               scene_dim=5, rngs=nnx.Rngs(0))
  got = model(tokens.astype(np.float32), label_emb.astype(np.float32),
              scene.astype(np.float32))["scores"]
  np.testing.assert_allclose(np.asarray(got), loop_zero_shot(tokens, scene, label_emb, mode, 3,
                                                             2.0), rtol=1e-5, atol=1e-6)
  assert not nnx.state(model, nnx.Param)  # nothing to train
  if mode != "local":  # the class embedding is needed, and must be there
    with pytest.raises(ValueError, match="needs the class embedding as the scene feature"):
      clip_zero_shot.build(config, feature_dim=5, emb_dim=5, grid_shape=(1, 7), scene_dim=0,
                           rngs=nnx.Rngs(0))


def test_clip_zero_shot_evaluates_untrained_and_every_model_trains(nus_clip, tmp_path):
  """``main evaluate`` of clip_zero_shot needs no checkpoint and scores every test image as
  the loop reference does; every other model trains on the same CLIP dataset through
  configs/clip_models.py; one table holds them all."""
  from mlzsl_jax import evaluate, restore, train  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.data import get_dataset  # pylint: disable=import-outside-toplevel

  fill, _, _ = nus_clip
  config = fill(load_config("clip_models", "model=clip_zero_shot,backbone=clip_vit_tiny"))
  result = restore.evaluate(config, str(tmp_path / "zero_shot"))
  assert (tmp_path / "zero_shot" / "results.json").exists()
  source, trainer, state, step = restore.restore(config, str(tmp_path / "zero_shot"))
  assert step == 0 and not trainer.has_parameters
  zsl, gzsl, labels = evaluate.collect_scores(trainer, source, state, config)
  batch = list(source.as_tf_dataset("test").as_numpy_iterator())
  tokens = np.stack([ex["features"] for ex in batch]).astype(np.float64)
  scene = np.stack([ex["scene"] for ex in batch]).astype(np.float64)
  emb = get_dataset(config.data).meta.embedding("clip").astype(np.float64)
  want = loop_zero_shot(tokens, scene, emb, "mkt", config.model.top_k)
  np.testing.assert_allclose(np.asarray(gzsl), want, rtol=1e-4, atol=1e-6)
  assert 0.0 <= result["zsl"]["map"] <= 1.0

  # Every other model trains on the same CLIP dataset (configs/clip_models.py), and
  # compare_models.py's table holds them all, zero-shot CLIP included.
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
  import compare_models  # pylint: disable=import-outside-toplevel
  workdirs = [str(tmp_path / "zero_shot")]
  for model in ("lesa", "attention_per_label", "fast0tag", "conse", "labelem", "dem"):
    config = fill(load_config("clip_models", f"model={model},backbone=clip_vit_tiny,smoke=True"))
    config.unlock()
    config.train.num_epochs = 1
    config.train.num_steps = 2 if config.train.num_steps else 0  # LESA counts steps
    config.data.train_split = "train"  # LESA's lesa_train keeps 5000 images for validation
    config.eval.val_split, config.eval.val_steps = "", ()
    config.eval.test_checkpoint = "latest"
    if config.optimizer.schedule == "val_plateau":  # LESA's lr follows validation
      config.optimizer.schedule = "constant"
    config.lock()
    trained = train.train_and_evaluate(config, str(tmp_path / model))
    assert np.isfinite(trained["gzsl"]["map"]), model
    workdirs.append(str(tmp_path / model))
  table = compare_models.comparison_table(workdirs, 0)
  for model in ("zero_shot", "lesa", "attention_per_label", "fast0tag", "conse", "labelem",
                "dem"):
    assert f"| {model} |" in table, table


def test_nus_wide_extracted_errors(setup, tmp_path, monkeypatch):
  from mlzsl_jax.data import extracted, nus_wide  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(clip_lib.NAMED_SPECS, "clip_vit_tiny", SPEC)
  with pytest.raises(ValueError, match=r"data.backbone='clip_vit_tiny' is not prepared under .*"
                     r"give data.manual_dir .* and data.features_dir"):
    nus_wide.prepare("", str(tmp_path), backbone="clip_vit_tiny")
  with pytest.raises(ValueError, match=r"data.backbone='resnet'"):
    extracted.backbone_option({"backbone": "resnet"})
  with pytest.raises(ValueError, match=r"scene feature of extracted features is their class"):
    nus_wide.prepare("", str(tmp_path), scene="vgg19", backbone="clip_vit_tiny")


def test_open_images_prepares_on_extracted_clip_tokens(setup, tmp_path, monkeypatch):
  """The official label files and label-only h5 files (their -features entries deleted), the
  images extracted with CLIP from one flat folder: every stored example has the extracted
  tokens, the class embedding as scene, and the official labels."""
  import test_open_images as oi_files  # the official-layout writer of the Open Images tests
  from mlzsl_jax.data import get_dataset, open_images  # pylint: disable=import-outside-toplevel

  _, weights, _ = setup
  monkeypatch.setitem(clip_lib.NAMED_SPECS, "clip_vit_tiny", SPEC)
  official = oi_files.write_official(tmp_path)
  for path in official["manual"].rglob("*.h5"):
    with h5py.File(path, "a") as f:
      for key in [k for k in f if k.endswith("-features")]:
        del f[key]
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(1)
  for (_, _), entries in official["files"].items():
    for name in entries:
      Image.fromarray(rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(images / name)
  feats = tmp_path / "feats"
  run_lib.extract_folder(str(images), str(feats), str(weights), backbone="clip_vit",
                         batch_size=8, progress=False)
  config = oi_files.data_config(official["manual"], tmp_path / "tfds")
  config.backbone, config.features_dir = "clip_vit_tiny", str(feats)
  source = get_dataset(config)
  assert (source.meta.grid_shape, source.meta.feature_dim, source.meta.scene_dim) == (
      (4, 4), 24, 24)
  assert os.path.join("open_images", "clip_vit_tiny") in source.builder.data_dir
  tokens = {key: value for key, value in run_lib.iter_features(str(feats))}
  for split in ("train", "test"):
    want = oi_files.expected_examples(official, split)
    got = list(source.as_tf_dataset(split).as_numpy_iterator())
    assert [g["image_id"].decode() for g in got] == [w["image_id"] for w in want]
    for g, w in zip(got, want):
      name = w["image_id"]
      np.testing.assert_array_equal(g["labels"], w["labels"])
      np.testing.assert_array_equal(g["features"], tokens[name]["regions"].astype(np.float16))
      np.testing.assert_array_equal(g["scene"], tokens[name]["scene"].astype(np.float16))
  with pytest.raises(ValueError, match=r"data.backbone='clip_vit_tiny' is not prepared"):
    open_images.prepare("", str(tmp_path / "elsewhere"), backbone="clip_vit_tiny")
