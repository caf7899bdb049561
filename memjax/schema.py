"""Config validation as data: each experiment declares its fields once, as a `Schema` of `Field`s
(name, type, range or allowed values, a default for fields older configs lack, a one-line
meaning); `read` checks a config against it and returns the typed values, and the field listing
(`--list_fields`) and the tables of docs/configuration.md are written from the same declaration.

Every problem is one `ConfigError` whose message starts with the field's full name
(`config.train.steps: must be an integer in [1, 2147483647], got 0`) and says what is allowed.
Checks between fields (d_model divisible by num_heads, a dataset larger than its pool) are the
experiment's own, run on the values `read` returns.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

MAX_INT32 = 2**31 - 1


class ConfigError(ValueError):
  """A bad config value; the message names the field and what is allowed."""


def fail(field: str, message: str):
  raise ConfigError(f"config.{field}: {message}")


class _Required:
  def __repr__(self):
    return "required"


REQUIRED = _Required()  # the default of a field every config must give

# A type's bounds when a Field gives none: counts start at 1, numbers are > 0, integer lists must
# not be empty (a sweep over nothing), strings and other lists may be.
_TYPE_DEFAULTS = {
    "int": dict(minimum=1, maximum=MAX_INT32),
    "ints": dict(minimum=1, maximum=MAX_INT32, allow_empty=False),
    "float": dict(minimum=0.0, maximum=math.inf),
    "floats": dict(allow_empty=True),
    "bool": {}, "str": dict(allow_empty=True), "path": dict(allow_empty=True),
    "strs": dict(allow_empty=True), "paths": dict(allow_empty=True),
}


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. `type`: int, float, bool, str, path (a string, ~ expanded), or a list of
  them: ints, floats (positive), strs (with `allowed`: a list of those names), paths."""
  name: str  # "train.steps"; no dot: a top-level field
  type: str
  meaning: str
  # ints, int and float; None: the type's (_TYPE_DEFAULTS); a field's name: that field's value
  # (declared before this one)
  minimum: Any = None
  maximum: Any = None
  strict: bool = True  # float: > minimum (False: >= minimum)
  allowed: tuple | None = None  # str, strs: the values it may take
  allow_empty: bool | None = None  # lists: may be (); str: may be ""
  default: Any = REQUIRED  # the value where a config lacks the field (configs older than it)

  def __post_init__(self):
    if self.type not in _TYPE_DEFAULTS:
      raise ValueError(f"{self.name}: unknown field type {self.type!r}")
    for key, value in _TYPE_DEFAULTS[self.type].items():
      if getattr(self, key) is None:
        object.__setattr__(self, key, value)

  @property
  def section(self) -> str:
    return self.name.rpartition(".")[0]

  @property
  def key(self) -> str:
    return self.name.rpartition(".")[2]

  def check(self, value):
    """The value, typed; ConfigError naming the field if it is not allowed."""
    return _CHECKS[self.type](self, value)

  def describe(self) -> str:
    """What the field may hold, in words (the listing's and the tables' column)."""
    return _describe(self)


@dataclasses.dataclass(frozen=True)
class Schema:
  """An experiment's fields; a section in `optional_sections` may be absent from a config (one
  older than it), its fields then take their defaults."""
  fields: tuple
  optional_sections: tuple = ()

  def sections(self) -> dict:
    """{section: {its field names}}, "" the top level (which also holds the section names)."""
    out = {"": set()}
    for f in self.fields:
      out.setdefault(f.section, set()).add(f.key)
      if f.section:
        out[""].add(f.section)
    return out


def read(config, schema: Schema) -> dict:
  """{field name: typed value} of `config`; ConfigError on an unknown, missing or bad field."""
  check_no_unknown_fields(config, schema)
  return values(config, schema.fields)


