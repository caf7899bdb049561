"""Every config file validates to the settings the hand-written validators gave, and each of many
bad values (and each deleted field) fails with the message they gave.

tests/data/config_golden.json was recorded by this file (`python -m tests.test_config_golden`)
before the validators were declared as schemas (memjax/schema.py); it is the record of their
behaviour, so regenerate it only for a deliberate change of a message, and say so in the commit.
"""

import copy
import hashlib
import importlib
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "data", "config_golden.json")
HF = os.path.join(ROOT, "tests", "data", "hf")
NEOX = (os.path.join(HF, "neox_a"), os.path.join(HF, "neox_b"))
A_JSONL = os.path.join(ROOT, "docs", "gpu_check_results.jsonl")  # any existing .jsonl file

# case name -> (config file, the overrides that make it validate: the pretrained ones need
# checkpoints).
CONFIGS = {k: (k, v) for k, v in {
    "capacity": {}, "capacity_paper": {}, "capacity_gpu_check": {}, "text": {},
    # its corpus and tokenizer are not here
    "text_paper": {"data.source": "stdlib_docs", "data.paths": (),
                   "data.tokenizer_path": os.path.join(HF, "tokenizer.json")},
    "membership": {}, "dynamics": {}, "distributional": {},
    "pretrained_dynamics": {"model.paths": NEOX, "data.paths": (A_JSONL,)},
    "pretrained_distributional": {"model.paths": NEOX, "data.paths": (A_JSONL,)},
    "pretrained_membership": {"model.paths": NEOX,
                              "model.reference_path": os.path.join(HF, "neox_c"),
                              "data.members": A_JSONL, "data.nonmembers": A_JSONL},
    "pretrained_extraction": {"model.paths": NEOX, "data.path": A_JSONL},
}.items()}
CONFIGS["membership_text"] = ("membership", {"data.source": "text", "data.vocab_size": 512,
                                            "sweep.dataset_sizes": (16, 128, 1024)})
# What each kind of value is replaced by; a deletion is recorded as "<deleted>".
BAD_VALUES = {
    bool: ["yes", 1],
    int: [0, -1, 2**31, 1.5, "3", True],
    float: [0.0, -1.0, 1.0, 2.0, float("inf"), "x", True],
    str: [5, "", "bogus", None],
    tuple: [(), (0,), (-1,), ("a",), (1, 1), (1.5,), ("",)],
}
DELETED = "<deleted>"
NGRAM_CONFIGS = ("dynamics", "pretrained_dynamics", "distributional", "pretrained_distributional")
# Outcomes changed on purpose, with why.
CHANGED = {
    ("membership", "quiet <deleted>"): "quiet defaults to False, as in every other experiment",
    ("membership_text", "quiet <deleted>"): "the same",
    **{(name, "ngram.backend <deleted>"): "an ngram section without it counts exactly, as a "
       "config without the section does" for name in NGRAM_CONFIGS},
    **{(name, "distributional.denominator=None"): "None reads as '', as in every string field"
       for name in ("distributional", "pretrained_distributional")},
    ("pretrained_distributional", "(top).bogus_field=1"): "the allowed fields name the optional "
    "ngram section, which this config leaves out",
}


def load_config(name):
  path, overrides = CONFIGS[name]
  spec = importlib.util.spec_from_file_location(path, os.path.join(ROOT, "configs", f"{path}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in overrides.items():
    section, key = field.split(".")
    config[section][key] = value
  return config


def validate(config):
  from memjax import main
  return importlib.import_module(main.EXPERIMENTS[config.experiment]).validate(config)


def _leaves(config, prefix=""):
  for key in config.keys():
    value = config[key]
    if hasattr(value, "keys"):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _set(config, field, value):
  section, _, key = field.rpartition(".")
  node = config[section] if section else config
  if value is DELETED:
    del node[key]
  else:
    node[key] = value


def outcome(config, in_full=True):
  """The settings (JSON, paths under the repository as <root>; else its hash) or the error, as
  one string."""
  from memjax import config as config_lib
  try:
    settings = validate(config)
  except Exception as e:  # noqa: BLE001 - a KeyError of a missing field is recorded as such
    text = f"{type(e).__name__}: {e}"
  else:
    text = json.dumps(config_lib.to_jsonable(settings), sort_keys=True)
    text = text.replace(ROOT, "<root>").replace(os.path.expanduser("~"), "<home>")
    if not in_full:
      return "settings sha256 " + hashlib.sha256(text.encode()).hexdigest()[:16]
  return text.replace(ROOT, "<root>").replace(os.path.expanduser("~"), "<home>")


def cases(name):
  """(case id, config) of every bad value of every field of config file `name`."""
  base = load_config(name)
  yield "as given", base
  for field, value in list(_leaves(base)):
    if field == "experiment":
      continue
    kind = type(value) if type(value) in BAD_VALUES else tuple if isinstance(value, list) else None
    for bad in BAD_VALUES.get(kind, []) + [DELETED]:
      config = copy.deepcopy(base)
      with config.unlocked():
        try:
          _set(config, field, bad)
        except (TypeError, KeyError):  # ml_collections refuses a change of type: not a case
          continue
      yield f"{field}={bad!r}" if bad is not DELETED else f"{field} {DELETED}", config
  for section in [""] + [k for k in base.keys() if hasattr(base[k], "keys")]:
    config = copy.deepcopy(base)
    with config.unlocked():
      (config[section] if section else config)["bogus_field"] = 1
    yield f"{section or '(top)'}.bogus_field=1", config


def record():
  return {name: _outcomes(name) for name in CONFIGS}


def _outcomes(name):
  """case -> outcome; the settings in full only as given (the others' differ in one field)."""
  return {case: outcome(config, in_full=case == "as given") for case, config in cases(name)}


def _golden():
  with open(GOLDEN) as f:
    return json.load(f)


def _names_the_missing_field(case, expected, got):
  """A deleted field the old validators read without a default raised KeyError (a traceback);
  a ConfigError naming the field is what it should have been."""
  field = case.removesuffix(f" {DELETED}")
  return (case.endswith(DELETED) and expected.startswith("KeyError")
          and got.startswith(f"ConfigError: config.{field}: missing"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_config_and_bad_value_validates_as_recorded(name):
  expected = _golden()[name]
  got = _outcomes(name)
  assert got.keys() == expected.keys()
  differ = {case: (expected[case], got[case]) for case in got
            if got[case] != expected[case] and (name, case) not in CHANGED
            and not _names_the_missing_field(case, expected[case], got[case])}
  assert not differ, json.dumps(differ, indent=1)[:6000]


if __name__ == "__main__":
  os.chdir(ROOT)
  sys.path.insert(0, ROOT)
  with open(GOLDEN, "w") as f:
    json.dump(record(), f, indent=1, sort_keys=True)
    f.write("\n")
