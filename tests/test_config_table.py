"""docs/configuration.md's field tables are what scripts/config_table.py writes from the schemas,
so a field added, renamed or re-ranged in a schema cannot leave the page behind."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location(
      "config_table", os.path.join(ROOT, "scripts", "config_table.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_committed_tables_are_the_generated_ones():
  script = _script()
  with open(script.PAGE) as f:
    page = f.read()
  assert script.render(page) == page, "run python scripts/config_table.py"


def test_every_experiment_has_a_table_with_every_field_of_its_schema():
  import importlib
  from memjax import main
  script = _script()
  tables = script.tables()
  for name, module in main.EXPERIMENTS.items():
    assert f"### {name}\n" in tables
    for field in importlib.import_module(module).SCHEMA.fields:
      if not field.name.startswith("train.") and field.name != "experiment":
        assert f"| `{field.name}` |" in tables.split(f"### {name}\n")[1].split("### ")[0], field
