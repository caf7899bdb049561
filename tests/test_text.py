"""Tests of the text pipeline: sources, tokenizers, sequences, dedup, pools, cache, bad input.

All data is written into tmp_path; nothing touches the network. Most tests use the byte tokenizer,
whose ids are predictable, so counts of sequences can be checked exactly.
"""

import gzip
import itertools
import json
import os
import time

import numpy as np
import pytest

from memjax.data import corpus as corpus_lib
from memjax.data import tokenize as tokenize_lib
from memjax.data.text import (PoolSizes, SourceConfig, TokenizerConfig, build_text_dataset,
                              deduplicate_sequences, span_overlap, split_pools,
                              tokenize_into_sequences)

BYTES = TokenizerConfig(kind="bytes")
WORDS = ("memory", "model", "token", "gradient", "capacity", "sample", "bit", "layer", "train",
         "the", "of", "a", "and", "is", "to", "in", "that", "with", "data", "loss")


def random_text(seed: int, num_words: int) -> str:
  rng = np.random.default_rng(seed)
  return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=num_words))


def write_text(path, text: str) -> str:
  path.write_text(text, encoding="utf-8")
  return str(path)


def docs_of(cfg: SourceConfig) -> list[str]:
  return list(corpus_lib.iter_documents(cfg))


# ---------------------------------------------------------------------------------------------
# Sources.


def test_txt_source_one_document_per_file_or_per_paragraph(tmp_path):
  write_text(tmp_path / "b.txt", "second file\n\npara two\n  \npara three")
  write_text(tmp_path / "a.txt", "first file")
  write_text(tmp_path / "ignored.md", "not a txt file")
  by_file = docs_of(SourceConfig(kind="txt", paths=(str(tmp_path),)))
  assert by_file == ["first file", "second file\n\npara two\n  \npara three"]
  by_paragraph = docs_of(SourceConfig(kind="txt", paths=(str(tmp_path / "*.txt"),),
                                      txt_split="blank_lines"))
  assert by_paragraph == ["first file", "second file", "para two", "para three"]


def test_txt_bytes_that_are_not_utf8_read_as_replacement_with_a_warning(tmp_path):
  (tmp_path / "a.txt").write_bytes("caf\u00e9 na\u00efve\r\nline two\r".encode("latin-1"))
  write_text(tmp_path / "b.txt", "plain \u00e9")
  with pytest.warns(UserWarning, match=r"a\.txt holds bytes that are not UTF-8 \(the first at "
                                       r"byte 3\).*iconv"):
    docs = docs_of(SourceConfig(kind="txt", paths=(str(tmp_path),)))
  assert docs == ["caf\ufffd na\ufffdve\nline two\n", "plain \u00e9"]


def test_gzipped_txt_and_jsonl_are_decompressed_and_a_damaged_one_is_named(tmp_path):
  # Read as plain bytes, a .txt.gz trained on noise (with only a UTF-8 warning) and a .jsonl.gz
  # failed as "not valid UTF-8".
  (tmp_path / "a.txt.gz").write_bytes(gzip.compress("first file\n\npara two".encode()))
  write_text(tmp_path / "b.txt", "plain")
  assert docs_of(SourceConfig(kind="txt", paths=(str(tmp_path),), txt_split="blank_lines")) == [
      "first file", "para two", "plain"]
  jsonl = tmp_path / "d.jsonl.gz"
  jsonl.write_bytes(gzip.compress(b'{"text": "hello"}\n{"text": "world"}\n'))
  assert docs_of(SourceConfig(kind="jsonl", paths=(str(tmp_path),))) == ["hello", "world"]
  jsonl.write_bytes(jsonl.read_bytes()[:20])  # cut short, as by a failed download
  with pytest.raises(ValueError, match=r"d\.jsonl\.gz' is not a readable gzip file"):
    docs_of(SourceConfig(kind="jsonl", paths=(str(jsonl),)))


