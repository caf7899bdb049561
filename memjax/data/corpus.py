"""Text corpus sources: each turns a `SourceConfig` into a stream of document strings.

Sources (the `kind` of a `SourceConfig`):

* ``"txt"``      local text files. ``txt_split="file"`` (default) makes each file one document;
                 ``txt_split="blank_lines"`` splits each file into paragraphs at blank lines.
* ``"jsonl"``    JSON-lines files, one object a line; the document is ``obj[text_field]``.
                 txt and jsonl files may be gzipped (``.jsonl.gz``): they are decompressed as read.
* ``"parquet"``  Parquet files; the document is the ``text_field`` column (a FineWeb shard works
                 as is, its column is ``text``). Read in record batches, so a shard of gigabytes
                 streams without being loaded whole.
* ``"tfds"``     a TensorFlow Datasets dataset that is already prepared under ``data_dir``. Nothing
                 is downloaded. Datasets stored as ``array_record`` are read through the
                 random-access data source, which needs no TensorFlow; ``tfrecord`` datasets need
                 TensorFlow (``builder.as_dataset`` + ``tfds.as_numpy``) and give a clear error
                 without it.
* ``"stdlib_docs"``  the embedded default: real English documentation that this project did not
                 write, the docstrings of the Python standard library (its source files, less the
                 test suites) followed by those of a few of memjax's own dependencies
                 (`DEFAULT_DOC_PACKAGES`). The source files are parsed with `ast`, never imported,
                 so no module side effects run. One document per module file: all its docstrings
                 (module, classes, functions) joined by blank lines, so that documents are long
                 enough to give whole 64-token sequences. Order is deterministic (stdlib, then the
                 packages in the listed order; files sorted by path). Measured on Python 3.11.7
                 with numpy 2.4.6, jax 0.10.2, flax 0.12.8 and optax 0.2.8: 6,425,563 characters
                 in 1,406 documents (stdlib 1,803,628 in 645; numpy +1.61M, jax +1.97M,
                 flax +0.64M, optax +0.40M), parsed in about 5 s on 2 cores. With S=64 and a
                 2048-token BPE that is 2.23M tokens and 34,142 distinct sequences (71 exact
                 duplicates dropped). Add e.g. "scipy" (+5.0M characters) to `doc_packages` for
                 more.

Paths of the file sources may be files, directories (all files of that format inside, recursively)
or glob patterns (``**`` allowed); they are expanded in sorted order. Empty documents are skipped.

Every source has a cheap `source_fingerprint`: paths + sizes + mtimes of the files it reads (and of
the prepared TFDS files), or, for the embedded corpus, a content hash of the source files it parses.
The dataset cache compares fingerprints to decide whether to rebuild.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import glob
import gzip
import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
import sysconfig
import warnings
import zlib
from typing import IO, Any, Iterable, Iterator, Sequence

SOURCE_KINDS = ("txt", "jsonl", "parquet", "tfds", "stdlib_docs")
TXT_SPLITS = ("file", "blank_lines")
# A directory source reads its files with these endings; gzipped txt and jsonl are read as they
# are (found by their magic bytes, whatever the name).
FILE_EXTENSIONS = {"txt": (".txt", ".txt.gz"),
                   "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"),
                   "parquet": (".parquet",)}

# memjax dependencies whose docstrings extend the stdlib ones: present wherever memjax installs.
DEFAULT_DOC_PACKAGES = ("numpy", "jax", "flax", "optax")
# Test suites hold little prose and many deliberately broken files.
_SKIPPED_DOC_DIRS = frozenset(
    {"test", "tests", "testing", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# Bump when the docstring extraction changes, so cached datasets built from it are rebuilt.
_STDLIB_DOCS_VERSION = 1
_PARQUET_BATCH_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """Where the documents come from. Only the fields of the chosen `kind` are used.

  Attributes:
    kind: one of SOURCE_KINDS.
    paths: for txt/jsonl/parquet: files, directories or glob patterns.
    text_field: the jsonl key, parquet column or TFDS feature that holds the text.
    txt_split: for txt: "file" (one document a file) or "blank_lines" (one a paragraph).
    name: for tfds: the dataset name, optionally with config and version ("wiki40b/en:1.3.0").
    split: for tfds: the split, slicing allowed ("train[:10%]").
    data_dir: for tfds: the directory that holds the prepared dataset.
    doc_packages: for stdlib_docs: installed packages whose docstrings follow the stdlib ones.
    max_documents: keep only the first this many non-empty documents (None: all).
  """
  kind: str = "stdlib_docs"
  paths: tuple[str, ...] = ()
  text_field: str = "text"
  txt_split: str = "file"
  name: str | None = None
  split: str = "train"
  data_dir: str | None = None
  doc_packages: tuple[str, ...] = DEFAULT_DOC_PACKAGES
  max_documents: int | None = None

  def __post_init__(self):
    # Accept a single string or a list where a tuple is expected.
    if isinstance(self.paths, str):
      object.__setattr__(self, "paths", (self.paths,))
    else:
      object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
    object.__setattr__(self, "doc_packages", tuple(self.doc_packages))


def validate_source_config(cfg: SourceConfig) -> None:
  """Cheap checks of a SourceConfig, with messages that name the field and the allowed values."""
  if cfg.kind not in SOURCE_KINDS:
    raise ValueError(f"source kind {cfg.kind!r} is not supported; use one of {SOURCE_KINDS}.")
  if cfg.kind in FILE_EXTENSIONS and not cfg.paths:
    raise ValueError(f"source kind {cfg.kind!r} needs paths: give files, directories or globs.")
  if cfg.kind == "txt" and cfg.txt_split not in TXT_SPLITS:
    raise ValueError(f"txt_split {cfg.txt_split!r} is not supported; use one of {TXT_SPLITS}.")
  if cfg.kind == "tfds" and not cfg.name:
    raise ValueError("source kind 'tfds' needs name (the TFDS dataset name, e.g. 'wiki40b/en').")
  if cfg.kind in ("jsonl", "parquet", "tfds") and not cfg.text_field:
    raise ValueError(f"source kind {cfg.kind!r} needs text_field (the field holding the text).")
  if cfg.max_documents is not None and cfg.max_documents < 1:
    raise ValueError(f"max_documents must be None or >= 1, got {cfg.max_documents}.")


# ---------------------------------------------------------------------------------------------
# Public entry points.


def iter_documents(cfg: SourceConfig) -> Iterator[str]:
  """Yields the non-empty documents of a source, in a deterministic order."""
  validate_source_config(cfg)
  raw_docs = _RAW_READERS[cfg.kind](cfg)
  docs = (doc for doc in raw_docs if doc and not doc.isspace())
  return itertools.islice(docs, cfg.max_documents)


def source_fingerprint(cfg: SourceConfig) -> dict[str, Any]:
  """A json-able description of the source that changes whenever its documents may change."""
  validate_source_config(cfg)
  settings = dataclasses.asdict(cfg)
  if cfg.kind in FILE_EXTENSIONS:
    files = [_file_stat(path) for path in resolve_paths(cfg.paths, FILE_EXTENSIONS[cfg.kind])]
  elif cfg.kind == "tfds":
    files = [_file_stat(path) for path in _tfds_prepared_files(cfg)]
  else:
    files = [{"content_sha256": _stdlib_docs_content_hash(cfg.doc_packages),
              "extractor_version": _STDLIB_DOCS_VERSION}]
  return {"settings": settings, "files": files}


def describe_source(cfg: SourceConfig) -> str:
  """A short human description for error messages."""
  if cfg.kind in FILE_EXTENSIONS:
    return f"{cfg.kind} source {list(cfg.paths)}"
  if cfg.kind == "tfds":
    return f"tfds source {cfg.name!r} split {cfg.split!r} in data_dir {cfg.data_dir!r}"
  return f"embedded {cfg.kind!r} source"


def resolve_paths(patterns: Sequence[str], extensions: Sequence[str]) -> list[str]:
  """Expands files, directories and globs into a sorted, duplicate-free list of files.

  Raises FileNotFoundError for a path that does not exist, a glob that matches nothing or a
  directory holding no file with one of `extensions`.
  """
  files: list[str] = []
  for pattern in patterns:
    files.extend(_expand_one_path(os.path.expanduser(pattern), extensions))
  return list(dict.fromkeys(files))


def _expand_one_path(pattern: str, extensions: Sequence[str]) -> list[str]:
  if glob.has_magic(pattern):
    matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
      raise FileNotFoundError(f"the glob pattern {pattern!r} matches no file; fix the source paths.")
    return [os.path.abspath(p) for p in matches]
  if os.path.isdir(pattern):
    matches = sorted(
        os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names
        if name.endswith(tuple(extensions)))
    if not matches:
      raise FileNotFoundError(
          f"the directory {pattern!r} holds no {'/'.join(extensions)} file; fix the source paths.")
    return [os.path.abspath(p) for p in matches]
  if not os.path.isfile(pattern):
    raise FileNotFoundError(f"the source file {pattern!r} does not exist; fix the source paths.")
  return [os.path.abspath(pattern)]


def _file_stat(path: str) -> dict[str, Any]:
  stat = os.stat(path)
  return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Local files.


def _open_bytes(path: str) -> IO[bytes]:
  """A file opened for reading bytes, decompressed when it is gzip (its first two bytes): read
  as plain bytes, a .jsonl.gz would be an error and a .txt.gz would train on noise."""
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gzipped else open(path, "rb")


@contextlib.contextmanager
def _gzip_errors(path: str):
  """A damaged gzip file named as such, not as a traceback from deep inside a reader."""
  try:
    yield
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ValueError(f"{path!r} is not a readable gzip file ({e or type(e).__name__}); fix or "
                     "remove it.") from e


def _read_txt(cfg: SourceConfig) -> Iterator[str]:
  not_utf8 = []  # files with undecodable bytes: the first three named as read, then a count
  for path in resolve_paths(cfg.paths, FILE_EXTENSIONS["txt"]):
    with _gzip_errors(path), _open_bytes(path) as f:
      raw = f.read()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      # Stray undecodable bytes in a large crawl should not stop a run; they become U+FFFD. A
      # file in another encoding would be mostly U+FFFD, hence the warning (said at once: a
      # reader may stop early, at max_documents).
      not_utf8.append(path)
      if len(not_utf8) <= 3:
        warnings.warn(f"{path} holds bytes that are not UTF-8 (the first at byte {e.start}), "
                      "read as U+FFFD; convert a file in another encoding to UTF-8 (e.g. iconv "
                      "-f latin1 -t utf-8)")
      text = raw.decode("utf-8", errors="replace")
    text = _newlines_as_lf(text)
    if cfg.txt_split == "file":
      yield text
    else:
      yield from (paragraph.strip() for paragraph in re.split(r"\n[ \t\r\f\v]*\n", text))
  if len(not_utf8) > 3:
    warnings.warn(f"{len(not_utf8)} txt files in all hold bytes that are not UTF-8")


def _newlines_as_lf(text: str) -> str:
  """"\r\n" and "\r" line ends as "\n", as Python's text mode reads them (files are read as bytes
  here, to name undecodable ones)."""
  return text.replace("\r\n", "\n").replace("\r", "\n")


def _skipping_nulls(texts: Iterator[str | None], path: str, text_field: str) -> Iterator[str]:
  """The texts of one file that are not null. Missing values are common in exported datasets:
  skipped, as an empty text would be, and counted in a warning, said even when max_documents
  stops the reading early (closing this generator runs the `finally`)."""
  nulls = 0
  try:
    for text in texts:
      if text is None:
        nulls += 1
      else:
        yield text
  finally:
    if nulls:
      warnings.warn(f"{path}: {nulls} records have a null {text_field!r}; they are skipped")


def _read_jsonl(cfg: SourceConfig) -> Iterator[str]:
  for path in resolve_paths(cfg.paths, FILE_EXTENSIONS["jsonl"]):
    yield from _skipping_nulls(_jsonl_file_texts(path, cfg.text_field), path, cfg.text_field)


def _jsonl_file_texts(path: str, text_field: str) -> Iterator[str | None]:
  with _gzip_errors(path), _open_bytes(path) as f:
    for line_number, raw in enumerate(f, start=1):
      try:  # decoded line by line, so that an error can say where
        text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")  # a leading BOM too
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{line_number} is not valid UTF-8 ({e.reason} at byte "
                         f"{e.start}); JSON lines must be UTF-8.") from e
      # Old-Mac "\r" line ends too, as text mode would (JSON strings never hold a raw "\r").
      for line in _newlines_as_lf(text).split("\n"):
        if line.strip():
          yield _jsonl_text(line, text_field, f"{path}:{line_number}")


def _jsonl_text(line: str, text_field: str, where: str) -> str | None:
  """The text of one JSON line; None where the field is null."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where} is not valid JSON ({e}); each line must be one JSON object.") from e
  if not isinstance(record, dict) or text_field not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{where} has no field {text_field!r} (it has {keys}); set text_field.")
  text = record[text_field]
  if text is None:
    return None
  if not isinstance(text, str):
    raise ValueError(f"{where}: field {text_field!r} holds {type(text).__name__}, not a string.")
  try:  # JSON can escape a lone surrogate ("\ud800"), which no tokenizer can encode
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError(f"{where}: field {text_field!r} holds a character that is not valid text "
                     f"({e.reason} at {e.start}).") from e
  return text


