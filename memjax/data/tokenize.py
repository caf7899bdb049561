"""Tokenizers for text datasets: a tokenizer.json file, a byte-level BPE trained here, raw bytes.

All three share one small interface, `TextTokenizer`: `vocab_size`, `encode_batch(texts)` giving
one int array a text, `decode(ids)`, `to_json()` (the canonical serialisation, whose sha256 is the
`fingerprint` that keys dataset caches) and `save_to_workdir(workdir)`.

* ``"file"``   a Hugging Face ``tokenizer.json`` given by path, loaded with
               ``tokenizers.Tokenizer.from_file`` (GPT-2's has V=50257).
* ``"bpe"``    a byte-level BPE of ``vocab_size`` tokens trained on the corpus with the `tokenizers`
               library (ByteLevel pre-tokenizer without prefix space, BpeTrainer seeded with the 256
               byte symbols, so every text encodes and decodes back exactly). Training is
               deterministic for a given corpus; `text.py` caches the trained tokenizer.json.
* ``"bytes"``  the UTF-8 bytes of the text, V=256, no training and no library.

A run's workdir gets ``tokenizer.json`` (file and bpe) or ``tokenizer_bytes.json`` (a small spec
for bytes); `load_tokenizer_from_workdir` reads either back.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from memjax.engine import jsonio

TOKENIZER_KINDS = ("file", "bpe", "bytes")
NUM_BYTES = 256
# A byte-level BPE starts from the 256 byte symbols; it needs at least one merge to be a BPE.
MIN_BPE_VOCAB = NUM_BYTES + 1
# Trained token ids are stored as uint16; GPT-2's 50,257 is the largest vocabulary in the papers
# this project reproduces, so larger BPE vocabularies would only waste embedding parameters.
MAX_BPE_VOCAB = 2**16
BYTES_SPEC_FILENAME = "tokenizer_bytes.json"
HF_TOKENIZER_FILENAME = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """Which tokenizer to use.

  Attributes:
    kind: one of TOKENIZER_KINDS.
    path: for "file": the tokenizer.json to load.
    vocab_size: for "bpe": the number of tokens to train, in [MIN_BPE_VOCAB, MAX_BPE_VOCAB].
    min_frequency: for "bpe": a pair must occur this often to be merged.
    max_train_chars: for "bpe": train on the first documents up to this many characters
      (None: the whole corpus). Bounds training time and memory on large corpora.
  """
  kind: str = "bpe"
  path: str | None = None
  vocab_size: int | None = 2048
  min_frequency: int = 2
  max_train_chars: int | None = None


def validate_tokenizer_config(cfg: TokenizerConfig) -> None:
  """Cheap checks of a TokenizerConfig, with messages naming the field and allowed values."""
  if cfg.kind not in TOKENIZER_KINDS:
    raise ValueError(f"tokenizer kind {cfg.kind!r} is not supported; use one of {TOKENIZER_KINDS}.")
  if cfg.kind == "file":
    if not cfg.path:
      raise ValueError("tokenizer kind 'file' needs path: the tokenizer.json to load.")
    if not os.path.isfile(cfg.path):
      raise FileNotFoundError(
          f"the tokenizer file {cfg.path!r} does not exist; fix the tokenizer path.")
  if cfg.kind == "bpe":
    if cfg.vocab_size is None or not MIN_BPE_VOCAB <= cfg.vocab_size <= MAX_BPE_VOCAB:
      raise ValueError(
          f"tokenizer vocab_size {cfg.vocab_size} is out of range for a byte-level BPE; use "
          f"{MIN_BPE_VOCAB} (256 bytes + 1 merge) to {MAX_BPE_VOCAB}.")
    if cfg.min_frequency < 1:
      raise ValueError(f"tokenizer min_frequency must be >= 1, got {cfg.min_frequency}.")
    if cfg.max_train_chars is not None and cfg.max_train_chars < 1:
      raise ValueError(f"tokenizer max_train_chars must be None or >= 1, got "
                       f"{cfg.max_train_chars}.")


class TextTokenizer(abc.ABC):
  """The interface the dataset builder and reports use."""

  kind: str
  vocab_size: int

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """One int64 id array a text, no special tokens added."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """The text of a sequence of ids."""

  @abc.abstractmethod
  def to_json(self) -> str:
    """The canonical serialisation, enough to rebuild the tokenizer."""

  @abc.abstractmethod
  def save_to_workdir(self, workdir: str) -> str:
    """Writes the tokenizer file into workdir; returns its path."""

  @property
  def fingerprint(self) -> str:
    """sha256 of the canonical json: equal fingerprints tokenize identically."""
    return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


class HFTokenizer(TextTokenizer):
  """A `tokenizers.Tokenizer` (loaded from tokenizer.json or trained as byte-level BPE)."""

  def __init__(self, tokenizer, kind: str):
    self.tokenizer = tokenizer
    self.kind = kind
    # Added tokens (e.g. GPT-2's <|endoftext|>) are real ids, so they count. The largest id + 1,
    # not the number of tokens: a vocabulary with gaps in its ids needs rows up to its largest.
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1 if vocab else 0

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    # No special tokens: sequences are plain text, with no BOS (see DESIGN.md).
    encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]

  def decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def to_json(self) -> str:
    return self.tokenizer.to_str()

  def save_to_workdir(self, workdir: str) -> str:
    return _write_text_atomically(os.path.join(workdir, HF_TOKENIZER_FILENAME), self.to_json())


class ByteTokenizer(TextTokenizer):
  """Token i is byte i of the UTF-8 encoding."""

  kind = "bytes"
  vocab_size = NUM_BYTES

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
            for text in texts]

  def decode(self, ids: Iterable[int]) -> str:
    # A sequence cut mid-character decodes with U+FFFD there rather than failing a report.
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

  def to_json(self) -> str:
    return json.dumps({"memjax_tokenizer": "bytes", "vocab_size": NUM_BYTES}, sort_keys=True)

  def save_to_workdir(self, workdir: str) -> str:
    return _write_text_atomically(os.path.join(workdir, BYTES_SPEC_FILENAME), self.to_json())


def load_tokenizer_file(path: str) -> HFTokenizer:
  """Loads a Hugging Face tokenizer.json; a bad file gives a ValueError that names it."""
  from tokenizers import Tokenizer

  if not os.path.isfile(path):
    raise FileNotFoundError(f"the tokenizer file {path!r} does not exist; fix the tokenizer path.")
  try:
    tokenizer = Tokenizer.from_file(path)
  except Exception as e:  # The Rust side raises a bare Exception with a parse message.
    raise ValueError(
        f"the tokenizer file {path!r} does not load as a Hugging Face tokenizer.json ({e}); "
        "give the path of a valid tokenizer.json (e.g. GPT-2's).") from e
  return HFTokenizer(tokenizer, kind="file")


def planned_vocab_size(kind: str, vocab_size: int = 0, path: str = "") -> int:
  """The vocabulary a tokenizer of `kind` will have, without reading a corpus (a dry run): BPE's
  configured size, 256 bytes, or the size of the tokenizer.json at `path` (kind "file")."""
  if kind == "bpe":
    return vocab_size
  if kind == "bytes":
    return NUM_BYTES
  return load_tokenizer_file(path).vocab_size


def train_byte_level_bpe(documents: Iterator[str], cfg: TokenizerConfig) -> HFTokenizer:
  """Trains a byte-level BPE of cfg.vocab_size tokens on the documents."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  validate_tokenizer_config(cfg)
  tokenizer = Tokenizer(models.BPE())
  # No prefix space, so decode(encode(text)) == text exactly.
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=cfg.vocab_size,
      min_frequency=cfg.min_frequency,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=[],
      show_progress=False)
  chars = [0]  # characters trained on: they tell whether max_train_chars cut the corpus

  def counted(texts):
    for text in texts:
      chars[0] += len(text)
      yield text

  tokenizer.train_from_iterator(counted(_take_chars(documents, cfg.max_train_chars)), trainer)
  trained = HFTokenizer(tokenizer, kind="bpe")
  if trained.vocab_size < cfg.vocab_size:
    cut = bool(cfg.max_train_chars) and chars[0] >= cfg.max_train_chars
    raise ValueError(
        f"BPE training on this corpus reached only {trained.vocab_size} tokens, fewer than the "
        f"requested tokenizer vocab_size {cfg.vocab_size}: lower vocab_size to at most "
        f"{trained.vocab_size} or use a larger corpus"
        # The corpus may be large and the cut what limits it (a corpus shorter than the cut was
        # read whole: raising it would not help).
        + (f", or raise max_train_chars (it trained on the first {cfg.max_train_chars:,} "
           "characters)." if cut else "."))
  return trained