def test_jsonl_source_reads_the_configured_field_and_skips_blank_lines(tmp_path):
  lines = [json.dumps({"body": "hello", "id": 1}), "", json.dumps({"body": "world", "id": 2})]
  path = write_text(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
  assert docs_of(SourceConfig(kind="jsonl", paths=(path,), text_field="body")) == ["hello", "world"]
  old_mac = tmp_path / "r.jsonl"  # bare "\r" line ends
  old_mac.write_bytes("\r".join(lines).encode() + b"\r")
  assert docs_of(SourceConfig(kind="jsonl", paths=(str(old_mac),), text_field="body")) == [
      "hello", "world"]
  with_bom = tmp_path / "bom.jsonl"  # as Windows editors save UTF-8
  with_bom.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
  assert docs_of(SourceConfig(kind="jsonl", paths=(str(with_bom),), text_field="body")) == [
      "hello", "world"]
  with pytest.raises(ValueError, match=r"no field 'text'.*set text_field"):
    docs_of(SourceConfig(kind="jsonl", paths=(path,)))
  # Bytes that are not UTF-8, and an escaped lone surrogate, are named with file and line.
  bad_bytes = tmp_path / "b.jsonl"
  bad_bytes.write_bytes(b'{"text": "ok"}\n{"text": "caf\xff\xfe"}\n')
  with pytest.raises(ValueError, match=r"b\.jsonl:2 is not valid UTF-8"):
    docs_of(SourceConfig(kind="jsonl", paths=(str(bad_bytes),)))
  # A null text is skipped with a warning, as a parquet null is; another type is an error.
  nulls = write_text(tmp_path / "n.jsonl", '{"text": "a"}\n{"text": null}\n{"text": "b"}\n')
  with pytest.warns(UserWarning, match=r"n\.jsonl: 1 records have a null 'text'; they are skipped"):
    assert docs_of(SourceConfig(kind="jsonl", paths=(nulls,))) == ["a", "b"]
  null_first = write_text(tmp_path / "f.jsonl", '{"text": null}\n{"text": "a"}\n{"text": "b"}\n')
  with pytest.warns(UserWarning, match=r"f\.jsonl: 1 records have a null"):  # read cut short
    assert docs_of(SourceConfig(kind="jsonl", paths=(null_first,), max_documents=1)) == ["a"]
  number = write_text(tmp_path / "i.jsonl", '{"text": 3}\n')
  with pytest.raises(ValueError, match=r"i\.jsonl:1: field 'text' holds int, not a string"):
    docs_of(SourceConfig(kind="jsonl", paths=(number,)))
  surrogate = write_text(tmp_path / "s.jsonl", '{"text": "ok"}\n{"text": "x\\ud800"}\n')
  with pytest.raises(ValueError, match=r"s\.jsonl:2: field 'text' holds a character that is not"):
    docs_of(SourceConfig(kind="jsonl", paths=(surrogate,)))


def write_parquet(path, texts, column="text"):
  import pyarrow as pa
  import pyarrow.parquet as pq
  # FineWeb-like: extra columns around the text one.
  table = pa.table({"id": [f"doc{i}" for i in range(len(texts))], column: texts,
                    "token_count": [len(t) for t in texts]})
  pq.write_table(table, str(path))


def test_parquet_source_reads_a_multi_file_glob_in_sorted_order(tmp_path):
  (tmp_path / "shards").mkdir()
  write_parquet(tmp_path / "shards" / "001.parquet", ["c", "d", "e"])
  write_parquet(tmp_path / "shards" / "000.parquet", ["a", "b"])
  cfg = SourceConfig(kind="parquet", paths=(str(tmp_path / "shards" / "*.parquet"),))
  assert docs_of(cfg) == ["a", "b", "c", "d", "e"]
  write_parquet(tmp_path / "other.parquet", ["x"], column="content")
  assert docs_of(SourceConfig(kind="parquet", paths=(str(tmp_path / "other.parquet"),),
                              text_field="content")) == ["x"]
  with pytest.raises(ValueError, match=r"no column 'text'.*set text_field"):
    docs_of(SourceConfig(kind="parquet", paths=(str(tmp_path / "other.parquet"),)))
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": pa.array(["p", "q", "p"]).dictionary_encode()}),
                 str(tmp_path / "category.parquet"))  # as pandas writes a category column
  assert docs_of(SourceConfig(kind="parquet", paths=(str(tmp_path / "category.parquet"),))) == [
      "p", "q", "p"]
  # The id column holds strings, token_count integers: only strings are text.
  with pytest.raises(ValueError, match=r"column 'token_count' holds int64, not strings"):
    docs_of(SourceConfig(kind="parquet", paths=(str(tmp_path / "other.parquet"),),
                         text_field="token_count"))
  pq.write_table(pa.table({"text": ["p", None, None, "q"]}), str(tmp_path / "nulls.parquet"))
  with pytest.warns(UserWarning, match=r"nulls\.parquet: 2 records have a null 'text'"):
    assert docs_of(SourceConfig(kind="parquet", paths=(str(tmp_path / "nulls.parquet"),))) == [
        "p", "q"]
  with pytest.warns(UserWarning, match=r"nulls\.parquet: 2 records have a null 'text'"):
    assert docs_of(SourceConfig(kind="parquet", paths=(str(tmp_path / "nulls.parquet"),),
                                max_documents=2)) == ["p", "q"]
  (tmp_path / "shards" / "002.parquet").write_bytes(b"not parquet at all")
  with pytest.raises(ValueError, match=r"002\.parquet' is not a readable parquet file"):
    docs_of(cfg)


