"""``multilabel_folder``: a user's folder of images + a label CSV becomes a dataset that
trains, evaluates and predicts (tiny random CLIP in the OpenAI layout, synthetic BPE); bad
files are one line naming the file and row, and leave nothing prepared."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

import clip_reference as ref
from mlzsl_jax.backbones import clip as clip_lib
from mlzsl_jax.backbones import clip_tokenizer, safetensors_io
from mlzsl_jax.data import get_dataset, multilabel_folder as mf
from mlzsl_jax.extract import run as run_lib

SPEC = clip_lib.ClipSpec(clip_lib.VisionSpec(width=64, layers=1, heads=2, patch=8,
                                             image_size=32),
                         clip_lib.TextSpec(width=64, layers=1, heads=2), embed_dim=24)
NAMES = ["dog", "cat", "scuba diving", "Dame’s rocket", "boat", "sky"]
ROWS = [("a/1.jpg", "dog|sky"), ("a/2.jpg", "cat"), ("b/3.png", "boat|sky|dog"),
        ("b/4.jpg", "scuba diving"), ("5.jpg", "Dame’s rocket|cat"), ("6.jpg", "sky"),
        ("a/7.jpg", "dog|boat"), ("b/8.jpg", "cat|sky"), ("9.jpg", "dog"), ("10.jpg", "boat")]


def write_folder(root, rows=ROWS, names=NAMES):
  rng = np.random.default_rng(0)
  for image, _ in rows:
    path = root / "images" / image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 50, 3), dtype=np.uint8)).save(path)
  (root / "label_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
  (root / "labels.csv").write_text("image,labels\n" + "".join(f"{i},{l}\n" for i, l in rows),
                                   encoding="utf-8")
  return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = write_folder(tmp_path_factory.mktemp("own"))
  weights = root / "clip.safetensors"
  safetensors_io.write_safetensors(weights, ref.random_state_dict(SPEC))
  ref.write_synthetic_vocab(root / clip_tokenizer.OPEN_CLIP_VOCAB)
  feats = root / "feats"
  run_lib.extract_folder(str(root / "images"), str(feats), str(weights), backbone="clip_vit",
                         batch_size=8, progress=False)
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(clip_lib.NAMED_SPECS, "clip_vit_tiny", SPEC)
    yield root, weights, feats


def config_for(root, weights, feats, data_dir, model="biam", **data):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(
      "own_data", os.path.join(os.path.dirname(__file__), "..", "configs", "own_data.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"model={model},backbone=clip_vit_tiny,smoke=True,k=2")
  c.data.manual_dir, c.data.features_dir = str(root), str(feats)
  c.data.clip_weights, c.data.data_dir = str(weights), str(data_dir)
  c.data.unseen = "cat|boat"
  for k, v in data.items():
    c.data[k] = v
  return c


def test_folder_trains_evaluates_and_predicts(folder, tmp_path):
  from mlzsl_jax import predict, restore, train  # pylint: disable=import-outside-toplevel
  root, weights, feats = folder
  config = config_for(root, weights, feats, tmp_path / "tfds")
  source = get_dataset(config.data)
  meta = source.meta
  assert meta.label_names == ("dog", "scuba diving", "Dame’s rocket", "sky", "cat", "boat")
  assert meta.default_split == ((0, 1, 2, 3), (4, 5))
  assert (meta.num_examples["train"], meta.num_examples["test"]) == (8, 2)
  assert meta.embedding("clip").shape == (6, 24)
  tokens = dict(run_lib.iter_features(str(feats)))
  ids = {n: i for i, n in enumerate(meta.label_names)}
  rows = dict(ROWS)
  for split in ("train", "test"):
    for ex in source.as_tf_dataset(split).as_numpy_iterator():
      image = ex["image_id"].decode()
      want = -np.ones(6, np.int8)
      want[[ids[n] for n in rows[image].split("|")]] = 1
      np.testing.assert_array_equal(ex["labels"], want)
      key = image.replace("/", "_")
      np.testing.assert_array_equal(ex["features"], tokens[key]["regions"].astype(np.float16))
      np.testing.assert_array_equal(ex["scene"], tokens[key]["scene"].astype(np.float16))
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(result["gzsl"]["map"]) and "f1@2" in result["zsl"]
  again = restore.evaluate(config, str(tmp_path / "run"))
  assert again["gzsl"]["map"] == pytest.approx(result["gzsl"]["map"])
  out = predict.predict(config, str(tmp_path / "run"), [str(root / "images" / "6.jpg")],
                        ["sky", "a snowy mountain"], top_k=1, out_dir=str(tmp_path / "maps"))
  assert len(out[0]["top"]) == 1 and os.path.exists(out[0]["figure"])
  # the same folder with a split file and JSON-lines labels
  (root / "split.csv").write_text("".join(f"{i},{'test' if n % 3 == 0 else 'train'}\n"
                                          for n, (i, _) in enumerate(ROWS)))
  (root / "labels.jsonl").write_text("".join(
      '{"image": "%s", "labels": [%s]}\n' % (i, ", ".join(f'"{x}"' for x in l.split("|")))
      for i, l in ROWS), encoding="utf-8")
  index = mf.load_index(config_for(root, weights, feats, tmp_path / "t2",
                                   split_file="split.csv", labels_file="labels.jsonl").data)
  assert index.images["test"] == ("a/1.jpg", "b/4.jpg", "a/7.jpg", "10.jpg")


def _mutate(root, labels=None, names=None, unseen=None):
  if labels is not None:
    (root / "labels.csv").write_text(labels, encoding="utf-8")
  if names is not None:
    (root / "label_names.txt").write_text(names, encoding="utf-8")
  return unseen


CASES = {
    "unknown label": (dict(labels="a/1.jpg,dog|horse\n"),
                      r"labels.csv, row 1: label 'horse' of image 'a/1.jpg' is not in the label"),
    "duplicate image": (dict(labels="a/1.jpg,dog\n6.jpg,sky\na/1.jpg,cat\n"),
                        r"labels.csv, row 3: image 'a/1.jpg' listed twice \(first at row 1\)"),
    "no label": (dict(labels="a/1.jpg,dog\n6.jpg,\n"), r"labels.csv, row 2: image '6.jpg' has "
                                                       r"no label"),
    "missing image": (dict(labels="a/1.jpg,dog\nnope.jpg,sky\n"),
                      r"labels.csv: image 'nope.jpg' \(row 2 of the images listed\) is missing"),
    "unknown unseen": (dict(unseen="cat|zebra"), r"data.unseen: unseen label 'zebra' is not in"),
    "bad row": (dict(labels="a/1.jpg,dog,sky\n"), r"labels.csv, row 1: expected 2 fields"),
    "duplicate name": (dict(names="dog\ncat\ndog\n"), r"label_names.txt, row 3: label 'dog' "
                                                     r"listed twice"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_files_are_one_line_and_leave_nothing(folder, tmp_path, case):
  import shutil  # pylint: disable=import-outside-toplevel
  root, weights, feats = folder
  copy = tmp_path / "own"
  shutil.copytree(root / "images", copy / "images")
  write_folder(copy, rows=[], names=NAMES)
  (copy / "labels.csv").write_text("".join(f"{i},{l}\n" for i, l in ROWS), encoding="utf-8")
  change, match = CASES[case]
  unseen = _mutate(copy, **change)
  config = config_for(copy, weights, feats, tmp_path / "tfds")
  if unseen:
    config.data.unseen = unseen
  with pytest.raises(ValueError, match=match) as error:
    get_dataset(config.data)
  assert "\n" not in str(error.value)
  assert not [p for p in (tmp_path / "tfds").rglob("*") if p.is_file()]


def test_image_not_extracted_is_named(folder, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  root, weights, feats = folder
  copy = tmp_path / "own"
  shutil.copytree(root, copy, ignore=shutil.ignore_patterns("feats", "*.jsonl", "split.csv"))
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(copy / "images" / "new.jpg")
  with open(copy / "labels.csv", "a", encoding="utf-8") as f:
    f.write("new.jpg,dog\n")
  config = config_for(copy, weights, feats, tmp_path / "tfds")
  with pytest.raises(ValueError, match=r"labels.csv: image 'new.jpg' \(row 11 of the images "
                     r"listed\) was not extracted"):
    get_dataset(config.data)
  assert not [p for p in (tmp_path / "tfds").rglob("*") if p.is_file()]