def _read_parquet(cfg: SourceConfig) -> Iterator[str]:
  import pyarrow as pa  # Only parquet sources pay for the import.
  import pyarrow.parquet as pq

  for path in resolve_paths(cfg.paths, FILE_EXTENSIONS["parquet"]):
    try:
      parquet_file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # a glob over shards: say which one
      raise ValueError(f"{path!r} is not a readable parquet file ({e}); fix or remove it.") from e
    schema = parquet_file.schema_arrow
    if cfg.text_field not in schema.names:
      raise ValueError(
          f"parquet file {path!r} has no column {cfg.text_field!r} (it has {schema.names}); "
          "set text_field.")
    column_type = schema.field(cfg.text_field).type
    if pa.types.is_dictionary(column_type):  # a pandas category column: strings, encoded
      column_type = column_type.value_type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
            or getattr(pa.types, "is_string_view", lambda _: False)(column_type)):
      raise ValueError(f"parquet file {path!r}: column {cfg.text_field!r} holds {column_type}, "
                       "not strings; set text_field to the column with the text.")
    batches = parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[cfg.text_field])
    texts = (text for batch in batches for text in batch.column(0).to_pylist())
    yield from _skipping_nulls(texts, path, cfg.text_field)


# ---------------------------------------------------------------------------------------------
# TensorFlow Datasets.


