"""Membership inference: designs, scores, LiRA, metrics (against hand-derived values) and the law."""

import json
import math
import zlib

import numpy as np
import pytest

from memjax.estimators import membership as mb

# 4 members, 4 non-members, one member tied with one non-member at 0.5.
HAND_SCORES = [0.9, 0.8, 0.5, 0.3, 0.7, 0.5, 0.2, 0.1]
HAND_LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


# --- designs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_models,num_samples", [(2, 7), (6, 50), (16, 401), (64, 1000)])
def test_membership_matrix_is_balanced_on_both_axes(num_models, num_samples):
  in_MxC = mb.membership_matrix(num_models, num_samples, seed=3)
  assert in_MxC.shape == (num_models, num_samples) and in_MxC.dtype == bool
  assert (in_MxC.sum(0) == num_models // 2).all()  # every sample IN for exactly half the models
  per_model = in_MxC.sum(1)
  assert per_model.min() >= num_samples // 2 and per_model.max() <= (num_samples + 1) // 2


def test_membership_matrix_is_seeded_and_random_per_sample():
  a, b = mb.membership_matrix(8, 300, seed=0), mb.membership_matrix(8, 300, seed=0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, mb.membership_matrix(8, 300, seed=1))
  # Independent per-sample draws: many distinct IN-sets (C(8,4) = 70 possible), not a few blocks.
  assert len({tuple(col) for col in a.T}) > 40


@pytest.mark.parametrize("num_models", [1, 0, 3, 7, 2.0, True])
def test_membership_matrix_rejects_odd_or_too_few_models(num_models):
  with pytest.raises(ValueError, match="num_models"):
    mb.membership_matrix(num_models, 10, seed=0)


def test_balanced_split():
  mask = mb.balanced_split(10, seed=4)
  assert mask.dtype == bool and mask.sum() == 5
  np.testing.assert_array_equal(mask, mb.balanced_split(10, seed=4))
  with pytest.raises(ValueError, match="num_candidates"):
    mb.balanced_split(9, seed=0)


def test_design_round_trip(tmp_path):
  matrix = mb.membership_matrix(4, 9, seed=5)
  path = mb.save_design(tmp_path / "design", matrix, design_seed=5, data_seed=11)
  assert path.endswith(".npz")
  loaded, seeds = mb.load_design(path)
  np.testing.assert_array_equal(loaded, matrix)
  assert seeds == {"design_seed": 5, "data_seed": 11}


# --- scores ----------------------------------------------------------------------------------


def test_loss_reference_and_min_k_by_hand():
  v = -math.log2(16)  # position 0: no context, never scored
  logp = np.array([[v, -1.0, -5.0, -2.0, -8.0, -3.0]], np.float32)
  reference = np.full_like(logp, v)
  np.testing.assert_allclose(mb.loss_score(logp), [-19 / 5])
  np.testing.assert_allclose(mb.reference_score(logp, reference), [-19 / 5 + 4])
  np.testing.assert_allclose(mb.min_k_score(logp, k=0.4), [-6.5])  # int(5 * 0.4) = 2: -8, -5
  np.testing.assert_allclose(mb.min_k_score(logp, k=0.1), [-8.0])  # at least one token
  # A model axis in front: [M, B, S] -> [M, B].
  assert mb.loss_score(np.stack([logp, reference])).shape == (2, 1)


def test_min_k_plus_plus_by_hand_and_alignment():
  logp = np.array([[-4.0, -1.0, -3.0, -2.0]])
  # Moments at t describe token t + 1 (likelihood.next_token_stats): tokens 1..3 use t = 0..2.
  mean_logp = np.array([[-2.0, -1.0, -3.0, 99.0]])
  var_logp = np.array([[4.0, 1.0, 0.25, 99.0]])
  # z = (-1 + 2) / 2 = 0.5, (-3 + 1) / 1 = -2, (-2 + 3) / 0.5 = 2; lowest int(3 * 0.7) = 2.
  np.testing.assert_allclose(mb.min_k_plus_plus_score(logp, mean_logp, var_logp, k=0.7),
                             [(-2 + 0.5) / 2])
  shifted = lambda a: np.concatenate([a[:, -1:], a[:, :-1]], axis=1)  # moments aligned to tokens
  np.testing.assert_allclose(
      mb.min_k_plus_plus_score(logp, shifted(mean_logp), shifted(var_logp), 0.7, "token"),
      [(-2 + 0.5) / 2])


def test_zlib_score_encoding():
  tokens = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [300] * 8])
  logp = np.full(tokens.shape, -2.0)
  bits = [8 * len(zlib.compress(np.asarray(row, "<u2").tobytes(), 9)) for row in tokens]
  np.testing.assert_allclose(mb.zlib_score(logp, tokens), [-14.0 / b for b in bits])
  assert bits[1] < bits[0]  # a repetitive sequence compresses better
  with pytest.raises(ValueError, match="bytes_per_token"):
    mb.zlib_score(logp, tokens + 70000)
  assert np.isfinite(mb.zlib_score(logp, tokens + 70000, bytes_per_token=4)).all()


