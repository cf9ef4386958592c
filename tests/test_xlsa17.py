"""xlsa17 builder: small files in the exact official layout, every stored field, every bad file.

The official files (xlsa17.zip, Xian et al. GBU), as ``scipy.io.loadmat`` returns them:
  res101.mat:     features float64 [2048, N]; labels uint8 [N, 1] (1-based); image_files
                  object [N, 1], each array(['/BS/xian/.../antelope_10001.jpg'], dtype='<U..')
  att_splits.mat: allclasses_names object [C, 1], each array(['antelope'], dtype='<U..');
                  att float64 [A, C] (unit columns); original_att float64 [A, C] (raw, may
                  hold -1); trainval_loc / test_seen_loc / test_unseen_loc / train_loc /
                  val_loc uint16 [n, 1] (1-based image columns)
"""

from __future__ import annotations

import os
import pathlib

import ml_collections
import numpy as np
import pytest
import scipy.io

import tfds_buckets
from tfds_buckets import through_disk_buckets

from mlzsl_jax.data import get_dataset, xlsa17

NAMES = ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian"]
UNSEEN_IDS = (1, 3)  # 1-based; seen = 2, 4, 5 -> our order [2, 4, 5, 1, 3]
NUM_IMAGES, NUM_ATTS, PER_CLASS = 40, 6, 8


def official_arrays(seed: int = 0) -> tuple[dict, dict]:
  """(res101 dict, att_splits dict) in the official layout: 5 classes, 40 images."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(1, 6), PER_CLASS))  # 1-based class per image
  features = np.abs(rng.normal(size=(xlsa17.FEATURE_DIM, NUM_IMAGES))) * 2.0
  image_files = np.empty((NUM_IMAGES, 1), dtype=object)
  for i, c in enumerate(labels):
    name = NAMES[c - 1]
    image_files[i, 0] = (f"/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/{name}/"
                         f"{name}_{10001 + i}.jpg")
  trainval, test_seen, test_unseen = [], [], []
  for c in range(1, 6):
    images = rng.permutation(np.where(labels == c)[0] + 1)  # 1-based locations
    if c in UNSEEN_IDS:
      test_unseen += list(images)
    else:
      trainval += list(images[:5])
      test_seen += list(images[5:7])  # images[7] is in no split (allowed)
  original = rng.uniform(0, 100, size=(NUM_ATTS, 5)).round(2)
  original[0, 0] = -1.0  # AwA's original_att has -1 entries
  att = original / np.linalg.norm(original, axis=0, keepdims=True)
  names = np.empty((5, 1), dtype=object)
  names[:, 0] = NAMES

  def loc(values):
    return rng.permutation(np.asarray(values)).astype(np.uint16)[:, None]

  trainval_loc = loc(trainval)
  res = {"features": features, "labels": labels.astype(np.uint8)[:, None],
         "image_files": image_files}
  splits = {"allclasses_names": names, "att": att, "original_att": original,
            "trainval_loc": trainval_loc, "test_seen_loc": loc(test_seen),
            "test_unseen_loc": loc(test_unseen), "train_loc": trainval_loc[:10],
            "val_loc": trainval_loc[10:]}
  return res, splits


def write_files(folder: pathlib.Path, res: dict, splits: dict) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(folder / xlsa17.FEATURE_FILE, res)
  scipy.io.savemat(folder / xlsa17.SPLITS_FILE, splits, do_compression=True)
  return folder


def data_config(manual_dir, data_dir, subset="AWA2") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="xlsa17", manual_dir=str(manual_dir),
                                        subset=subset, data_dir=str(data_dir)))


def assert_nothing_prepared(data_dir: pathlib.Path, untouched: bool = True) -> None:
  """No prepared (or half-written) dataset under ``data_dir``; with ``untouched``, no file at
  all (the factory validates the files before tfds creates anything)."""
  tfds_buckets.assert_nothing_prepared(xlsa17.Xlsa17(config="AWA2", data_dir=str(data_dir)),
                                       data_dir, (xlsa17.DATA_VERSION,), untouched)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The dataset built once from the official-layout files (manual_dir = parent folder)."""
  root = tmp_path_factory.mktemp("xlsa17")
  res, splits = official_arrays()
  write_files(root / "data" / "AWA2", res, splits)
  data_dir = root / "tfds"
  # Every record through tfds' disk buckets (the path of a large build): one record a bucket.
  with through_disk_buckets() as bucket_sizes, pytest.warns(UserWarning,
                                                            match="official release has"):
    source = get_dataset(data_config(root / "data", data_dir))
  assert bucket_sizes and max(bucket_sizes) == 1, "keys not spread over tfds' buckets"
  return source, res, splits, root, data_dir


