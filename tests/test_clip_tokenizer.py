"""CLIP tokenizer (mlzsl_jax.backbones.clip_tokenizer) against open_clip's and Hugging Face's.

Reference A (THE reference): open_clip's ``tokenizer.py``, loaded on its own from the installed
package folder (``import open_clip`` would need torchvision). Reference B: transformers'
``CLIPTokenizer`` (in transformers 5 it is the ``tokenizers``-backed one; there is no slow one)
built from ``vocab.json`` + ``merges.txt`` written here from open_clip's ``.gz``.

Strings: every NUS-WIDE and Open Images label name used by the MLZSL benchmarks
(tests/data/label_names_*.txt.gz, sources in their first line), the names in two prompts, and
hand-written and random texts covering Unicode, HTML entities, mojibake, whitespace, numbers,
the empty string and texts longer than the context.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import clip_reference as ref

from mlzsl_jax.backbones import clip_tokenizer as ct

DATA = Path(__file__).parent / "data"
GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"


# ----------------------------------------------------------------------------- strings
def _label_names(name: str) -> list[str]:
  with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
    return [line for line in f.read().split("\n") if line and not line.startswith("#")]


NUS_WIDE = _label_names("label_names_nus_wide.txt.gz")
OPEN_IMAGES = _label_names("label_names_open_images.txt.gz")
LABEL_NAMES = NUS_WIDE + OPEN_IMAGES

HAND_WRITTEN = [
    "", " ", "\t\n  \r\n", "a", "A", "I", "x" * 300, "!!!", "?!?!...", "---", "(((())))",
    "Scuba diving (underwater)", "Rock 'n' roll", "Don't stop", "It's the cat's toy",
    "we'll, they've, I'm, she'd, you're, can't", "'S 'T 'RE 'VE 'M 'LL 'D", "'ſ", "'ſtar",
    "O'Neill's pub", "mother-in-law", "T-shirt", "e-mail", "well--known", "a/b/c", "C++ & C#",
    "snake_case_name", "CamelCaseName", "hello,world", "end.", "...start", "@user #tag $5",
    # whitespace
    "tabs\tand\nnewlines\r\nand  many    spaces", "  leading and trailing  ", "nbsp\u00a0here",
    "ideographic\u3000space", "line\u2028separator", "\x1c\x1d\x1e\x1f sep", "em\u2003space",
    "vertical\x0btab\x0cfeed", "next\x85line",
    # digits and numbers with units
    "5km", "3.5 kg", "100%", "1,000,000", "2023-01-01", "12:30pm", "10^6", "-40°C", "98.6°F",
    "½ cup", "x²", "Ⅻ", "٣٤٥", "१२३", "１２３", "0", "007", "3rd 21st 42nd", "π≈3.14159",
    "$1.99", "€20", "¥500", "£3", "₹100", "H2O", "CO₂", "1e-3", "0x1F",
    # HTML entities (decoded twice, like the reference)
    "Tom &amp; Jerry", "rock &#39;n&#39; roll", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;", "&amp;lt;",
    "caf&eacute;", "&nbsp;x&nbsp;", "&#x1F600;", "&#128512;", "&quot;quoted&quot;", "&copy; 2020",
    "&notanentity;", "& amp;", "AT&T", "&", "&#", "&#;",
    # mojibake and other things ftfy repairs
    "cafÃ©", "Ã©tÃ©", "Ã¼ber", "â€œquotedâ€\x9d", "donâ€™t", "ðŸ˜€", "naÃ¯ve", "SÃ£o Paulo",
    "“curly” ‘quotes’", "ﬁne ﬂour", "ＦＵＬＬＷＩＤＴＨ", "ｶﾀｶﾅ", "\x1b[31mred\x1b[0m", "soft\xadhyphen",
    "bell\x07char", "nul\x00char", "del\x7fchar", "c1\x80\x9fcontrol", "re\u0301sume\u0301",
    # Unicode: accents, scripts, emoji, combining marks, zero-width characters
    "Crème brûlée", "Citroën", "Kakigōri", "Mikoyan–gurevich mig-15", "ÅNGSTRÖM", "straße",
    "İstanbul", "ΣΊΣΥΦΟΣ", "KELVIN \u212a", "Ωmega", "日本語のテキスト", "中文标签", "한국어",
    "العربية نص", "עברית", "हिन्दी", "ไทย", "Ελληνικά", "русский текст", "ქართული",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🏳️‍🌈", "a😀b", "cat🐈dog", "★☆✓✗", "→←↑↓",
    "zero\u200bwidth", "zwnj\u200cand\u200dzwj", "word\u2060joiner", "\ufeffbom",
    "x\u0301\u0302\u0303",
    "\u0301leading combining", "e\u0308", "Z̴̧̛a̸l̵g̶o̷", "variation\ufe0f", "\U0001d400\U0001d401",
    "\U00020000", "\U0010fffd", "\ue000private",
    # the special tokens as text (open_clip recognises ITS spelling, case-insensitively)
    "<start_of_text>", "<end_of_text>", "a <end_of_text> b", "<START_OF_TEXT>x", "<ſtart_of_text>",
    "<|startoftext|>", "<|endoftext|>", "<start_of_text><end_of_text>", "<start of text>",
]

# Texts around and past the context length: label names joined until enough tokens.
LONG = [" ".join(OPEN_IMAGES[k:k + n]) for k, n in [(0, 20), (100, 40), (500, 70), (900, 120)]]
LONG += ["a " * n for n in (74, 75, 76, 77, 100)]
LONG += ["word " * 75 + "end", "x" * 1000, "🙂" * 100, "1" * 200, "&amp;" * 100]

PROMPTS = [t.format(n) for t in ("a photo of a {}.", "There is a {} in the scene")
           for n in LABEL_NAMES]

_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 3
    + " " * 30 + "\t\n\r\x0b\x0c\xa0\u3000\u2028"
    + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" * 2
    + "àáâãäåçèéêëìíîïñòóôõöùúûüýÿßøæœÀÉÎÕÜÇ"
    + "\u0300\u0301\u0302\u0303\u0308\u0327\u20dd"
    + "日本語中文字漢字かなカナ한국어" + "العربية" + "עברית" + "हिन्दी" + "ΑΒΓαβγ" + "ДЖЯжя"
    + "😀🐈👍🏽❤️🇫🇷\u200d\ufe0f" + "\u200b\u200c\u2060\ufeff\xad" + "½²Ⅻ٣١२３"
    + "“”‘’–—…ﬁﬂＡ" + "Ã©â€™" + "\x00\x07\x1b\x7f\x85\x9d"
)


def _random_texts(count: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  texts = ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 60)))
           for _ in range(count)]
  entities = ["&amp;", "&#39;", "&lt;", "&gt;", "&quot;", "&eacute;", "&amp;amp;", "&#x263A;"]
  for i in range(0, count, 5):  # sprinkle entities and the special literals
    texts[i] += rng.choice(entities + ["<end_of_text>", "'s", "'ll"])
  return texts


RANDOM = _random_texts(600)
ALL_TEXTS = LABEL_NAMES + PROMPTS + HAND_WRITTEN + LONG + RANDOM


# ----------------------------------------------------------------------------- references
@pytest.fixture(scope="module")
def open_clip_module():
  """open_clip's tokenizer.py, run on its own (no ``import open_clip``)."""
  ref.need("torch")  # skips here, fails in CI (MLZSL_REQUIRE_CLIP_REFERENCES=1)
  ref.need("ftfy")
  folder = Path(ref.open_clip_dir())
  loader = importlib.util.spec_from_file_location("_open_clip_tokenizer_reference",
                                                  folder / "tokenizer.py")
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  module.gz_path = folder / GZ_NAME
  return module