def test_logit_confidence():
  logp = np.array([[-11.0, -1.0, math.log2(0.8)]])  # p = 0.5 -> 0, p = 0.8 -> log 4
  np.testing.assert_allclose(mb.logit_confidence(logp), [math.log(4.0) / 2])
  assert mb.logit_confidence(np.array([[-11.0, 0.0]]))[0] == 30.0  # p = 1: clipped, not inf


# --- LiRA ------------------------------------------------------------------------------------


def _synthetic_lira(num_models=16, num_samples=600, shift=1.0, seed=0):
  """Scores = per-sample difficulty (wide) + shift if IN + noise: hard for a global threshold."""
  rng = np.random.default_rng(seed)
  in_MxB = mb.membership_matrix(num_models, num_samples, seed)
  difficulty_B = rng.normal(0.0, 3.0, num_samples)
  scores_MxB = difficulty_B + shift * in_MxB + rng.normal(0.0, 0.5, in_MxB.shape)
  return scores_MxB, in_MxB


def test_lira_beats_the_plain_score():
  scores_MxB, in_MxB = _synthetic_lira()
  target, shadows, shadow_in = scores_MxB[0], scores_MxB[1:], in_MxB[1:]
  baseline = mb.roc_auc(target, in_MxB[0])
  online = mb.roc_auc(mb.lira_online(target, shadows, shadow_in), in_MxB[0])
  offline = mb.roc_auc(mb.lira_offline(target, shadows, shadow_in), in_MxB[0])
  pooled = mb.roc_auc(mb.lira_online(target, shadows, shadow_in, global_variance=True), in_MxB[0])
  assert baseline < 0.7  # difficulty hides the shift ...
  assert online > 0.85 and offline > 0.8 and pooled > 0.85  # ... which per-sample fits undo
  assert online > baseline + 0.15


def test_lira_leave_one_out_matches_single_attack():
  scores_MxB, in_MxB = _synthetic_lira(num_models=8, num_samples=50)
  loo = mb.lira_leave_one_out(scores_MxB, in_MxB, seed=5)
  assert loo.shape == (8, 50)
  shadow_in = np.delete(in_MxB, 3, 0)
  np.testing.assert_allclose(loo[3], mb.lira_online(scores_MxB[3], np.delete(scores_MxB, 3, 0),
                                                    shadow_in, False,
                                                    mb.balanced_shadows(shadow_in, [5, 3])))


def test_balanced_shadows_keep_as_many_in_as_out_shadows_at_random():
  in_MxB = np.delete(mb.membership_matrix(8, 400, seed=1), 0, 0)  # 3 IN + 4 OUT or 4 IN + 3 OUT
  used = mb.balanced_shadows(in_MxB, seed=2)
  assert ((used & in_MxB).sum(0) == 3).all() and ((used & ~in_MxB).sum(0) == 3).all()
  assert (mb.balanced_shadows(in_MxB, seed=2) == used).all()
  # Which shadow of the larger group is dropped is spread over all of them.
  assert ((~used).sum(1) > 20).all()
  with pytest.raises(ValueError, match="bool"):
    mb.balanced_shadows(in_MxB.astype(int), seed=0)
  # Any matrix: every sample keeps the fewest IN any sample has, and the fewest OUT. A sparse
  # design (each sample IN for 2 of 16) keeps 13 OUT shadows a sample, not 1 or 2.
  rng = np.random.default_rng(0)
  sparse = np.zeros((16, 200), bool)
  for b in range(200):
    sparse[rng.choice(16, 2, replace=False), b] = True
  used = mb.balanced_shadows(sparse[1:], seed=0)
  assert ((used & sparse[1:]).sum(0) == 1).all() and ((used & ~sparse[1:]).sum(0) == 13).all()
  scores = rng.normal(size=sparse.shape) + sparse
  assert np.isfinite(mb.lira_leave_one_out(scores, sparse, online=False)).all()


