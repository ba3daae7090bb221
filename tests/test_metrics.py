"""Metrics, the validation-only bias correction and bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.brain_age import report_brain_age
from common.metrics import BiasCorrection, bootstrap_ci, brain_age_report, regression_metrics


def test_regression_metrics_hand_worked():
    age = np.array([20.0, 30.0, 40.0, 50.0])
    pred = np.array([22.0, 29.0, 43.0, 50.0])
    m = regression_metrics(age, pred)
    assert m["mae"] == pytest.approx(1.5)
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 1 + 9 + 0) / 4))
    assert m["mean_gap"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 14 / 500)
    assert 0.95 < m["pearson_r"] <= 1


def test_regression_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        regression_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        regression_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_bias_correction_recovers_linear_bias():
    age = np.linspace(20, 80, 30)
    pred = 0.6 * age + 20  # regression to the mean
    bc = BiasCorrection.fit(age, pred)
    assert bc.slope == pytest.approx(0.6) and bc.intercept == pytest.approx(20)
    np.testing.assert_allclose(bc.apply(pred), age)
    assert regression_metrics(age, bc.apply(pred))["spearman_gap_age"] != pytest.approx(-1)


def test_the_sources_correction_formulas_hand_worked():
    age = np.array([20.0, 40.0, 60.0, 80.0])
    pred = np.array([30.0, 45.0, 55.0, 70.0])  # pred = 0.65 * age + 18 + small deviations
    # resnet3d source: age = a * pred + b, corrected = a * pred + b (least squares by hand)
    a = np.cov(pred, age, bias=True)[0, 1] / pred.var()
    b = age.mean() - a * pred.mean()
    bc = BiasCorrection.fit(age, pred, formula="age_on_pred")
    assert (bc.slope, bc.intercept) == (pytest.approx(a), pytest.approx(b)) and not bc.needs_age
    np.testing.assert_allclose(bc.apply(np.array([50.0])), [a * 50 + b])
    # TSAN source: gap = a * age + b, corrected = pred - (a * age + b)
    gap = pred - age
    a2 = np.cov(age, gap, bias=True)[0, 1] / age.var()
    b2 = gap.mean() - a2 * age.mean()
    tsan = BiasCorrection.fit(age, pred, formula="gap_on_age")
    assert (tsan.slope, tsan.intercept) == (pytest.approx(a2), pytest.approx(b2)) and tsan.needs_age
    np.testing.assert_allclose(tsan.apply(pred, age), pred - (a2 * age + b2))
    assert abs(np.corrcoef(tsan.apply(pred, age) - age, age)[0, 1]) < 1e-9  # no gap-age correlation left
    with pytest.raises(ValueError, match="chronological age"):
        tsan.apply(pred)
    with pytest.raises(ValueError, match="unknown bias-correction formula"):
        BiasCorrection.fit(age, pred, formula="other")
    stored = BiasCorrection.from_dict({k: v for k, v in BiasCorrection.fit(age, pred).to_dict().items() if k != "formula"})
    assert stored.formula == "cole"  # checkpoints written before formulas existed are Cole's


def test_bias_correction_refuses_test_data_and_degenerate_input():
    with pytest.raises(ValueError, match="never be fitted on test"):
        BiasCorrection.fit(np.arange(5.0), np.arange(5.0), fitted_on="test")
    with pytest.raises(ValueError, match="at least 3"):
        BiasCorrection.fit(np.ones(5), np.arange(5.0))
    flat = BiasCorrection.fit(np.arange(10.0), np.full(10, 5.0))
    assert flat.slope == 1.0 and "identity" in flat.method


def test_cole_inversion_is_kept_only_when_it_helps_on_leave_one_out_validation():
    """A nearly constant predictor (OASIS ResBlock on IXI-HH: slope 0.002-0.003 on 19 validation
    subjects) was inverted, 15 y raw -> 24 y corrected; a shrunk but informative one is corrected."""
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 19)
    weak = 49.0 + 0.003 * age + rng.normal(0, 0.05, 19)
    gated = BiasCorrection.fit(age, weak)
    assert gated.formula == "identity" and "leave-one-out" in gated.method
    assert np.array_equal(gated.apply(weak), weak)
    shrunk = 0.6 * age + 20 + rng.normal(0, 2, 19)
    kept = BiasCorrection.fit(age, shrunk)
    assert kept.formula == "cole" and kept.slope == pytest.approx(0.6, abs=0.1)
    assert np.mean(np.abs(kept.apply(shrunk) - age)) < np.mean(np.abs(shrunk - age))


def test_report_never_uses_test_rows_for_the_correction(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({"participant_id": [f"s{i}" for i in range(n)], "session_id": "", "sex": "M",
                          "age": rng.uniform(20, 80, n), "split": ["val"] * 20 + ["test"] * 20})
    pred = 0.5 * frame["age"].to_numpy() + 25
    _, corr_a = report_brain_age(frame, pred, tmp_path, "a", train_mean_age=50.0)
    pred_b = pred.copy()
    pred_b[20:] = rng.uniform(0, 100, 20)  # change only the test predictions
    _, corr_b = report_brain_age(frame, pred_b, tmp_path, "b", train_mean_age=50.0)
    assert corr_a == corr_b, "the correction depends on validation rows only"
    assert corr_a.fitted_on == "val" and corr_a.n == 20
    test_csv = pd.read_csv(tmp_path / "predictions_test.csv")
    assert list(test_csv.columns) == ["participant_id", "session_id", "split", "age", "sex", "predicted_age",
                                      "brain_age_gap", "predicted_age_corrected", "brain_age_gap_corrected"]
    assert len(test_csv) == 20 and (tmp_path / "scatter_test.png").exists()


def test_report_has_mean_predictor_reference_and_ci():
    age = np.linspace(20, 80, 25)
    rep = brain_age_report(age, age + 1.0, BiasCorrection(slope=1.0, intercept=0.0), train_mean_age=50.0)
    assert rep["raw"]["mae"] == pytest.approx(1.0)
    assert rep["mean_predictor_mae"] == pytest.approx(np.mean(np.abs(age - 50)))
    lo, hi = rep["raw"]["mae_ci95"]
    assert lo <= 1.0 <= hi


def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.exponential(5, 20), rng.exponential(5, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s


def test_classification_scores_match_scikit_learn():
    """The vectorised bootstrap scores equal scikit-learn's definitions, absent classes included."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

    from common.metrics import scores_from_confusion

    rng = np.random.default_rng(3)
    for trial in range(40):
        k = 4
        n = int(rng.integers(1, 50))
        t = rng.integers(0, 1 + trial % k, n)
        p = rng.integers(0, k, n)
        matrix = np.bincount(t * k + p, minlength=k * k).reshape(1, k, k)
        ours = scores_from_confusion(matrix)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recalls = recall_score(t, p, labels=list(range(k)), average=None, zero_division=np.nan)
            expected = [accuracy_score(t, p), balanced_accuracy_score(t, p) if len(set(t)) > 1 else np.nan,
                        f1_score(t, p, labels=list(range(k)), average="macro", zero_division=0), *recalls]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=f"trial {trial}")