def prepare_tiny_tfds(data_dir: str, texts_by_split: dict) -> str:
  """Prepares a real TFDS dataset offline (array_record, so no TensorFlow is needed to read it)."""
  import tensorflow_datasets as tfds

  # skip_registration: the source must find the dataset from its files, as a real run would.
  class MemjaxTinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict(
              {"text": tfds.features.Text(), "id": tfds.features.Tensor(shape=(), dtype=np.int64)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(texts) for split, texts in texts_by_split.items()}

    def _generate_examples(self, texts):
      for i, text in enumerate(texts):
        yield i, {"text": text, "id": i}

  MemjaxTinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return "memjax_tiny_text"


def test_tfds_source_loads_a_prepared_dataset_by_name_and_data_dir(tmp_path):
  train_texts = [f"train document {i} ünïcode" for i in range(7)]
  name = prepare_tiny_tfds(str(tmp_path), {"train": train_texts, "test": ["held out"]})
  docs = docs_of(SourceConfig(kind="tfds", name=name, split="train", data_dir=str(tmp_path)))
  assert sorted(docs) == sorted(train_texts)  # TFDS shuffles examples once, when preparing.
  assert docs == docs_of(SourceConfig(kind="tfds", name=name, split="train",
                                      data_dir=str(tmp_path)))
  assert docs_of(SourceConfig(kind="tfds", name=name, split="test",
                              data_dir=str(tmp_path))) == ["held out"]
  fingerprint = corpus_lib.source_fingerprint(
      SourceConfig(kind="tfds", name=name, data_dir=str(tmp_path)))
  assert any("array_record" in f["path"] for f in fingerprint["files"])
  with pytest.raises(FileNotFoundError, match=r"'not_prepared_here'.*data_dir"):
    docs_of(SourceConfig(kind="tfds", name="not_prepared_here", data_dir=str(tmp_path)))
  assert len(docs_of(SourceConfig(kind="tfds", name=name, split="train[:3]+test",
                                  data_dir=str(tmp_path)))) == 4
  with pytest.raises(ValueError, match=r"has no split 'validation' \(it has \['test', 'train'\]"):
    docs_of(SourceConfig(kind="tfds", name=name, split="validation", data_dir=str(tmp_path)))
  # A number is not text: str() of each id would have been trained on.
  with pytest.raises(ValueError,
                     match=r"feature 'id' holds Tensor\(int64.*not text; set text_field"):
    docs_of(SourceConfig(kind="tfds", name=name, text_field="id", data_dir=str(tmp_path)))


def test_stdlib_docs_gives_over_a_million_characters_of_docstrings_in_a_fixed_order():
  cfg = SourceConfig(kind="stdlib_docs")
  num_chars = 0
  first_docs = []
  for doc in corpus_lib.iter_documents(cfg):  # The stdlib comes first and holds 1.8M chars.
    if len(first_docs) < 20:
      first_docs.append(doc)
    num_chars += len(doc)
    if num_chars > 1_000_000:
      break
  assert num_chars > 1_000_000
  assert first_docs == list(itertools.islice(corpus_lib.iter_documents(cfg), 20))
  assert sum(" the " in doc for doc in first_docs) >= 10  # English prose, not code.


# ---------------------------------------------------------------------------------------------
# Tokenizers.

ROUND_TRIP_TEXT = "Memorization of «tokens»:\n\tbits per parameter ≈ 3.6 — 😀 done.  "


def tiny_corpus(num_docs=40, words=60):
  return [random_text(seed, words) for seed in range(num_docs)]


def test_bpe_training_round_trips_and_has_the_requested_vocab(tmp_path):
  paths = [write_text(tmp_path / f"{i}.txt", doc) for i, doc in enumerate(tiny_corpus())]
  source = SourceConfig(kind="txt", paths=tuple(paths))
  ds = build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=300), seq_len=8,
                          pool_sizes=PoolSizes(train=10))
  assert ds.vocab_size == 300 and ds.tokenizer.kind == "bpe"
  ids = ds.tokenizer.encode_batch([ROUND_TRIP_TEXT])[0]
  assert ds.tokenizer.decode(ids) == ROUND_TRIP_TEXT
  words = "memory gradient capacity"
  assert len(ds.tokenizer.encode_batch([words])[0]) < len(words) * 2 // 3  # Merges happened.
  assert int(ds.tokens.max()) < 300


def test_tokenizer_json_file_loads_and_round_trips(tmp_path):
  trained = tokenize_lib.train_byte_level_bpe(iter(tiny_corpus()),
                                              TokenizerConfig(kind="bpe", vocab_size=280))
  path = trained.save_to_workdir(str(tmp_path / "tok"))
  loaded = tokenize_lib.load_tokenizer_file(path)
  assert loaded.vocab_size == 280 and loaded.fingerprint == trained.fingerprint
  assert loaded.decode(loaded.encode_batch([ROUND_TRIP_TEXT])[0]) == ROUND_TRIP_TEXT
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "c.txt", tiny_corpus()[0]),))
  ds = build_text_dataset(source, TokenizerConfig(kind="file", path=path), seq_len=4,
                          pool_sizes=PoolSizes(train=2))
  assert ds.vocab_size == 280 and ds.tokens.dtype == np.uint16


