"""Validation of ml_collections configs into typed settings, before anything is compiled.

Each experiment declares its fields as a `schema.Schema` (the capacity sweep's is here, with the
sections several experiments share: train, ngram, imported checkpoints); every problem is one
`ConfigError` whose message starts with the field's full name (`config.sweep.d_model: ...`) and
says what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from typing import Any

from absl import logging

from memjax import schema
from memjax.data import text as text_lib  # numpy only; the text pipeline is not started
from memjax.model import gpt2
from memjax.train import TrainConfig

PRECISIONS = tuple(gpt2.PRECISIONS)
SCHEDULES = ("cosine", "wsd")
MAX_INT32 = schema.MAX_INT32
ConfigError = schema.ConfigError
Field = schema.Field
_fail = schema.fail


@dataclasses.dataclass(frozen=True)
class CapacitySettings:
  vocab_size: int
  seq_len: int
  num_heads: int
  layers: tuple
  d_model: tuple
  dataset_sizes: tuple  # used when dataset_size_factors is empty
  dataset_size_factors: tuple  # N = factor * (3.6 * params / bits per sequence), per shape
  seeds: tuple
  precisions: tuple
  learning_rates: tuple
  train: TrainConfig
  eval_batch_size: int
  test_size: int
  quiet: bool
  models_per_chunk: int = 0  # 0: as many as fit the device memory (see sweep.plan_chunks)
  device_memory_gib: float = 0.0  # 0: the device's own limit (CPU: sweep.DEFAULT_CPU_MEMORY_GIB)
  # Keep each finished chunk's trained parameters (WORKDIR/capacity_params/), so that
  # memjax.export and memjax.score can read its rows; not part of a model's key.
  save_params: bool = False
  # Points of the convergence record: each model's memorization (the final rows' estimator) at
  # this many log-spaced call boundaries up to train.steps; 0: none.
  curve_steps: int = 0


def _as_tuple(config, field):
  value = _get(config, field)
  if isinstance(value, (list, tuple)):
    return tuple(value)
  return (value,)


def _get(config, field):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _train_field(name, type_, meaning, **bounds):
  """A train section field; a config without it trains with TrainConfig's default."""
  default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
  return Field(f"train.{name}", type_, meaning, default=default, **bounds)


# The train section, shared by every experiment that trains models (memjax.train.TrainConfig).
TRAIN_FIELDS = (
    _train_field("steps", "int", "optimizer steps of every model"),
    _train_field("batch_size", "int", "sequences a step, per model (unless batch_fraction)"),
    _train_field("learning_rate", "float", "peak learning rate (AdamW after a linear warmup)"),
    _train_field("warmup_steps", "int", "linear warmup steps", minimum=0),
    _train_field("min_lr_ratio", "float", "the schedule decays to this fraction of the peak",
                 strict=False, maximum=1.0),
    _train_field("weight_decay", "float", "AdamW weight decay", strict=False),
    _train_field("b1", "float", "AdamW beta1", strict=False, maximum=0.999999),
    _train_field("b2", "float", "AdamW beta2", strict=False, maximum=0.999999),
    _train_field("eps", "float", "AdamW epsilon"),
    _train_field("grad_clip", "float", "global gradient-norm clip"),
    _train_field("steps_per_call", "int", "steps fused into one device call (lax.scan)"),
    _train_field("vocab_chunk", "int", "vocabulary chunk of the likelihood kernel"),
    _train_field("saturation_tolerance", "float", "> 0: freeze a model once its memorization "
                 "changes by less than this fraction a window; 0: a fixed budget", strict=False,
                 maximum=1.0),
    _train_field("saturation_window", "int", "steps between two saturation estimates"),
    _train_field("saturation_patience", "int", "windows in a row under the tolerance to freeze"),
    _train_field("checkpoint_every", "int", "steps between checkpoints; 0: only at the end and "
                 "when interrupted", minimum=0),
    _train_field("schedule", "str", "learning rate after the warmup: cosine decay, or wsd "
                 "(constant, then a linear decay)", allowed=SCHEDULES),
    _train_field("decay_fraction", "float", "wsd: the fraction of train.steps the decay takes",
                 strict=False, maximum=1.0),
    _train_field("batch_fraction", "float", "> 0: a model's batch is this fraction of its N (a "
                 "power of two in [batch_min, batch_max]); 0: batch_size", strict=False,
                 maximum=1.0),
    _train_field("batch_min", "int", "the smallest batch under batch_fraction"),
    _train_field("batch_max", "int", "the largest batch under batch_fraction"),
)
QUIET = Field("quiet", "bool", "no progress bars or info logs", default=False)
NUM_HEADS = Field("model.num_heads", "int", "attention heads; must divide every d_model")
POOL_SPLIT = Field("data.pool_split", "str", "pools drawn sequence by sequence, or as whole "
                   "documents (no held-out sequence shares a training document)",
                   allowed=text_lib.POOL_SPLITS, default="sequence")


