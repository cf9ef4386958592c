"""Open Images v4: the official-protocol metrics (loop reference) and the builder (official
layout files written here, every field of every example, streaming, bad files).

Metrics reference: a literal NumPy transcription, with explicit loops, of BiAM HEAD
``evaluate_openimages.py`` (the SEEN / ZSL / GZSL sections) and ``util_openimages.compute_AP``
/ ``compute_F1`` ('overall'), written independently of mlzsl_jax/metrics_open_images.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlzsl_jax import metrics
from mlzsl_jax import metrics_open_images as moi

# ----------------------------------------------------------------------- metrics: reference


def ref_compute_ap(pred: np.ndarray, lab: np.ndarray) -> np.ndarray:
  """util_openimages.compute_AP, loop by loop: for each column, the rows annotated for it,
  then every entry with |state| == 1 of those rows, ranked by score (tie-free inputs)."""
  n, c = lab.shape
  ap = np.zeros(c)
  for j in range(c):
    block_scores, block_pos = [], []
    for i in range(n):
      if lab[i, j] == 0:
        continue
      for col in range(c):
        if abs(lab[i, col]) == 1:
          block_scores.append(pred[i, col])
          block_pos.append(lab[i, col] > 0)
    if sum(block_pos) == 0:
      continue
    order = sorted(range(len(block_scores)), key=lambda t: -block_scores[t])
    tp, fp, total = 0, 0, 0.0
    for t in order:
      if block_pos[t]:
        tp += 1
        total += tp / (tp + fp)
      else:
        fp += 1
    ap[j] = total / sum(block_pos)
  return ap


def ref_compute_f1(pred: np.ndarray, lab: np.ndarray, k: int) -> tuple[float, float, float]:
  """util_openimages.compute_F1(..., 'overall', k): (f1, p, r); 0 for 0/0 (script: nan)."""
  n, c = lab.shape
  tp = 0
  for i in range(n):
    top = sorted(range(c), key=lambda col: -pred[i, col])[:k]
    for col in top:
      if lab[i, col] == 1:
        tp += 1
  predicted = n * k
  positives = sum(1 for i in range(n) for col in range(c) if lab[i, col] == 1)
  p = tp / predicted if predicted else 0.0
  r = tp / positives if positives else 0.0
  f1 = 2 * p * r / (p + r) if p + r else 0.0
  return f1, p, r


def ref_rows_with_positive(lab: np.ndarray) -> list[int]:
  return [i for i in range(lab.shape[0]) if any(lab[i, c] == 1 for c in range(lab.shape[1]))]


def ref_annotated_columns(lab: np.ndarray) -> list[int]:
  return [c for c in range(lab.shape[1]) if any(lab[i, c] != 0 for i in range(lab.shape[0]))]


def ref_weighted(lab: np.ndarray, ap: np.ndarray) -> float:
  w = np.array([sum(1 for i in range(lab.shape[0]) if lab[i, c] == 1)
                for c in range(lab.shape[1])], float)
  return float((w * ap).sum() / w.sum())


def ref_official(zsl, gzsl, labels, num_seen, ks):
  """The three sections of evaluate_openimages.py."""
  out = {}
  # SEEN: rows with a positive seen label; columns annotated; AP and F1 on both filtered.
  lab = labels[:, :num_seen]
  rows = ref_rows_with_positive(lab)
  lab, pred = lab[rows], gzsl[rows, :num_seen]
  mask = ref_annotated_columns(lab)
  map_lab, map_pred = lab[:, mask], pred[:, mask]
  ap = ref_compute_ap(map_pred, map_lab)
  seen = {"map": ap.mean(), "weighted_map": ref_weighted(map_lab, ap)}
  for k in ks:
    seen[f"f1@{k}"], seen[f"p@{k}"], seen[f"r@{k}"] = ref_compute_f1(map_pred, map_lab, k)
  out["seen"] = seen
  # ZSL: rows with a positive unseen label; no column filter.
  lab = labels[:, num_seen:]
  rows = ref_rows_with_positive(lab)
  lab, pred = lab[rows], zsl[rows]
  ap = ref_compute_ap(pred, lab)
  view = {"map": ap.mean(), "weighted_map": ref_weighted(lab, ap)}
  for k in ks:
    view[f"f1@{k}"], view[f"p@{k}"], view[f"r@{k}"] = ref_compute_f1(pred, lab, k)
  out["zsl"] = view
  # GZSL: rows with any positive; AP on annotated columns; F1 on the row-filtered matrices.
  rows = ref_rows_with_positive(labels)
  lab, pred = labels[rows], gzsl[rows]
  mask = ref_annotated_columns(lab)
  ap = ref_compute_ap(pred[:, mask], lab[:, mask])
  view = {"map": ap.mean(), "weighted_map": ref_weighted(lab[:, mask], ap)}
  for k in ks:
    view[f"f1@{k}"], view[f"p@{k}"], view[f"r@{k}"] = ref_compute_f1(pred, lab, k)
  out["gzsl"] = view
  return out


def random_case(seed: int):
  """Tie-free scores; states with many unknowns, empty columns, rows without positives."""
  rng = np.random.default_rng(seed)
  n = int(rng.integers(8, 30))
  num_seen, num_unseen = int(rng.integers(6, 14)), int(rng.integers(5, 9))
  total = num_seen + num_unseen
  p_zero = rng.uniform(0.4, 0.85)
  states = rng.choice(np.array([1, -1, 0], np.int8), size=(n, total),
                      p=[(1 - p_zero) * 0.4, (1 - p_zero) * 0.6, p_zero])
  states[:, rng.choice(total, size=3, replace=False)] = 0  # empty columns (seen and unseen)
  states[rng.choice(n, size=2, replace=False)] = np.where(
      rng.random((2, total)) < 0.5, -1, 0)  # images without positive
  gzsl = rng.normal(size=(n, total))
  zsl = rng.normal(size=(n, num_unseen))  # the model given the unseen labels only
  return zsl, gzsl, states, num_seen


# ----------------------------------------------------------------------- metrics: tests


@pytest.mark.parametrize("seed", range(12))
def test_official_protocol_matches_loop_reference(seed):
  zsl, gzsl, labels, num_seen = random_case(seed)
  ks = (1, 3)
  got = moi.evaluate_open_images(zsl, gzsl, labels, num_seen, ks, include_seen=True)
  want = ref_official(zsl, gzsl, labels, num_seen, ks)
  for view in ("zsl", "gzsl", "seen"):
    for key, value in want[view].items():
      assert got[view][key] == pytest.approx(value, abs=1e-12), (view, key)


def test_official_counts_and_column_filters():
  zsl, gzsl, labels, num_seen = random_case(3)
  got = moi.evaluate_open_images(zsl, gzsl, labels, num_seen, (1,), include_seen=True)
  has_pos = (labels == 1).any(axis=1)
  assert got["gzsl"]["num_images"] == has_pos.sum()
  assert got["gzsl"]["num_labels"] == ((labels[has_pos] != 0).any(axis=0)).sum()
  assert got["gzsl"]["num_labels"] < labels.shape[1]  # the empty columns were dropped
  assert got["zsl"]["num_labels"] == labels.shape[1] - num_seen  # ZSL: no column filter
  assert got["zsl"]["num_images"] == (labels[:, num_seen:] == 1).any(axis=1).sum()


def test_official_ap_is_the_block_quirk_not_per_label():
  """Hand case: two labels annotated on the same images share one 'AP'; a ZSL column that
  nobody annotated counts 0 in the mean."""
  labels = np.array([[1, -1, 0], [-1, 1, 0], [1, -1, 0]], np.int8)
  scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.0], [0.3, 0.6, 0.5]])
  got = moi.evaluate_open_images(scores, scores, labels, 0, (1,))
  # Block of rows 0-2 (columns 0 and 1 annotated everywhere), 6 entries ranked:
  # .9+ .8- .7- .6- .3+ .2+  ->  AP = (1/1 + 2/5 + 3/6) / 3
  block = (1 + 2 / 5 + 3 / 6) / 3
  assert got["zsl"]["map"] == pytest.approx((block + block + 0) / 3)
  assert got["gzsl"]["map"] == pytest.approx(block)  # column 2 is dropped in GZSL
  assert got["gzsl"]["num_labels"] == 2
  per_label = moi.evaluate_open_images(scores, scores, labels, 0, (1,), protocol="per_label")
  ap = [average_precision_score([1, 0, 1], [0.9, 0.7, 0.3]),
        average_precision_score([0, 1, 0], [0.8, 0.2, 0.6])]
  assert per_label["gzsl"]["map"] == pytest.approx(np.mean(ap))
  assert per_label["zsl"]["map"] == pytest.approx(np.sum(ap) / 3)
  # weighted by positives per label: 2 and 1
  assert per_label["gzsl"]["weighted_map"] == pytest.approx((2 * ap[0] + ap[1]) / 3)


def test_gzsl_prf_uses_all_columns_seen_prf_the_annotated_ones():
  """Official: GZSL top-K over every label (rows filtered only); seen top-K over the
  annotated seen labels only. A high score on a never-annotated label shows the difference."""
  labels = np.array([[1, 0, -1, 1], [-1, 0, 1, 0]], np.int8)  # column 1 never annotated
  gzsl = np.array([[0.1, 0.9, 0.2, 0.3], [0.1, 0.9, 0.5, 0.0]])
  got = moi.evaluate_open_images(gzsl[:, 3:], gzsl, labels, 3, (1,), include_seen=True)
  assert got["gzsl"]["p@1"] == 0.0  # column 1 wins every top-1 in GZSL
  assert got["seen"]["p@1"] == pytest.approx(0.5)  # column 1 is filtered out: row 1 hits
  assert got["seen"]["num_labels"] == 2


@pytest.mark.parametrize("seed", range(10))
def test_per_label_protocol_equals_mlzsl_metrics(seed):
  zsl, gzsl, labels, num_seen = random_case(seed)
  got = moi.evaluate_open_images(zsl, gzsl, labels, num_seen, (2,), protocol="per_label",
                                 include_seen=True)
  official = moi.evaluate_open_images(zsl, gzsl, labels, num_seen, (2,), include_seen=True)
  views = {"zsl": (zsl, labels[:, num_seen:], False), "gzsl": (gzsl, labels, True),
           "seen": (gzsl[:, :num_seen], labels[:, :num_seen], True)}
  for view, (scores, lab, column_filter) in views.items():
    rows = (lab == 1).any(axis=1)
    scores, lab = scores[rows], lab[rows]
    if column_filter:
      cols = (lab != 0).any(axis=0)
      scores, lab = scores[:, cols], lab[:, cols]
    ap = metrics.average_precision_per_label(scores, lab)
    weight = (lab == 1).sum(axis=0)
    assert got[view]["map"] == pytest.approx(ap.mean(), abs=1e-12)
    assert got[view]["weighted_map"] == pytest.approx((weight * ap).sum() / weight.sum())
    for key in ("p@2", "r@2", "f1@2", "num_images", "num_labels"):
      assert got[view][key] == official[view][key]  # only the AP differs


def test_ties_follow_the_sklearn_rule():
  labels = np.array([[1, -1], [-1, 1], [1, 0]], np.int8)
  scores = np.array([[0.5, 0.5], [0.5, 0.2], [0.2, 0.9]])
  got = moi.evaluate_open_images(scores, scores, labels, 0, (1,))
  # column 0: rows 0-2, entries (.5+, .5-, .5-, .2+, .2+); column 1: rows 0-1, 4 entries.
  want0 = average_precision_score([1, 0, 0, 1, 1], [0.5, 0.5, 0.5, 0.2, 0.2])
  want1 = average_precision_score([1, 0, 0, 1], [0.5, 0.5, 0.5, 0.2])
  assert got["gzsl"]["map"] == pytest.approx((want0 + want1) / 2)


def test_no_kept_image_gives_nan_and_bad_inputs_raise():
  labels = np.array([[-1, 0, -1], [0, -1, 0]], np.int8)
  scores = np.zeros((2, 3))
  got = moi.evaluate_open_images(scores[:, 1:], scores, labels, 1, (1,))
  assert math.isnan(got["zsl"]["map"]) and math.isnan(got["gzsl"]["f1@1"])
  assert got["zsl"]["num_images"] == 0
  with pytest.raises(ValueError, match="protocol"):
    moi.evaluate_open_images(scores[:, 1:], scores, labels, 1, (1,), protocol="sklearn")
  with pytest.raises(ValueError, match="zsl_scores"):
    moi.evaluate_open_images(scores, scores, labels, 1, (1,))
  with pytest.raises(ValueError, match="num_seen"):
    moi.evaluate_open_images(scores[:, 1:], scores, labels, 3, (1,))
  with pytest.raises(ValueError, match="ks"):
    moi.evaluate_open_images(scores[:, 1:], scores, labels, 1, (3,))
  with pytest.raises(ValueError, match="states"):
    moi.evaluate_open_images(scores[:, 1:], scores, labels * 2, 1, (1,))


def test_chunked_entries_match(monkeypatch):
  zsl, gzsl, labels, num_seen = random_case(5)
  whole = moi.evaluate_open_images(zsl, gzsl, labels, num_seen, (2,), include_seen=True)
  monkeypatch.setattr(moi, "_CHUNK_ELEMENTS", 7)
  monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7)
  assert moi.evaluate_open_images(zsl, gzsl, labels, num_seen, (2,),
                                  include_seen=True) == whole


def test_chance_level_and_table():
  _, _, labels, num_seen = random_case(1)
  chance = moi.chance_level(labels, num_seen, (1, 2), seeds=(0, 1))
  again = moi.chance_level(labels, num_seen, (1, 2), seeds=(0, 1))
  assert chance == again and set(chance) == {"zsl", "gzsl"}
  scores = np.random.default_rng(0).random(labels.shape, dtype=np.float32)
  one = moi.evaluate_open_images(scores[:, num_seen:], scores, labels, num_seen, (1, 2))
  assert 0 <= chance["gzsl"]["map"] <= 1 and one["gzsl"]["num_labels"] == chance["gzsl"][
      "num_labels"]
  table = moi.format_table(one, chance, (1, 2), "official")
  lines = table.splitlines()
  assert lines[0].split() == ["Setting", "P@1", "R@1", "F1@1", "P@2", "R@2", "F1@2", "mAP",
                              "wmAP", "#labels", "#images"]
  assert [l.split("  ")[0].strip() for l in lines[2:6]] == [
      "ZSL", "GZSL", "ZSL (chance)", "GZSL (chance)"]
  assert f"{100 * one['gzsl']['map']:.1f}" in lines[3]
  assert "official" in lines[-1]
  assert "per_label" in moi.format_table(one, None, (1, 2), "per_label").splitlines()[-1]


# ======================================================================= builder
# The official layout (BiAM feature_extraction/extract_openimages_{train,test}.py,
# util_openimages.py, evaluate_openimages.py; repository files datasets/OpenImages/2018_04/*):
#   train_features_lesa/*.h5: '<ImageID>.jpg-features' float32 [512, 196] (gzip),
#                             '<ImageID>.jpg-seenlabels' int8 [7186] (gzip)
#   test_features_lesa/OPENIMAGES_TEST_CONV5_4_LESA_VGG_NO_CENTERCROP.h5: the same keys plus
#                             '<ImageID>.jpg-unseenlabels' int8 [2594] (gzip)
#   2018_04/classes-trainable.txt   7186 MIDs, '\n' line ends
#   2018_04/unseen_labels.pkl       pickle protocol 2 of a NumPy object array of 2594 MIDs
#   2018_04/top_400_unseen.csv      400 rows of unseen_labels.pkl, UTF-8 BOM, CRLF, no final
#                                   line end, no header
#   2018_04/class-descriptions.csv  'MID,name' (names with commas in double quotes), no header
#   ../wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl
#                                   pickled pair (float32 [7186, 300], float32 [2594, 300])

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import h5py  # noqa: E402
import ml_collections  # noqa: E402

from mlzsl_jax.data import get_dataset  # noqa: E402
from mlzsl_jax.data import open_images as oi  # noqa: E402
from mlzsl_jax.data import restricted_pickle  # noqa: E402
from mlzsl_jax.data import tfds_common  # noqa: E402
import tfds_buckets  # noqa: E402
from tfds_buckets import through_disk_buckets  # noqa: E402

NUM_SEEN, NUM_UNSEEN_ALL, NUM_TOP = 7186, 2594, 400
TRAIN_FILES = ("CHUNK_5_CONV5_4_NO_CENTERCROP.h5", "CHUNK_10_CONV5_4_NO_CENTERCROP.h5",
               "CHUNK_15_CONV5_4_NO_CENTERCROP.h5")  # sorted: 10, 15, 5
TEST_FILE = "OPENIMAGES_TEST_CONV5_4_LESA_VGG_NO_CENTERCROP.h5"
PER_TRAIN, NUM_TEST = 4, 6
QUOTED = {3: "Ducks, geese and swans", 7186 + 5: "Meal, ready-to-eat"}  # our label -> name


def _mids():
  seen = [f"/m/0s{i:05d}" for i in range(NUM_SEEN)]
  unseen = [f"/m/0u{i:04d}" for i in range(NUM_UNSEEN_ALL)]
  return seen, unseen


def _image(rng, split):
  feats = np.abs(rng.normal(size=(512, 196))).astype(np.float32) * 3
  seen = np.zeros(NUM_SEEN, np.int8)
  cols = rng.choice(NUM_SEEN, 25, replace=False)
  seen[cols] = rng.choice(np.array([1, -1], np.int8), 25)
  out = {"-features": feats, "-seenlabels": seen}
  if split == "test":
    unseen = np.zeros(NUM_UNSEEN_ALL, np.int8)
    cols = rng.choice(NUM_UNSEEN_ALL, 40, replace=False)
    unseen[cols] = rng.choice(np.array([1, -1], np.int8), 40)
    out["-unseenlabels"] = unseen
  return out


def write_h5(path, images):
  """images: {name: {suffix: array}}, written as the official scripts do (gzip)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, "w") as f:
    for name, entries in images.items():
      for suffix, value in entries.items():
        f.create_dataset(name + suffix, data=value, dtype=value.dtype, compression="gzip")