@pytest.fixture(scope="module")
def ours(open_clip_module) -> ct.ClipTokenizer:
  return ct.ClipTokenizer.from_file(open_clip_module.gz_path)


@pytest.fixture(scope="module")
def hf_folder(open_clip_module, tmp_path_factory) -> Path:
  """vocab.json + merges.txt written from the .gz (the layout of Hugging Face CLIP folders)."""
  lines = gzip.open(open_clip_module.gz_path).read().decode("utf-8").split("\n")
  merges = lines[1:49152 - 256 - 2 + 1]
  byte_chars = list(open_clip_module.bytes_to_unicode().values())
  names = (byte_chars + [c + "</w>" for c in byte_chars] + [m.replace(" ", "") for m in merges]
           + ["<|startoftext|>", "<|endoftext|>"])
  folder = tmp_path_factory.mktemp("hf_clip")
  (folder / "vocab.json").write_text(
      json.dumps({n: i for i, n in enumerate(names)}, ensure_ascii=False), encoding="utf-8")
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                     encoding="utf-8")
  return folder


def _hf_ids(hf_tokenizer, texts: list[str], context_length: int = 77) -> np.ndarray:
  """Hugging Face ids in open_clip's layout (HF pads with the end id; we zero-pad)."""
  enc = hf_tokenizer(texts, padding="max_length", truncation=True, max_length=context_length,
                     return_tensors="np")
  return np.where(enc["attention_mask"] == 1, enc["input_ids"], 0).astype(np.int64)