def experiment_field(name):
  """The top-level `experiment` of an experiment's schema (main.py dispatches on it)."""
  return Field("experiment", "str", "the experiment this file runs", allowed=(name,))


CAPACITY_SCHEMA = schema.Schema((
    experiment_field("capacity"), QUIET,
    Field("data.vocab_size", "int", "V: tokens are uniform over it", minimum=2),
    Field("data.seq_len", "int", "S: tokens a sequence (= the model's positions)", minimum=2,
          maximum=65536),
    NUM_HEADS,
    Field("sweep.layers", "ints", "numbers of layers to sweep"),
    Field("sweep.d_model", "ints", "widths to sweep"),
    Field("sweep.dataset_sizes", "ints", "N, sequences in each model's training set (not used "
          "when dataset_size_factors is set)", allow_empty=True),
    Field("sweep.dataset_size_factors", "floats", "if set, N = factor x 3.6 x params / (S log2 "
          "V) for each shape, rounded"),
    Field("sweep.seeds", "ints", "seeds (init and data), one model each", minimum=0),
    Field("sweep.precisions", "strs", "fp32, bf16 (bf16 parameters) or bf16-mixed (bf16 "
          "compute, fp32 parameters), one model each", allowed=PRECISIONS),
    Field("sweep.learning_rates", "floats", "peak learning rates, one model each; empty: "
          "train.learning_rate"),
    Field("sweep.models_per_chunk", "int", "models trained together in one chunk; 0: as many "
          "as fit a device's memory", minimum=0, default=0),
    Field("sweep.device_memory_gib", "float", "memory of one device for a chunk, GiB; 0: the "
          "device's own limit", strict=False, default=0.0),
    Field("sweep.save_params", "bool", "keep each chunk's trained parameters (for "
          "memjax.export and memjax.score)", default=False),
    *TRAIN_FIELDS,
    Field("eval.batch_size", "int", "sequences a scoring call"),
    Field("eval.test_size", "int", "held-out sequences for the test loss"),
    Field("eval.curve_steps", "int", "points (log-spaced) of each model's convergence record; "
          "0: none", minimum=0, maximum=1000, default=0),
))


def check_divisible(d_models, heads, field="sweep.d_model", heads_field="model.num_heads"):
  """Every width splits into whole attention heads."""
  for d in d_models:
    if d % heads:
      _fail(field, f"each d_model must be divisible by {heads_field}={heads}, got {d}")


