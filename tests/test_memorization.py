import math

import numpy as np
import pytest

from memjax.estimators import memorization
from memjax import report


def test_uniform_model_memorizes_zero_bits():
  s, v, b = 16, 256, 5
  logp_BxS = np.full((b, s), -math.log2(v))
  ref = memorization.uniform_sequence_logp(s, v)
  mem = memorization.sample_memorization(logp_BxS.sum(-1), ref)
  np.testing.assert_allclose(mem, 0.0, atol=1e-9)


def test_certain_model_memorizes_all_but_the_first_token():
  s, v, b = 16, 256, 5
  logp_BxS = np.zeros((b, s))
  logp_BxS[:, 0] = -math.log2(v)  # the first token has no context
  ref = memorization.uniform_sequence_logp(s, v)
  mem = memorization.sample_memorization(logp_BxS.sum(-1), ref)
  np.testing.assert_allclose(mem, s * math.log2(v) - math.log2(v))


def test_memorization_is_clipped_per_sample_but_not_in_the_raw_sum():
  ref = memorization.uniform_sequence_logp(4, 16)  # -16 bits
  seq_logp = np.array([-10.0, -20.0])
  assert memorization.sample_memorization(seq_logp, ref).tolist() == [6.0, 0.0]
  assert float((seq_logp - ref).sum()) == 2.0


def _row(d, n, seed, mem, params, precision="fp32", status="ok", lr=1e-3):
  return {"layers": 1, "d_model": d, "heads": 2, "vocab_size": 8, "seq_len": 4,
          "precision": precision, "n_params": params, "dataset_size": n, "seed": seed,
          "mem_bits": mem, "status": status, "learning_rate": lr}


def test_capacity_picks_the_best_learning_rate_instead_of_averaging_over_rates():
  rows = [_row(16, 128, 0, 2500.0, 50, lr=1e-2), _row(16, 256, 0, 3000.0, 50, lr=1e-2),
          _row(16, 128, 0, 90.0, 50, lr=1e-4), _row(16, 256, 0, 100.0, 50, lr=1e-4),
          _row(16, 512, 0, float("nan"), 50, lr=1e-2)]  # not finite: left out
  summary = memorization.summarize(rows)
  (t,) = summary["models"]
  assert t["capacity_bits"] == 3000.0 and t["best_dataset_size"] == 256
  assert t["best_learning_rate"] == 1e-2 and t["num_seeds"] == 1
  assert t["mem_bits_by_dataset_size"] == {"128": 2500.0, "256": 3000.0}
  assert summary["learning_rates"] == [1e-4, 1e-2]
  text = report.capacity_table_text(summary)
  assert "best_lr" in text.splitlines()[0] and text.splitlines()[1].endswith("0.01")
  one_rate = memorization.summarize([r for r in rows if r["learning_rate"] == 1e-2])
  assert "best_lr" not in report.capacity_table_text(one_rate)
  # Rows written before rates were recorded have none: their shape shows "-".
  old = [{k: v for k, v in _row(32, 64, 0, 500.0, 100).items() if k != "learning_rate"}]
  assert report.capacity_table_text(memorization.summarize(rows + old)).splitlines()[2].endswith(" -")


def test_capacity_is_max_over_n_of_seed_mean_and_alpha_fits_through_origin():
  rows = [
      _row(16, 10, 0, 100.0, 50), _row(16, 10, 1, 110.0, 50),
      _row(16, 40, 0, 150.0, 50), _row(16, 40, 1, 130.0, 50),
      _row(16, 80, 0, 120.0, 50), _row(16, 80, 1, 160.0, 50),
      _row(32, 10, 0, 300.0, 100), _row(32, 10, 1, 300.0, 100),
      _row(32, 80, 0, 1e9, 100, status="diverged"),  # left out
  ]
  summary = memorization.summarize(rows)
  small, big = summary["models"]
  # Seed means: 105, 140, 140 -> the first maximum, N=40; seed maxima 150 and 160 -> std 5.
  assert small["capacity_bits"] == 140.0 and small["best_dataset_size"] == 40
  assert small["capacity_std"] == pytest.approx(5.0)
  assert big["capacity_bits"] == 300.0
  # Slope through the origin: (50*140 + 100*300) / (50^2 + 100^2) = 37000 / 12500.
  assert summary["alpha_fit"] == pytest.approx(2.96)
  assert summary["alpha_mean"] == pytest.approx((140 / 50 + 300 / 100) / 2)
  assert set(summary["by_precision"]) == {"fp32"}


