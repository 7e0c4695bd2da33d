"""Protocols, splitters, metrics, permutation check and bad input, on small synthetic features."""

from __future__ import annotations

import numpy as np
import pytest

from classify.evaluate import evaluate, permute_labels
from classify.metrics import compute_metrics, subject_level
from classify.protocols import holdout_split, make_splitter
from featurize.errors import AlzmriError, DataError
from featurize.featureset import FeatureSet

STAGES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def synthetic(subjects: int = 8, slices: int = 4, dim: int = 16, sep: float = 3.0, seed: int = 0,
              n_classes: int = 4, split: bool = False, with_subjects: bool = True) -> FeatureSet:
    """Gaussian blobs per class; each subject adds its own offset shared by its slices (so slices of one
    subject are more alike than slices of different subjects, like real MRI slices)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * sep
    X, y, subj, spl = [], [], [], []
    for c in range(n_classes):
        for j in range(subjects):
            offset = rng.normal(size=dim)
            for _ in range(slices):
                X.append(centers[c] + offset + rng.normal(scale=0.5, size=dim))
                y.append(c)
                subj.append(f"{STAGES[c][:4]}-{j}" if with_subjects else "")
                spl.append(("test" if j % 4 == 0 else "train") if split else "")
    n = len(y)
    return FeatureSet(X=np.asarray(X, np.float32), y=np.asarray(y), paths=np.array([f"c{y[i]}/img{i}.png" for i in range(n)], object),
                      split=np.array(spl, object), subject=np.array(subj, object), sha1=np.array([""] * n, object),
                      class_names=STAGES[:n_classes], meta={"backbone": "fake", "weights": "imagenet", "layers": "last"})


@pytest.mark.parametrize("head", ["logreg", "svm", "mlp"])
def test_each_head_separates_blobs_under_subject_cv(head: str) -> None:
    res = evaluate(synthetic(), head, protocol="subject-cv", n_jobs=1)
    assert res.metrics["balanced_accuracy"] > 0.9 and res.metrics["roc_auc"] > 0.95
    assert res.metrics["subject_balanced_accuracy"] > 0.9
    assert res.n_splits == 5 and len(res.fold_metrics) == 5 and "balanced_accuracy" in res.std
    assert res.leakage == 0 and res.confusion.sum() == 128 and res.subject_confusion.sum() == 32
    assert len(res.fold_inner_scores) == 5 and all(0 <= s <= 1 for s in res.fold_inner_scores)
    assert res.model.predict(synthetic().X[:3]).shape == (3,)


@pytest.mark.slow
def test_shuffled_labels_score_near_chance_and_permutation_check_agrees() -> None:
    fs = synthetic(subjects=10, sep=3.0, seed=3)
    rng = np.random.default_rng(0)
    fs.y = permute_labels(fs.y, fs.subject, rng)  # labels unrelated to features, still one per subject
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1)
    assert res.metrics["balanced_accuracy"] < 0.45
    real = evaluate(synthetic(subjects=10, seed=3), "logreg", protocol="subject-cv", permutation=9, n_jobs=2)
    assert real.permutation_p == pytest.approx(0.1)  # (0 + 1) / (9 + 1): no permutation reaches the real score
    assert 0.1 < real.chance_balanced_accuracy < 0.45 and len(real.permutation_scores) == 9


def test_permutation_keeps_every_subject_label_consistent() -> None:
    fs = synthetic()
    yp = permute_labels(fs.y, fs.subject, np.random.default_rng(5))
    for s in set(fs.subject):
        assert len(set(yp[fs.subject == s])) == 1
    assert sorted(np.bincount(yp)) == sorted(np.bincount(fs.y))


def test_subject_cv_never_splits_a_subject_and_slice_cv_does() -> None:
    fs = synthetic(subjects=6, slices=5)
    splitter, notes = make_splitter(fs.y, fs.subject, n_splits=5, seed=1)
    folds = list(splitter.split(fs.X, fs.y, fs.subject))
    assert len(folds) == 5 and not notes
    for tr, te in folds:
        assert not set(fs.subject[tr]) & set(fs.subject[te])
        assert set(fs.y[te]) == set(range(4))  # stratified: every class in every test fold
    assert evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1).leakage == 0
    leaky = evaluate(fs, "logreg", protocol="slice-cv", n_jobs=1)
    assert leaky.leakage > 0 and any("leakage" in w for w in leaky.warnings)


def test_official_split_is_respected_and_leakage_counted() -> None:
    fs = synthetic(split=True)
    res = evaluate(fs, "logreg", protocol="official", n_jobs=1)
    assert res.n_train == int((fs.split == "train").sum()) and res.n_test == int((fs.split == "test").sum())
    assert res.leakage == 0 and res.std == {} and res.metrics["balanced_accuracy"] > 0.9
    fs.subject[fs.split == "test"] = fs.subject[fs.split == "train"][: int((fs.split == "test").sum())]
    assert evaluate(fs, "logreg", protocol="official", n_jobs=1).leakage > 0


def test_official_without_split_holds_out_subjects_with_a_recorded_seed() -> None:
    fs = synthetic(subjects=10)
    tr, te, _ = holdout_split(fs.y, fs.subject, seed=4)
    assert 0.1 < len(te) / len(fs) < 0.3 and not set(fs.subject[tr]) & set(fs.subject[te])
    tr2, te2, _ = holdout_split(fs.y, fs.subject, seed=4)
    assert (te == te2).all()
    res = evaluate(fs, "svm", protocol="official", seed=4, n_jobs=1)
    assert res.split_seed == 4 and res.n_test == len(te) and any("seed 4" in w for w in res.warnings)


def test_small_class_falls_back_to_fewer_folds_with_a_warning() -> None:
    fs = synthetic(subjects=6)
    rare = np.isin(fs.subject, ["Mode-2", "Mode-3", "Mode-4", "Mode-5"])
    fs = fs.subset(~rare)  # ModerateDemented keeps 2 subjects
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1)
    assert res.n_splits == 2
    assert any("class ModerateDemented has only 2 subjects" in w and "using k=2" in w for w in res.warnings)
    assert any("ModerateDemented (2)" in w for w in res.warnings)  # fewer than 5 subjects
    _, notes = make_splitter(np.array([0, 0, 0, 1]), None, n_splits=5)
    assert any("k=2" in n for n in notes) and any("single sample" in n for n in notes)


def test_nan_features_name_the_rows() -> None:
    fs = synthetic()
    fs.X[[3, 7]] = np.nan
    fs.X[9, 0] = np.inf
    with pytest.raises(DataError, match=r"3 row\(s\).*c0/img3\.png.*c0/img7\.png.*c0/img9\.png"):
        evaluate(fs, "logreg", protocol="official", n_jobs=1)


def test_test_class_absent_from_train_is_a_clear_error() -> None:
    fs = synthetic(split=True)
    fs.split[(fs.y == 3)] = "test"
    with pytest.raises(DataError, match="ModerateDemented with no training rows"):
        evaluate(fs, "logreg", protocol="official", n_jobs=1)


def test_subject_cv_without_subjects_points_to_alzmri_subjects() -> None:
    with pytest.raises(DataError, match="alzmri subjects"):
        evaluate(synthetic(with_subjects=False), "logreg", protocol="subject-cv", n_jobs=1)
    res = evaluate(synthetic(with_subjects=False), "logreg", protocol="slice-cv", n_jobs=1)
    assert res.leakage is None and "subject_accuracy" not in res.metrics


def test_unknown_protocol() -> None:
    with pytest.raises(AlzmriError, match="subject-cv"):
        evaluate(synthetic(), "logreg", protocol="kfold")


def test_metrics_handle_a_class_absent_from_the_test_part() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    scores = np.eye(4)[pred] * 0.7 + 0.075
    m, cm, scm = compute_metrics(y, pred, scores, STAGES, groups=np.array(["a", "a", "b", "b", "c", "d"]))
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert np.isnan(m["recall_ModerateDemented"]) and m["recall_VeryMildDemented"] == 1.0
    assert 0.5 < m["roc_auc"] <= 1.0  # over the 3 present classes only
    assert cm.shape == (4, 4) and cm[0, 1] == 1 and cm[3].sum() == 0
    assert scm.sum() == 4 and 0 <= m["subject_balanced_accuracy"] <= 1
    m1, _, _ = compute_metrics(np.array([1, 1]), np.array([1, 0]), np.eye(4)[[1, 0]], STAGES)
    assert np.isnan(m1["roc_auc"])  # one class present: AUC undefined


def test_subject_level_prediction_averages_slice_scores() -> None:
    y = np.array([2, 2, 2, 0])
    scores = np.array([[0.6, 0, 0.4], [0.1, 0, 0.9], [0.1, 0, 0.9], [1, 0, 0]])
    ys, ss = subject_level(y, scores, np.array(["s1", "s1", "s1", "s2"]))
    assert ys.tolist() == [2, 0] and ss[0].argmax() == 2 and ss[0][0] == pytest.approx(0.8 / 3)