def test_a_tokenizer_whose_ids_have_gaps_gets_rows_up_to_its_largest_id(tmp_path):
  # 5 tokens, the last with id 70000: a model of 5 rows would index past its embedding, and
  # uint16 storage would wrap 70000 to 4464.
  from tokenizers import Tokenizer, models, pre_tokenizers
  tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2, " ": 3, "[UNK]": 70000},
                                   unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")
  path = str(tmp_path / "gaps.json")
  tok.save(path)
  loaded = tokenize_lib.load_tokenizer_file(path)
  assert loaded.vocab_size == 70001
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "c.txt", "a b c zz a b c zz"),))
  ds = build_text_dataset(source, TokenizerConfig(kind="file", path=path), seq_len=4,
                          pool_sizes=PoolSizes(train=2))
  assert ds.vocab_size == 70001 and ds.tokens.dtype == np.int32
  assert 70000 in ds.tokens


def test_token_ids_outside_the_vocabulary_are_refused():
  class Liar(tokenize_lib.TextTokenizer):  # a tokenizer that reports a smaller vocabulary
    vocab_size = 4
    def encode_batch(self, texts):
      return [np.array([1, 2, 7, 3, 1, 2, 3, 0])]
    decode = to_json = save_to_workdir = lambda *a: None
  with pytest.raises(ValueError, match="id 7, outside its vocabulary of 4 ids") as e:
    tokenize_into_sequences(["x"], Liar(), seq_len=4)
  from memjax import config as config_lib
  assert str(config_lib.data_error(e.value, True)).startswith("config.data.tokenizer_path: ")


def test_byte_tokenizer_round_trips_utf8():
  tokenizer = tokenize_lib.byte_tokenizer()
  ids = tokenizer.encode_batch([ROUND_TRIP_TEXT])[0]
  assert tokenizer.vocab_size == 256 and len(ids) == len(ROUND_TRIP_TEXT.encode("utf-8"))
  assert tokenizer.decode(ids) == ROUND_TRIP_TEXT


def test_tokenizer_is_saved_into_the_workdir_and_reloads(tmp_path):
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", random_text(0, 200)),))
  for tokenizer_cfg, filename in ((BYTES, "tokenizer_bytes.json"),
                                  (TokenizerConfig(kind="bpe", vocab_size=270), "tokenizer.json")):
    workdir = tmp_path / f"work_{tokenizer_cfg.kind}"
    ds = build_text_dataset(source, tokenizer_cfg, seq_len=8, pool_sizes=PoolSizes(train=4),
                            workdir=str(workdir))
    assert (workdir / filename).is_file()
    reloaded = tokenize_lib.load_tokenizer_from_workdir(str(workdir))
    assert reloaded.fingerprint == ds.tokenizer.fingerprint
    summary = json.loads((workdir / "text_dataset.json").read_text())
    assert summary["num_train"] == 4 and summary["manifest"]["seq_len"] == 8
  # A later run of another tokenizer kind in the same workdir: the file its summary names.
  same_workdir = tmp_path / "work_bytes"
  ds = build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=270), seq_len=8,
                          pool_sizes=PoolSizes(train=4), workdir=str(same_workdir))
  assert (same_workdir / "tokenizer_bytes.json").exists()  # left as it was
  reloaded = tokenize_lib.load_tokenizer_from_workdir(str(same_workdir))
  assert reloaded.fingerprint == ds.tokenizer.fingerprint


# ---------------------------------------------------------------------------------------------
# Sequences and deduplication.


def test_documents_are_cut_into_whole_sequences_and_the_remainder_dropped():
  tokens_NxS, doc_ids_N, counts = tokenize_into_sequences(["abcdefghij", "xyz", "0123"],
                                                          tokenize_lib.byte_tokenizer(), seq_len=4)
  assert tokens_NxS.dtype == np.uint16
  assert [bytes(row.tolist()) for row in tokens_NxS] == [b"abcd", b"efgh", b"0123"]
  assert doc_ids_N.tolist() == [0, 0, 2]  # "xyz" (document 1) gives no sequence
  assert counts == {"num_documents": 3, "num_chars": 17, "num_tokens": 17}


def test_dedup_drops_exact_duplicates_keeping_first_occurrence_order():
  rows_NxS = np.array([[5, 1], [2, 3], [5, 1], [0, 9], [2, 3], [2, 3], [1, 5]], dtype=np.uint16)
  unique_NxS, num_dropped = deduplicate_sequences(rows_NxS)
  assert num_dropped == 3
  np.testing.assert_array_equal(unique_NxS, [[5, 1], [2, 3], [0, 9], [1, 5]])


