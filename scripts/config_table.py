"""Writes the field tables of docs/configuration.md from the experiments' schemas.

    python scripts/config_table.py           # rewrites the tables in the page
    python scripts/config_table.py --check   # exit status 1 if the page's tables are stale

Each experiment's `SCHEMA` (memjax/schema.py) gives a field's type, what is allowed and its
meaning; the default is the value in the experiment's own config file, configs/<experiment>.py.
The train section, shared, has a table of its own (TrainConfig's defaults), and each experiment's
table gives only the values its file sets. Only the part of the page between the two markers is
written; tests/test_config_table.py fails when it differs from what this script writes.
"""

import argparse
import importlib
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the memjax of this checkout, not an installed one

from memjax import config as config_lib  # noqa: E402
from memjax import main as memjax_main  # noqa: E402
from memjax import schema  # noqa: E402

PAGE = os.path.join(ROOT, "docs", "configuration.md")
BEGIN = ("<!-- Written by scripts/config_table.py from the experiments' schemas: change those and "
         "rerun it, not these tables. -->")
END = "<!-- End of the tables written by scripts/config_table.py. -->"
HEADER = "| field | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |"


def load_config(experiment):
  path = os.path.join(ROOT, "configs", f"{experiment}.py")
  spec = importlib.util.spec_from_file_location(f"config_{experiment}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _cell(text):
  return str(text).replace("|", "\\|")


def _row(field, value, absent=False):
  """A table row; `absent`: the config file leaves the field out (marked *)."""
  shown = f"`{_cell(schema.shown_value(value))}`" + (" *" if absent else "")
  return (f"| `{field.name}` | {schema.type_words(field)} | {shown} | {_cell(field.describe())} "
          f"| {_cell(field.meaning)} |")


def train_table():
  rows = [_row(f, f.default) for f in config_lib.TRAIN_FIELDS]
  return "\n".join(["### The train section", "",
                    "Every experiment that trains models has it (memjax.train.TrainConfig); a "
                    "field a config file leaves out takes the default below.", "",
                    HEADER, *rows])


def experiment_table(experiment):
  fields = importlib.import_module(memjax_main.EXPERIMENTS[experiment]).SCHEMA.fields
  config = load_config(experiment)
  train = {f.name for f in config_lib.TRAIN_FIELDS}
  rows = [_row(f, schema.config_value(config, f), absent=not schema.in_config(config, f))
          for f in fields if f.name not in train and f.name != "experiment"]
  set_here = [f for f in config_lib.TRAIN_FIELDS if schema.in_config(config, f)]
  if set_here:
    values = ", ".join(f"{f.key}={schema.shown_value(config.train[f.key])}" for f in set_here)
    rows.append(f"| `train.*` | | {_cell(values)} | | [the train section](#the-train-section) |")
  return "\n".join([f"### {experiment}", "", f"Defaults from `configs/{experiment}.py`.", "",
                    HEADER, *rows])


def tables():
  parts = [experiment_table(name) for name in memjax_main.EXPERIMENTS] + [train_table()]
  return "\n\n".join(parts)


def render(page):
  """`page` with the text between its markers replaced by the tables."""
  before, found_begin, rest = page.partition(BEGIN)
  _, found_end, after = rest.partition(END)
  if not (found_begin and found_end):
    raise SystemExit(f"{PAGE}: the markers of the generated tables are missing")
  return f"{before}{BEGIN}\n\n{tables()}\n\n{END}{after}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="only check that the page is fresh")
  args = parser.parse_args(argv)
  with open(PAGE) as f:
    page = f.read()
  fresh = render(page)
  if args.check:
    if fresh != page:
      print(f"{os.path.relpath(PAGE, ROOT)} is stale: run python scripts/config_table.py")
      return 1
    return 0
  with open(PAGE, "w") as f:
    f.write(fresh)
  return 0


if __name__ == "__main__":
  sys.exit(main())