def test_fixture_matches_the_official_layout(tmp_path):
  """What loadmat returns for our files has the structure of the official files."""
  folder = write_files(tmp_path, *official_arrays())
  res = scipy.io.loadmat(folder / "res101.mat")
  splits = scipy.io.loadmat(folder / "att_splits.mat")
  assert res["features"].shape == (2048, NUM_IMAGES) and res["features"].dtype == np.float64
  assert res["labels"].shape == (NUM_IMAGES, 1) and res["labels"].dtype == np.uint8
  assert res["image_files"].shape == (NUM_IMAGES, 1)
  assert res["image_files"][0][0].dtype.kind == "U" and res["image_files"][0][0].shape == (1,)
  assert splits["allclasses_names"].shape == (5, 1)
  assert [n[0][0] for n in splits["allclasses_names"]] == NAMES
  assert splits["att"].shape == splits["original_att"].shape == (NUM_ATTS, 5)
  for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc"):
    assert splits[key].ndim == 2 and splits[key].shape[1] == 1 and splits[key].dtype == np.uint16


def test_examples_match_the_source_arrays(built):
  source, res, splits, _, _ = built
  order = [2, 4, 5, 1, 3]  # seen ascending, then unseen ascending (1-based ids)
  ours = {c: i for i, c in enumerate(order)}
  labels = res["labels"][:, 0].astype(int)
  locs = {s: splits[k][:, 0].astype(int) - 1 for s, k in xlsa17.LOC_KEYS.items()}
  locs["test"] = np.concatenate([locs["test_seen"], locs["test_unseen"]])
  for split in xlsa17.SPLITS:
    examples = list(source.as_tf_dataset(split).as_numpy_iterator())
    assert len(examples) == len(locs[split]) == source.meta.num_examples[split]
    for ex, index in zip(examples, locs[split]):  # the order of the *_loc vector
      assert set(ex) == {"features", "labels", "image_id"}
      assert ex["features"].dtype == np.float16 and ex["features"].shape == (1, 2048)
      np.testing.assert_array_equal(ex["features"][0],
                                    res["features"][:, index].astype(np.float16))
      want = -np.ones(5, np.int8)
      want[ours[labels[index]]] = 1
      assert ex["labels"].dtype == np.int8
      np.testing.assert_array_equal(ex["labels"], want)
      assert ex["image_id"].decode() == res["image_files"][index, 0]
  spec = source.as_tf_dataset("trainval").element_spec
  assert spec["labels"].shape == (5,) and spec["features"].shape == (1, 2048)
  assert len(locs["trainval"]) == 15 and len(locs["test"]) == 6 + 16