def test_dataset_reports_duplicate_sequences_dropped(tmp_path):
  # 3 copies of the same 2 sequences plus 2 distinct ones: 4 duplicates.
  repeated = "aaaabbbb"
  paths = [write_text(tmp_path / f"{i}.txt", text)
           for i, text in enumerate([repeated, repeated + "cc", "ccccdddd", repeated])]
  ds = build_text_dataset(SourceConfig(kind="txt", paths=tuple(paths)), BYTES, seq_len=4,
                          pool_sizes=PoolSizes(train=4))
  assert ds.num_duplicates_dropped == 4
  assert ds.decode(ds.tokens) == ["aaaa", "bbbb", "cccc", "dddd"]
  assert ds.manifest["num_sequences_before_dedup"] == 8


# ---------------------------------------------------------------------------------------------
# Pools.


def test_pools_are_disjoint_sized_and_determined_by_the_seed():
  sizes = PoolSizes(train=50, heldout=30, reference=20)
  train, heldout, reference = split_pools(120, sizes, seed=3)
  assert (len(train), len(heldout), len(reference)) == (50, 30, 20)
  assert len(set(train) | set(heldout) | set(reference)) == 100
  assert train.dtype == np.int32
  again = split_pools(120, sizes, seed=3)
  for pool, pool_again in zip((train, heldout, reference), again):
    np.testing.assert_array_equal(pool, pool_again)
  other_train, other_heldout, _ = split_pools(120, sizes, seed=4)
  assert set(other_train) != set(train) and set(other_heldout) != set(heldout)


def test_smaller_training_pools_are_prefixes_and_none_takes_the_rest():
  big_train, heldout, _ = split_pools(100, PoolSizes(train=60, heldout=10), seed=0)
  small_train, small_heldout, _ = split_pools(100, PoolSizes(train=20, heldout=10), seed=0)
  np.testing.assert_array_equal(small_train, big_train[:20])
  np.testing.assert_array_equal(small_heldout, heldout)
  rest_train, _, reference = split_pools(100, PoolSizes(heldout=10, reference=5), seed=0)
  assert len(rest_train) == 85 and not set(rest_train) & set(reference)


def test_document_split_keeps_every_document_in_one_pool():
  # 60 documents of 1 to 12 sequences each, in corpus order.
  doc_ids_N = np.repeat(np.arange(60), np.random.default_rng(0).integers(1, 13, 60)).astype(np.int32)
  n = len(doc_ids_N)
  sizes = PoolSizes(train=100, heldout=40, reference=25)
  train, heldout, reference = split_pools(n, sizes, seed=3, doc_ids=doc_ids_N)
  assert (len(train), len(heldout), len(reference)) == (100, 40, 25)
  assert train.dtype == heldout.dtype == np.int32
  docs = [set(doc_ids_N[pool].tolist()) for pool in (train, heldout, reference)]
  assert not docs[0] & docs[1] and not docs[0] & docs[2] and not docs[1] & docs[2]
  # The held-out pool is whole documents (less the overfilling one's tail), drawn by the seed.
  assert sum(np.isin(doc_ids_N, list(docs[1]))) - len(heldout) < 12
  for pool, again in zip((train, heldout, reference),
                         split_pools(n, sizes, seed=3, doc_ids=doc_ids_N)):
    np.testing.assert_array_equal(pool, again)
  assert set(split_pools(n, sizes, seed=4, doc_ids=doc_ids_N)[1]) != set(heldout)
  # As by sequence: a smaller training pool is a prefix, and the held-out pool stays.
  small_train, same_heldout, _ = split_pools(n, PoolSizes(train=30, heldout=40, reference=25),
                                             seed=3, doc_ids=doc_ids_N)
  np.testing.assert_array_equal(small_train, train[:30])
  np.testing.assert_array_equal(same_heldout, heldout)
  # A pool's first rows come from many documents, not from one.
  assert len(set(doc_ids_N[train[:10]].tolist())) >= 5
  rest, _, _ = split_pools(n, PoolSizes(heldout=40), seed=3, doc_ids=doc_ids_N)
  assert len(rest) + 40 <= n and not set(doc_ids_N[rest].tolist()) & docs[1]


def test_document_split_refuses_pools_that_whole_documents_cannot_fill():
  doc_ids_N = np.repeat(np.arange(3), 10).astype(np.int32)  # 3 documents of 10 sequences
  # A held-out pool of 11 takes two whole documents, leaving 10 sequences, not 15.
  with pytest.raises(ValueError, match=r"split by document.*3 documents.*take 2 whole "
                                       r"documents and leave 10 sequences"):
    split_pools(30, PoolSizes(train=15, heldout=11), seed=0, doc_ids=doc_ids_N)
  with pytest.raises(ValueError, match="split by document"):
    split_pools(30, PoolSizes(heldout=25), seed=0, doc_ids=doc_ids_N)
  train, heldout, _ = split_pools(30, PoolSizes(train=10, heldout=11), seed=0, doc_ids=doc_ids_N)
  assert len(train) == 10 and len(set(doc_ids_N[train].tolist())) == 1


