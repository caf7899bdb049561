"""jsonio.write_atomic: whole files or the previous one, numpy values as JSON."""

import json
import os

import numpy as np
import pytest

from memjax import jsonio


def test_numpy_values_are_plain_json(tmp_path):
  path = os.path.join(tmp_path, "a.json")
  jsonio.write_atomic(path, {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True),
                             "a": np.arange(3), "nan": float("nan")})
  with open(path) as f:
    got = json.load(f)
  assert got["i"] == 3 and got["f"] == 0.5 and got["b"] is True and got["a"] == [0, 1, 2]
  assert np.isnan(got["nan"])


def test_a_failed_write_keeps_the_previous_file(tmp_path):
  path = os.path.join(tmp_path, "a.json")
  jsonio.write_atomic(path, {"rows": 1})
  with pytest.raises(TypeError, match="not JSON serializable: object"):
    jsonio.write_atomic(path, {"rows": object()})
  with open(path) as f:
    assert json.load(f) == {"rows": 1}
  assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left behind