@pytest.mark.parametrize("online,global_variance", [(True, False), (False, False), (True, True)])
def test_leave_one_out_lira_is_at_chance_on_scores_without_membership_signal(online,
                                                                             global_variance):
  # Every sample is IN for half the models, so a target's members have one IN shadow fewer than
  # OUT shadows among the others and its non-members one more. Unbalanced, these fits scored
  # a mean AUC of 0.445 (online) and 0.476 (global) here; balanced, 0.5 within noise.
  aucs, tprs = [], []
  for rep in range(3):
    in_MxB = mb.membership_matrix(8, 4000, seed=rep)
    scores_MxB = np.random.default_rng(100 + rep).normal(size=in_MxB.shape)
    loo = mb.lira_leave_one_out(scores_MxB, in_MxB, online, global_variance, seed=rep)
    aucs += [mb.roc_auc(loo[m], in_MxB[m]) for m in range(8)]
    tprs += [mb.tpr_at_fpr(loo[m], in_MxB[m], 0.01) for m in range(8)]
  assert abs(np.mean(aucs) - 0.5) < 0.006, np.mean(aucs)  # 24 AUCs of 4000 samples: sd ~0.001
  assert 0.006 < np.mean(tprs) < 0.015, np.mean(tprs)


def test_lira_minimum_counts():
  scores_MxB, in_MxB = _synthetic_lira(num_models=8, num_samples=20)
  target, shadows, shadow_in = scores_MxB[0], scores_MxB[1:], in_MxB[1:]  # 3 or 4 IN and OUT
  with pytest.raises(ValueError, match=">= 2 shadow models"):
    mb.lira_online(target, shadows[:1], shadow_in[:1])
  no_in = shadow_in.copy()
  no_in[:, 0] = False
  with pytest.raises(ValueError, match="no IN shadow"):
    mb.lira_online(target, shadows, no_in)
  assert np.isfinite(mb.lira_offline(target, shadows, no_in)).all()  # offline: OUT only
  with pytest.raises(ValueError, match="shadow_scores"):
    mb.lira_online(target, np.where(shadow_in, np.nan, shadows), shadow_in)
  # 3 shadows hold 1 or 2 IN per sample: per-sample variances fail, the pooled one works.
  scores_MxB, in_MxB = _synthetic_lira(num_models=4, num_samples=20)
  with pytest.raises(ValueError, match="global_variance"):
    mb.lira_online(scores_MxB[0], scores_MxB[1:], in_MxB[1:])
  assert np.isfinite(mb.lira_online(scores_MxB[0], scores_MxB[1:], in_MxB[1:], True)).all()


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_by_hand():
  # AUC: 0.9 and 0.8 beat all 4 (8), 0.5 beats 2 and ties 1 (2.5), 0.3 beats 2: 12.5 / 16.
  assert mb.roc_auc(HAND_SCORES, HAND_LABELS) == pytest.approx(0.78125)
  # Median 0.5; above it 0.9, 0.8 (members) and 0.7: tp 2, fp 1, fn 2 -> 4 / 7.
  assert mb.f1_at_median(HAND_SCORES, HAND_LABELS) == pytest.approx(4 / 7)
  # Threshold 0.3: tp 4, fp 2 -> 8 / 10.
  assert mb.best_f1(HAND_SCORES, HAND_LABELS) == pytest.approx(0.8)
  fpr, tpr, thresholds = mb.roc_curve(HAND_SCORES, HAND_LABELS)
  np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.5, 0.5, 0.75, 1])
  np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.5, 0.75, 1, 1, 1])
  np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1])
  area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)  # the tie is a diagonal step
  assert area == pytest.approx(0.78125)
  assert mb.tpr_at_fpr(HAND_SCORES, HAND_LABELS, 0.25) == 0.5
  assert mb.tpr_at_fpr(HAND_SCORES, HAND_LABELS, 0.5) == 1.0


def test_tpr_at_low_fpr_by_hand():
  nonmembers = np.arange(200.0)  # FPR resolution 1/200
  members = np.array([250, 240, 199.5, 198.5, 150, 120, 90, 60, 30, 0.5])
  scores = np.r_[members, nonmembers]
  labels = np.r_[np.ones(10, bool), np.zeros(200, bool)]
  # FPR <= 0.001 allows no false positive: threshold 199.5 -> 3 of 10.
  assert mb.tpr_at_fpr(scores, labels, 0.001) == pytest.approx(0.3)
  # FPR <= 0.01 allows two (199, 198): threshold 198 -> 250, 240, 199.5, 198.5.
  assert mb.tpr_at_fpr(scores, labels, 0.01) == pytest.approx(0.4)