def check_no_unknown_fields(config, schema: Schema):
  """Reject a section that is missing, and a field the schema does not declare (a typo)."""
  for section, allowed in schema.sections().items():
    node = config.get(section) if section else config
    if node is None:
      if section in schema.optional_sections:
        continue
      fail(section, "missing section")
    for name in node.keys():
      if name not in allowed:
        where = f"{section}.{name}" if section else name
        fail(where, f"unknown field; allowed: {', '.join(sorted(allowed))}")


def values(config, fields) -> dict:
  """{field name: typed value} of `fields` (a field the config lacks: its default)."""
  out = {}
  for f in fields:
    if in_config(config, f):
      out[f.name] = _bounded_by(f, out).check(_section(config, f)[f.key])
    elif f.default is REQUIRED:
      fail(f.name, "missing field; add it to the config file")
    else:
      out[f.name] = f.default
  return out


def _section(config, field: Field):
  """The config node that holds `field` (None if the config lacks its section)."""
  return config.get(field.section) if field.section else config


def in_config(config, field: Field) -> bool:
  node = _section(config, field)
  return node is not None and field.key in node.keys()


def _bounded_by(f: Field, values: dict) -> Field:
  """`f` with a bound that names another field replaced by that field's value."""
  bounds = {k: values[getattr(f, k)] for k in ("minimum", "maximum")
            if isinstance(getattr(f, k), str)}
  return dataclasses.replace(f, **bounds) if bounds else f


def by_key(values: dict) -> dict:
  """{"data.seq_len": 64} -> {"seq_len": 64}: the values of one section by their own names."""
  return {name.rpartition(".")[2]: value for name, value in values.items()}


def config_value(config, field: Field):
  """What `config` gives the field (its default where it gives none): the listing's value."""
  return _section(config, field)[field.key] if in_config(config, field) else field.default


# ---------------------------------------------------------------------------------------------
# The checks of each type; their messages are those of the hand-written validators they replaced
# (tests/test_config_golden.py holds those).


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _int(f: Field, value):
  if not _is_int(value) or not f.minimum <= value <= f.maximum:
    fail(f.name, f"must be an integer in [{f.minimum}, {f.maximum}], got {value!r}")
  return value


def _float(f: Field, value):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or (value <= f.minimum if f.strict else value < f.minimum) or value > f.maximum:
    bound = f"> {f.minimum}" if f.strict else f">= {f.minimum}"
    fail(f.name, f"must be a finite number {bound} and <= {f.maximum}, got {value!r}")
  return float(value)


def _bool(f: Field, value):
  if not isinstance(value, bool):
    fail(f.name, f"must be True or False, got {value!r}")
  return value


def _str(f: Field, value):
  """A string (None reads as ""); with `allowed`, one of those values."""
  if value is None:
    value = ""
  if not isinstance(value, str):
    fail(f.name, f"must be a string, got {value!r}")
  if f.allowed is not None and value not in f.allowed:
    fail(f.name, f"must be one of {', '.join(f.allowed)}, got {value!r}")
  if not f.allow_empty and not value:
    fail(f.name, "must not be empty")
  return value


def _path(f: Field, value):
  return os.path.expanduser(_str(f, value))


def _as_tuple(value):
  return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _no_repeats(f: Field, values):
  """A list field's values, refused if one is given twice: each value is a run of its own (a
  seed twice would train and report the same models twice)."""
  repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
  if repeated:
    fail(f.name, f"lists {', '.join(map(repr, repeated))} more than once, got {values!r}")
  return values


def _ints(f: Field, value):
  values = _as_tuple(value)
  if not values and not f.allow_empty:
    fail(f.name, "must list at least one value")
  if any(not _is_int(v) or not f.minimum <= v <= f.maximum for v in values):
    fail(f.name, f"must be integers in [{f.minimum}, {f.maximum}], got {values!r}")
  return _no_repeats(f, values)


def _floats(f: Field, value):
  values = _as_tuple(value)
  if not values and not f.allow_empty:
    fail(f.name, "must list at least one value")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
      fail(f.name, f"must be positive finite numbers, got {values!r}")
  return _no_repeats(f, tuple(float(v) for v in values))