def write_official(root: pathlib.Path, seed: int = 0) -> dict:
  """The files of one small Open Images in the official layout; returns what was written."""
  rng = np.random.default_rng(seed)
  manual = root / "OpenImages"
  labels_dir = manual / "2018_04"
  labels_dir.mkdir(parents=True)
  seen, unseen = _mids()
  top = rng.permutation(NUM_UNSEEN_ALL)[:NUM_TOP]
  (labels_dir / "classes-trainable.txt").write_text("\n".join(seen) + "\n")
  with open(labels_dir / "unseen_labels.pkl", "wb") as f:
    pickle.dump(np.array(unseen, dtype=object), f, protocol=2)
  (labels_dir / "top_400_unseen.csv").write_bytes(
      ("\ufeff" + "\r\n".join(str(i) for i in top)).encode("utf-8"))
  names = {m: f"class {m[4:]}" for m in seen + unseen}
  names[seen[3]] = QUOTED[3]
  names[unseen[top[5]]] = QUOTED[7186 + 5]
  lines = [f'{m},"{n}"' if "," in n else f"{m},{n}" for m, n in names.items()]
  lines += [f"/m/0x{i:03d},unused class {i}" for i in range(50)]
  lines = [lines[i] for i in rng.permutation(len(lines))]
  (labels_dir / "class-descriptions.csv").write_text("\n".join(lines) + "\n")
  vecs = (rng.normal(size=(NUM_SEEN, 300)) * 5).astype(np.float32), (
      rng.normal(size=(NUM_UNSEEN_ALL, 300)) * 5).astype(np.float32)
  emb_dir = root / "wiki_contexts"  # BiAM: <src>/wiki_contexts, beside OpenImages
  emb_dir.mkdir()
  with open(emb_dir / oi.EMBEDDING_FILE, "wb") as f:
    pickle.dump(list(vecs), f, protocol=3)
  files = {}
  for fname in TRAIN_FILES:
    images = {f"{rng.integers(1 << 62):016x}.jpg": _image(rng, "train")
              for _ in range(PER_TRAIN)}
    write_h5(manual / "train_features_lesa" / fname, images)
    files[("train", fname)] = images
  images = {f"{rng.integers(1 << 62):016x}.jpg": _image(rng, "test") for _ in range(NUM_TEST)}
  write_h5(manual / "test_features_lesa" / TEST_FILE, images)
  files[("test", TEST_FILE)] = images
  return {"manual": manual, "seen": seen, "unseen": unseen, "top": top, "names": names,
          "vecs": vecs, "files": files}


