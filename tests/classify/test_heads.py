"""Heads registry: pipelines, grids, the SVC score wrapper and in-fold rebalancing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from classify.heads import HEADS, Rebalanced, SoftmaxSVC, head_names, make_head, param_grid
from featurize.errors import AlzmriError


def test_every_head_builds_scale_pca_clf_and_has_strong_regularisation() -> None:
    assert set(HEADS) >= {"logreg", "svm", "mlp"}
    for name in HEADS:
        steps = [s for s, _ in make_head(name, pca=8).steps]
        assert steps == ["scale", "pca", "clf"]
        assert [s for s, _ in make_head(name).steps] == ["scale", "clf"]
        grid = param_grid(name)
        assert grid and all(k.startswith("clf__") for k in grid)
        make_head(name).set_params(**{k: v[0] for k, v in grid.items()})  # grid keys are valid parameters
    assert min(param_grid("logreg")["clf__C"]) <= 0.001
    assert min(param_grid("svm")["clf__C"]) <= 0.1
    assert max(param_grid("mlp")["clf__estimator__alpha"]) >= 1.0


def test_unknown_head_lists_valid_ones() -> None:
    with pytest.raises(AlzmriError, match="logreg.*svm.*mlp"):
        make_head("forest")
    with pytest.raises(AlzmriError, match="unknown head"):
        head_names("logreg,forest")
    assert head_names("all") == list(HEADS) and head_names(["svm", "svm"]) == ["svm"]


def test_softmax_svc_scores_are_rows_summing_to_one_and_agree_with_predict() -> None:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c * 3, 1, (20, 5)) for c in range(3)])
    y = np.repeat([0, 1, 2], 20)
    m = SoftmaxSVC(gamma_scale=0.1).fit(X, y)
    p = m.predict_proba(X)
    assert p.shape == (60, 3) and np.allclose(p.sum(axis=1), 1)
    assert (p.argmax(axis=1) == m.predict(X)).mean() > 0.95
    b = SoftmaxSVC().fit(X[:40], y[:40])  # binary: one margin becomes two columns
    pb = b.predict_proba(X[:40])
    assert pb.shape == (40, 2) and (pb.argmax(axis=1) == b.predict(X[:40])).all()
    assert clone(m).get_params()["gamma_scale"] == 0.1


@pytest.mark.parametrize("method", ["weight", "oversample"])
def test_rebalanced_makes_a_rare_class_count(method: str) -> None:
    rng = np.random.default_rng(1)
    # The rare class overlaps the common one: unweighted, predicting "common" everywhere is nearly optimal.
    X = np.vstack([rng.normal(0, 1, (190, 2)), rng.normal(1.0, 1, (10, 2))])
    y = np.array([0] * 190 + [1] * 10)
    plain = LogisticRegression().fit(X, y)
    fair = Rebalanced(LogisticRegression(), method=method).fit(X, y)
    assert (fair.predict(X) == 1).sum() > (plain.predict(X) == 1).sum()
    assert list(fair.classes_) == [0, 1] and fair.predict_proba(X).shape == (200, 2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_rebalanced_mlp_survives_a_fold_too_small_for_early_stopping() -> None:
    X = np.random.default_rng(2).normal(size=(9, 3))
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])  # one row of class 2: no stratified validation split possible
    m = Rebalanced(MLPClassifier((4,), early_stopping=True, max_iter=20)).fit(X, y)
    assert m.predict(X).shape == (9,)