def _tfds_builder(cfg: SourceConfig):
  """The builder of a TFDS dataset prepared under cfg.data_dir; never downloads."""
  import tensorflow_datasets as tfds  # Heavy and optional: imported only for this source.

  try:
    builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
  except Exception as e:  # DatasetNotFoundError and friends carry pages of dataset names.
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise FileNotFoundError(
        f"TFDS dataset {cfg.name!r} was not found in data_dir {cfg.data_dir!r} ({first_line}); "
        "fix the source name or data_dir.") from e
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {cfg.name!r} is not prepared in data_dir {cfg.data_dir!r} and nothing is "
        f"downloaded at run time; prepare it first, e.g. `tfds build {cfg.name} "
        f"--data_dir={cfg.data_dir} --file_format=array_record`, or fix data_dir.")
  return builder


def _tfds_prepared_files(cfg: SourceConfig) -> list[str]:
  data_path = str(_tfds_builder(cfg).data_path)
  return sorted(os.path.join(data_path, name) for name in os.listdir(data_path))


def _read_tfds(cfg: SourceConfig) -> Iterator[str]:
  builder = _tfds_builder(cfg)
  features = list(builder.info.features.keys())
  if cfg.text_field not in features:
    raise ValueError(f"TFDS dataset {cfg.name!r} has no feature {cfg.text_field!r} "
                     f"(it has {features}); set text_field.")
  feature = builder.info.features[cfg.text_field]
  # Only one string an example is text: str() of a number or an array would be trained on as if
  # it were (as the parquet and jsonl readers refuse other types).
  if getattr(feature.np_dtype, "kind", None) != "O" or tuple(feature.shape) != ():
    raise ValueError(f"TFDS dataset {cfg.name!r}: feature {cfg.text_field!r} holds "
                     f"{type(feature).__name__}({feature.np_dtype}, shape {feature.shape}), not "
                     "text; set text_field to the feature with the text.")
  _check_tfds_split(builder, cfg)
  if _tfds_is_random_access(builder):
    examples = _tfds_array_record_examples(builder, cfg.split)
  else:
    examples = _tfds_tfrecord_examples(builder, cfg)
  for example in examples:
    text = example[cfg.text_field]
    yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _check_tfds_split(builder, cfg: SourceConfig):
  """Each split named in cfg.split ("train", "train[:10%]", "train+test") must exist."""
  splits = sorted(builder.info.splits.keys())
  for part in cfg.split.split("+"):
    name = part.split("[", 1)[0].strip()
    if name not in splits:
      raise ValueError(f"TFDS dataset {cfg.name!r} has no split {name!r} (it has {splits}); "
                       "fix the split.")