def test_perfect_separation():
  scores = np.r_[np.linspace(1, 2, 50), np.linspace(-2, -1, 50)]
  labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
  assert mb.roc_auc(scores, labels) == 1.0
  assert mb.f1_at_median(scores, labels) == 1.0
  assert mb.tpr_at_fpr(scores, labels, 0.001) == 1.0
  assert mb.roc_auc(-scores, labels) == 0.0  # the sign convention matters


def test_random_scores_are_at_chance():
  rng = np.random.default_rng(0)
  labels = mb.balanced_split(4000, seed=1)
  scores = rng.normal(size=4000)
  assert abs(mb.roc_auc(scores, labels) - 0.5) < 0.05
  assert abs(mb.f1_at_median(scores, labels) - 0.5) < 0.05
  assert mb.best_f1(scores, labels) >= 2 / 3 - 1e-12  # "all members" is always a threshold


def test_bootstrap_ci():
  rng = np.random.default_rng(2)
  labels = mb.balanced_split(400, seed=0)
  scores = rng.normal(size=400) + 0.5 * labels
  auc = mb.roc_auc(scores, labels)
  lo, hi = mb.bootstrap_ci(mb.roc_auc, scores, labels, n_boot=100, seed=7)
  assert lo < auc < hi and 0.03 < hi - lo < 0.25
  assert [lo, hi] == mb.bootstrap_ci(mb.roc_auc, scores, labels, n_boot=100, seed=7)
  perfect = np.where(labels, 1.0, 0.0) + rng.uniform(0, 0.5, 400)
  assert mb.bootstrap_ci(mb.roc_auc, perfect, labels, n_boot=20) == [1.0, 1.0]