# ----------------------------------------------------------------------------- tests
def test_string_set_is_large_enough():
  assert len(NUS_WIDE) == 81 + 925 and len(OPEN_IMAGES) == 7186 + 400
  assert len(ALL_TEXTS) >= 2000


def test_identical_to_open_clip(open_clip_module, ours):
  ref = open_clip_module.tokenize(ALL_TEXTS).numpy()
  got = ours.tokenize(ALL_TEXTS)
  assert got.dtype == np.int32 and got.shape == (len(ALL_TEXTS), 77)
  bad = np.flatnonzero((got != ref).any(axis=1))
  assert bad.size == 0, (f"{bad.size} of {len(ALL_TEXTS)} strings differ from open_clip, e.g. "
                         f"{[ALL_TEXTS[i] for i in bad[:5]]!r}")
  # Other context lengths, including the shortest legal one.
  for length in (2, 5, 16):
    assert np.array_equal(ours.tokenize(LONG + HAND_WRITTEN, length),
                          open_clip_module.tokenize(LONG + HAND_WRITTEN, length).numpy())
  # encode() is the same as the reference's, without start / end.
  ref_tok = open_clip_module._tokenizer
  for text in HAND_WRITTEN + RANDOM[:50]:
    assert ours.encode(text) == ref_tok.encode(text), text


def test_rows_truncation_and_eot_positions(ours, open_clip_module):
  rows = ours.tokenize(LONG)
  assert (rows[:, 0] == ct.SOT_ID).all()
  eot = ours.eot_positions(rows)
  assert eot.shape == (len(LONG),)
  assert np.array_equal(eot, rows.argmax(-1))
  assert (rows[np.arange(len(LONG)), eot] == ct.EOT_ID).all()
  long_rows = [i for i, t in enumerate(LONG) if len(ours.encode(t)) > 75]
  assert len(long_rows) >= 5 and (eot[long_rows] == 76).all()
  # The cut keeps the first 75 text ids, like the reference.
  text = LONG[long_rows[0]]
  assert rows[long_rows[0], 1:76].tolist() == ours.encode(text)[:75]
  empty = ours.tokenize([""])
  assert empty[0, :2].tolist() == [ct.SOT_ID, ct.EOT_ID] and not empty[0, 2:].any()
  assert ours.tokenize([]).shape == (0, 77)
  assert ct.eot_positions(ours.tokenize(["a photo of a dog."]))[0] == 7
  assert ours.decode(ours.encode("A photo of a Café!")) == "a photo of a café !"


def test_vocabulary_facts(ours):
  assert len(ours.ids) == ct.VOCAB_SIZE == 49408
  assert ours.ids["<|startoftext|>"] == 49406 and ours.ids["<|endoftext|>"] == 49407
  assert len(ours.ranks) == 48894