def _tfds_is_random_access(builder) -> bool:
  return str(builder.info.file_format.value) in ("array_record", "parquet")


def _tfds_array_record_examples(builder, split: str, chunk: int = 1024) -> Iterator[dict]:
  """Reads through the random-access data source: no TensorFlow needed."""
  data_source = builder.as_data_source(split=split)
  for start in range(0, len(data_source), chunk):
    yield from data_source.__getitems__(list(range(start, min(start + chunk, len(data_source)))))


def _tfds_tfrecord_examples(builder, cfg: SourceConfig) -> Iterator[dict]:
  """tfrecord files can only be read through tf.data, so this path needs TensorFlow."""
  import tensorflow_datasets as tfds

  if importlib.util.find_spec("tensorflow") is None:
    raise ValueError(
        f"TFDS dataset {cfg.name!r} in {cfg.data_dir!r} is stored as tfrecord, which needs "
        "tensorflow (not installed); re-prepare it with --file_format=array_record "
        f"(`tfds build {cfg.name} --data_dir={cfg.data_dir} --file_format=array_record`) "
        "or install tensorflow.")
  dataset = builder.as_dataset(split=cfg.split, shuffle_files=False)
  return iter(tfds.as_numpy(dataset))


# ---------------------------------------------------------------------------------------------
# The embedded corpus: docstrings of the standard library and of installed packages.