def test_metadata(built):
  source, res, splits, _, _ = built
  order = np.array([2, 4, 5, 1, 3])
  meta = source.meta
  assert meta.name == "xlsa17"
  assert meta.label_names == tuple(NAMES[c - 1] for c in order)
  assert meta.grid_shape == (1, 1) and meta.num_regions == 1
  assert meta.feature_dim == 2048 and meta.scene_dim == 0
  assert meta.num_examples == {"trainval": 15, "test_seen": 6, "test_unseen": 16, "test": 22}
  assert source.seen_ids == (0, 1, 2) and source.unseen_ids == (3, 4)
  assert source.original_class_ids == tuple(order)
  assert sorted(meta.embeddings) == ["att", "original_att"]
  att, original = meta.embedding("att"), meta.embedding("original_att")
  assert att.dtype == original.dtype == np.float32 and att.shape == original.shape == (5, 6)
  np.testing.assert_array_equal(att, splits["att"].T[order - 1].astype(np.float32))
  np.testing.assert_array_equal(original, splits["original_att"].T[order - 1].astype(np.float32))
  np.testing.assert_allclose(np.linalg.norm(att, axis=1), 1.0, atol=1e-6)
  assert original[order.tolist().index(1), 0] == -1.0  # raw, not normalised
  md = source.builder.info.metadata
  assert md["seen_labels"] == [0, 1, 2] and md["unseen_labels"] == [3, 4]
  assert md["image_id_source"] == "image_files" and md["subset"] == "AWA2"
  assert set(md["source_files"]) == {"res101.mat", "att_splits.mat"}


def test_reload_without_manual_dir_and_changed_files(built, tmp_path):
  source, res, splits, root, data_dir = built
  again = get_dataset(data_config("", data_dir))  # prepared: the files are not needed
  assert again.meta.label_names == source.meta.label_names
  same = get_dataset(data_config(root / "data" / "AWA2", data_dir))  # same files: accepted
  assert same.meta.num_examples == source.meta.num_examples
  changed = dict(res, features=res["features"] + 1.0)
  other = write_files(tmp_path / "changed", changed, splits)
  with pytest.raises(ValueError, match=r"res101\.mat: differs from the file"):
    get_dataset(data_config(other, data_dir))


def test_image_ids_default_to_one_based_index(tmp_path):
  res, splits = official_arrays()
  del res["image_files"]
  data = xlsa17.load_xlsa17(str(write_files(tmp_path, res, splits)))
  assert data.image_id_source == "index"
  assert data.image_ids[:3] == ("1", "2", "3") and len(data.image_ids) == NUM_IMAGES


def _bad(mutate):
  """Official arrays with ``mutate(res, splits)`` applied."""
  res, splits = official_arrays()
  mutate(res, splits)
  return res, splits


def _set(d, key, value):
  d[key] = value


def _labels(res, index, value):
  res["labels"] = res["labels"].astype(np.int64)
  res["labels"][index, 0] = value


def _nan(res, _):
  res["features"][7, 3] = np.nan


def _move_unseen_to_trainval(res, splits):
  loc = splits["test_unseen_loc"]
  splits["trainval_loc"] = np.concatenate([splits["trainval_loc"], loc[:1]])
  splits["test_unseen_loc"] = loc[1:]


def _shared_location(res, splits):
  splits["test_unseen_loc"] = np.concatenate([splits["test_unseen_loc"],
                                              splits["test_seen_loc"][:1]])


def _loc_value(key, value):
  def mutate(res, splits):
    splits[key] = splits[key].astype(np.int64)
    splits[key][0, 0] = value
  return mutate


def _seen_test_of_unseen_class(res, splits):
  # A test_unseen image listed as test_seen: its class is not a seen class.
  splits["test_seen_loc"] = np.concatenate([splits["test_seen_loc"],
                                            splits["test_unseen_loc"][:1]])
  splits["test_unseen_loc"] = splits["test_unseen_loc"][1:]


def _class_without_split(res, splits):
  # Drop every test_unseen image of class 3: it is then neither seen nor unseen.
  labels = res["labels"][:, 0]
  keep = labels[splits["test_unseen_loc"][:, 0].astype(int) - 1] != 3
  splits["test_unseen_loc"] = splits["test_unseen_loc"][keep]


