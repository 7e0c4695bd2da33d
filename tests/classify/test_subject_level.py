"""Subject-level heads: pooling, one row per person, the slice heads' outer folds, bundles that record the level."""

from __future__ import annotations

import numpy as np
import pytest

from classify.bundle import bundle_for, bundle_name
from classify.evaluate import evaluate
from classify.protocols import folds_for
from classify.subject_level import SubjectPooling, level_name, subject_folds, subject_rows
from featurize.errors import AlzmriError, DataError
from tests.classify.test_evaluate import synthetic


def test_poolings_compute_what_they_say() -> None:
    X = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 40.0]])
    g = np.array(["a", "a", "a"], dtype=object)
    assert np.allclose(SubjectPooling("mean").transform(X, g)[1], [[2.0, 20.0]])
    assert np.allclose(SubjectPooling("meanstd").transform(X, g)[1], [[2.0, 20.0, np.std([0, 2, 4]), np.std([10, 10, 40])]])
    q = SubjectPooling("quantiles").transform(X, g)[1]
    assert q.shape == (1, 6) and np.allclose(q[0, [2, 3]], [2.0, 10.0])  # the medians sit in the middle block
    assert SubjectPooling("quantiles").describe() == "quantiles10-50-90" and SubjectPooling("meanstd").width(5) == 10
    with pytest.raises(AlzmriError, match="--pooling"):
        SubjectPooling("max")


def test_subject_rows_one_row_per_person_with_its_label_and_split() -> None:
    fs = synthetic(subjects=4, slices=3, split=True)
    rows = subject_rows(fs, SubjectPooling("mean"))
    assert len(rows.fs) == len(set(fs.subject)) == 16 and (rows.n_slices == 3).all()
    for i, s in enumerate(rows.fs.subject):
        mine = fs.subject == s
        assert np.allclose(rows.fs.X[i], fs.X[mine].mean(axis=0), atol=1e-5)
        assert rows.fs.y[i] == fs.y[mine][0] and rows.fs.split[i] == fs.split[mine][0]
    assert rows.fs.meta["level"] == "subject-mean" and level_name("slice") == "slice"
    with pytest.raises(DataError, match="subject of every slice"):
        subject_rows(synthetic(with_subjects=False), SubjectPooling())


def test_subject_level_uses_exactly_the_slice_heads_outer_folds() -> None:
    fs = synthetic(subjects=8, slices=4)
    slice_res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, seed=3, n_boot=0)
    subj_res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, seed=3, level="subject", n_boot=0)
    rows = subject_rows(fs, SubjectPooling())
    assert len(subj_res.folds) == len(slice_res.folds) == 5
    for (_, te_slices), (_, te_subj) in zip(slice_res.folds, subj_res.folds):
        assert set(fs.subject[te_slices]) == set(rows.fs.subject[te_subj])
    # and those are the folds of classify.protocols.folds_for on the slices
    ref, _ = folds_for("subject-cv", y=fs.y, groups=fs.subject, split=None, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ref, slice_res.folds))
    assert subj_res.level == "subject-meanstd" and subj_res.n_test == len(rows.fs) == 32
    assert subj_res.metrics["balanced_accuracy"] > 0.9 and subj_res.leakage == 0
    # one row per person: the row and the subject metrics are the same numbers
    assert np.isclose(subj_res.metrics["balanced_accuracy"], subj_res.metrics["subject_balanced_accuracy"])


def test_slice_cv_cannot_feed_subject_rows() -> None:
    with pytest.raises(DataError, match="whole subjects"):
        evaluate(synthetic(subjects=6, slices=4), "logreg", protocol="slice-cv", n_jobs=1, level="subject")
    folds = [(np.array([0, 1]), np.array([2, 3]))]
    with pytest.raises(DataError):
        subject_folds(folds, np.array([0, 0, 0, 1]), 2)  # subject 0 on both sides


def test_official_split_holds_out_whole_subjects_and_bundle_records_the_level() -> None:
    fs = synthetic(subjects=8, slices=3, split=True)
    fs.meta.update(dataset_id="ds", backbone="mobilenetv2", weights="imagenet", layers="last")
    res = evaluate(fs, "logreg", protocol="official", n_jobs=1, level="subject", pooling="quantiles")
    assert res.n_test == 8 and res.n_train == 24  # 2 test subjects per class
    path, bundle = bundle_for(fs, res, task="stages", selection="x")
    assert bundle.level == "subject-quantiles" and bundle.pooling == SubjectPooling("quantiles")
    assert path.name == "mobilenetv2__logreg__subject-quantiles.joblib"
    assert bundle_name("mobilenetv2", "logreg") == "mobilenetv2__logreg.joblib"  # slice bundles keep their names
    assert np.isfinite(res.intervals["subject_balanced_accuracy_lo"])
