"""Regression metrics, linear age-bias corrections and bootstrap confidence intervals.

Three linear bias corrections are used by the sources this project reproduces. Each is fitted on the
*validation* predictions only (never on test data), stored, and applied unchanged to any split:

- ``cole`` (Cole et al. 2018, "Brain age predicts mortality", Mol. Psychiatry 23:1385-1392): fit
  ``predicted_age = slope * age + intercept``; corrected = ``(predicted_age - intercept) / slope``.
  Used only where a source has no formula, and only when it lowers the leave-one-out validation MAE
  (else the identity): dividing by a small slope multiplies the noise of a weak predictor.
- ``age_on_pred`` (the 3D ResNet track of "brain-age-estimation"): fit ``age = slope *
  predicted_age + intercept``; corrected = ``slope * predicted_age + intercept``.
- ``gap_on_age`` (TSAN's ``bias_correction.py``; also Beheshti et al. 2019, de Lange & Cole 2020): fit
  ``brain_age_gap = slope * age + intercept``; corrected = ``predicted_age - (slope * age + intercept)``.
  It needs the chronological age of the scan being corrected.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

#: Correction formulas: name -> description stored with the coefficients.
CORRECTION_FORMULAS = {
    "cole": "Cole et al. 2018: pred = slope*age + intercept; corrected = (pred - intercept)/slope",
    "age_on_pred": "age = slope*pred + intercept; corrected = slope*pred + intercept",
    "gap_on_age": "gap = slope*age + intercept; corrected = pred - (slope*age + intercept)",
}


@dataclass(frozen=True)
class BiasCorrection:
    """A linear age-bias correction (module docstring); ``slope`` unitless, ``intercept`` in years.

    Attributes:
        slope, intercept: coefficients of the formula's regression, fitted on the validation split.
        fitted_on: which split provided the fit (always ``"val"`` in this project).
        n: number of predictions used for the fit.
        method: human-readable formula.
        formula: ``cole``, ``age_on_pred``, ``gap_on_age`` or ``identity``.
    """

    slope: float
    intercept: float
    fitted_on: str = "val"
    n: int = 0
    method: str = CORRECTION_FORMULAS["cole"]
    formula: str = "cole"

    @classmethod
    def fit(cls, age: np.ndarray, predicted_age: np.ndarray, fitted_on: str = "val",
            formula: str = "cole") -> BiasCorrection:
        """Fit on (age, predicted_age) pairs of the validation split.

        Cole's inversion is kept only when it lowers the MAE of these pairs with each subject corrected
        by a fit on the others (leave-one-out); otherwise, and for a slope ~0, the identity is
        returned (``formula == "identity"``, ``method`` says why). The sources' own formulas
        (``age_on_pred``, ``gap_on_age``) are kept as the sources apply them.

        Raises:
            ValueError: unknown ``formula``, fewer than 3 pairs, constant ages, or ``fitted_on == "test"``.
        """
        if formula not in CORRECTION_FORMULAS:
            raise ValueError(f"unknown bias-correction formula {formula!r}; choose from {sorted(CORRECTION_FORMULAS)}")
        if fitted_on == "test":
            raise ValueError("bias correction must never be fitted on test data")
        age, pred = np.asarray(age, float), np.asarray(predicted_age, float)
        if len(age) < 3 or np.ptp(age) == 0:
            raise ValueError("bias correction needs at least 3 subjects with different ages")
        x, y = {"cole": (age, pred), "age_on_pred": (pred, age), "gap_on_age": (age, pred - age)}[formula]
        degenerate = np.ptp(pred) == 0 if formula == "age_on_pred" else False
        reg = None if degenerate else LinearRegression().fit(x[:, None], y)
        if degenerate or formula == "cole" and abs(float(reg.coef_[0])) < 1e-3:
            # A (near-)constant predictor cannot be corrected this way; keep predictions unchanged.
            return cls(slope=1.0, intercept=0.0, fitted_on=fitted_on, n=len(age), formula="identity",
                       method="identity: fitted slope ~0, correction not invertible")
        if formula == "cole":
            raw_mae, cole_mae = float(np.mean(np.abs(pred - age))), _cole_leave_one_out_mae(age, pred)
            if not cole_mae < raw_mae:
                # Dividing by a small slope magnifies the noise of a nearly constant predictor (OASIS
                # ResBlock on IXI-HH: slope 0.002-0.003, corrected MAE 24 y vs raw 15 y on validation).
                return cls(slope=1.0, intercept=0.0, fitted_on=fitted_on, n=len(age), formula="identity",
                           method=f"identity: Cole's inversion does not lower the leave-one-out MAE of these "
                                  f"predictions ({cole_mae:.2f} y vs raw {raw_mae:.2f} y)")
        return cls(slope=float(reg.coef_[0]), intercept=float(reg.intercept_), fitted_on=fitted_on, n=len(age),
                   method=CORRECTION_FORMULAS[formula], formula=formula)

    @property
    def needs_age(self) -> bool:
        """True when :meth:`apply` needs the chronological age (``gap_on_age``)."""
        return self.formula == "gap_on_age"

    def apply(self, predicted_age: np.ndarray, age: np.ndarray | None = None) -> np.ndarray:
        """Corrected predictions (years) for any split.

        Raises:
            ValueError: the formula needs ``age`` and none was given.
        """
        pred = np.asarray(predicted_age, float)
        if self.formula == "gap_on_age":
            if age is None:
                raise ValueError("the gap_on_age correction needs the chronological age of each scan")
            return pred - (self.slope * np.asarray(age, float) + self.intercept)
        if self.formula == "age_on_pred":
            return self.slope * pred + self.intercept
        if self.formula == "identity":
            return pred
        return (pred - self.intercept) / self.slope

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BiasCorrection:
        """Inverse of :meth:`to_dict`; entries stored before ``formula`` existed are Cole's."""
        d = dict(d)
        d.setdefault("formula", "identity" if str(d.get("method", "")).startswith("identity") else "cole")
        return cls(**d)