def test_dataset_split_by_document_puts_each_file_in_one_pool(tmp_path):
  paths = [write_text(tmp_path / f"{i:02d}.txt", f"<{i:02d}>" + random_text(i, 40))
           for i in range(24)]
  source = SourceConfig(kind="txt", paths=tuple(paths))
  ds = build_text_dataset(source, BYTES, seq_len=16, pool_sizes=PoolSizes(train=60, heldout=20),
                          seed=5, workdir=str(tmp_path / "run"), pool_split="document")
  assert ds.pool_split == "document"
  # doc_ids name the file each sequence was cut from (each file's first sequence starts <ii>).
  first_rows = {int(d): ds.decode(ds.tokens[np.flatnonzero(ds.doc_ids == d)[0]])[:4]
                for d in np.unique(ds.doc_ids)}
  assert all(text == f"<{d:02d}>" for d, text in first_rows.items())
  assert not set(ds.doc_ids[ds.train_idx].tolist()) & set(ds.doc_ids[ds.heldout_idx].tolist())
  summary = json.loads((tmp_path / "run" / "text_dataset.json").read_text())
  assert summary["pool_split"] == "document" and summary["num_heldout"] == 20
  assert summary["documents"]["heldout"] == len(set(ds.doc_ids[ds.heldout_idx].tolist()))
  by_sequence = build_text_dataset(source, BYTES, seq_len=16,
                                   pool_sizes=PoolSizes(train=60, heldout=20), seed=5)
  assert by_sequence.pool_split == "sequence"
  with pytest.raises(ValueError, match="pool_split must be one of sequence, document"):
    build_text_dataset(source, BYTES, seq_len=16, pool_split="documents")


# ---------------------------------------------------------------------------------------------
# Cache.


def test_cache_is_reused_and_rebuilt_when_source_or_tokenizer_change(tmp_path):
  path = write_text(tmp_path / "a.txt", random_text(0, 300))
  source = SourceConfig(kind="txt", paths=(path,))
  cache_dir = str(tmp_path / "cache")
  kwargs = dict(seq_len=16, pool_sizes=PoolSizes(train=10, heldout=5), seed=1, cache_dir=cache_dir)
  first = build_text_dataset(source, BYTES, **kwargs)
  tokens_path = os.path.join(first.cache_path, "tokens.npy")
  mtime_ns = os.stat(tokens_path).st_mtime_ns
  assert not first.from_cache
  assert isinstance(first.tokens, np.memmap)

  second = build_text_dataset(source, BYTES, **kwargs)
  assert second.from_cache and second.cache_path == first.cache_path
  assert os.stat(tokens_path).st_mtime_ns == mtime_ns
  np.testing.assert_array_equal(second.tokens, first.tokens)
  np.testing.assert_array_equal(second.train_idx, first.train_idx)

  time.sleep(0.01)
  write_text(tmp_path / "a.txt", random_text(1, 400))
  changed_source = build_text_dataset(source, BYTES, **kwargs)
  assert not changed_source.from_cache and changed_source.cache_path != first.cache_path
  assert changed_source.num_sequences != first.num_sequences

  changed_tokenizer = build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=270),
                                         **kwargs)
  assert not changed_tokenizer.from_cache
  assert build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=270),
                            **kwargs).from_cache  # The trained BPE is cached too.


def test_cache_entry_without_document_ids_serves_a_sequence_split_and_is_remade_for_documents(
    tmp_path):
  # Entries written before document ids were kept hold tokens.npy and manifest.json only.
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", random_text(0, 300)),))
  kwargs = dict(seq_len=16, cache_dir=str(tmp_path / "cache"), pool_sizes=PoolSizes(train=4))
  first = build_text_dataset(source, BYTES, **kwargs)
  os.remove(os.path.join(first.cache_path, "doc_ids.npy"))
  old = build_text_dataset(source, BYTES, **kwargs, workdir=str(tmp_path / "w"))
  assert old.from_cache and old.doc_ids is None  # not tokenized again
  np.testing.assert_array_equal(old.train_idx, first.train_idx)
  assert json.loads((tmp_path / "w" / "text_dataset.json").read_text())["documents"] is None
  again = build_text_dataset(source, BYTES, **kwargs, pool_split="document")
  assert not again.from_cache and again.cache_path == first.cache_path
  assert again.manifest["key"] == first.manifest["key"]
  np.testing.assert_array_equal(again.tokens, first.tokens)
  np.testing.assert_array_equal(again.doc_ids, np.zeros(first.num_sequences))
  assert build_text_dataset(source, BYTES, **kwargs, pool_split="document").from_cache