def _strs(f: Field, value):
  if f.allowed is not None:
    return _names(f, value)
  values = _as_tuple(value)
  if any(not isinstance(v, str) or not v for v in values):
    fail(f.name, f"must be a list of non-empty strings, got {values!r}")
  return _no_repeats(f, values)


def _paths(f: Field, value):
  return tuple(os.path.expanduser(p) for p in _strs(f, value))


def _names(f: Field, value):
  """A non-empty list of distinct names from `allowed` (precisions).

  An override `--config.sweep.precisions=bf16,fp32` (or `(bf16,fp32)`, `(bf16,)`, `(bf16)`)
  reaches the config as one string, since bare words are not Python literals: it is split at its
  commas."""
  values = _as_tuple(value)
  if len(values) == 1 and isinstance(values[0], str) and values[0].strip(" ()[]") != values[0]:
    values = (values[0].strip(" ()[]"),)  # '(bf16)': no comma, so no tuple either
  if len(values) == 1 and isinstance(values[0], str) and "," in values[0]:
    # A trailing comma, as in '(bf16,)', leaves an empty last item: not a value.
    items = [p.strip(" '\"") for p in values[0].strip(" ()[]").split(",")]
    values = tuple(items[:-1] if len(items) > 1 and not items[-1] else items)
  if not values or any(p not in f.allowed for p in values):
    fail(f.name, f"must be a list of {', '.join(f.allowed)}, got {values!r}")
  return _no_repeats(f, values)


_CHECKS = {"int": _int, "float": _float, "bool": _bool, "str": _str, "path": _path,
           "ints": _ints, "floats": _floats, "strs": _strs, "paths": _paths}


def _describe(f: Field) -> str:
  if f.allowed is not None:
    words = ", ".join(f.allowed)
    return f"any of {words}" if f.type == "strs" else words
  if f.type in ("int", "ints"):
    top = "2^31-1" if f.maximum == MAX_INT32 else f.maximum
    words = f"[{f.minimum}, {top}]"
  elif f.type == "float":
    low = "(" if f.strict else "["
    top = "inf)" if f.maximum == math.inf else f"{f.maximum:g}]"
    words = f"{low}{f.minimum:g}, {top}"
  elif f.type == "floats":
    words = "> 0"
  elif f.type == "bool":
    words = "True, False"
  elif f.type in ("str", "path"):
    words = "" if f.allow_empty else "not empty"
  else:
    words = ""
  if f.type in ("ints", "floats") and not f.allow_empty:
    words += ", not empty"
  return words


# ---------------------------------------------------------------------------------------------
# The field listing (--list_fields) and the tables of docs/configuration.md.

TYPE_WORDS = {"ints": "int list", "floats": "float list", "strs": "str list",
              "paths": "path list"}


def type_words(f: Field) -> str:
  return TYPE_WORDS.get(f.type, f.type)


def shown_value(value, width: int = 40) -> str:
  """A value as a Python literal (what an override writes), cut to `width` characters."""
  text = repr(tuple(value) if isinstance(value, list) else value)
  return text if len(text) <= width else text[: width - 3] + "..."


ABSENT_NOTE = ("* not in the config file: the field's default; add the field to the file to set "
               "it (--config.* can only override fields the file has)")


def listing(schema: Schema, config) -> str:
  """One line a field: name, type, the config's value, what is allowed, meaning."""
  rows = [("field", "type", "value", "allowed", "meaning")]
  for f in schema.fields:
    value = shown_value(config_value(config, f)) + ("" if in_config(config, f) else " *")
    rows.append((f.name, type_words(f), value, f.describe(), f.meaning))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows]
  if any(not in_config(config, f) for f in schema.fields):
    lines.append(ABSENT_NOTE)
  return "\n".join(lines)
