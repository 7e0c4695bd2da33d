"""Bootstrap intervals resample subjects, not slices; deterministic; in the report rows."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from classify.evaluate import evaluate
from classify.intervals import bootstrap_subjects
from classify.metrics import ovr_auc, rank_auc
from classify.report import head_row
from tests.classify.test_evaluate import synthetic


def _noisy(n_subjects: int = 40, slices: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_s = np.arange(n_subjects) % 2
    s_s = np.clip(0.5 + 0.25 * (2 * y_s - 1) + rng.normal(0, 0.3, n_subjects), 0, 1)
    y = np.repeat(y_s, slices)
    p1 = np.clip(np.repeat(s_s, slices) + rng.normal(0, 0.02, n_subjects * slices), 0, 1)
    return y, np.column_stack([1 - p1, p1]), np.repeat([f"s{i}" for i in range(n_subjects)], slices).astype(object)


def test_duplicating_slices_of_subjects_does_not_narrow_the_interval() -> None:
    y, scores, groups = _noisy()
    once = bootstrap_subjects(y, scores, groups, seed=1)
    many = bootstrap_subjects(np.tile(y, 5), np.tile(scores, (5, 1)), np.tile(groups, 5), seed=1)
    assert once == {**many, "interval_subjects": once["interval_subjects"]} and once["interval_subjects"] == 40
    width = once["subject_balanced_accuracy_hi"] - once["subject_balanced_accuracy_lo"]
    # resampling the 320 slices as if independent would be ~sqrt(8) times narrower: the subject interval is not
    rng = np.random.default_rng(1)
    slice_bal = [np.mean((scores[i].argmax(1) == y[i])) for i in (rng.integers(0, len(y), len(y)) for _ in range(500))]
    assert width > 2 * (np.percentile(slice_bal, 97.5) - np.percentile(slice_bal, 2.5))
    assert 0.1 < width < 0.6


def test_deterministic_with_a_seed_and_the_interval_holds_the_pooled_value() -> None:
    y, scores, groups = _noisy(seed=4)
    a, b = bootstrap_subjects(y, scores, groups, seed=7), bootstrap_subjects(y, scores, groups, seed=7)
    assert a == b and a != bootstrap_subjects(y, scores, groups, seed=8)
    ys, ss = y[::8], scores[::8]
    acc = float((ss.argmax(1) == ys).mean())
    assert a["subject_accuracy_lo"] <= acc <= a["subject_accuracy_hi"]
    auc = roc_auc_score(ys, ss[:, 1])
    assert a["subject_roc_auc_lo"] <= auc <= a["subject_roc_auc_hi"]


def test_rank_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    s = np.round(rng.random((3, 30)), 1)  # many ties
    pos = np.zeros((3, 30), dtype=bool)
    pos[:, :12] = True
    got = rank_auc(s, pos)
    assert np.allclose(got, [roc_auc_score(pos[i], s[i]) for i in range(3)])
    y = rng.integers(0, 3, 40)
    p = np.round(rng.random((40, 3)), 1)
    assert np.isclose(ovr_auc(y, p), np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)]))


def test_stratified_resampling_keeps_a_two_subject_class() -> None:
    y = np.array([0] * 30 + [1] * 2)
    scores = np.column_stack([np.r_[np.full(30, 0.9), 0.4, 0.6], np.r_[np.full(30, 0.1), 0.6, 0.4]])
    out = bootstrap_subjects(y, scores, None, seed=0, n_boot=500)
    # every resample holds both classes: balanced accuracy is (1 + recall of class 1) / 2, i.e. 0.5, 0.75 or 1
    assert 0.5 <= out["subject_balanced_accuracy_lo"] and out["subject_balanced_accuracy_hi"] <= 1.0
    assert np.isfinite(out["subject_roc_auc_lo"])


def test_report_rows_carry_the_intervals() -> None:
    fs = synthetic(subjects=6, slices=3, sep=0.6, seed=2)
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1)
    row = head_row(fs, res, task="stages", model_path=None)
    lo, hi = row["subject_balanced_accuracy_lo"], row["subject_balanced_accuracy_hi"]
    assert 0 <= lo <= hi <= 1 and row["interval_subjects"] == 24 and row["level"] == "slice"
    pooled = res.subject_oof
    assert pooled is not None and len(pooled.y) == 24 and set(pooled.fold) == set(range(5))