def test_capacity_ignores_points_that_only_some_seeds_completed():
  # At lr 1e-2 two of three seeds diverged; the survivor's 1000 bits must not win over 900.
  rows = []
  for seed in (0, 1, 2):
    rows.append(_row(16, 200, seed, 900.0, 50, lr=1e-3))
    rows.append(_row(16, 200, seed, 1000.0 if seed == 0 else float("nan"), 50, lr=1e-2,
                     status="ok" if seed == 0 else "diverged"))
  rows.append(_row(16, 100, 0, 500.0, 50, lr=1e-3))  # one seed only at N=100: left out too
  summary = memorization.summarize(rows)
  (t,) = summary["models"]
  assert t["capacity_bits"] == 900.0 and t["best_learning_rate"] == 1e-3
  assert t["num_seeds"] == 3 and t["seeds_at_best"] == 3 and t["points_left_out"] == 2
  assert t["capacity_std"] == 0.0  # over the points kept: the survivor's 1000 is not a seed max
  assert t["mem_bits_by_dataset_size"] == {"200": 900.0}
  # N=200 is the largest N tried: a lower bound, said under the table.
  assert t["best_at_largest_n"]
  text = report.capacity_table_text(summary)
  assert text.splitlines()[1].split()[7] == "200*"
  assert "* the best N is the largest N tried: that capacity is a lower bound" in text
  assert "L1 d16 fp32: 2 (N, learning rate) point(s) left out" in text


def test_a_point_every_seed_of_which_diverged_is_counted_as_left_out():
  # At lr 1e-2 both seeds diverged at N=200: that point is left out like one that only some seeds
  # completed, and the table says so (it said nothing, while one surviving seed was reported).
  rows = []
  for seed in (0, 1):
    rows.append(_row(16, 200, seed, 900.0, 50, lr=1e-3))
    rows.append(_row(16, 200, seed, float("nan"), 50, lr=1e-2, status="diverged"))
  summary = memorization.summarize(rows)
  (t,) = summary["models"]
  assert t["capacity_bits"] == 900.0 and t["points_left_out"] == 1
  assert "L1 d16 fp32: 1 (N, learning rate) point(s) left out" in report.capacity_table_text(summary)


def test_a_shape_whose_every_model_diverged_is_named_under_the_table():
  rows = [_row(16, 10, 0, 100.0, 50), _row(16, 40, 0, 150.0, 50),
          _row(32, 10, 0, float("nan"), 100, status="diverged")]
  summary = memorization.summarize(rows)
  assert [t["d_model"] for t in summary["models"]] == [16]
  assert summary["models"][0]["best_at_largest_n"]  # N=40 is d16's largest
  assert summary["shapes_left_out"] == [{**{k: rows[2][k] for k in memorization.SHAPE_FIELDS},
                                         "models": 1}]
  assert ("L1 d32 fp32: all 1 models diverged or gave no finite memorization"
          in report.capacity_table_text(summary))


def test_best_lr_column_tells_close_rates_apart():
  # 1.04e-3 printed as "0.001" (2 significant digits), the same as the other rate swept.
  rows = [_row(16, 200, 0, 900.0, 50, lr=1e-3), _row(16, 200, 0, 950.0, 50, lr=1.04e-3)]
  summary = memorization.summarize(rows)
  assert summary["models"][0]["best_learning_rate"] == 1.04e-3
  assert report.capacity_table_text(summary).splitlines()[1].split()[-1] == "0.00104"


def test_zero_memorization_is_drawn_on_the_log_axis_not_dropped(tmp_path, monkeypatch):
  # A shape that memorized 0 bits at some N (e.g. a model that never trained) kept its legend
  # entry but lost those points: a log axis cannot show 0.
  plt = report.pyplot()
  figures = []
  monkeypatch.setattr(plt, "close", figures.append)
  rows = [_row(16, 10, 0, 0.0, 50), _row(16, 40, 0, 0.0, 50), _row(32, 10, 0, 30.0, 90)]
  for r in rows:
    r["memorizable_bits"] = r["dataset_size"] * 12.0
  summary = memorization.summarize(rows)
  report.plot_memorization(rows, summary, str(tmp_path / "m.png"))
  (fig,) = figures
  curves = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines}
  assert all(y > 0 for ys in curves.values() for y in ys)
  assert list(curves["L1 d16 fp32"]) == [report.LOG_FLOOR_BITS] * 2