@pytest.mark.parametrize("damage", ["manifest.json", "tokens.npy", "doc_ids.npy", "bpe"])
def test_a_damaged_cache_entry_is_built_again_with_a_warning(tmp_path, damage):
  # A cut copy or a full disk can leave a file short; it must not fail every later run with an
  # error naming data.paths or data.tokenizer_path (an empty tokens.npy gave a traceback).
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", random_text(0, 300)),))
  tokenizer = TokenizerConfig(kind="bpe", vocab_size=260)
  kwargs = dict(seq_len=16, cache_dir=str(tmp_path / "cache"), pool_sizes=PoolSizes(train=4))
  first = build_text_dataset(source, tokenizer, **kwargs)
  tokens = np.array(first.tokens)  # a copy: the memory map reads the file to be damaged
  if damage == "bpe":
    (bpe_dir,) = [d for d in os.listdir(tmp_path / "cache") if d.startswith("bpe-")]
    path = tmp_path / "cache" / bpe_dir / "tokenizer.json"
  else:
    path = tmp_path / "cache" / os.path.basename(first.cache_path) / damage
  path.write_bytes(path.read_bytes()[:7])
  with pytest.warns(UserWarning, match="does not load"):
    again = build_text_dataset(source, tokenizer, **kwargs)
  np.testing.assert_array_equal(again.tokens, tokens)
  assert build_text_dataset(source, tokenizer, **kwargs).from_cache  # and it was repaired


@pytest.mark.parametrize("error,reason", [
    (OSError("1000 requested and 10 written"), "(1000 requested and 10 written)"),
    (OSError(28, "No space left on device"), "(No space left on device)")],
    ids=["numpy_short_write", "enospc_without_file_name"])
def test_a_full_disk_while_caching_names_the_reason_and_leaves_no_temporary_file(
    tmp_path, monkeypatch, error, reason):
  # numpy reports a short write as OSError("N requested and M written"), with no errno: the
  # message was "([Errno None] None: None)", and the half-written temporary file stayed. A
  # write to an open file fails with ENOSPC and no file name: that read "(...: None)".
  from memjax import config as config_lib
  def full_disk(f, array):
    f.write(b"x" * 10)
    raise error
  monkeypatch.setattr(np, "save", full_disk)
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", random_text(0, 300)),))
  cache_dir = str(tmp_path / "cache")
  with pytest.raises(OSError) as e:
    build_text_dataset(source, BYTES, seq_len=16, cache_dir=cache_dir,
                       pool_sizes=PoolSizes(train=4))
  message = str(config_lib.data_error(e.value, True))
  assert reason in message and "None" not in message, message
  assert [f for _, _, fs in os.walk(cache_dir) for f in fs if ".tmp" in f] == []


def test_a_full_disk_while_caching_the_bpe_leaves_no_temporary_file(tmp_path):
  # The text cache cleaned up after a failed write, the cached BPE did not: each failed run left
  # a tokenizer.json.tmp<pid> that no later run removes. A file size limit stands in for a
  # full disk (Python ignores SIGXFSZ, so the write fails with EFBIG).
  import resource
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", random_text(0, 300)),))
  cache_dir = str(tmp_path / "cache")
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # the tokenizer.json is larger
  try:
    with pytest.raises(OSError, match="File too large"):
      build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=260), seq_len=16,
                         cache_dir=cache_dir, pool_sizes=PoolSizes(train=4))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  assert [f for _, _, fs in os.walk(cache_dir) for f in fs] == []


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_missing_file_and_unmatched_glob_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope\.txt' does not exist.*fix the source paths"):
    build_text_dataset(SourceConfig(kind="txt", paths=(str(tmp_path / "nope.txt"),)), BYTES)
  with pytest.raises(FileNotFoundError, match=r"glob pattern .*\*\.parquet' matches no file"):
    build_text_dataset(SourceConfig(kind="parquet", paths=(str(tmp_path / "*.parquet"),)), BYTES)


def test_empty_corpus_is_refused(tmp_path):
  path = write_text(tmp_path / "empty.txt", "  \n\n  ")
  for tokenizer_cfg in (BYTES, TokenizerConfig(kind="bpe", vocab_size=300)):
    with pytest.raises(ValueError, match=r"holds no text"):
      build_text_dataset(SourceConfig(kind="txt", paths=(path,)), tokenizer_cfg)


def test_corpus_too_small_for_the_pools_says_how_many_exist_and_were_asked(tmp_path):
  path = write_text(tmp_path / "small.txt", random_text(0, 200))
  source = SourceConfig(kind="txt", paths=(path,))
  num_sequences = build_text_dataset(source, BYTES, seq_len=64).num_sequences
  with pytest.raises(ValueError, match=rf"has {num_sequences} distinct sequences.*ask for 1010"):
    build_text_dataset(source, BYTES, seq_len=64, pool_sizes=PoolSizes(train=1000, heldout=10))
  with pytest.raises(ValueError, match=r"no document .* is 100000 tokens long.*lower seq_len"):
    build_text_dataset(source, BYTES, seq_len=100_000)