def validate(config) -> CapacitySettings:
  """Check a capacity config and turn it into settings; raises ConfigError naming the field."""
  v = schema.read(config, CAPACITY_SCHEMA)
  check_divisible(v["sweep.d_model"], v["model.num_heads"])
  train = train_settings(v)
  factors = v["sweep.dataset_size_factors"]
  if not factors and not v["sweep.dataset_sizes"]:
    _fail("sweep.dataset_sizes", "must list at least one value")
  settings = CapacitySettings(
      vocab_size=v["data.vocab_size"], seq_len=v["data.seq_len"],
      num_heads=v["model.num_heads"], layers=v["sweep.layers"], d_model=v["sweep.d_model"],
      dataset_sizes=v["sweep.dataset_sizes"], dataset_size_factors=factors,
      seeds=v["sweep.seeds"], precisions=v["sweep.precisions"],
      learning_rates=v["sweep.learning_rates"], train=train,
      eval_batch_size=v["eval.batch_size"], test_size=v["eval.test_size"], quiet=v["quiet"],
      models_per_chunk=v["sweep.models_per_chunk"],
      device_memory_gib=v["sweep.device_memory_gib"], save_params=v["sweep.save_params"],
      curve_steps=v["eval.curve_steps"])
  _check_dataset_sizes(settings)
  return settings


