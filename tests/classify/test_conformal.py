"""Conformal prediction sets per subject: the split-conformal threshold, coverage at 0.80 / 0.90 / 0.95 within
sampling error on exchangeable synthetic subjects, and the report and bundle columns under subject-cv."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.naive_bayes import GaussianNB

from classify.conformal import (
    REPORT_LEVELS,
    conformal_threshold,
    coverage_and_size,
    fit_conformal,
    prediction_sets,
)
from classify.evaluate import evaluate
from classify.report import head_row
from featurize.errors import AlzmriError
from tests.classify.test_evaluate import synthetic


def _subjects(rng: np.random.Generator, n: int, slices: int = 4, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exchangeable subjects: a class, a subject offset shared by its slices (slices are not exchangeable), noise."""
    y_s = rng.integers(0, k, n)
    centers = np.array([[0.0, 0.0], [1.2, 0.0], [0.0, 1.2]])[:k]
    subj = centers[y_s] + rng.normal(scale=0.8, size=(n, 2))
    X = np.repeat(subj, slices, axis=0) + rng.normal(scale=0.5, size=(n * slices, 2))
    return X, np.repeat(y_s, slices), np.repeat(np.arange(n), slices).astype(str).astype(object)


def test_threshold_is_the_finite_sample_quantile() -> None:
    s = np.arange(1, 10) / 10.0  # n = 9
    assert conformal_threshold(s, 0.9) == pytest.approx(0.9)   # ceil(10 * 0.9) = 9th smallest
    assert conformal_threshold(s, 0.8) == pytest.approx(0.8)   # ceil(10 * 0.8) = 8th
    assert conformal_threshold(s, 0.95) == float("inf")        # ceil(9.5) = 10 > 9: every class
    sets = prediction_sets(np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]), 0.75)
    assert sets.tolist() == [[True, False, False], [True, True, True]]
    assert coverage_and_size(sets, np.array([1, 2])) == (0.5, 2.0)


def test_coverage_reaches_each_level_within_sampling_error() -> None:
    # 120 independent calibrations (fresh proper-training and calibration subjects each time), 100 test subjects each.
    # Marginal coverage lies in [level, level + 1/(n_cal + 1)] in expectation; the tolerance is 3 standard errors of
    # the mean over calibrations (~0.005: the calibration draw dominates, ~sqrt(l(1-l)/n_cal)/sqrt(120)).
    rng = np.random.default_rng(0)
    cov = {lv: [] for lv in REPORT_LEVELS}
    size = {lv: [] for lv in REPORT_LEVELS}
    n_cal = []
    for _ in range(120):
        X, y, g = _subjects(rng, 90)
        cp = fit_conformal(GaussianNB(), X, y, g, level=0.9, n_classes=3, seed=int(rng.integers(1 << 30)))
        Xt, yt, gt = _subjects(rng, 100)
        subj, p = cp.subject_proba(Xt, gt)
        yt_s = np.array([yt[gt == s][0] for s in subj])
        for lv in REPORT_LEVELS:
            c, z = coverage_and_size(cp.sets(p, lv), yt_s)
            cov[lv].append(c)
            size[lv].append(z)
        n_cal.append(cp.n_calibration)
    n = int(np.mean(n_cal))
    assert n == 30  # 1 of 3 subject folds of 90 subjects calibrates
    for lv in REPORT_LEVELS:
        mean, se = float(np.mean(cov[lv])), float(np.std(cov[lv]) / np.sqrt(len(cov[lv])))
        assert lv - 3 * se <= mean <= lv + 1 / (n + 1) + 3 * se, (lv, mean, se)
    # the sets are informative: they shrink as the level drops, and stay well below all 3 classes at 0.80
    assert np.mean(size[0.8]) < np.mean(size[0.9]) < np.mean(size[0.95]) and np.mean(size[0.8]) < 2.0


def test_subject_cv_reports_coverage_and_the_bundle_keeps_a_predictor() -> None:
    fs = synthetic(subjects=12, slices=3, dim=8, sep=0.8, seed=2, n_classes=2)
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, conformal=0.9)
    for tag in ("80", "90", "95"):
        assert 0 <= res.metrics[f"coverage_{tag}"] <= 1 and 0 <= res.metrics[f"set_size_{tag}"] <= 2
    assert res.metrics["coverage_80"] <= res.metrics["coverage_90"] <= res.metrics["coverage_95"]
    row = head_row(fs, res, task="binary", model_path=None)
    assert row["conformal_level"] == 0.9 and row["coverage"] == res.metrics["coverage_90"]
    assert res.conformal.n_calibration == 8 and res.conformal.level == 0.9  # 1/3 of all 24 subjects


def test_conformal_needs_subjects_and_a_level_in_0_1() -> None:
    with pytest.raises(AlzmriError, match="subject"):
        evaluate(synthetic(subjects=4, with_subjects=False), "logreg", protocol="slice-cv", conformal=0.9)
    with pytest.raises(AlzmriError, match="between 0 and 1"):
        evaluate(synthetic(subjects=4), "logreg", protocol="subject-cv", conformal=90)
