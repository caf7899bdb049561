"""memjax.schema: fields declared once check a config, name the field in every error, and list."""

import importlib
import os

import ml_collections
import pytest

from memjax import main
from memjax import schema
from memjax.schema import ConfigError, Field

SMALL = schema.Schema((
    Field("quiet", "bool", "no logs", default=False),
    Field("data.seq_len", "int", "tokens a sequence", minimum=2, maximum=64),
    Field("data.paths", "paths", "files"),
    Field("train.steps", "int", "steps"),
    Field("eval.checkpoints", "int", "segments", maximum="train.steps"),
    Field("ngram.backend", "str", "counts", allowed=("exact", "infini_gram"), default="exact"),
), optional_sections=("ngram",))


def _config(**sections):
  config = ml_collections.ConfigDict()
  for section, fields in sections.items():
    config[section] = ml_collections.ConfigDict(fields)
  return config


def _good():
  return _config(data={"seq_len": 8, "paths": ("~/a.txt",)}, train={"steps": 10},
                 eval={"checkpoints": 5})


def test_read_gives_typed_values_and_the_defaults_of_what_the_config_lacks():
  values = schema.read(_good(), SMALL)
  assert values == {"quiet": False, "data.seq_len": 8,
                    "data.paths": (os.path.expanduser("~/a.txt"),), "train.steps": 10,
                    "eval.checkpoints": 5, "ngram.backend": "exact"}
  assert schema.by_key({"data.seq_len": 8}) == {"seq_len": 8}


@pytest.mark.parametrize("change,message", [
    (lambda c: c.data.__setitem__("seq_len", 65),
     "config.data.seq_len: must be an integer in [2, 64], got 65"),
    (lambda c: c.data.__setitem__("seq_lne", 8),
     "config.data.seq_lne: unknown field; allowed: paths, seq_len"),
    (lambda c: c.__setitem__("evl", 1),
     "config.evl: unknown field; allowed: data, eval, ngram, quiet, train"),
    (lambda c: c.__delitem__("eval"), "config.eval: missing section"),
    (lambda c: c.train.__delitem__("steps"),
     "config.train.steps: missing field; add it to the config file"),
    (lambda c: c.eval.__setitem__("checkpoints", 11),
     "config.eval.checkpoints: must be an integer in [1, 10], got 11"),  # bound by train.steps
    (lambda c: c.__setitem__("ngram", ml_collections.ConfigDict({"backend": "fast"})),
     "config.ngram.backend: must be one of exact, infini_gram, got 'fast'"),
])
def test_a_bad_config_fails_naming_the_field(change, message):
  config = _good()
  with config.unlocked():
    change(config)
  with pytest.raises(ConfigError) as e:
    schema.read(config, SMALL)
  assert str(e.value) == message


@pytest.mark.parametrize("field,value,message", [
    (Field("a.n", "int", ""), True, "must be an integer in [1, 2147483647], got True"),
    (Field("a.x", "float", ""), 0.0, "must be a finite number > 0.0 and <= inf, got 0.0"),
    (Field("a.x", "float", "", strict=False, maximum=1.0), 1.5,
     "must be a finite number >= 0.0 and <= 1.0, got 1.5"),
    (Field("a.x", "float", ""), float("nan"), "must be a finite number > 0.0 and <= inf, got nan"),
    (Field("a.b", "bool", ""), 1, "must be True or False, got 1"),
    (Field("a.s", "str", ""), 3, "must be a string, got 3"),
    (Field("a.s", "str", "", allow_empty=False), None, "must not be empty"),
    (Field("a.l", "ints", ""), (), "must list at least one value"),
    (Field("a.l", "ints", "", minimum=0), (0, -1),
     "must be integers in [0, 2147483647], got (0, -1)"),
    (Field("a.l", "ints", ""), (2, 1, 2), "lists 2 more than once, got (2, 1, 2)"),
    (Field("a.l", "floats", ""), (1.0, -1.0), "must be positive finite numbers, got (1.0, -1.0)"),
    (Field("a.l", "strs", ""), ("x", ""), "must be a list of non-empty strings, got ('x', '')"),
    (Field("a.p", "strs", "", allowed=("fp32", "bf16")), "bf16,fp16",
     "must be a list of fp32, bf16, got ('bf16', 'fp16')"),
])
def test_each_type_refuses_what_it_does_not_allow(field, value, message):
  with pytest.raises(ConfigError) as e:
    field.check(value)
  assert str(e.value) == f"config.{field.name}: {message}"


def test_values_are_typed():
  number = Field("a.x", "float", "").check(2)
  assert number == 2.0 and isinstance(number, float)
  assert Field("a.s", "str", "").check(None) == ""
  assert Field("a.l", "ints", "").check(3) == (3,)
  assert Field("a.l", "floats", "").check([1, 2]) == (1.0, 2.0)
  # an override --config.sweep.precisions=(bf16) arrives as one string
  assert Field("a.p", "strs", "", allowed=("fp32", "bf16")).check("(bf16,)") == ("bf16",)


def test_an_unknown_type_is_refused_when_declared():
  with pytest.raises(ValueError, match="unknown field type 'integer'"):
    Field("a.n", "integer", "")


def test_describe_says_what_is_allowed():
  assert Field("a.n", "int", "", minimum=0).describe() == "[0, 2^31-1]"
  assert Field("a.n", "int", "", maximum="train.steps").describe() == "[1, train.steps]"
  assert Field("a.x", "float", "", maximum=1.0).describe() == "(0, 1]"
  assert Field("a.x", "float", "", strict=False).describe() == "[0, inf)"
  assert Field("a.l", "ints", "").describe() == "[1, 2^31-1], not empty"
  assert Field("a.s", "str", "", allowed=("a", "b")).describe() == "a, b"
  assert Field("a.b", "bool", "").describe() == "True, False"
  assert Field("a.p", "strs", "", allowed=("a", "b")).describe() == "any of a, b"


def test_listing_is_one_line_a_field_and_marks_what_the_file_leaves_out():
  lines = schema.listing(SMALL, _good()).splitlines()
  assert len(lines) == 1 + len(SMALL.fields) + 1
  assert lines[2].split()[:4] == ["data.seq_len", "int", "8", "[2,"]
  assert lines[1].split()[:5] == ["quiet", "bool", "False", "*", "True,"]
  assert lines[-1] == schema.ABSENT_NOTE


@pytest.mark.parametrize("name", list(main.EXPERIMENTS))
def test_every_experiment_declares_each_field_once_with_a_meaning(name):
  fields = importlib.import_module(main.EXPERIMENTS[name]).SCHEMA.fields
  names = [f.name for f in fields]
  assert len(names) == len(set(names))
  assert all(f.meaning for f in fields)
  experiment = next(f for f in fields if f.name == "experiment")
  assert experiment.allowed == (name,)