def _take_chars(documents: Iterator[str], max_chars: int | None) -> Iterator[str]:
  """The first documents, up to max_chars characters in all (the last one cut)."""
  chars_left = max_chars
  for document in documents:
    if chars_left is None:
      yield document
      continue
    yield document[:chars_left]
    chars_left -= min(len(document), chars_left)
    if chars_left <= 0:
      return


def byte_tokenizer() -> ByteTokenizer:
  return ByteTokenizer()


def tokenizer_from_json(json_text: str) -> TextTokenizer:
  """Rebuilds a tokenizer from its `to_json()` (a bytes spec or a Hugging Face json)."""
  from tokenizers import Tokenizer

  spec = json.loads(json_text)
  if spec.get("memjax_tokenizer") == "bytes":
    return ByteTokenizer()
  return HFTokenizer(Tokenizer.from_str(json_text), kind="file")


def load_tokenizer_from_workdir(workdir: str) -> TextTokenizer:
  """The tokenizer a run saved into its workdir: the one its text_dataset.json names (a workdir
  may also hold an earlier run's tokenizer of the other kind), else whichever is there."""
  filenames = (BYTES_SPEC_FILENAME, HF_TOKENIZER_FILENAME)
  try:
    with open(os.path.join(workdir, "text_dataset.json"), encoding="utf-8") as f:
      named = json.load(f).get("tokenizer_file")
    if named in filenames:
      filenames = (named,)
  except (OSError, ValueError, AttributeError):
    pass
  for filename in filenames:
    path = os.path.join(workdir, filename)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        return tokenizer_from_json(f.read())
  raise FileNotFoundError(
      f"no {HF_TOKENIZER_FILENAME} or {BYTES_SPEC_FILENAME} in workdir {workdir!r}.")


def _write_text_atomically(path: str, text: str) -> str:
  """Writes via a temporary file and a rename, so readers never see half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with jsonio.swapped_in(path, f"{path}.tmp{os.getpid()}") as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  return path