def regression_metrics(age: np.ndarray, predicted_age: np.ndarray) -> dict[str, float]:
    """MAE, RMSE (years), Pearson r, R^2, Spearman rho of brain age gap vs age, mean gap.

    Args:
        age: chronological ages (years), shape (N,).
        predicted_age: predicted ages (years), shape (N,).

    Raises:
        ValueError: mismatched lengths, fewer than 2 samples, or non-finite values.
    """
    age, pred = np.asarray(age, float), np.asarray(predicted_age, float)
    if age.shape != pred.shape or age.ndim != 1:
        raise ValueError(f"age and predicted_age must be 1D of equal length, got {age.shape} and {pred.shape}")
    if len(age) < 2:
        raise ValueError("need at least 2 samples for regression metrics")
    if not (np.isfinite(age).all() and np.isfinite(pred).all()):
        raise ValueError("age and predicted_age must be finite")
    gap = pred - age
    const = np.ptp(pred) == 0
    return {
        "mae": float(mean_absolute_error(age, pred)),
        "rmse": float(np.sqrt(mean_squared_error(age, pred))),
        "pearson_r": float("nan") if const else float(stats.pearsonr(age, pred)[0]),
        "r2": float(r2_score(age, pred)),
        "spearman_gap_age": float(stats.spearmanr(gap, age)[0]),
        "mean_gap": float(gap.mean()),
        "n": int(len(age)),
    }


def bootstrap_ci(values: np.ndarray, statistic=np.mean, n_resamples: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over per-sample ``values`` (scipy.stats.bootstrap)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float("nan"), float("nan")
    res = stats.bootstrap((values,), statistic, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def brain_age_report(age: np.ndarray, predicted_age: np.ndarray, correction: BiasCorrection,
                     train_mean_age: float) -> dict:
    """Full test-split report: raw and bias-corrected metrics, MAE bootstrap 95% CIs, and the
    MAE of always predicting the training-set mean age (the trivial reference)."""
    age, pred = np.asarray(age, float), np.asarray(predicted_age, float)
    corrected = correction.apply(pred, age)
    raw = regression_metrics(age, pred)
    cor = regression_metrics(age, corrected)
    raw["mae_ci95"] = bootstrap_ci(np.abs(pred - age))
    cor["mae_ci95"] = bootstrap_ci(np.abs(corrected - age))
    mean_mae = float(np.mean(np.abs(age - train_mean_age)))
    return {
        "raw": raw,
        "corrected": cor,
        "mean_predictor_mae": mean_mae,
        "mae_ratio_to_mean_predictor": raw["mae"] / mean_mae if mean_mae > 0 else float("nan"),
        "bias_correction": correction.to_dict(),
    }


def scores_from_confusion(matrices: np.ndarray) -> np.ndarray:
    """Accuracy, balanced accuracy, macro-F1 and per-class recall of confusion matrices, vectorised.

    Same definitions as scikit-learn (tested against it): balanced accuracy is the mean recall over
    the classes present in the true labels (NaN when fewer than two are), macro-F1 averages
    ``2 tp / (2 tp + fp + fn)`` over all classes with 0 where a class is absent from both, recall is
    NaN for a class absent from the true labels.

    Args:
        matrices: (R, K, K) counts, rows true class, columns predicted class.

    Returns:
        (R, 3 + K): accuracy, balanced accuracy, macro-F1, recall of each class.
    """
    m = np.asarray(matrices, float)
    tp = np.diagonal(m, axis1=1, axis2=2)
    support, predicted = m.sum(2), m.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        present = (support > 0).sum(1)
        balanced = np.where(present > 1, np.nansum(recall, 1) / np.maximum(present, 1), np.nan)
        denominator = 2 * tp + (predicted - tp) + (support - tp)
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0).mean(1)
        accuracy = tp.sum(1) / m.sum((1, 2))
    return np.column_stack([accuracy, balanced, f1, recall])


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str],
                           n_resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class recall (each with a bootstrap 95% CI),
    the confusion matrix (rows: true class, columns: predicted, in ``class_names`` order) and the
    majority-class rate of ``y_true``.

    Args:
        y_true, y_pred: integer class indices into ``class_names``, shape (N,).

    Raises:
        ValueError: mismatched shapes or indices outside ``class_names``.
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    k = len(class_names)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1D of equal length, got {y_true.shape} and {y_pred.shape}")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= k):
        raise ValueError(f"class indices must lie in [0, {k})")

    def confusion(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    matrix = confusion(y_true, y_pred)
    point = scores_from_confusion(matrix[None])[0]
    rng = np.random.default_rng(seed)
    resampled = np.empty((n_resamples, k, k), np.int64)
    for r in range(n_resamples):
        i = rng.integers(0, len(y_true), len(y_true))
        resampled[r] = confusion(y_true[i], y_pred[i])
    boot = scores_from_confusion(resampled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a class never resampled)
        lo, hi = np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)
    counts = np.bincount(y_true, minlength=k)
    out = {
        "accuracy": float(point[0]), "accuracy_ci95": [float(lo[0]), float(hi[0])],
        "balanced_accuracy": float(point[1]), "balanced_accuracy_ci95": [float(lo[1]), float(hi[1])],
        "macro_f1": float(point[2]), "macro_f1_ci95": [float(lo[2]), float(hi[2])],
        "per_class_recall": {c: float(point[3 + j]) for j, c in enumerate(class_names)},
        "per_class_recall_ci95": {c: [float(lo[3 + j]), float(hi[3 + j])] for j, c in enumerate(class_names)},
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "majority_class_rate": float(counts.max() / max(len(y_true), 1)),
        "n": int(len(y_true)),
    }
    return out