def stdlib_doc_files(doc_packages: Sequence[str] = DEFAULT_DOC_PACKAGES) -> list[str]:
  """The .py files the embedded corpus reads: the stdlib, then each installed package, sorted."""
  roots = [sysconfig.get_paths()["stdlib"]] + _package_roots(doc_packages)
  return [path for root in roots for path in _python_files_under(root)]


def _package_roots(doc_packages: Sequence[str]) -> list[str]:
  roots = []
  for package in doc_packages:
    spec = importlib.util.find_spec(package)  # Locates the package without importing it.
    if spec is None or not spec.submodule_search_locations:
      # Not installed here: read without it, said aloud so a misspelt name is noticed; the
      # content hash records what was actually read.
      warnings.warn(f"data.doc_packages: {package!r} is not an installed package; its docs are "
                    "not read")
      continue
    roots.extend(sorted(spec.submodule_search_locations))
  return roots


def _python_files_under(root: str) -> list[str]:
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DOC_DIRS)
    files.extend(os.path.join(directory, name) for name in sorted(names) if name.endswith(".py"))
  return files


def _read_stdlib_docs(cfg: SourceConfig) -> Iterator[str]:
  for path in stdlib_doc_files(cfg.doc_packages):
    docstrings = _module_docstrings(path)
    if docstrings:
      yield "\n\n".join(docstrings)


def _module_docstrings(path: str) -> list[str]:
  """All docstrings of one source file, in source order; [] for a file that does not parse."""
  with open(path, "rb") as f:
    source_bytes = f.read()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Invalid escape sequences and the like in old modules.
      tree = ast.parse(source_bytes)
  except (SyntaxError, ValueError):
    return []
  return list(_docstrings_of(tree))


def _docstrings_of(node: ast.AST) -> Iterable[str]:
  """Walks statements only (not expressions), which is all docstrings can hang from."""
  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
    docstring = ast.get_docstring(node, clean=True)
    if docstring and not docstring.isspace():
      yield docstring
  for field in ("body", "orelse", "finalbody", "handlers"):
    for child in getattr(node, field, ()):
      if isinstance(child, ast.stmt) or isinstance(child, ast.excepthandler):
        yield from _docstrings_of(child)


def _stdlib_docs_content_hash(doc_packages: Sequence[str]) -> str:
  """sha256 over the paths and bytes of every file the embedded corpus parses."""
  digest = hashlib.sha256(f"python {sys.version_info[:3]}".encode())
  for path in stdlib_doc_files(doc_packages):
    digest.update(path.encode() + b"\0")
    with open(path, "rb") as f:
      digest.update(hashlib.sha256(f.read()).digest())
  return digest.hexdigest()


_RAW_READERS = {
    "txt": _read_txt,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "tfds": _read_tfds,
    "stdlib_docs": _read_stdlib_docs,
}
