"""Classifier heads: one registry entry = a pipeline factory + a small parameter grid.

Every head is ``Pipeline([("scale", StandardScaler()), optional ("pca", PCA), ("clf", estimator)])``.
Grids are deliberately small (selection runs inside every CV fold) and always include strong
regularisation: cached embeddings are wide (1,280+ dims) and the honest training sets are small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from featurize.errors import AlzmriError
from featurize.options import choose


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxSVC(ClassifierMixin, BaseEstimator):
    """RBF ``SVC(class_weight="balanced", probability=False, decision_function_shape="ovr")`` with two additions.

    * ``gamma_scale`` multiplies the resolved ``gamma`` ("scale" = 1 / (n_features * X.var())), so a grid
      can say "scale, and 10x smoother" without knowing the feature width (which PCA changes).
    * ``predict_proba`` = softmax of the OvR decision values. We do not use ``probability=True``: it runs
      an internal 5-fold Platt calibration, i.e. ~6x the fit time, for scores we only need for ranking
      (ROC-AUC) and for averaging slices into a subject prediction. These are scores, not calibrated
      probabilities.
    """

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", gamma_scale: float = 1.0,
                 class_weight: str | dict | None = "balanced", cache_size: float = 500.0) -> None:
        self.C = C
        self.gamma = gamma
        self.gamma_scale = gamma_scale
        self.class_weight = class_weight
        self.cache_size = cache_size

    def _resolved_gamma(self, X: np.ndarray) -> float:
        if self.gamma == "scale":
            var = float(np.var(X))
            base = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        elif self.gamma == "auto":
            base = 1.0 / X.shape[1]
        else:
            base = float(self.gamma)
        return base * float(self.gamma_scale)

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "SoftmaxSVC":
        """Fit the wrapped SVC with the resolved gamma."""
        X = np.asarray(X, dtype=np.float64)
        self.svc_ = SVC(kernel="rbf", C=self.C, gamma=self._resolved_gamma(X), class_weight=self.class_weight,
                        decision_function_shape="ovr", cache_size=self.cache_size)
        # probability is left at its default (False): passing it at all is deprecated in sklearn 1.9.
        self.svc_.fit(X, y, sample_weight=sample_weight)
        self.classes_ = self.svc_.classes_
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """OvR decision values, shape (n, n_classes) (binary: (n,), positive = ``classes_[1]``)."""
        check_is_fitted(self, "svc_")
        return self.svc_.decision_function(np.asarray(X, dtype=np.float64))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class labels."""
        check_is_fitted(self, "svc_")
        return self.svc_.predict(np.asarray(X, dtype=np.float64))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the decision values (rows sum to 1; uncalibrated)."""
        d = self.decision_function(X)
        if d.ndim == 1:  # binary SVC returns one margin; make it two symmetric columns
            d = np.column_stack([-d, d]) / 2.0
        return softmax(d)


class Rebalanced(ClassifierMixin, BaseEstimator):
    """Make an estimator without ``class_weight`` treat classes equally, inside ``fit`` only.

    Because rebalancing happens in ``fit``, it stays inside each CV training fold: validation and test
    rows are never duplicated or reweighted. ``method="weight"`` passes balanced sample weights (exact,
    and no duplicated rows that an internal early-stopping split could leak between its train and
    validation parts); ``"oversample"`` draws minority rows with replacement up to the majority count,
    for estimators whose ``fit`` takes no ``sample_weight``.
    """

    def __init__(self, estimator: Any = None, method: str = "weight", random_state: int | None = 0) -> None:
        self.estimator = estimator
        self.method = method
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Rebalanced":
        """Fit a clone of ``estimator`` on the rebalanced training data."""
        if self.method not in ("weight", "oversample"):
            raise ValueError(f"method must be 'weight' or 'oversample', not {self.method!r}")
        y = np.asarray(y)
        classes, counts = np.unique(y, return_counts=True)
        est = clone(self.estimator)
        # Early stopping holds out a stratified validation_fraction: it needs >= 2 rows per class and
        # at least one validation row per class. Tiny folds cannot give that, so train without it there.
        if getattr(est, "early_stopping", False):
            frac = float(getattr(est, "validation_fraction", 0.1))
            if counts.min() < 2 or int(np.ceil(frac * len(y))) < len(classes):
                est.set_params(early_stopping=False)
        if self.method == "weight":
            per_class = len(y) / (len(classes) * counts)
            w = per_class[np.searchsorted(classes, y)]
            est.fit(X, y, sample_weight=w)
        else:
            rng = np.random.default_rng(self.random_state)
            idx = [np.flatnonzero(y == c) for c in classes]
            top = counts.max()
            take = np.concatenate([np.concatenate([i, rng.choice(i, top - len(i), replace=True)]) for i in idx])
            rng.shuffle(take)
            est.fit(np.asarray(X)[take], y[take])
        self.estimator_ = est
        self.classes_ = est.classes_
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class labels."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of the wrapped estimator."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(X)


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: how to build its final estimator, its grid (keys relative to the estimator),
    and the PCA width it uses by default (None = no PCA)."""

    name: str
    build: Callable[[int], Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    default_pca: int | None = None
    description: str = ""


HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec(
        "logreg",
        # lbfgs fits the multinomial loss for >2 classes (the only option in sklearn >= 1.8).
        lambda rs: LogisticRegression(solver="lbfgs", class_weight="balanced", max_iter=3000, tol=1e-3, random_state=rs),
        {"C": [0.001, 0.01, 0.1, 1.0]},
        None,
        "multinomial logistic regression, balanced class weights",
    ),
    "svm": HeadSpec(
        "svm",
        lambda rs: SoftmaxSVC(),
        {"C": [0.1, 1.0, 10.0], "gamma_scale": [1.0, 0.1]},
        # An RBF kernel on 1,280 raw dims costs O(n^2 d) per fit; 128 PCA dims keep the grid search
        # within seconds and lose little (embeddings are highly correlated).
        128,
        "RBF SVM, balanced class weights, softmax of OvR decision values as scores",
    ),
    "mlp": HeadSpec(
        "mlp",
        lambda rs: Rebalanced(MLPClassifier(hidden_layer_sizes=(64,), early_stopping=True, validation_fraction=0.1,
                                            n_iter_no_change=8, max_iter=200, learning_rate_init=1e-3,
                                            random_state=rs), method="weight", random_state=rs),
        {"estimator__alpha": [1e-3, 1e-1, 1.0], "estimator__hidden_layer_sizes": [(64,), (256,)]},
        256,
        "one-hidden-layer MLP, early stopping, balanced sample weights inside each training fold",
    ),
}


def _spec(name: str) -> HeadSpec:
    return HEADS[choose("head", name, HEADS)]


def head_names(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Validate head names given as a list or a comma-separated string ("all" = every head)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if names == ["all"]:
        return list(HEADS)
    for n in names:
        _spec(n)
    if not names:
        raise AlzmriError(f"no head given; choose from: {', '.join(HEADS)}")
    return list(dict.fromkeys(names))


def default_pca(name: str) -> int | None:
    """The PCA width a head uses unless told otherwise (None = no PCA)."""
    return _spec(name).default_pca


def make_head(name: str, pca: int | None = None, random_state: int = 0) -> Pipeline:
    """An unfitted head: scale -> [PCA(pca)] -> classifier. ``pca`` None or 0 means no PCA step."""
    spec = _spec(name)
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", PCA(n_components=int(pca), whiten=False, random_state=random_state)))
    steps.append(("clf", spec.build(random_state)))
    return Pipeline(steps)


def param_grid(name: str) -> dict[str, list[Any]]:
    """The head's grid with pipeline-prefixed keys (``clf__C``, ...), ready for GridSearchCV."""
    return {f"clf__{k}": list(v) for k, v in _spec(name).grid.items()}
