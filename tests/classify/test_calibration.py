"""Calibration: fitted inside the training part only, measured by Brier score and ECE at slice and subject level."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

import classify.calibration as cal
from classify.calibration import brier, ece, fold_bins, pool_bins, reliability_bins
from classify.evaluate import evaluate
from classify.report import head_row
from tests.classify.test_evaluate import synthetic


def test_brier_matches_sklearn_and_ece_is_the_textbook_sum() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 4):
        p = rng.dirichlet(np.ones(k), size=200)
        y = rng.integers(0, k, size=200)
        assert brier(y, p) == pytest.approx(brier_score_loss(y, p, labels=np.arange(k)))
    # two bins' worth by hand: confidences 0.95 (all right) and 0.65 (half right) with 10 bins
    p = np.array([[0.95, 0.05]] * 4 + [[0.35, 0.65]] * 4)
    y = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    assert ece(y, p) == pytest.approx(0.5 * abs(1 - 0.95) + 0.5 * abs(0.5 - 0.65))
    bins = reliability_bins(y, p)
    assert sum(bins["count"]) == 8 and bins["count"][9] == 4 and bins["count"][6] == 4


def test_bins_pool_over_folds_to_the_bins_of_all_rows() -> None:
    rng = np.random.default_rng(1)
    p, y, g = rng.dirichlet(np.ones(3), 90), rng.integers(0, 3, 90), np.repeat(np.arange(30), 3)
    pooled = pool_bins([fold_bins(y[:45], p[:45], g[:45]), fold_bins(y[45:], p[45:], g[45:])])
    whole = fold_bins(y, p, g)
    for level in ("slice", "subject"):
        for key in cal.BIN_KEYS:
            assert np.allclose(pooled[level][key], whole[level][key])


def test_calibration_never_sees_test_rows_and_improves_ece(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = synthetic(subjects=10, slices=4, dim=8, sep=1.0, seed=1, n_classes=2)
    seen: list[set[bytes]] = []
    real = cal.calibrate

    def spy(model, X, y, groups, **kw):  # noqa: ANN001, ANN003, ANN202 - same signature as the real one
        seen.append({r.tobytes() for r in np.asarray(X)})
        return real(model, X, y, groups, **kw)

    monkeypatch.setattr("classify.evaluate.calibrate", spy)
    raw = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1)
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, calibration="isotonic")
    assert len(seen) == 2 * (len(res.folds) + 1)  # every outer fold, then the final refit (twice: none, isotonic)
    for calls in (seen[:len(res.folds)], seen[len(res.folds) + 1:-1]):
        for rows, (tr, te) in zip(calls, res.folds):
            assert rows == {r.tobytes() for r in fs.X[tr]}  # exactly the training part: no test row
            assert not rows & {r.tobytes() for r in fs.X[te]}
    assert type(res.model).__name__ == "CalibratedClassifierCV"
    # this logreg is balanced-weighted and strongly regularised, so its raw probabilities are badly calibrated
    assert res.metrics["ece"] < raw.metrics["ece"] - 0.05
    assert res.metrics["brier"] < raw.metrics["brier"]
    for key in ("brier", "ece", "subject_brier", "subject_ece"):
        assert 0 <= res.metrics[key] <= 1 and key in res.std
    row = head_row(fs, res, task="stages", model_path=None)
    assert row["calibration"] == "isotonic" and head_row(fs, raw, task="stages", model_path=None)["calibration"] == ""
    bins = json.loads(row["reliability"])
    assert sum(bins["slice"]["count"]) == len(fs) and sum(bins["subject"]["count"]) == 20


def test_bad_method_is_refused() -> None:
    from featurize.errors import AlzmriError

    with pytest.raises(AlzmriError, match="sigmoid"):
        evaluate(synthetic(subjects=3), "logreg", protocol="subject-cv", calibration="platt")