def paired_difference(values_a: np.ndarray, values_b: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two methods on the same subjects.

    Args:
        values_a, values_b: per-subject losses of method A and B, same subjects in the same order,
            shape (N,) (absolute errors in years for brain age; 0/1 errors for classifiers).

    Returns:
        ``delta`` = mean(a) - mean(b) (negative: A better), ``delta_ci95`` (paired percentile
        bootstrap over subjects: the same resampled subjects for both methods), ``wilcoxon_p``
        (two-sided Wilcoxon signed-rank test of a - b, scipy; NaN when all differences are 0) and ``n``.

    Raises:
        ValueError: shapes differ or fewer than 2 subjects.
    """
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired values must be 1D, of equal length >= 2; got {a.shape} and {b.shape}")
    diff = a - b
    lo, hi = bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)
    p = float("nan") if not np.any(diff) else float(stats.wilcoxon(a, b).pvalue)
    return {"delta": float(diff.mean()), "delta_ci95": [lo, hi], "wilcoxon_p": p, "n": int(len(a))}


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers on the same subjects.

    Args:
        correct_a, correct_b: booleans (N,): whether each classifier got each subject right.

    Returns:
        ``only_a``, ``only_b`` (discordant counts) and the two-sided exact ``p`` (binomial test of
        the discordant pairs, scipy.stats.binomtest; 1.0 without discordant pairs).
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in shape: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p, "n": int(len(a))}


def age_band_mae(age: np.ndarray, predicted_age: np.ndarray, bands: list[tuple[float, float]]) -> dict[str, dict]:
    """MAE per age band ``[low, high)`` (years): ``{"low-high": {"mae", "n"}}``; bands without a
    subject are left out."""
    age, pred = np.asarray(age, float), np.asarray(predicted_age, float)
    out = {}
    for low, high in bands:
        rows = (age >= low) & (age < high)
        if rows.any():
            label = f"{low:g}+" if not np.isfinite(high) else f"{low:g}-{high:g}"
            out[label] = {"mae": float(np.mean(np.abs(pred[rows] - age[rows]))), "n": int(rows.sum())}
    return out


def _cole_leave_one_out_mae(age: np.ndarray, predicted_age: np.ndarray) -> float:
    """MAE (years) of Cole's inversion when each subject is corrected by a least-squares fit of
    ``predicted_age = slope * age + intercept`` on the others; inf when a fit's slope is ~0."""
    errors = []
    for i in range(len(age)):
        others = np.arange(len(age)) != i
        if np.ptp(age[others]) == 0:
            return float("inf")
        slope, intercept = np.polyfit(age[others], predicted_age[others], 1)
        if abs(slope) < 1e-3:
            return float("inf")
        errors.append(abs((predicted_age[i] - intercept) / slope - age[i]))
    return float(np.mean(errors))


def leave_one_out_correction_mae(age: np.ndarray, predicted_age: np.ndarray, formula: str) -> float:
    """MAE of ``formula``'s correction on validation predictions, each one corrected by a fit on
    the other validation subjects: whether the correction helps, measured without test data and
    without scoring a subject with a fit that saw it. NaN with fewer than 4 subjects."""
    age, pred = np.asarray(age, float), np.asarray(predicted_age, float)
    if len(age) < 4:
        return float("nan")
    corrected = np.empty_like(pred)
    for i in range(len(age)):
        others = np.arange(len(age)) != i
        try:
            fit = BiasCorrection.fit(age[others], pred[others], formula=formula)
        except ValueError:
            return float("nan")
        corrected[i] = fit.apply(pred[i:i + 1], age[i:i + 1])[0]
    return float(np.mean(np.abs(corrected - age)))
