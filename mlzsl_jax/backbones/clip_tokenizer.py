"""CLIP's text tokenizer: text clean-up, then byte-level BPE over a 49,408-id vocabulary.

Written for this project (NumPy only, no torch). It reproduces open_clip's ``tokenize`` id for
id, which is the tokenizer the released CLIP text towers were trained with:

* clean-up: ``ftfy.fix_text`` (mojibake, curly quotes, ligatures, NFC, ...), HTML entities
  decoded twice (so ``&amp;amp;`` -> ``&``), runs of whitespace -> one space, ends stripped,
  lower case;
* pre-tokenising: the cleaned text is cut into pieces (a few English contractions, runs of
  letters, single digits, runs of other non-space characters);
* each piece is UTF-8 encoded, every byte written as one printable character, the last one
  marked as ending a word (``</w>``), and adjacent symbols merged in merge-list order;
* a row is ``[start, ids..., end, 0, 0, ...]`` with ``start`` = 49406, ``end`` = 49407; a row
  too long is cut to the context length and its last id replaced by ``end``.

The vocabulary comes from the file shipped with the weights: open_clip's
``bpe_simple_vocab_16e6.txt.gz`` (a merge list; the ids are the 256 byte symbols, the same
with ``</w>``, the first 48,894 merges, then the two special tokens), or a Hugging Face CLIP
folder's ``vocab.json`` + ``merges.txt``. Nothing is downloaded.

Quirk kept for exactness: like open_clip, the literal text ``<start_of_text>`` /
``<end_of_text>`` inside a caption becomes the special id (OpenAI and Hugging Face spell the
specials ``<|startoftext|>`` / ``<|endoftext|>`` instead; that text is ordinary here).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

try:
  import ftfy
  import regex
except ImportError as _missing:  # pragma: no cover - depends on the environment
  raise ImportError(
      f"mlzsl_jax.backbones.clip_tokenizer needs the packages ftfy and regex "
      f"({_missing.name} is missing): pip install ftfy regex") from _missing

VOCAB_SIZE = 49408
SOT_ID = 49406                          # <|startoftext|>
EOT_ID = 49407                          # <|endoftext|>
DEFAULT_CONTEXT_LENGTH = 77
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2   # 48,894 merges are used (the .gz lists 262,144)

OPEN_CLIP_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
HF_VOCAB = "vocab.json"
HF_MERGES = "merges.txt"
SOT_NAME = "<|startoftext|>"
EOT_NAME = "<|endoftext|>"
END_OF_WORD = "</w>"

# Caption text that open_clip turns into the special ids (its names for them).
_LITERAL_SPECIALS = {"<start_of_text>": SOT_ID, "<end_of_text>": EOT_ID}

# Pieces, tried left to right: the special literals, English contractions, a run of letters,
# ONE digit, a run of anything else that is not whitespace. Case-insensitive like the
# reference (this matters for a few characters that fold to ASCII, e.g. long s: "'ſ").
_PIECE = regex.compile(
    "|".join([*_LITERAL_SPECIALS, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
              r"\p{L}+", r"\p{N}", r"[^\s\p{L}\p{N}]+"]),
    regex.IGNORECASE)

_CACHE_LIMIT = 200_000  # pieces remembered per tokenizer before the cache starts over


def _byte_symbols() -> tuple[dict[int, str], list[int]]:
  """Printable stand-ins for the 256 byte values, and the byte order of the vocabulary.

  Bytes that are visible Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand
  for themselves; the remaining 68 (controls, space, no-break space, soft hyphen) get the
  characters U+0100, U+0101, ... in increasing byte order. The vocabulary lists the visible
  bytes first, then the others, each group in byte order.
  """
  visible = [b for b in range(256)
             if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
  seen = set(visible)
  moved = [b for b in range(256) if b not in seen]
  symbol = {b: chr(b) for b in visible}
  symbol.update({b: chr(0x100 + k) for k, b in enumerate(moved)})
  return symbol, visible + moved


# _BYTE_SYMBOL also serves as the str.translate table taking UTF-8 bytes read as Latin-1
# characters to their stand-ins.
_BYTE_SYMBOL, _BYTE_ORDER = _byte_symbols()
_SYMBOL_TO_BYTE = {s: b for b, s in _BYTE_SYMBOL.items()}


def clean_text(text: str) -> str:
  """The reference clean-up: ftfy fixes, HTML unescaped twice, whitespace runs -> one space,
  ends stripped, lower case."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text))
  return " ".join(text.split()).lower()