def _check_dataset_sizes(s: CapacitySettings):
  """The largest N: indices are int32, and sequences are drawn uniformly with replacement, so N
  of them repeat about N/(2 V**S) of themselves; each repeat would count as memorized again. Up to
  N = V**S / 50 that is under 1%."""
  vocab, seq_len = s.vocab_size, s.seq_len
  distinct = vocab**seq_len if seq_len * math.log2(vocab) < 62 else MAX_INT32 * 64
  max_n = min(MAX_INT32 - max(s.train.batch_size, s.train.batch_max), distinct // 50)
  for shape in model_shapes(s):
    for n in dataset_sizes_for(s, shape):
      if n > max_n:
        field = "sweep.dataset_size_factors" if s.dataset_size_factors else "sweep.dataset_sizes"
        why = (f"sequences are drawn with replacement from V**S = {vocab}**{seq_len}, and more "
               "than 1% of them would repeat, each counted as memorized again"
               if max_n == distinct // 50 else "indices are int32")
        _fail(field, f"dataset size {n} is too large: at most {max_n} ({why}); "
                     "lower it or raise data.vocab_size / data.seq_len")


NGRAM_BACKENDS = ("exact", "infini_gram")
# The optional ngram section of the experiments that count n-grams (configs older than it have
# none: exact counts).
NGRAM_FIELDS = (
    Field("ngram.backend", "str", "n-gram counts: exact (in memory) or infini_gram (a suffix "
          "array on disk; the same counts)", allowed=NGRAM_BACKENDS, default="exact"),
    Field("ngram.index_dir", "path", "infini_gram: an existing index (e.g. the Pile); empty: "
          "built from the training tokens, cached", default=""),
)


def checkpoint_fields(paths_meaning: str):
  """model.paths (imported Hugging Face checkpoints, scored rather than trained) and the
  precision they are read in; `paths_meaning` says what the experiment does with them."""
  return (Field("model.paths", "paths", paths_meaning, default=()),
          Field("model.precision", "str", "precision the checkpoints are read in",
                allowed=("fp32", "bf16"), default="fp32"))


@dataclasses.dataclass(frozen=True)
class NgramSettings:
  backend: str = "exact"  # or "infini_gram" (the infini-gram wheel's suffix-array engine)
  index_dir: str = ""  # an infini-gram index; "": built from the training tokens, in the cache


def ngram_settings(config, vocab_size: int, tokenizer: str = "") -> NgramSettings:
  """config.ngram -> NgramSettings (defaults where the section is absent)."""
  return check_ngram(schema.values(config, NGRAM_FIELDS), vocab_size, tokenizer)


def check_ngram(values, vocab_size: int, tokenizer: str = "") -> NgramSettings:
  """NgramSettings of the ngram fields of `values`; an index_dir is checked against the model's
  vocabulary (and tokenizer, where its manifest names one) now."""
  backend, index_dir = values["ngram.backend"], values["ngram.index_dir"]
  if backend == "exact":
    if index_dir:
      _fail("ngram.index_dir", f"ngram.backend='exact' counts in memory and reads no index, so "
                               f"{index_dir!r} would be ignored; clear it or set "
                               "ngram.backend='infini_gram'")
    return NgramSettings()
  from memjax.estimators import infini_gram
  if not infini_gram.available():
    _fail("ngram.backend", "'infini_gram' needs the infini-gram package (pip install infini-gram)")
  if index_dir:
    try:
      infini_gram.check_fits(infini_gram.inspect_index(index_dir), vocab_size, tokenizer)
    except infini_gram.IndexFormatError as e:
      _fail("ngram.index_dir", str(e))
  elif vocab_size > infini_gram.separator_id("u16"):
    _fail("ngram.index_dir", f"memjax builds u8/u16 indexes (vocabularies up to 65,535 tokens), "
                             f"the model has {vocab_size:,}; build a u32 index elsewhere and "
                             "name it here")
  return NgramSettings(backend, index_dir)


def read_checkpoints(values):
  """(paths, model config) of the Hugging Face checkpoints of `values` (checkpoint_fields), or
  ((), None) when it names none; ConfigError naming model.paths on a bad directory."""
  field = "model.paths"
  paths = values[field]
  if not paths:
    return (), None
  from memjax.model import hf
  try:
    configs = [hf.read_config(p, values["model.precision"]) for p in paths]
    hf.check_same_shape(paths, configs)
  except hf.CheckpointError as e:
    _fail(field, str(e))
  tokenizers = set()
  for p in paths:
    tokenizer = hf.tokenizer_bytes(p)
    if tokenizer is None:
      _fail(field, f"{p}: no {hf.TOKENIZER_FILE} (the data is tokenized with the checkpoints' "
                   "own tokenizer)")
    tokenizers.add(tokenizer)
  if len(tokenizers) > 1:
    _fail(field, f"the checkpoints' {hf.TOKENIZER_FILE} files differ; a stack scores one "
                 "tokenization, so give checkpoints of one tokenizer")
  return paths, configs[0]


def check_pool_split(split: str, synthetic: bool = False, text_source: str = "a text source"):
  """Synthetic data, which has no documents, cannot be split by document (the error names
  `text_source`, what the experiment calls a text source)."""
  if split == "document" and synthetic:
    _fail("data.pool_split", f"'document' needs {text_source} (synthetic data has no documents); "
                             "set data.pool_split='sequence'")


def train_settings(values) -> TrainConfig:
  """TrainConfig of the train fields of `values` (schema.read), checked against each other."""
  tcfg = TrainConfig(**{f.key: values[f.name] for f in TRAIN_FIELDS})
  _check_schedule(tcfg)
  _check_batch_fraction(tcfg)
  if tcfg.saturation:
    # The first window only sets the estimate to compare with, so the earliest a model can be
    # frozen is after saturation_patience + 1 windows: beyond train.steps, saturation never acts
    # and the run is a fixed budget under another key.
    first = (tcfg.saturation_patience + 1) * tcfg.saturation_window
    if first > tcfg.steps:
      _fail("train.saturation_window",
            f"with train.saturation_patience={tcfg.saturation_patience} a model can be frozen "
            f"only after {tcfg.saturation_patience + 1} windows of {tcfg.saturation_window} "
            f"steps ({first:,} steps), beyond train.steps={tcfg.steps:,}, so saturation would "
            "never act; lower train.saturation_window or train.saturation_patience, or set "
            "train.saturation_tolerance=0.0 for a fixed budget")
  if tcfg.warmup_steps >= tcfg.steps:
    logging.warning(
        "train.warmup_steps (%d) >= train.steps (%d): the learning rate is still warming up when "
        "training ends (it never reaches train.learning_rate nor decays)%s", tcfg.warmup_steps,
        tcfg.steps, "; saturation is checked only after the warmup, so never" if tcfg.saturation
        else "")
  return tcfg


def _check_schedule(tcfg: TrainConfig):
  """A WSD decay needs room after the warmup; decay_fraction 0 would be no decay at all."""
  if not tcfg.wsd:
    return
  if tcfg.decay_fraction <= 0:
    _fail("train.decay_fraction", f"must be > 0 with train.schedule='wsd' (the fraction of "
                                  f"train.steps the decay takes), got {tcfg.decay_fraction!r}")
  # (A warmup as long as the run is only warned about, below, as for a cosine.)
  if tcfg.warmup_steps < tcfg.steps < tcfg.warmup_steps + tcfg.decay_steps:
    _fail("train.decay_fraction",
          f"a decay of {tcfg.decay_steps:,} steps ({tcfg.decay_fraction:g} of train.steps="
          f"{tcfg.steps:,}) after train.warmup_steps={tcfg.warmup_steps:,} ends beyond "
          "train.steps; lower train.decay_fraction or train.warmup_steps")


def _check_batch_fraction(tcfg: TrainConfig):
  if tcfg.batch_fraction and tcfg.batch_min > tcfg.batch_max:
    _fail("train.batch_min", f"must be <= train.batch_max={tcfg.batch_max}, got "
                             f"{tcfg.batch_min}")


def model_shapes(s: CapacitySettings):
  """Every model shape of the sweep, as ModelConfig."""
  return [gpt2.ModelConfig(s.vocab_size, s.seq_len, l, d, s.num_heads, p)
          for p in s.precisions for l in s.layers for d in s.d_model]


def dataset_sizes_for(s: CapacitySettings, shape: gpt2.ModelConfig):
  """The dataset sizes of one shape: given, or a grid around its expected capacity."""
  if not s.dataset_size_factors:
    return tuple(sorted(set(s.dataset_sizes)))
  expected_n = 3.6 * gpt2.n_params(shape) / (s.seq_len * math.log2(s.vocab_size))
  return tuple(sorted({max(1, round(f * expected_n)) for f in s.dataset_size_factors}))


# Words of a data-pipeline error message (memjax.data) -> the config field to change; the first
# match wins.
_DATA_ERROR_FIELDS = (
    ("tokenizer file", "data.tokenizer_path"),
    ("vocab_size", "data.vocab_size"),
    ("tokens long", "data.seq_len"),
    ("seq_len", "data.seq_len"),
    ("text_field", "data.text_field"),
    ("has no split", "data.tfds_split"),
    ("TFDS", "data.tfds_name"),
    ("tfds", "data.tfds_name"),
)


def data_error(error: Exception, reads_files: bool, source_field="data.source",
               extra_fields=()) -> ConfigError:
  """A data-pipeline error as a ConfigError naming the field to change: data.cache_dir when the
  cache could not be written, else by the words of its message (`extra_fields`, an experiment's
  own (words, field) pairs, first), else the source's paths (a file source) or the source."""
  cache_dir = getattr(error, "cache_dir", None)  # data.text.CacheWriteError
  if cache_dir is not None:
    return ConfigError(f"config.data.cache_dir: cannot write the cache in {cache_dir!r} "
                       f"({error.reason}); give a writable directory with free space")
  # str(KeyError) quotes its message; other messages keep their quotes.
  message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  fields = (*extra_fields, *_DATA_ERROR_FIELDS)
  # The words are looked for outside quotes and paths: a file under /data/tfds_export/, or a
  # record's keys listed in the message, must not decide the field.
  words_of_message = re.sub(r"\"[^\"]*\"|(?<!\w)'[^']*'|\S*/\S*", " ", message)
  field = next((f for words, f in fields if words in words_of_message), None)
  if field is None:
    field = "data.paths" if reads_files else source_field
  return ConfigError(f"config.{field}: {message}")


def refuse_unused_paths(config, kind, source_field="data.source", file_kinds=()):
  """data.paths given with a source that reads no files would be silently ignored: refuse."""
  paths = _as_tuple(config, "data.paths") if "paths" in config.data.keys() else ()
  if kind not in file_kinds and any(paths):
    _fail("data.paths", f"{source_field}={kind!r} reads no files, so data.paths={paths!r} "
                        f"would be ignored; clear data.paths or change {source_field}")


def check_workdir(workdir: str, create: bool = True):
  """Fail early, with the path, if results cannot be written there (made unless `create` is
  False: a dry run writes nothing)."""
  if not workdir:
    raise ConfigError("--workdir: must be given (a directory for results)")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir: {workdir!r} is a file, not a directory")
  if not create:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"--workdir: cannot write to {workdir!r} ({e.strerror or e})") from None


def to_jsonable(value: Any):
  if dataclasses.is_dataclass(value):
    return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
  if isinstance(value, (tuple, list)):
    return [to_jsonable(v) for v in value]
  return value


def _load_config_file(path):
  """get_config() of the config file at `path` (raises what loading it raises)."""
  import importlib.util
  if not os.path.isfile(path):
    raise FileNotFoundError("no such file")
  spec = importlib.util.spec_from_file_location("memjax_user_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError("it defines no get_config()")
  return module.get_config()


def config_file_error(path) -> str | None:
  """Why the config file at `path` cannot be loaded, in one line (None if it loads)."""
  if os.path.isdir(path):
    return "a directory, not a config file; name one of its .py files"
  try:
    _load_config_file(path)
  except SyntaxError as e:
    return f"SyntaxError: {e.msg} (line {e.lineno})"
  except FileNotFoundError as e:
    return str(e)
  except Exception as e:  # noqa: BLE001 - whatever get_config() raises
    return f"{type(e).__name__}: {' '.join(str(e).split())}"
  return None


def command_line_flags(argv) -> list[tuple[str, str | None]]:
  """(name, value) of every flag of a command line as absl reads it: flagfiles expanded, `-x` as
  `--x`, `--x value` as `--x=value` (value None when none follows)."""
  from absl import flags  # absl's own flagfile reader, so nothing is read twice differently
  try:
    args = flags.FLAGS.read_flags_from_files(list(argv[1:]), force_gnu=False)
  except Exception:  # a missing flagfile: absl reports it itself
    args = list(argv[1:])
  out = []
  for i, arg in enumerate(args):
    if not arg.startswith("-") or arg in ("-", "--"):
      continue
    name, eq, value = arg.lstrip("-").partition("=")
    if not eq:
      nxt = args[i + 1] if i + 1 < len(args) else None
      value = nxt if nxt is not None and not nxt.startswith("-") else None
    out.append((name, value))
  return out


def repeated_list_override(argv, config) -> str | None:
  """A list field overridden more than once: ml_collections joins the tuples (`seeds=(0,1)` then
  `seeds=(2,)` gives (0, 1, 2)) where a user expects the last to win. The one-line error, or None."""
  names = [n for n, _ in command_line_flags(argv) if n.startswith("config.")]
  for name in sorted({n for n in names if names.count(n) > 1}):
    try:
      value = _get(config, name.split(".", 1)[1])
    except (KeyError, AttributeError):
      continue
    if isinstance(value, (list, tuple)):
      return (f"{name}: overridden {names.count(name)} times on the command line; ml_collections "
              "would join the lists instead of keeping the last; give it once")
  return None


def explain_override_error(argv, error) -> str:
  """One line for a failed --config.* override: which field, and what exists there."""
  given = command_line_flags(argv)
  config_path = next((v for n, v in reversed(given) if n == "config"), None)
  overrides = [n for n, _ in given if n.startswith("config.")]
  try:
    config = _load_config_file(config_path)
  except Exception:  # the config file itself is broken: say why
    problem = config_file_error(config_path) if config_path else None
    if problem:
      return f"--config: cannot load {config_path!r}: {problem}"
    return " ".join(str(error).replace("\\n", " ").split())
  for name in overrides:
    node = config
    parts = name.split(".")[1:]
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node.keys():
        field = ".".join(parts[: i + 1])
        allowed = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
        return f"config.{field}: unknown field; allowed here: {allowed}"
      node = node[part]
  return " ".join(str(error).replace("\\n", " ").split())
