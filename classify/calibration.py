"""Calibrated probabilities (``--calibrate sigmoid|isotonic|none``) and how to measure calibration.

Calibration is fitted inside the training part only: the selected head is wrapped in
``CalibratedClassifierCV`` whose folds are the training part's own subject-grouped inner folds
(``classify.protocols.make_splitter``), so each calibrator is fitted on subjects its head copy never saw
and test rows never touch a calibrator. ``ensemble=True`` (sklearn's default) keeps one (head, calibrator)
pair per inner fold and averages their probabilities.

Measures, slice level and subject level (a subject's probabilities = mean of its slices'):

  * Brier score: mean over rows of sum_k (p_k - [y = k])^2, halved for two classes (scikit-learn's
    ``brier_score_loss`` convention since 1.7), so binary values lie in [0, 1] and multiclass in [0, 2].
  * expected calibration error (ECE), top-label, ``N_BINS`` equal-width confidence bins:
    sum_b (n_b / N) * |accuracy_b - mean confidence_b|.

The reliability diagram needs the pooled bin sums, not only the ECE, so ``reliability_bins`` returns them in a
form that adds up over folds and survives a round trip through report.csv (JSON).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV

from featurize.options import choose

CALIBRATIONS = ("none", "sigmoid", "isotonic")
N_BINS = 10
BIN_KEYS = ("count", "confidence", "correct")


def check_calibration(method: str | None) -> str:
    """``method`` when it is one of CALIBRATIONS (None means "none"), else AlzmriError (exit 2) listing them."""
    return choose("--calibrate", method or "none", CALIBRATIONS)


def calibrate(model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, method: str, seed: int = 0,
              inner_splits: int = 3) -> tuple[Any, list[str]]:
    """``model`` (already selected, fitted or not) refit under ``CalibratedClassifierCV`` on (X, y) only.

    Inner folds group by ``groups`` when given (subjects), else stratify by slice. Returns the calibrated
    classifier and notes (fold fallbacks); ``method="none"`` returns ``model`` unchanged.
    """
    from classify.metrics import quiet_sklearn
    from classify.protocols import make_splitter, splits

    if check_calibration(method) == "none":
        return model, []
    splitter, notes = make_splitter(y, groups, n_splits=inner_splits, seed=seed + 1, what="calibration folds")
    folds = splits(splitter, y, groups)
    # A calibration fold whose training side lacks a class would give that class no calibrator: drop such folds
    # (they exist only when a class has very few subjects) rather than emit probabilities that ignore the class.
    classes = np.unique(y)
    kept = [f for f in folds if len(np.unique(y[f[0]])) == len(classes)]
    if not kept:
        return model, notes + [f"calibration skipped: no inner fold has every class in training ({method})"]
    with quiet_sklearn():
        cal = CalibratedClassifierCV(clone(model), method=method, cv=kept, ensemble=True)
        cal.fit(X, y)
    return cal, notes


def refit_like(model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, seed: int = 0,
               inner_splits: int = 3) -> Any:
    """A fresh copy of ``model`` fitted on (X, y): a calibrated head is recalibrated on its own new inner folds (its
    fixed fold positions belong to the rows it was first fitted on), any other head is cloned and fitted."""
    from classify.metrics import quiet_sklearn

    if isinstance(model, CalibratedClassifierCV):
        cal, _ = calibrate(model.estimator, X, y, groups, method=model.method, seed=seed, inner_splits=inner_splits)
        return cal
    head = clone(model)
    with quiet_sklearn():
        return head.fit(X, y)


def brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Brier score of probabilities ``proba`` (n, K) for labels ``y`` (class indices); halved when K == 2."""
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=float)
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(y)), y] = 1.0
    score = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
    return score / 2.0 if proba.shape[1] == 2 else score


def reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per equal-width top-label confidence bin: row count, summed confidence, summed correctness (additive)."""
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=float)
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    # confidence 1.0 belongs to the last bin; top-label confidence is >= 1/K, so low bins may stay empty
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return {"count": np.bincount(idx, minlength=n_bins).astype(float).tolist(),
            "confidence": np.bincount(idx, weights=conf, minlength=n_bins).tolist(),
            "correct": np.bincount(idx, weights=correct, minlength=n_bins).tolist()}


def add_bins(a: dict[str, list[float]] | None, b: dict[str, list[float]]) -> dict[str, list[float]]:
    """Sum of two ``reliability_bins`` results (``a`` None = empty)."""
    if a is None:
        return {k: list(v) for k, v in b.items()}
    return {k: (np.asarray(a[k]) + np.asarray(b[k])).tolist() for k in BIN_KEYS}


def ece_from_bins(bins: dict[str, list[float]]) -> float:
    """Expected calibration error from (pooled) bins; NaN when empty."""
    n = np.asarray(bins["count"], dtype=float)
    if n.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["correct"]) - np.asarray(bins["confidence"]))  # n_b * |acc_b - conf_b|
    return float(gap.sum() / n.sum())


def ece(y: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins."""
    return ece_from_bins(reliability_bins(y, proba, n_bins))


def calibration_metrics(y: np.ndarray, proba: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """``brier`` and ``ece`` of slice probabilities, plus ``subject_brier``/``subject_ece`` when ``groups``."""
    from classify.metrics import subject_level

    out = {"brier": brier(y, proba), "ece": ece(y, proba)}
    if groups is not None:
        ys, ps = subject_level(np.asarray(y), np.asarray(proba), np.asarray(groups))
        out.update(subject_brier=brier(ys, ps), subject_ece=ece(ys, ps))
    return out


def fold_bins(y: np.ndarray, proba: np.ndarray, groups: np.ndarray | None = None) -> dict[str, dict[str, list[float]]]:
    """Reliability bins of one test part: ``slice`` and, with subjects, ``subject``."""
    from classify.metrics import subject_level

    out = {"slice": reliability_bins(y, proba)}
    if groups is not None:
        out["subject"] = reliability_bins(*subject_level(np.asarray(y), np.asarray(proba), np.asarray(groups)))
    return out


def pool_bins(per_fold: list[dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """Bins summed over folds, per level."""
    out: dict[str, dict[str, list[float]]] = {}
    for f in per_fold:
        for level, bins in f.items():
            out[level] = add_bins(out.get(level), bins)
    return out


def bins_json(pooled: dict[str, dict[str, list[float]]] | None) -> str:
    """The ``reliability`` report column: pooled bins as compact JSON ("" when none)."""
    if not pooled:
        return ""
    return json.dumps({lvl: {k: [round(float(v), 6) for v in b[k]] for k in BIN_KEYS} for lvl, b in pooled.items()})