def test_tokenizer_file_that_does_not_load_is_named(tmp_path):
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", "text"),))
  bad = write_text(tmp_path / "tokenizer.json", '{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match=r"tokenizer\.json' does not load.*valid tokenizer\.json"):
    build_text_dataset(source, TokenizerConfig(kind="file", path=bad))
  with pytest.raises(FileNotFoundError, match=r"tokenizer file .* does not exist"):
    build_text_dataset(source, TokenizerConfig(kind="file", path=str(tmp_path / "missing.json")))


@pytest.mark.parametrize("vocab_size", [256, 100, 2**16 + 1, 10**7])
def test_bpe_vocab_size_out_of_range_is_refused_before_reading(tmp_path, vocab_size):
  source = SourceConfig(kind="txt", paths=(str(tmp_path / "never_read.txt"),))
  with pytest.raises(ValueError, match=rf"vocab_size {vocab_size} is out of range.*use 257"):
    build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=vocab_size))


def test_bpe_vocab_larger_than_the_corpus_supports_is_refused(tmp_path):
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", "ab ab ab ab"),))
  with pytest.raises(ValueError, match=r"reached only \d+ tokens.*lower vocab_size"):
    build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=5000))
  # A large corpus cut short by max_train_chars: the message says so (it said only "use a
  # larger corpus").
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "b.txt", random_text(0, 2000)),))
  with pytest.raises(ValueError, match=r"or raise max_train_chars \(it trained on the first 50 "):
    build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=300, max_train_chars=50))
  # A cut the corpus does not reach is not blamed: it trained on the whole corpus.
  with pytest.raises(ValueError, match=r"or use a larger corpus\.$"):
    build_text_dataset(source, TokenizerConfig(kind="bpe", vocab_size=5000,
                                               max_train_chars=10 ** 6))


@pytest.mark.parametrize("seq_len", [1, 0, -3])
def test_seq_len_below_two_is_refused(tmp_path, seq_len):
  source = SourceConfig(kind="txt", paths=(write_text(tmp_path / "a.txt", "text"),))
  with pytest.raises(ValueError, match=r"seq_len must be an integer >= 2"):
    build_text_dataset(source, BYTES, seq_len=seq_len)


def test_unknown_kinds_list_the_allowed_values():
  with pytest.raises(ValueError, match=r"source kind 'csv'.*'parquet'"):
    build_text_dataset(SourceConfig(kind="csv", paths=("x.csv",)), BYTES)
  with pytest.raises(ValueError, match=r"tokenizer kind 'words'.*'bytes'"):
    build_text_dataset(SourceConfig(), TokenizerConfig(kind="words"))


# ---------------------------------------------------------------------------------------------
# The embedded corpus end to end (about 15 s: parse, train a 2048-token BPE, tokenize).


@pytest.mark.slow
def test_stdlib_docs_dataset_with_a_2048_token_bpe(tmp_path):
  ds = build_text_dataset(SourceConfig(), TokenizerConfig(kind="bpe", vocab_size=2048), seq_len=64,
                          pool_sizes=PoolSizes(train=10_000, heldout=1000, reference=1000),
                          cache_dir=str(tmp_path / "cache"))
  assert ds.num_chars > 5_000_000 and ds.num_sequences > 30_000
  assert ds.tokens.shape == (ds.num_sequences, 64) and ds.vocab_size == 2048
  print(f"stdlib_docs: {ds.num_documents} documents, {ds.num_chars} chars, "
        f"{ds.num_sequences} sequences, {ds.num_duplicates_dropped} duplicates dropped")


def test_span_overlap_finds_shared_text_at_any_alignment():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 50_000, (6, 10)).astype(np.int32)
  tokens[1, 4:10] = tokens[4, 1:7]  # query row 1 shares 6 tokens with pool row 4, shifted
  tokens[2, 0:3] = tokens[5, 7:10]  # query row 2 shares 3 tokens with pool row 5
  query, pool = np.array([0, 1, 2]), np.array([3, 4, 5])
  assert span_overlap(tokens, query, pool, 6) == pytest.approx(1 / 3)
  assert span_overlap(tokens, query, pool, 7) == 0.0
  assert span_overlap(tokens, query, pool, 3) == pytest.approx(2 / 3)
  assert span_overlap(tokens, query, pool, 3, chunk_rows=1) == pytest.approx(2 / 3)
  assert span_overlap(tokens, query, pool, 10) == 0.0  # whole rows: none equal
  with pytest.raises(ValueError, match="span must be in"):
    span_overlap(tokens, query, pool, 11)


def test_a_doc_package_that_is_not_installed_is_warned_about():
  with pytest.warns(UserWarning, match="data.doc_packages: 'numpyy' is not an installed package"):
    files = corpus_lib.stdlib_doc_files(("numpyy",))
  assert files == corpus_lib.stdlib_doc_files(())