def test_attack_report():
  report = mb.attack_report(HAND_SCORES, HAND_LABELS, name="loss", n_boot=30, seed=0)
  json.dumps(report)  # JSON-ready
  assert report["auc"] == pytest.approx(0.78125) and report["f1_best"] == pytest.approx(0.8)
  assert report["tpr_at_fpr_0.001"] == 0.5 and report["fpr_resolution"] == 0.25
  for key in ("auc", "f1_median", "f1_best", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01"):
    lo, hi = report[f"{key}_ci"]
    assert 0 <= lo <= hi <= 1
  # No resamples: the point estimates alone, no interval made up from one resample.
  bare = mb.attack_report(HAND_SCORES, HAND_LABELS, name="loss", n_boot=0)
  assert bare["auc"] == report["auc"] and bare["auc_ci"] is None and bare["n_boot"] == 0
  with pytest.raises(ValueError, match="alpha"):
    mb.attack_report(HAND_SCORES, HAND_LABELS, n_boot=0, alpha=5)


def test_nan_scores_raise_naming_the_score():
  scores = np.array(HAND_SCORES)
  scores[2] = np.nan
  for fn in (mb.roc_auc, mb.f1_at_median, mb.best_f1, mb.roc_curve):
    with pytest.raises(ValueError, match="min_k.*NaN"):
      fn(scores, HAND_LABELS, name="min_k")
  with pytest.raises(ValueError, match="zlib.*NaN"):
    mb.attack_report(scores, HAND_LABELS, name="zlib")
  with pytest.raises(ValueError, match="both members and non-members"):
    mb.roc_auc(HAND_SCORES, np.ones(8, bool))
  # A diverged model's NaN log-probs reach its scores, never a silent number.
  assert np.isnan(mb.loss_score(np.array([[-1.0, np.nan, -2.0]])))[0]


def test_plot_roc(tmp_path):
  curves = {"loss": mb.roc_curve(HAND_SCORES, HAND_LABELS)[:2], "chance": ([0, 0.5, 1], [0, 0.5, 1])}
  path = mb.plot_roc(curves, tmp_path / "roc.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --- the law ---------------------------------------------------------------------------------


def test_law_forms_by_hand():
  # S log2(V) = 64 * 11 = 704; N / params = 33140 / 704000 -> x = 33.14 = -c3: sigmoid(0) = 1/2.
  assert mb.tokens_per_param_x(704000, 33140, 64, 2048) == pytest.approx(33.14)
  assert mb.predict_f1(704000, 33140, 64, 2048) == pytest.approx(0.5 * (1 + 1.34 / 2))
  assert mb.capacity_ratio_x(3.6e6, 1000) == pytest.approx(3600.0)
  assert mb.law_f1(1e6, **mb.PUBLISHED) == pytest.approx(0.5)  # huge datasets: chance


def test_fit_law_recovers_constants():
  true = {"c1": 1.2, "c2": -0.05, "c3": -20.0}
  rng = np.random.default_rng(0)
  x = np.linspace(0, 200, 60)
  f1 = mb.law_f1(x, **true) + rng.normal(0, 0.002, x.size)
  fit = mb.fit_law(x, f1)
  for key, value in true.items():
    assert fit[key] == pytest.approx(value, rel=0.05), key
    assert 0 < fit["stderr"][key] < 0.05 * abs(value)
  assert fit["rmse"] < 0.003 < fit["rmse_published"]
  with pytest.raises(ValueError, match="NaN"):
    mb.fit_law(np.r_[x, np.nan], np.r_[f1, 0.6])
  with pytest.raises(ValueError, match=">= 4"):
    mb.fit_law(x[:3], f1[:3])


def test_predict_solve_round_trip_and_range(tmp_path):
  for target in (0.55, 0.7, 0.95, 1.0):
    n = mb.solve_dataset_size(1e6, target, 64, 2048)
    assert n > 0 and mb.predict_f1(1e6, n, 64, 2048) == pytest.approx(target)
  # F1 falls as the dataset grows (c2 < 0).
  assert mb.solve_dataset_size(1e6, 0.6, 64, 2048) > mb.solve_dataset_size(1e6, 0.9, 64, 2048)
  for target in (0.5, 0.4, 1.01):
    with pytest.raises(ValueError, match="outside the law's range"):
      mb.solve_dataset_size(1e6, target, 64, 2048)
  low = {"c1": 0.5, "c2": -0.034, "c3": -33.14}  # saturates below 0.75: 0.9 is unreachable
  with pytest.raises(ValueError, match="outside the law's range"):
    mb.solve_dataset_size(1e6, 0.9, 64, 2048, constants=low)
  path = mb.save_constants(tmp_path / "law.json", {**low, "rmse": 0.01}, x_form="tokens")
  loaded = mb.load_constants(path)
  assert loaded["x_form"] == "tokens" and loaded["rmse"] == 0.01
  assert mb.predict_f1(1e6, 1e4, 64, 2048, loaded) == pytest.approx(
      mb.predict_f1(1e6, 1e4, 64, 2048, low))


def test_cli(capsys, tmp_path):
  assert mb.cli(["predict", "--n_params", "704000", "--dataset_size", "33140"]) == 0
  assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(0.835)
  # A fit over x = capacity / N is not for predict's x = S log2(V) N / params.
  fit = mb.save_constants(tmp_path / "law_fit_capacity.json", (1.3, -0.5, -2.0), x_form="capacity")
  assert mb.cli(["predict", "--n_params", "1e6", "--dataset_size", "1e4", "--constants", fit]) == 2
  assert "x_form='capacity'" in capsys.readouterr().err
  fit = mb.save_constants(tmp_path / "law_fit_tokens.json", mb.PUBLISHED, x_form="tokens")
  assert mb.cli(["predict", "--n_params", "704000", "--dataset_size", "33140", "--constants",
                 fit]) == 0
  assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(0.835)
  assert mb.cli(["solve", "--n_params", "1e6", "--target_f1", "0.3"]) == 2
  assert "outside the law's range" in capsys.readouterr().err


def test_cli_refuses_impossible_inputs_in_one_line(capsys, tmp_path):
  # A dataset size <= 0 or not finite has no F1 (the law's value at x <= 0 exceeds 1); an
  # infinite model likewise; the error names the flag and nothing is printed on stdout.
  for flag, value in (("--dataset_size", "-5"), ("--dataset_size", "0"),
                      ("--dataset_size", "nan"), ("--n_params", "inf")):
    argv = {"--n_params": "1e6", "--dataset_size": "1e5", flag: value}
    assert mb.cli(["predict", *[x for kv in argv.items() for x in kv]]) == 2
    out = capsys.readouterr()
    assert out.out == "" and flag in out.err and len(out.err.splitlines()) == 1
  # A constants file that is not JSON, or holds NaN: one line naming the file.
  for name, text in (("broken.json", "not json"), ("nan.json", '{"c1": NaN, "c2": -0.1, "c3": 2}')):
    path = tmp_path / name
    path.write_text(text)
    assert mb.cli(["predict", "--n_params", "1e6", "--dataset_size", "1e5",
                   "--constants", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and str(path) in out.err and len(out.err.splitlines()) == 1