def test_hugging_face_files_give_the_same_ids(ours, hf_folder):
  texts = ALL_TEXTS
  from_folder = ct.ClipTokenizer.from_file(hf_folder)
  assert np.array_equal(from_folder.tokenize(texts), ours.tokenize(texts))
  for one_file in ("vocab.json", "merges.txt"):
    one = ct.ClipTokenizer.from_file(hf_folder / one_file)
    assert np.array_equal(one.tokenize(HAND_WRITTEN), ours.tokenize(HAND_WRITTEN))
  assert ct.find_vocabulary(str(hf_folder / "model.safetensors"), None) == str(hf_folder)
  assert ct.find_vocabulary(str(hf_folder), None) == str(hf_folder)


def test_against_transformers(ours, hf_folder):
  """Hugging Face agrees on the pieces and merges; the clean-up is where they part.

  Known, expected disagreements (open_clip is the reference): HF has no ftfy and no HTML
  unescaping; HF's split pattern is case-sensitive (open_clip's "'s" also takes "'ſ", long s);
  HF lower-cases a final capital sigma to "σ" where Python gives "ς"; the special-token texts
  are spelled differently (open_clip "<end_of_text>", HF "<|endoftext|>").
  """
  transformers = ref.need("transformers")
  hf = transformers.CLIPTokenizer.from_pretrained(str(hf_folder))
  texts = LABEL_NAMES + HAND_WRITTEN + LONG + RANDOM
  specials = ("<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>")

  def quirk(text: str) -> bool:
    return "ſ" in text or "Σ" in text or any(s in text.lower() for s in specials)

  # 1. Given our cleaned text, HF gives our ids (pre-tokenising, byte symbols, merges, rows).
  cleaned = [ct.clean_text(t) for t in texts]
  same_clean = [c for c in cleaned if not quirk(c)]
  assert len(same_clean) > 9000
  assert np.array_equal(_hf_ids(hf, same_clean), ours.tokenize(same_clean).astype(np.int64))
  # 2. Given the raw text, HF differs only where ftfy / html.unescape change more than NFC
  # would, or on the quirks above.
  differ = np.flatnonzero((_hf_ids(hf, texts) != ours.tokenize(texts)).any(axis=1))
  unexplained = [texts[i] for i in differ if not quirk(texts[i]) and
                 html.unescape(html.unescape(ct.ftfy.fix_text(texts[i])))
                 == unicodedata.normalize("NFC", texts[i])]
  assert not unexplained, unexplained[:5]
  # Two Open Images names are among the clean-up differences: "AdÃ©lie penguin" (mojibake in
  # the class list, fixed by ftfy) and "Dame’s rocket" (curly apostrophe, straightened).
  assert {LABEL_NAMES[i] for i in differ if i < len(LABEL_NAMES)} == {
      "AdÃ©lie penguin", "Dame’s rocket"}


# ----------------------------------------------------------------------------- loading / errors
def test_find_vocabulary_order(tmp_path, open_clip_module):
  gz = open_clip_module.gz_path
  open_clip_was_imported = "open_clip" in sys.modules
  weights = tmp_path / "ViT-B-32.safetensors"
  weights.write_bytes(b"")
  # Nothing beside the weights -> open_clip's packaged copy (found without importing it).
  assert ct.find_vocabulary(str(weights), None) == str(gz)
  assert ct.find_vocabulary(None, None) == str(gz)
  assert open_clip_was_imported or "open_clip" not in sys.modules
  # A copy beside the weights wins over the packaged one; an explicit path wins over both.
  (tmp_path / GZ_NAME).write_bytes(gz.read_bytes())
  assert ct.find_vocabulary(str(weights), None) == str(tmp_path / GZ_NAME)
  assert ct.find_vocabulary(str(weights), str(gz)) == str(gz)
  assert ct.find_vocabulary(None, str(tmp_path)) == str(tmp_path / GZ_NAME)
  # Cached by resolved path.
  assert ct.load_tokenizer(str(weights)) is ct.load_tokenizer(None, str(tmp_path / GZ_NAME))


