"""jsonio.write_atomic and savez_atomic: whole files or the previous one, numpy values as JSON."""

import json
import os

import numpy as np
import pytest

from memjax.engine import jsonio


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


def test_savez_atomic_writes_whole_or_keeps_the_previous_file(tmp_path, monkeypatch):
  path = os.path.join(tmp_path, "a.npz")
  with open(path + ".tmp.npz", "wb") as f:  # left by a write killed outright: replaced, not kept
    f.write(b"PK partial")
  jsonio.savez_atomic(path, path=np.arange(3), w=np.ones(2))  # an array may be named "path"
  assert os.listdir(tmp_path) == ["a.npz"]
  def full_disk(file, **arrays):
    with open(file, "wb") as f:
      f.write(b"PK partial")
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(np, "savez", full_disk)
  with pytest.raises(OSError, match="No space left"):
    jsonio.savez_atomic(path, w=np.zeros(2))
  monkeypatch.undo()
  with np.load(path) as f:
    np.testing.assert_array_equal(f["path"], np.arange(3))
    np.testing.assert_array_equal(f["w"], np.ones(2))
  assert os.listdir(tmp_path) == ["a.npz"]  # the text experiment left its .tmp.npz behind