class ClipTokenizer:
  """CLIP's byte-level BPE tokenizer over a 49,408-id vocabulary.

  Build it with :meth:`from_file` (or :func:`load_tokenizer`). ``encode`` gives the ids of
  one text without start/end; ``tokenize`` gives the ``[N, context_length]`` int32 array
  the CLIP text tower reads.
  """

  def __init__(self, ids: dict[str, int], merges: Sequence[tuple[str, str]], source: str):
    """``ids``: token string -> id (49,408 entries); ``merges``: symbol pairs, best first."""
    self.ids = ids
    self.ranks = {pair: rank for rank, pair in enumerate(merges)}
    self.names = {i: name for name, i in ids.items()}
    self.source = source
    self._cache: dict[str, tuple[int, ...]] = {}
    self._seed_cache()

  def _seed_cache(self) -> None:
    self._cache.clear()
    self._cache.update({literal: (i,) for literal, i in _LITERAL_SPECIALS.items()})

  def __repr__(self) -> str:
    return f"ClipTokenizer(vocab={len(self.ids)}, source={self.source!r})"

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_file(cls, path: str | Path) -> "ClipTokenizer":
    """Read a vocabulary: open_clip's ``.txt.gz`` merge list, or Hugging Face's
    ``vocab.json`` + ``merges.txt`` (give the folder, or either file; the other must be
    beside it). Raises ``FileNotFoundError`` / ``ValueError`` naming the file on trouble."""
    path = Path(path)
    if path.is_dir():
      found = _vocabulary_in(path)
      if found is None:
        raise FileNotFoundError(
            f"{path}: folder has neither {OPEN_CLIP_VOCAB} nor {HF_VOCAB} + {HF_MERGES}")
      path = found
    if not path.exists():
      raise FileNotFoundError(f"CLIP vocabulary file not found: {path}")
    if path.is_dir():
      return cls(*_read_hf(path / HF_VOCAB, path / HF_MERGES), source=str(path))
    with open(path, "rb") as f:
      magic = f.read(2)
    if magic == b"\x1f\x8b":
      return cls(*_read_open_clip(path), source=str(path))
    if path.name.endswith(".json"):
      return cls(*_read_hf(path, path.with_name(HF_MERGES)), source=str(path.parent))
    if path.name.endswith(".txt"):
      return cls(*_read_hf(path.with_name(HF_VOCAB), path), source=str(path.parent))
    raise ValueError(
        f"{path}: not a CLIP vocabulary (expected open_clip's gzip merge list "
        f"{OPEN_CLIP_VOCAB}, or Hugging Face's {HF_VOCAB} / {HF_MERGES})")

  # ------------------------------------------------------------------ encoding
  def _piece_ids(self, piece: str) -> tuple[int, ...]:
    """Ids of one pre-tokenised piece (already written in byte symbols)."""
    known = self._cache.get(piece)
    if known is not None:
      return known
    symbols = [*piece[:-1], piece[-1] + END_OF_WORD]
    ranks = self.ranks
    while len(symbols) > 1:
      best, best_rank = None, len(ranks)
      for pair in zip(symbols, symbols[1:]):
        rank = ranks.get(pair)
        if rank is not None and rank < best_rank:
          best, best_rank = pair, rank
      if best is None:
        break
      left, right = best
      joined = left + right
      out: list[str] = []
      i, n = 0, len(symbols)
      while i < n:  # every occurrence, left to right, without overlap
        if i + 1 < n and symbols[i] == left and symbols[i + 1] == right:
          out.append(joined)
          i += 2
        else:
          out.append(symbols[i])
          i += 1
      symbols = out
    result = tuple(self.ids[s] for s in symbols)
    if len(self._cache) >= _CACHE_LIMIT:
      self._seed_cache()
    self._cache[piece] = result
    return result

  def encode(self, text: str) -> list[int]:
    """Ids of ``text`` after clean-up, WITHOUT start/end tokens: a list of length T."""
    ids: list[int] = []
    for piece in _PIECE.findall(clean_text(text)):
      symbols = piece.encode("utf-8").decode("latin-1").translate(_BYTE_SYMBOL)
      ids.extend(self._piece_ids(symbols))
    return ids

  def tokenize(self, texts: Sequence[str],
               context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
    """Rows ``[start, ids..., end, 0...]``: int32 array ``[len(texts), context_length]``.

    A text whose row would be longer is cut to ``context_length`` ids and its last id set to
    the end token (so every row holds exactly one end token, the row's largest id).
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError("tokenize() wants a list of strings, got a single "
                      f"{type(texts).__name__}: pass [text]")
    if (isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer))
            or context_length < 2):
      raise ValueError(f"context_length must be an int >= 2 (room for the start and end "
                       f"tokens), got {context_length!r}")
    texts = list(texts)
    rows = np.zeros((len(texts), int(context_length)), np.int32)
    for r, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"tokenize() wants strings; texts[{r}] is a {type(text).__name__}")
      ids = [SOT_ID, *self.encode(text), EOT_ID]
      if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = EOT_ID
      rows[r, :len(ids)] = ids
    return rows

  __call__ = tokenize

  @staticmethod
  def eot_positions(tokens: np.ndarray) -> np.ndarray:
    """See :func:`eot_positions`."""
    return eot_positions(tokens)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids`` (1-D), for inspection; zero padding is NOT removed (0 is "!")."""
    out = bytearray()
    for i in ids:
      name = self.names[int(i)]
      if name in (SOT_NAME, EOT_NAME):
        out += name.encode("utf-8")
        continue
      word_end = name.endswith(END_OF_WORD)
      if word_end:
        name = name[:-len(END_OF_WORD)]
      out += bytes(_SYMBOL_TO_BYTE[c] for c in name)
      if word_end:
        out += b" "
    return out.decode("utf-8", errors="replace").strip()


def eot_positions(tokens: np.ndarray) -> np.ndarray:
  """Index of the end token in each row of ``tokens`` ``[N, L]`` -> ``[N]`` int32.

  It is the row's argmax (the end token has the largest id), which is how CLIP picks the
  feature the text tower pools.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"eot_positions wants token ids [N, L], got shape {tokens.shape}")
  return np.argmax(tokens, axis=-1).astype(np.int32)


# ---------------------------------------------------------------------- vocabulary files
def _byte_level_names() -> list[str]:
  """The first 512 vocabulary entries: each byte symbol, then each with ``</w>``."""
  symbols = [_BYTE_SYMBOL[b] for b in _BYTE_ORDER]
  return symbols + [s + END_OF_WORD for s in symbols]


def _read_open_clip(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """open_clip's merge list: a header line, then one ``left right`` pair per line."""
  try:
    with gzip.open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: unreadable CLIP merge list (expected the gzip-compressed UTF-8 "
                     f"{OPEN_CLIP_VOCAB}; {type(e).__name__}: {e})") from e
  lines = text.split("\n")
  merges = _parse_merges(lines[1:1 + NUM_MERGES], path, first_line=2)
  if len(merges) < NUM_MERGES:
    raise ValueError(f"{path}: expected a header line then at least {NUM_MERGES:,} merges "
                     f"(CLIP's 49,408-id vocabulary), found {len(merges):,}")
  names = _byte_level_names() + ["".join(m) for m in merges] + [SOT_NAME, EOT_NAME]
  ids = {name: i for i, name in enumerate(names)}
  if len(ids) != VOCAB_SIZE:
    raise ValueError(f"{path}: the merges give {len(ids):,} distinct tokens, expected "
                     f"{VOCAB_SIZE:,} (repeated merges?)")
  return ids, merges


def _parse_merges(lines: Sequence[str], path: Path, first_line: int) -> list[tuple[str, str]]:
  merges = []
  for k, line in enumerate(lines):
    parts = line.split()
    if not parts and k == len(lines) - 1:
      break  # the file's final newline
    if len(parts) != 2:
      raise ValueError(f"{path}: line {first_line + k} should be a merge 'left right', "
                       f"got {line[:60]!r}")
    merges.append((parts[0], parts[1]))
  return merges


def _read_hf(vocab_file: Path, merges_file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """Hugging Face's pair: ``vocab.json`` (token -> id) and ``merges.txt`` (``#version`` line,
  then one pair per line)."""
  for p in (vocab_file, merges_file):
    if not p.is_file():
      raise FileNotFoundError(f"{p} not found (a Hugging Face CLIP vocabulary is "
                              f"{HF_VOCAB} and {HF_MERGES} side by side)")
  try:
    ids = json.loads(vocab_file.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{vocab_file}: not a JSON token->id table ({e})") from e
  if (not isinstance(ids, dict) or len(ids) != VOCAB_SIZE
          or sorted(ids.values()) != list(range(VOCAB_SIZE))):
    size = len(ids) if isinstance(ids, (dict, list)) else type(ids).__name__
    raise ValueError(f"{vocab_file}: expected a JSON object mapping {VOCAB_SIZE:,} tokens to "
                     f"the ids 0..{VOCAB_SIZE - 1}, got {size}")
  if ids.get(SOT_NAME) != SOT_ID or ids.get(EOT_NAME) != EOT_ID:
    raise ValueError(f"{vocab_file}: expected {SOT_NAME}={SOT_ID} and {EOT_NAME}={EOT_ID}, got "
                     f"{ids.get(SOT_NAME)} and {ids.get(EOT_NAME)}")
  try:
    lines = merges_file.read_text(encoding="utf-8").split("\n")
  except UnicodeDecodeError as e:
    raise ValueError(f"{merges_file}: not UTF-8 text ({e})") from e
  start = 1 if lines and lines[0].startswith("#version") else 0
  merges = _parse_merges(lines[start:], merges_file, first_line=start + 1)
  if len(merges) != NUM_MERGES:
    raise ValueError(f"{merges_file}: expected {NUM_MERGES:,} merges (CLIP's 49,408-id "
                     f"vocabulary), found {len(merges):,}")
  missing = [n for n in _byte_level_names() + ["".join(m) for m in merges] if n not in ids]
  if missing:
    raise ValueError(f"{vocab_file}: {len(missing)} tokens of {merges_file.name} are missing "
                     f"(first: {missing[0]!r}); the two files do not belong together")
  return ids, merges


# ---------------------------------------------------------------------- finding the file
def _vocabulary_in(folder: Path) -> Path | None:
  """The vocabulary inside ``folder``: the open_clip ``.gz`` file, or the folder itself when it
  holds Hugging Face's pair; None if neither."""
  if (folder / OPEN_CLIP_VOCAB).is_file():
    return folder / OPEN_CLIP_VOCAB
  if (folder / HF_VOCAB).is_file() and (folder / HF_MERGES).is_file():
    return folder
  return None


def _open_clip_vocabulary() -> Path | None:
  """open_clip's packaged vocabulary, located without importing open_clip (its import pulls
  in torch and torchvision)."""
  try:
    spec = importlib.util.find_spec("open_clip")
  except (ImportError, ValueError):
    return None
  for folder in (spec.submodule_search_locations or []) if spec is not None else []:
    candidate = Path(folder) / OPEN_CLIP_VOCAB
    if candidate.is_file():
      return candidate
  return None


def find_vocabulary(weights_path: str | None = None, vocab_path: str | None = None) -> str:
  """Path of the CLIP vocabulary to use (a ``.gz`` file, or a Hugging Face file / folder).

  In order: ``vocab_path`` if given (a file, or a folder holding one); the vocabulary beside
  the weights file, or inside the weights folder; open_clip's packaged copy when open_clip is
  installed. Otherwise ``FileNotFoundError`` naming the places searched.
  """
  if vocab_path is not None:
    given = Path(vocab_path).expanduser()
    if given.is_dir():
      found = _vocabulary_in(given)
      if found is None:
        raise FileNotFoundError(
            f"CLIP vocabulary: folder {given} has neither {OPEN_CLIP_VOCAB} nor "
            f"{HF_VOCAB} + {HF_MERGES}")
      return str(found)
    if not given.is_file():
      raise FileNotFoundError(f"CLIP vocabulary file not found: {given}")
    return str(given)
  searched = []
  if weights_path is not None:
    weights = Path(weights_path).expanduser()
    folder = weights if weights.is_dir() else weights.parent
    searched.append(str(folder))
    found = _vocabulary_in(folder)
    if found is not None:
      return str(found)
  packaged = _open_clip_vocabulary()
  if packaged is not None:
    return str(packaged)
  searched.append("the open_clip package (not installed)")
  raise FileNotFoundError(
      f"no CLIP vocabulary found: looked for {OPEN_CLIP_VOCAB} or {HF_VOCAB} + {HF_MERGES} in "
      f"{'; '.join(searched)}; give it with data.clip_vocab=FILE")


def load_tokenizer(weights_path: str | None = None,
                   vocab_path: str | None = None) -> ClipTokenizer:
  """The tokenizer for these weights (see :func:`find_vocabulary`), cached by resolved path."""
  return _load_resolved(str(Path(find_vocabulary(weights_path, vocab_path)).resolve()))


@functools.lru_cache(maxsize=8)
def _load_resolved(path: str) -> ClipTokenizer:
  return ClipTokenizer.from_file(path)