def test_missing_vocabulary(tmp_path, monkeypatch):
  monkeypatch.setattr(ct, "_open_clip_vocabulary", lambda: None)
  weights = tmp_path / "model.safetensors"
  with pytest.raises(FileNotFoundError) as info:
    ct.find_vocabulary(str(weights), None)
  message = str(info.value)
  assert str(tmp_path) in message and "open_clip" in message and "data.clip_vocab=" in message
  assert GZ_NAME in message and "vocab.json" in message and "\n" not in message
  with pytest.raises(FileNotFoundError, match="nowhere.gz"):
    ct.find_vocabulary(None, str(tmp_path / "nowhere.gz"))
  with pytest.raises(FileNotFoundError, match="neither"):
    ct.load_tokenizer(None, str(tmp_path))


def test_malformed_vocabularies(tmp_path, open_clip_module, hf_folder):
  raw = open_clip_module.gz_path.read_bytes()
  cut = tmp_path / "cut.txt.gz"
  cut.write_bytes(raw[: len(raw) // 3])  # a truncated download
  with pytest.raises(ValueError, match="cut.txt.gz"):
    ct.ClipTokenizer.from_file(cut)
  short = tmp_path / "short.txt.gz"  # a valid gzip with too few merges
  lines = gzip.decompress(raw).decode("utf-8").split("\n")
  short.write_bytes(gzip.compress("\n".join(lines[:1001]).encode("utf-8")))
  with pytest.raises(ValueError, match=r"short\.txt\.gz.*48,894 merges.*found 1,000"):
    ct.ClipTokenizer.from_file(short)
  broken = tmp_path / "broken.txt.gz"
  lines[10] = "one two three"
  broken.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
  with pytest.raises(ValueError, match=r"broken\.txt\.gz: line 11"):
    ct.ClipTokenizer.from_file(broken)
  not_gz = tmp_path / "vocab.bin"
  not_gz.write_bytes(b"hello")
  with pytest.raises(ValueError, match="not a CLIP vocabulary"):
    ct.ClipTokenizer.from_file(not_gz)
  hf_bad = tmp_path / "hf_bad"
  hf_bad.mkdir()
  (hf_bad / "vocab.json").write_text(json.dumps({"a": 0}))
  (hf_bad / "merges.txt").write_text((hf_folder / "merges.txt").read_text(encoding="utf-8"),
                                     encoding="utf-8")
  with pytest.raises(ValueError, match=r"vocab\.json.*49,408"):
    ct.ClipTokenizer.from_file(hf_bad)
  (hf_bad / "vocab.json").write_text((hf_folder / "vocab.json").read_text(encoding="utf-8"),
                                     encoding="utf-8")
  (hf_bad / "merges.txt").write_text("#version: 0.2\ni n\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"merges\.txt.*found 1\b"):
    ct.ClipTokenizer.from_file(hf_bad)


def test_missing_dependency_message(monkeypatch):
  monkeypatch.setitem(sys.modules, "ftfy", None)  # makes "import ftfy" fail
  spec = importlib.util.spec_from_file_location("_clip_tokenizer_without_ftfy", ct.__file__)
  with pytest.raises(ImportError, match="pip install ftfy regex"):
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_bad_arguments(ours):
  with pytest.raises(TypeError, match="list of strings"):
    ours.tokenize("a photo of a cat")
  with pytest.raises(TypeError, match=r"texts\[1\]"):
    ours.tokenize(["ok", 3])
  for bad in (1, 0, -5, 2.5, True):
    with pytest.raises(ValueError, match="context_length"):
      ours.tokenize(["a"], bad)
  with pytest.raises(ValueError, match="shape"):
    ct.eot_positions(np.zeros(5, np.int32))


def test_speed(ours):
  import time

  texts = LABEL_NAMES[:2000]
  fresh = ct.ClipTokenizer(ours.ids, list(ours.ranks), "speed")  # cold cache
  start = time.perf_counter()
  fresh.tokenize(texts)
  assert time.perf_counter() - start < 2.0
