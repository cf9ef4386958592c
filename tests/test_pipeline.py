"""Input pipeline: deterministic order from (seed, epoch), exact resume at any step, the
positive filter, seen-label selection, padding of the last eval batch, and input checks."""

import numpy as np
import pytest
import tensorflow as tf

from mlzsl_jax.data import pipeline
from mlzsl_jax.data.source import DatasetMeta

N, L, R, C = 40, 6, 4, 3


class ArraySource:
  """A DatasetSource over in-memory arrays (tests only)."""

  def __init__(self, features, labels):
    self.features, self.labels = features, labels
    self.meta = DatasetMeta(name="arrays", label_names=tuple(map(str, range(L))),
                            embeddings={}, grid_shape=(2, 2), feature_dim=C, scene_dim=0,
                            num_examples={"train": len(labels)})

  def as_tf_dataset(self, split):
    ids = np.array([f"img{i}" for i in range(len(self.labels))])
    return tf.data.Dataset.from_tensor_slices(
        {"features": self.features, "labels": self.labels, "image_id": ids})


def make_source(seed=0):
  rng = np.random.default_rng(seed)
  feats = np.arange(N, dtype=np.float16)[:, None, None] * np.ones((1, R, C), np.float16)
  labels = rng.choice([-1, 1], size=(N, L)).astype(np.int8)
  labels[:5, :4] = -1  # five images with no positive seen label (seen = 0..3)
  return ArraySource(feats, labels)


SEEN = (0, 1, 2, 3)


def take(source, start_step, n, seed=3, drop=True):
  steps_per_epoch = pipeline.count_train_examples(source, "train", SEEN, drop) // 4
  it = pipeline.train_batches(source, split="train", seen_ids=SEEN, global_batch=4, seed=seed,
                              start_step=start_step, steps_per_epoch=steps_per_epoch,
                              shuffle_buffer=64, drop_without_positive=drop, data_shards=4)
  return [next(it) for _ in range(n)], steps_per_epoch


def ids_of(batches):
  return [b["features"][:, 0, 0].astype(int).tolist() for b in batches]


def test_order_is_a_function_of_seed_and_epoch_and_resume_is_exact():
  source = make_source()
  full, spe = take(source, 0, 25)
  assert spe == (N - 5) // 4
  for start in (1, spe - 1, spe, spe + 3):
    resumed, _ = take(source, start, 25 - start)
    assert ids_of(resumed) == ids_of(full[start:])
  # Each epoch is a permutation of a different order; a different seed changes it.
  assert ids_of(full[:spe]) != ids_of(full[spe:2 * spe])
  other, _ = take(source, 0, spe, seed=4)
  assert ids_of(other) != ids_of(full[:spe])


def test_positive_filter_and_seen_columns():
  source = make_source()
  batches, spe = take(source, 0, 8)
  for b in batches:
    assert b["labels"].shape == (4, len(SEEN))
    assert (b["labels"] == 1).any(axis=1).all()
    for row, img in zip(b["labels"], b["features"][:, 0, 0].astype(int)):
      np.testing.assert_array_equal(row, source.labels[img, list(SEEN)])
  seen_imgs = sorted(i for b in batches[:spe] for i in b["features"][:, 0, 0].astype(int))
  assert not set(seen_imgs) & set(range(5))
  assert len(set(seen_imgs)) == len(seen_imgs)


def test_eval_batches_cover_every_example_once_with_padding():
  source = make_source()
  got = list(pipeline.eval_batches(source, split="test", global_batch=16, data_shards=8))
  assert [n for _, n in got] == [16, 16, 8]
  assert all(b["features"].shape == (16, R, C) for b, _ in got)
  ids = np.concatenate([b["features"][:n, 0, 0] for b, n in got]).astype(int)
  np.testing.assert_array_equal(ids, np.arange(N))
  labels = np.concatenate([b["labels"][:n] for b, n in got])
  np.testing.assert_array_equal(labels, source.labels)


def test_nan_features_and_wrong_shapes_are_clear_errors():
  source = make_source()
  source.features = source.features.copy()
  source.features[7, 2, 1] = np.nan
  with pytest.raises(ValueError, match=r"field 'features': NaN/inf values in 1 example"):
    list(pipeline.eval_batches(source, split="test", global_batch=8, data_shards=1))
  bad = make_source()
  bad.features = np.zeros((N, R, C + 1), np.float16)
  with pytest.raises(ValueError, match=r"field 'features': expected \[batch, 4, 3\], got"):
    list(pipeline.eval_batches(bad, split="test", global_batch=8, data_shards=1))
  bad = make_source()
  bad.labels = bad.labels.copy()
  bad.labels[3, 2] = 5
  with pytest.raises(ValueError, match="field 'labels': states must be 1/-1/0, got \\[5\\]"):
    list(pipeline.eval_batches(bad, split="test", global_batch=8, data_shards=1))
  with pytest.raises(ValueError, match="eval.batch_size=12 must be a multiple"):
    list(pipeline.eval_batches(make_source(), split="test", global_batch=12, data_shards=8))


@pytest.mark.parametrize("drop, max_positive", [(True, 2), (False, 3), (True, 0)])
def test_positive_count_filters(drop, max_positive):
  """train.max_positive_labels (BiAM Open Images keeps images with <= 40 positives) and the
  no-positive filter, against a loop over the images."""
  source = make_source(seed=5)
  keep = []
  for i in range(N):
    positives = sum(1 for j in SEEN if source.labels[i, j] > 0)
    ok = (positives > 0 or not drop) and (max_positive <= 0 or positives <= max_positive)
    if ok:
      keep.append(i)
  assert pipeline.count_train_examples(source, "train", SEEN, drop,
                                       max_positive=max_positive) == len(keep)
  spe = len(keep) // 4
  it = pipeline.train_batches(source, split="train", seen_ids=SEEN, global_batch=4, seed=1,
                              start_step=0, steps_per_epoch=spe, shuffle_buffer=64,
                              drop_without_positive=drop, data_shards=4,
                              max_positive=max_positive)
  got = sorted(i for b in (next(it) for _ in range(spe)) for i in ids_of([b])[0])
  assert set(got) <= set(keep) and len(got) == spe * 4
  assert 0 < len(keep) < N or (not drop and max_positive <= 0)