def expected_examples(official: dict, split: str) -> list[dict]:
  """Our examples in order: files sorted by name, images sorted by name."""
  out = []
  for (s, fname), images in sorted(official["files"].items()):
    if s != split:
      continue
    for name in sorted(images):
      entries = images[name]
      labels = np.zeros(NUM_SEEN + NUM_TOP, np.int8)
      labels[:NUM_SEEN] = entries["-seenlabels"]
      if split == "test":
        labels[NUM_SEEN:] = entries["-unseenlabels"][official["top"]]
      out.append({"features": entries["-features"].T.astype(np.float16), "labels": labels,
                  "image_id": name})
  return out


def data_config(manual_dir, data_dir) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="open_images", manual_dir=str(manual_dir),
                                        data_dir=str(data_dir)))


def assert_nothing_prepared(data_dir: pathlib.Path, untouched: bool = True) -> None:
  """No prepared or half-written Open Images under ``data_dir``; with ``untouched``, no file."""
  tfds_buckets.assert_nothing_prepared(oi.OpenImages(data_dir=str(data_dir)), data_dir,
                                       (oi.OpenImagesMetadata.NPZ, oi.DATA_VERSION), untouched)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  return write_official(tmp_path_factory.mktemp("oi_files"))


@pytest.fixture(scope="module")
def built(official, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("oi_tfds")
  source = get_dataset(data_config(official["manual"], data_dir))
  return source, data_dir


def test_fixture_matches_the_official_layout(official):
  manual = official["manual"]
  with h5py.File(manual / "test_features_lesa" / TEST_FILE, "r") as f:
    name = sorted(official["files"][("test", TEST_FILE)])[0]
    assert len(f.keys()) == 3 * NUM_TEST
    assert f[name + "-features"].shape == (512, 196) and f[name + "-features"].dtype == "f4"
    assert f[name + "-seenlabels"].shape == (7186,) and f[name + "-seenlabels"].dtype == "i1"
    assert f[name + "-unseenlabels"].shape == (2594,)
    assert f[name + "-features"].compression == "gzip"
  with h5py.File(manual / "train_features_lesa" / TRAIN_FILES[0], "r") as f:
    assert len(f.keys()) == 2 * PER_TRAIN and name.endswith(".jpg")
  unseen = restricted_pickle.load(manual / "2018_04" / "unseen_labels.pkl")
  assert unseen.dtype == object and unseen.shape == (2594,)
  raw = (manual / "2018_04" / "top_400_unseen.csv").read_bytes()
  assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw and not raw.endswith(b"\n")
  emb = restricted_pickle.load(manual.parent / "wiki_contexts" / oi.EMBEDDING_FILE)
  assert [e.shape for e in emb] == [(7186, 300), (2594, 300)]


def test_every_field_of_every_example(built, official):
  source, _ = built
  for split in ("train", "test"):
    want = expected_examples(official, split)
    got = list(source.as_tf_dataset(split).as_numpy_iterator())
    assert len(got) == len(want) == source.meta.num_examples[split]
    for ex, w in zip(got, want):
      assert set(ex) == {"features", "labels", "image_id"}
      assert ex["features"].dtype == np.float16 and ex["features"].shape == (196, 512)
      np.testing.assert_array_equal(ex["features"], w["features"])
      assert ex["labels"].dtype == np.int8 and ex["labels"].shape == (7586,)
      np.testing.assert_array_equal(ex["labels"], w["labels"])
      assert ex["image_id"].decode() == w["image_id"]
    spec = source.as_tf_dataset(split).element_spec
    assert spec["labels"].shape == (7586,) and spec["features"].shape == (196, 512)
  assert source.meta.num_examples == {"train": 3 * PER_TRAIN, "test": NUM_TEST}
  test = list(source.as_tf_dataset("test").as_numpy_iterator())
  assert any((ex["labels"][NUM_SEEN:] != 0).any() for ex in test)  # unseen states kept
  train = list(source.as_tf_dataset("train").as_numpy_iterator())
  assert all((ex["labels"][NUM_SEEN:] == 0).all() for ex in train)  # unknown in training


def test_metadata(built, official):
  source, data_dir = built
  meta = source.meta
  seen, unseen, top = official["seen"], official["unseen"], official["top"]
  mids = seen + [unseen[i] for i in top]
  assert source.label_mids == tuple(mids)
  assert meta.label_names == tuple(official["names"][m] for m in mids)
  assert meta.label_names[3] == QUOTED[3] and meta.label_names[7186 + 5] == QUOTED[7186 + 5]
  assert source.seen_ids == tuple(range(7186)) and source.unseen_ids == tuple(range(7186, 7586))
  assert meta.grid_shape == (14, 14) and meta.feature_dim == 512 and meta.scene_dim == 0
  raw = np.concatenate([official["vecs"][0], official["vecs"][1][top]]).astype(np.float64)
  want = raw / np.linalg.norm(raw, axis=1, keepdims=True)  # sklearn normalize
  glove = meta.embedding("glove")
  assert glove.dtype == np.float32 and glove.shape == (7586, 300)
  np.testing.assert_allclose(glove, want, rtol=1e-6, atol=1e-6)
  md = source.builder.info.metadata
  assert md["unseen_source_rows"] == [int(i) for i in top]
  files = md["source_files"]
  assert [e["file"] for e in files["train"]] == [
      os.path.join("train_features_lesa", f) for f in sorted(TRAIN_FILES)]
  assert [e["images"] for e in files["train"]] == [PER_TRAIN] * 3
  assert set(files) >= {"classes-trainable.txt", "unseen_labels.pkl", "top_400_unseen.csv",
                        "class-descriptions.csv", oi.EMBEDDING_FILE}
  assert "top_400_unseen.csv" in meta.provenance
  # The embeddings are in embeddings.npz, not in the JSON.
  info_dir = pathlib.Path(source.builder.data_dir)
  assert (info_dir / "embeddings.npz").is_file()
  stored = json.loads((info_dir / "metadata.json").read_text())
  assert "embeddings" not in stored and stored["label_names"] == list(meta.label_names)


def test_prepared_dataset_reopens_without_manual_dir(built, official, tmp_path):
  source, data_dir = built
  again = get_dataset(data_config("", data_dir))
  assert again.meta.label_names == source.meta.label_names
  np.testing.assert_array_equal(again.meta.embedding("glove"), source.meta.embedding("glove"))
  changed = tmp_path / "OpenImages"
  shutil.copytree(official["manual"], changed)
  with open(changed / "2018_04" / "class-descriptions.csv", "a") as f:
    f.write("/m/0zzz,another\n")
  with pytest.raises(ValueError, match="class-descriptions.csv: differs"):
    get_dataset(data_config(changed, data_dir))


def test_files_are_streamed_one_at_a_time(official, monkeypatch):
  """The generator opens one h5 file at a time, in sorted order, and yields an example
  before it has opened the next file: memory never holds more than one image."""
  prepared = oi.load_and_scan(str(official["manual"]))
  files = prepared.splits["train"]
  opened, open_now, peak = [], [0], [0]
  real_open = oi.open_h5

  import contextlib

  @contextlib.contextmanager
  def spy(path):
    opened.append(os.path.basename(path))
    open_now[0] += 1
    peak[0] = max(peak[0], open_now[0])
    try:
      with real_open(path) as f:
        yield f
    finally:
      open_now[0] -= 1

  monkeypatch.setattr(oi, "open_h5", spy)
  labels = prepared.labels
  spec = oi.ReadSpec("train", NUM_SEEN, NUM_UNSEEN_ALL, tuple(int(i) for i in labels.top_unseen),
                     labels.label_mids, labels.unseen_mids, files.total, True)
  gen = oi.iter_split_examples(files, spec)
  next(gen)
  assert opened == [sorted(TRAIN_FILES)[0]]
  rest = list(gen)
  assert len(rest) == 3 * PER_TRAIN - 1
  assert opened == sorted(TRAIN_FILES) and peak[0] == 1


def test_example_keys_keep_order_and_fill_every_bucket():
  from tensorflow_datasets.core import shuffle
  total = 250_000
  keys = [tfds_common.example_key(i, total) for i in range(total)]
  assert keys == sorted(keys) and len(set(keys)) == total and keys[-1] < 1 << 128
  buckets = np.bincount([shuffle.get_bucket_number(k, shuffle.BUCKETS_NUMBER) for k in keys],
                        minlength=shuffle.BUCKETS_NUMBER)
  assert buckets.max() <= total // shuffle.BUCKETS_NUMBER + 1  # ~1/1000 of the split each
  assert tfds_common.example_key(7, total, spread=False) == 7  # Beam path: the position


def test_build_through_disk_buckets_keeps_file_order(official, tmp_path, monkeypatch):
  """With tfds' in-memory buffer at 0 bytes every example goes through the bucket files (the
  path a 340 GB build takes); the stored order is still the file order."""
  scans, real_scan = [], oi.load_and_scan
  monkeypatch.setattr(oi, "load_and_scan",
                      lambda d, *rest: scans.append(d) or real_scan(d, *rest))
  with through_disk_buckets() as bucket_sizes:
    builder = oi.prepare(str(official["manual"]), str(tmp_path), progress=False)
  assert max(bucket_sizes) == 1  # spread keys: a bucket per record, never the split in one
  assert len(scans) == 1  # validated once, before writing; the builder reuses it
  ids = [ex["image_id"].decode() for ex in oi.OpenImagesSource(builder)
         .as_tf_dataset("train").as_numpy_iterator()]
  assert ids == [e["image_id"] for e in expected_examples(official, "train")]


class _FakeBeam:
  """Records ``beam.Create(elements) | beam.FlatMap(fn, **kwargs)`` (apache-beam absent)."""

  class _T:
    def __init__(self, kind, *args, **kwargs):
      self.kind, self.args, self.kwargs, self.label = kind, args, kwargs, None

    def __rrshift__(self, label):
      self.label = label
      return self

    def __or__(self, other):
      return ("pipe", self, other)

  def Create(self, elements):  # noqa: N802
    return self._T("Create", list(elements))

  def FlatMap(self, fn, **kwargs):  # noqa: N802
    return self._T("FlatMap", fn, **kwargs)


def test_beam_path_reads_each_file_in_a_flatmap(official, monkeypatch):
  prepared = oi.load_and_scan(str(official["manual"]))
  monkeypatch.setattr(oi, "_beam", _FakeBeam)
  builder = oi.OpenImages.__new__(oi.OpenImages)  # only _generate_examples is used
  builder._use_beam = True
  for split in ("train", "test"):
    _, create, flat_map = builder._generate_examples(prepared, split)
    files = prepared.splits[split]
    assert create.kind == "Create" and create.args[0] == list(
        zip(files.paths, files.offsets, files.counts))
    fn, spec = flat_map.args[0], flat_map.kwargs["spec"]
    assert not spec.spread_keys
    pickle.dumps(spec)  # shipped to the workers
    got = [kv for element in create.args[0] for kv in fn(element, spec=spec)]
    want = expected_examples(official, split)
    assert [k for k, _ in got] == list(range(len(want)))  # keys: positions
    for (_, ex), w in zip(got, want):
      np.testing.assert_array_equal(ex["features"], w["features"])
      np.testing.assert_array_equal(ex["labels"], w["labels"])
      assert ex["image_id"] == w["image_id"]


def test_beam_requested_without_apache_beam(official, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed (it is not here)
  with pytest.raises(ImportError, match="apache-beam"):
    oi.prepare(str(official["manual"]), str(tmp_path), beam_options=object(), progress=False)
  assert_nothing_prepared(tmp_path, untouched=False)


def test_scene_feature_plain_and_beam_paths(built, official, tmp_path, monkeypatch):
  """data.scene='vgg19': the vgg19_scene config beside the plain dataset; scene = the head of
  the float32 source features for every example; the Beam path computes the same, loading the
  head once per worker process."""
  from test_extract import write_scene_weights  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.data import tfds_common  # pylint: disable=import-outside-toplevel
  from mlzsl_jax.extract import scene_head  # pylint: disable=import-outside-toplevel
  _, data_dir = built
  weights = write_scene_weights(tmp_path, seed=9)
  loads, real_load = [], tfds_common.load_scene_source
  monkeypatch.setattr(tfds_common, "load_scene_source",
                      lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
  fresh = data_config(official["manual"], tmp_path / "fresh")
  fresh.scene = "vgg19"  # not prepared, no weights
  with pytest.raises(ValueError, match=r"configs/biam_open_images\.py:scene=vgg19"):
    get_dataset(fresh)
  config = data_config(official["manual"], data_dir)
  config.scene, config.scene_weights = "vgg19", weights
  source = get_dataset(config)
  assert len(loads) == 1 and source.meta.scene_dim == 8
  assert pathlib.Path(source.builder.data_dir).parts[-3:] == ("open_images", "vgg19_scene",
                                                              "1.0.0")
  md = source.builder.info.metadata
  assert md["scene_weights"]["file"] == weights and "fc7, ReLU" in source.meta.provenance
  head = scene_head.load_scene_head(weights)
  stored = {}
  for split in ("train", "test"):
    want = expected_examples(official, split)
    f32 = np.stack([official["files"][key][name]["-features"].T  # expected_examples' order
                    for key in sorted(official["files"]) if key[0] == split
                    for name in sorted(official["files"][key])])
    scene = np.asarray(scene_head.scene_from_regions(head, f32))
    got = list(source.as_tf_dataset(split).as_numpy_iterator())
    assert len(got) == len(want) == len(scene)
    for ex, w, s in zip(got, want, scene):
      assert ex["image_id"].decode() == w["image_id"]
      np.testing.assert_array_equal(ex["features"], w["features"])
      np.testing.assert_array_equal(ex["labels"], w["labels"])
      assert ex["scene"].dtype == np.float16 and ex["scene"].shape == (8,)
      np.testing.assert_allclose(ex["scene"].astype(np.float32), s, rtol=1e-3,
                                 atol=1e-3 * np.abs(scene).max())
    stored[split] = [ex["scene"] for ex in got]
  assert oi.OpenImagesSource(oi.prepare("", str(data_dir))).meta.scene_dim == 0  # plain kept
  # Beam: the spec names the weights file; each worker loads the head lazily, once.
  prepared = oi.load_and_scan(str(official["manual"]))
  monkeypatch.setattr(oi, "_beam", _FakeBeam)
  builder = oi.OpenImagesVgg19Scene.__new__(oi.OpenImagesVgg19Scene)
  builder._use_beam = True
  builder._scene = tfds_common.SceneSource(fn=None, dim=8,
                                           weights=tfds_common.weights_fingerprint(weights))
  loads.clear()
  try:
    for split in ("train", "test"):
      _, create, flat_map = builder._generate_examples(prepared, split)
      fn, spec = flat_map.args[0], flat_map.kwargs["spec"]
      assert spec.scene_weights == weights and not spec.spread_keys
      pickle.dumps(spec)
      got = [ex for element in create.args[0] for _, ex in fn(element, spec=spec)]
      for ex, want in zip(got, stored[split], strict=True):
        np.testing.assert_array_equal(ex["scene"], want)
    assert loads == [weights]  # one worker process here: one load for every file
  finally:
    tfds_common.release_scene_sources()


# ----------------------------------------------------------------------- bad files

def _copy(official, tmp_path) -> pathlib.Path:
  root = tmp_path / "src"
  shutil.copytree(official["manual"].parent, root)
  return root / "OpenImages"


def _first(official, split, fname):
  return sorted(official["files"][(split, fname)])[0]


def _rewrite(path, mutate):
  """Rewrite an h5 file after ``mutate(dict name -> array)``."""
  with h5py.File(path, "r") as f:
    content = {k: f[k][()] for k in f.keys()}
  mutate(content)
  os.remove(path)
  with h5py.File(path, "w") as f:
    for k, v in content.items():
      f.create_dataset(k, data=v, compression="gzip")


BAD_BEFORE_WRITING = {
    "missing key": (
        lambda m, o: _rewrite(m / "train_features_lesa" / TRAIN_FILES[1], lambda c: c.pop(
            _first(o, "train", TRAIN_FILES[1]) + "-seenlabels")),
        r"CHUNK_10_CONV5_4_NO_CENTERCROP.h5: missing key '[0-9a-f]{16}\.jpg-seenlabels'"),
    "missing unseen key": (
        lambda m, o: _rewrite(m / "test_features_lesa" / TEST_FILE, lambda c: c.pop(
            _first(o, "test", TEST_FILE) + "-unseenlabels")),
        r"LESA_VGG_NO_CENTERCROP.h5: missing key '[0-9a-f]{16}\.jpg-unseenlabels'"),
    "transposed features": (
        lambda m, o: _rewrite(m / "train_features_lesa" / TRAIN_FILES[2], lambda c: c.update(
            {k: v.T for k, v in c.items() if k.endswith("-features")})),
        r"CHUNK_15_CONV5_4_NO_CENTERCROP.h5: key '.*-features' must have shape \[512, 196\], "
        r"got \[196, 512\] \(transposed"),
    "short label vector": (
        lambda m, o: _rewrite(m / "train_features_lesa" / TRAIN_FILES[0], lambda c: c.update(
            {k: v[:7000] for k, v in c.items() if k.endswith("-seenlabels")})),
        r"CHUNK_5_CONV5_4_NO_CENTERCROP.h5: key '.*-seenlabels' must have shape \[7186\], "
        r"got \[7000\]"),
    "unknown key": (
        lambda m, o: _rewrite(m / "train_features_lesa" / TRAIN_FILES[0],
                              lambda c: c.update({"abc.jpg-labels": np.zeros(3)})),
        r"CHUNK_5_CONV5_4_NO_CENTERCROP.h5: unexpected key 'abc.jpg-labels'"),
    "truncated h5": (
        lambda m, o: (m / "train_features_lesa" / TRAIN_FILES[2]).write_bytes(
            (m / "train_features_lesa" / TRAIN_FILES[2]).read_bytes()[:3000]),
        r"CHUNK_15_CONV5_4_NO_CENTERCROP.h5: cannot open as an HDF5 file"),
    "no train file": (
        lambda m, o: shutil.rmtree(m / "train_features_lesa") or (
            m / "train_features_lesa").mkdir(),
        r"train_features_lesa: no \*.h5 file for split 'train'"),
    "unknown label name": (
        lambda m, o: (m / "2018_04" / "class-descriptions.csv").write_text("\n".join(
            line for line in (m / "2018_04" / "class-descriptions.csv").read_text()
            .splitlines() if not line.startswith("/m/0s00042,"))),
        r"class-descriptions.csv: no name for class MID '/m/0s00042' "
        r"\(.*classes-trainable.txt line 43\)"),
    "unknown unseen label name": (
        lambda m, o: (m / "2018_04" / "class-descriptions.csv").write_text("\n".join(
            line for line in (m / "2018_04" / "class-descriptions.csv").read_text()
            .splitlines() if not line.startswith(o["unseen"][o["top"][9]] + ","))),
        r"class-descriptions.csv: no name for class MID '/m/0u\d{4}' \(.*unseen_labels.pkl "
        r"entry \d+ \(listed in top_400_unseen.csv\)\)"),
    "embedding rows": (
        lambda m, o: pickle.dump([o["vecs"][0][:7185], o["vecs"][1]], open(
            m.parent / "wiki_contexts" / oi.EMBEDDING_FILE, "wb")),
        r"glove-wiki-gigaword-300.pkl: entry 0 \(seen vectors\) has 7185 rows, but "
        r".*classes-trainable.txt lists 7186"),
    "unseen embedding rows": (
        lambda m, o: pickle.dump([o["vecs"][0], o["vecs"][1][:400]], open(
            m.parent / "wiki_contexts" / oi.EMBEDDING_FILE, "wb")),
        r"entry 1 \(unseen vectors\) has 400 rows, but .*unseen_labels.pkl lists 2594"),
    "zero embedding": (
        lambda m, o: pickle.dump([np.where(np.arange(7186)[:, None] == 11, 0, o["vecs"][0]),
                                  o["vecs"][1]],
                                 open(m.parent / "wiki_contexts" / oi.EMBEDDING_FILE, "wb")),
        r"glove-wiki-gigaword-300.pkl .*all-zero row.*row 11 \('/m/0s00011 = class s00011'\)"),
    "missing embedding file": (
        lambda m, o: os.remove(m.parent / "wiki_contexts" / oi.EMBEDDING_FILE),
        r"OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl not found"),
    "top-400 row out of range": (
        lambda m, o: (m / "2018_04" / "top_400_unseen.csv").write_text("5\n2594\n"),
        r"top_400_unseen.csv: line 2: row 2594 out of range"),
    "unpickling code": (
        lambda m, o: (m / "2018_04" / "unseen_labels.pkl").write_bytes(
            b"cos\nsystem\n(S'echo hi'\ntR."),
        r"unseen_labels.pkl: refusing to unpickle: forbidden global os.system"),
}


@pytest.mark.parametrize("case", sorted(BAD_BEFORE_WRITING))
def test_bad_files_fail_before_writing(case, official, tmp_path):
  manual = _copy(official, tmp_path)
  mutate, message = BAD_BEFORE_WRITING[case]
  mutate(manual, official)
  data_dir = tmp_path / "tfds"
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    get_dataset(data_config(manual, data_dir))
  assert_nothing_prepared(data_dir, untouched=True)


BAD_WHILE_WRITING = {
    "unseen state -2 in the test file": (
        "-unseenlabels", lambda v: np.where(np.arange(v.size) == 5, -2, v).astype(np.int8),
        r"OPENIMAGES_TEST_CONV5_4_LESA_VGG_NO_CENTERCROP.h5: key '[0-9a-f]{16}\.jpg-"
        r"unseenlabels' has state -2 at entry 5 \(/m/0u0005\)"),
    "NaN feature": (
        "-features", lambda v: np.where(np.arange(v.size).reshape(v.shape) == 300, np.nan, v),
        r"CHUNK_5_CONV5_4_NO_CENTERCROP.h5: key '[0-9a-f]{16}\.jpg-features' has NaN/inf "
        r"values \(1; first at channel 1, region 104\)"),
    "state 2": (
        "-seenlabels", lambda v: np.where(np.arange(v.size) == 77, 2, v).astype(np.int8),
        r"CHUNK_5_CONV5_4_NO_CENTERCROP.h5: key '[0-9a-f]{16}\.jpg-seenlabels' has state 2 "
        r"at entry 77 \(/m/0s00077\)"),
    "fp16 overflow": (
        "-features", lambda v: v * np.float32(1e5),
        r"CHUNK_5_CONV5_4_NO_CENTERCROP.h5: key '.*-features' has values beyond the float16"),
}


@pytest.mark.parametrize("case", sorted(BAD_WHILE_WRITING))
def test_bad_values_abort_the_build_and_leave_nothing(case, official, tmp_path, monkeypatch):
  """Found while writing (the last train file in sorted order, after 11 good examples went to
  tfds' bucket files on disk; or the test file, after the whole train split was written):
  the build fails naming file + key, and tfds' temporary folder is gone."""
  monkeypatch.setattr(tfds_common, "WRITE_BUFFER_BYTES", 0)  # every example goes to disk
  manual = _copy(official, tmp_path)
  suffix, change, message = BAD_WHILE_WRITING[case]
  split, fname = ("test", TEST_FILE) if suffix == "-unseenlabels" else ("train", TRAIN_FILES[0])
  name = sorted(official["files"][(split, fname)])[-1]
  _rewrite(manual / oi.SPLIT_DIRS[split] / fname,
           lambda c: c.update({name + suffix: change(c[name + suffix])}))
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match=message):
    oi.prepare(str(manual), str(data_dir), progress=False)
  assert_nothing_prepared(data_dir, untouched=False)


def test_damaged_data_chunk_names_file_and_key(official, tmp_path):
  """A file that opens (intact HDF5 structure) but one image's compressed chunk is garbage:
  found when that image is read, named by file + key; nothing is left behind."""
  manual = _copy(official, tmp_path)
  path = manual / "train_features_lesa" / TRAIN_FILES[2]
  name = sorted(official["files"][("train", TRAIN_FILES[2])])[1]
  with h5py.File(path, "r") as f:
    chunk = f[name + "-features"].id.get_chunk_info(0)
  raw = bytearray(path.read_bytes())
  raw[chunk.byte_offset:chunk.byte_offset + chunk.size] = b"\x5a" * chunk.size
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=rf"CHUNK_15_CONV5_4_NO_CENTERCROP.h5: cannot read key "
                                       rf"'{name}-features' \(truncated or corrupt file\?\)"):
    oi.prepare(str(manual), str(tmp_path / "tfds"), progress=False)
  assert_nothing_prepared(tmp_path / "tfds", untouched=False)


def test_factory_needs_manual_dir_until_prepared(tmp_path):
  with pytest.raises(ValueError, match="data.manual_dir"):
    get_dataset(data_config("", tmp_path))
  with pytest.raises(FileNotFoundError, match="data.manual_dir"):
    get_dataset(data_config(tmp_path / "absent", tmp_path))
  assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------- wiring

def test_evaluation_protocol_wrapper():
  zsl, gzsl, labels, num_seen = random_case(2)
  config = ml_collections.ConfigDict({"eval": {"ks": (1, 2), "chance_seeds": 2}})
  run = moi.evaluation_protocol("per_label")
  result, table = run(zsl, gzsl, labels, num_seen, config)
  want = moi.evaluate_open_images(zsl, gzsl, labels, num_seen, (1, 2), "per_label")
  assert {k: result[k] for k in ("zsl", "gzsl")} == want
  assert result["chance"] == moi.chance_level(labels, num_seen, (1, 2), "per_label", (0, 1))
  assert table == moi.format_table(want, result["chance"], (1, 2), "per_label")
  config.eval.chance_seeds = 0
  result, table = moi.evaluation_protocol("official")(zsl, gzsl, labels, num_seen, config)
  assert result["chance"] is None and "(chance)" not in table
  with pytest.raises(ValueError, match="protocol"):
    moi.evaluation_protocol("textbook")


def test_config_values():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "biam_open_images", pathlib.Path(__file__).parents[1] / "configs" / "biam_open_images.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  assert (c.data.name, c.data.embedding, c.model.name) == ("open_images", "glove", "biam")
  assert c.data.seen_labels == tuple(range(7186))
  assert c.data.unseen_labels == tuple(range(7186, 7586))
  assert (c.model.heads, c.model.scene_source, c.model.label_chunk) == (16, "mean_region", 1024)
  assert (c.optimizer.lr, c.optimizer.schedule, c.optimizer.weight_decay) == (1e-4, "constant",
                                                                               5e-4)
  assert (c.train.batch_size, c.train.num_epochs) == (32, 10)
  assert (c.loss.name, c.eval.protocol, c.eval.ks) == ("ranking_sorted", "open_images_official",
                                                      (10, 20))
  assert module.get_config("protocol=per_label").eval.protocol == "open_images_per_label"
  with pytest.raises(ValueError, match="protocol"):
    module.get_config("protocol=sklearn")


def test_biam_trains_and_evaluates_with_the_official_protocol(built, official, tmp_path):
  """configs/biam_open_images.py end to end (label chunks, sorted ranking loss, the official
  Open Images evaluation registered as a protocol) on the official-layout files."""
  import importlib.util
  import json

  from mlzsl_jax import train
  _, data_dir = built
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "biam_open_images.py"
  spec = importlib.util.spec_from_file_location("oi_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke=True")
  config.unlock()
  config.data.manual_dir = str(official["manual"])
  config.data.data_dir = str(data_dir)
  config.train.batch_size = 8
  config.eval.batch_size = 8
  config.lock()
  result = train.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["protocol"] == "open_images_official"
  for view in ("zsl", "gzsl"):
    assert {"map", "weighted_map", "f1@10", "f1@20"} <= set(result[view])
  assert "wmAP" in result["table"]