BAD_CASES = {
    "no features key": (lambda r, s: r.pop("features"), r"res101\.mat: missing key 'features'"),
    "no labels key": (lambda r, s: r.pop("labels"), r"res101\.mat: missing key 'labels'"),
    "no names key": (lambda r, s: s.pop("allclasses_names"),
                     r"att_splits\.mat: missing key 'allclasses_names'"),
    "no att key": (lambda r, s: s.pop("att"), r"att_splits\.mat: missing key 'att'"),
    "no original_att key": (lambda r, s: s.pop("original_att"),
                            r"att_splits\.mat: missing key 'original_att'"),
    "no test_unseen_loc": (lambda r, s: s.pop("test_unseen_loc"),
                           r"att_splits\.mat: missing key 'test_unseen_loc'"),
    "features transposed": (lambda r, s: _set(r, "features", r["features"].T),
                            r"res101\.mat: key 'features' must have shape \[2048, N\], got "
                            r"\(40, 2048\) \(transposed"),
    "features not 2048-d": (lambda r, s: _set(r, "features", r["features"][:1000]),
                            r"res101\.mat: key 'features' must have shape \[2048, N\], got "
                            r"\(1000, 40\)"),
    "features NaN": (_nan, r"res101\.mat: key 'features' has NaN/inf values in 1 image "
                           r"column\(s\); first: image column 4"),
    "features beyond fp16": (lambda r, s: r["features"].__setitem__((0, 5), 1e6),
                             r"res101\.mat: key 'features' has values beyond the float16"),
    "label too large": (lambda r, s: _labels(r, 3, 6),
                        r"res101\.mat: key 'labels': class ids .* must be in 1\.\.5 "
                        r"\(1-based\), got 6 at entry 3"),
    "label zero": (lambda r, s: _labels(r, 0, 0), r"res101\.mat: key 'labels'.*got 0 at entry 0"),
    "labels short": (lambda r, s: _set(r, "labels", r["labels"][:39]),
                     r"res101\.mat: key 'labels' must have 40 entries"),
    "loc too large": (_loc_value("trainval_loc", 41),
                      r"att_splits\.mat: key 'trainval_loc': image locations .* must be in "
                      r"1\.\.40 \(1-based\), got 41"),
    "loc zero": (_loc_value("test_seen_loc", 0),
                 r"att_splits\.mat: key 'test_seen_loc'.*must be in 1\.\.40.*got 0"),
    "loc in two splits": (_shared_location,
                          r"att_splits\.mat: location \d+ appears in both 'test_seen_loc' and "
                          r"'test_unseen_loc'"),
    "loc twice in a split": (lambda r, s: _set(s, "trainval_loc", np.concatenate(
        [s["trainval_loc"], s["trainval_loc"][:1]])),
                             r"att_splits\.mat: key 'trainval_loc' lists location \d+ 2 times"),
    "seen/unseen classes overlap": (
        _move_unseen_to_trainval,
        r"att_splits\.mat: keys 'trainval_loc' and 'test_unseen_loc' share class\(es\) "
        r"[13] \('(antelope|killer\+whale)'\)"),
    "test_seen of unseen class": (_seen_test_of_unseen_class,
                                  r"att_splits\.mat: key 'test_seen_loc' has images of class"),
    "class in no split": (_class_without_split,
                          r"att_splits\.mat: class\(es\) 3 \('killer\+whale'\) of "
                          r"'allclasses_names' have no image"),
    "att transposed": (lambda r, s: _set(s, "att", s["att"].T),
                       r"att_splits\.mat: key 'att' must have shape \[A, 5\].*got \(5, 6\) "
                       r"\(transposed"),
    "original_att transposed": (lambda r, s: _set(s, "original_att", s["original_att"].T),
                                r"att_splits\.mat: key 'original_att' must have shape \[A, 5\]"),
    "att not unit norm": (lambda r, s: _set(s, "att", s["att"] * 2),
                          r"att_splits\.mat: key 'att' must have unit-L2-norm columns"),
    "att NaN": (lambda r, s: s["att"].__setitem__((2, 4), np.nan),
                r"att_splits\.mat: key 'att' has NaN/inf values .* class column 5"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_fail_clearly_and_leave_nothing(case, tmp_path):
  mutate, message = BAD_CASES[case]
  folder = write_files(tmp_path / "AWA2", *_bad(mutate))
  with pytest.raises(ValueError, match=message):
    get_dataset(data_config(folder, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


def test_failed_tfds_build_leaves_nothing(tmp_path):
  """Driving tfds directly (no pre-validation): the error comes from inside tfds' build, whose
  temporary folder is removed."""
  folder = write_files(tmp_path / "AWA2", *_bad(_shared_location))
  builder = xlsa17.Xlsa17(config="AWA2", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"att_splits\.mat: location \d+ appears in both"):
    builder.download_and_prepare(download_config=xlsa17.tfds.download.DownloadConfig(
        manual_dir=str(folder), try_download_gcs=False))
  assert_nothing_prepared(tmp_path / "tfds", untouched=False)


def test_missing_file_and_folder(tmp_path):
  folder = write_files(tmp_path / "AWA2", *official_arrays())
  os.remove(folder / "res101.mat")
  with pytest.raises(FileNotFoundError, match=r"missing file\(s\) \[.*res101\.mat'\]"):
    get_dataset(data_config(folder, tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match=r"data\.manual_dir: folder .*nowhere"):
    get_dataset(data_config(tmp_path / "nowhere", tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("name", ["res101.mat", "att_splits.mat"])
def test_truncated_or_corrupt_file(damage, name, tmp_path):
  folder = write_files(tmp_path / "AWA2", *official_arrays())
  path = folder / name
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2] if damage == "truncate" else b"not a mat file" * 50)
  with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: (cannot read as a "
                                       rf"MATLAB \.mat file|missing key)"):
    get_dataset(data_config(folder, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


def test_config_errors(tmp_path):
  folder = write_files(tmp_path / "AWA2", *official_arrays())
  with pytest.raises(ValueError, match=r"data\.manual_dir: required to build xlsa17 AWA2"):
    get_dataset(data_config("", tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"data\.subset: expected one of .*got 'FLO'"):
    get_dataset(data_config(folder, tmp_path / "tfds", subset="FLO"))
  with pytest.raises(ValueError, match=r"xlsa17: unknown split 'train'"):
    xlsa17.check_split("train")
  assert_nothing_prepared(tmp_path / "tfds")


def test_dem_trains_and_evaluates_on_xlsa17_through_the_cli(built, tmp_path):
  """configs/dem_xlsa17.py end to end on the official-layout files: single-label table."""
  import json
  import subprocess
  import sys
  _, _, _, root, data_dir = built
  repo = pathlib.Path(__file__).resolve().parents[1]
  cmd = [sys.executable, "-m", "mlzsl_jax.main", "train",
         f"--config={repo / 'configs' / 'dem_xlsa17.py'}:subset=AWA2",
         f"--workdir={tmp_path / 'run'}", f"--config.data.manual_dir={root / 'data'}",
         f"--config.data.data_dir={data_dir}", "--config.data.seen_labels=(0, 1, 2)",
         "--config.data.unseen_labels=(3, 4)", "--config.model.hidden=16",
         "--config.train.batch_size=8", "--config.train.num_epochs=3",
         "--config.eval.batch_size=8"]
  out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ZSL T1" in out.stdout and "Hubness" in out.stdout
  result = json.loads((tmp_path / "run" / "results.json").read_text())
  assert result["protocol"] == "single_label" and result["num_images"] == 2 * 3 + 2 * 8
  assert 0.0 <= result["zsl"]["top1"] <= 1.0 and "h" in result["gzsl"]
