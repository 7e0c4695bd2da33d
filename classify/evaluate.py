"""Evaluate a head on a FeatureSet under an honest protocol (``classify.protocols``).

  * ``official``   selection on the training part only, scored on the test part.
  * ``subject-cv`` the grid search is nested inside each outer training fold (inner folds by subject too); mean
                   and std over folds; then refit on everything for the saved model.
  * ``slice-cv``   as subject-cv but subjects ignored on both levels (leaky), to show what leakage inflates.

Model selection is always ``GridSearchCV`` refit on balanced accuracy on training rows only; test rows never
influence a choice. The inner CV also records, at the selected parameters, the subject-level balanced accuracy and
the ROC-AUCs (``InnerScorer``), so the sweep can compare candidates of both levels by the same inner criterion.

``level="subject"`` pools each subject's slices into one row (``classify.subject_level``) after the outer folds are
made on the slices, so both levels are scored on the same held-out subjects.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import sklearn
from joblib import Memory
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.parallel import Parallel, delayed  # carries sklearn config and warning filters into workers
from threadpoolctl import threadpool_limits

from classify.calibration import calibrate, check_calibration, fold_bins, pool_bins
from classify.conformal import check_level as check_conformal_level
from classify.conformal import conformal_fold, fit_conformal, require_subjects
from classify.heads import default_pca, make_head, param_grid
from classify.intervals import bootstrap_subjects, pooled_oof
from classify.metrics import compute_metrics, ovr_auc, predict_scores, quiet_sklearn, subject_level
from classify.protocols import (
    OUTER_SPLITS,
    Fold,
    aggregate,
    check_protocol,
    folds_for,
    leaked,
    make_splitter,
    splits,
    subjects_per_class,
    thin_per_subject,
)
from classify.subject_level import SubjectPooling, check_level, level_name, subject_folds, subject_rows
from featurize.errors import DataError
from featurize.featureset import FeatureSet

SELECTION = "balanced_accuracy"
INNER_SPLITS = 3  # inner folds only rank a handful of candidates; 3 keeps nested CV affordable on 2 cores
MIN_SUBJECTS = 5


def check_inner_slices(n: int | None) -> int | None:
    """``None`` or 0 (every slice) or a positive count of slices per subject for the inner grid search."""
    if n is None or int(n) == 0:
        return None
    if int(n) < 0:
        raise DataError(f"inner slices per subject must be positive (or 0 for all), not {n}")
    return int(n)


@dataclass
class SubjectOOF:
    """Every tested subject's out-of-fold decision: its label, its scores (a subject-level head's own, or the mean of
    a slice head's slice scores) and the outer fold that tested it."""

    subjects: np.ndarray
    y: np.ndarray
    scores: np.ndarray
    fold: np.ndarray


@dataclass
class EvalResult:
    """Everything one (head, protocol) evaluation produced.

    ``metrics`` are the test-part metrics (official) or the means over outer folds (cv protocols), including
    ``precision_<class>``/``recall_<class>``; ``std`` holds the across-fold standard deviations (cv only).
    ``fold_inner_scores`` is each outer fold's best inner-CV (training-part) balanced accuracy, for nested
    selection across heads/backbones. ``confusion`` is in class order, summed over the test parts. ``model`` is the
    fitted pipeline to save (official: trained on the training part; cv: refit on all rows). ``leakage`` counts test
    subjects that also had training slices (cv: subjects split across sides in any fold); None when subjects are
    unknown. ``folds`` are the (train, test) row positions from ``classify.protocols.folds_for`` (of subject rows
    at subject level). ``fold_inner`` holds each outer fold's inner-CV scores at the selected parameters for every
    ``INNER_METRICS`` name. ``level`` is the report's level value, ``pooling`` the subject pooling (subject level),
    ``intervals`` the 95% bootstrap intervals over subjects (``classify.intervals``).
    """

    head: str
    protocol: str
    class_names: list[str]
    metrics: dict[str, float]
    std: dict[str, float]
    fold_metrics: list[dict[str, float]]
    confusion: np.ndarray
    subject_confusion: np.ndarray | None
    model: Pipeline
    best_params: dict[str, Any]
    n_train: int
    n_test: int
    leakage: int | None
    subjects_per_class: dict[str, int] | None
    pca: int | None
    n_splits: int
    split_seed: int
    fit_seconds: float
    predict_seconds: float
    warnings: list[str] = field(default_factory=list)
    chance_balanced_accuracy: float | None = None
    permutation_p: float | None = None
    permutation_scores: list[float] = field(default_factory=list)
    fold_inner_scores: list[float] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    fold_inner: dict[str, list[float]] = field(default_factory=dict)
    level: str = "slice"
    pooling: SubjectPooling | None = None
    inner_slices: int | None = None  # slices per subject the grid search saw (None: all of them)
    intervals: dict[str, float] = field(default_factory=dict)
    subject_oof: SubjectOOF | None = None
    calibration: str = "none"
    reliability: dict[str, Any] = field(default_factory=dict)  # pooled test-part bins (classify.calibration)
    conformal: Any = None  # classify.conformal.ConformalPredictor of the saved model


def check_finite(fs: FeatureSet, limit: int = 3) -> None:
    """DataError naming the first few rows whose features hold NaN or inf."""
    bad = ~np.isfinite(fs.X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        named = ", ".join(str(fs.paths[i]) for i in rows[:limit])
        more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
        cache = fs.meta.get("cache_path", "the feature cache")
        raise DataError(f"{cache}: {len(rows)} row(s) have NaN/inf features ({named}{more}); "
                        "rerun `alzmri featurize` for those images or remove them")


# ------------------------------------------------------------------ selection and fitting

def _effective_pca(pca: int | None, n_rows: int, n_features: int) -> int | None:
    # PCA cannot keep more components than the smallest training fold has rows (or features);
    # a PCA as wide as the input is only a rotation, so it is dropped.
    if not pca:
        return None
    k = min(int(pca), n_rows, n_features)
    return k if k < n_features else None


INNER_METRICS = ("balanced_accuracy", "roc_auc", "subject_balanced_accuracy", "subject_roc_auc")


class InnerScorer:
    """The inner-CV scorer: balanced accuracy (what selection refits on) and the ROC-AUC per row, and, given the
    subjects of the scored rows (routed by scikit-learn's metadata routing), the same per subject from the mean of
    its rows' scores, as ``compute_metrics`` does on the outer folds."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def __call__(self, model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
        y = np.asarray(y)
        scores = predict_scores(model, X, self.n_classes)
        out = {"balanced_accuracy": float(balanced_accuracy_score(y, model.predict(X))), "roc_auc": ovr_auc(y, scores),
               "subject_balanced_accuracy": float("nan"), "subject_roc_auc": float("nan")}
        if groups is not None:
            ys, ss = subject_level(y, scores, np.asarray(groups, dtype=object))
            out["subject_balanced_accuracy"] = float(balanced_accuracy_score(ys, ss.argmax(axis=1)))
            out["subject_roc_auc"] = ovr_auc(ys, ss)
        return out

    def get_metadata_routing(self) -> Any:
        """Ask GridSearchCV to pass each scored part's ``groups``."""
        from sklearn.utils.metadata_routing import MetadataRequest

        request = MetadataRequest(owner=type(self).__name__)
        request.score.add_request(param="groups", alias=True)
        return request


@contextlib.contextmanager
def _cached(model: Pipeline) -> Iterator[Pipeline]:
    # Grid candidates differ only in the classifier: cache the fitted scaler/PCA per fold so a 6-point grid
    # computes each fold's PCA once instead of six times. The saved model must not point at a temp dir.
    if "pca" not in model.named_steps:
        yield model
        return
    with tempfile.TemporaryDirectory(prefix="alzmri-cv-") as tmp:
        model.set_params(memory=Memory(tmp, verbose=0))
        yield model


def _grid(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, pca: int | None, n_jobs: int,
          seed: int, inner_splits: int, n_classes: int | None = None, inner_slices: int | None = None
          ) -> tuple[Pipeline, dict[str, Any], list[str], dict[str, float]]:
    # The grid search may see only ``inner_slices`` slices per subject: slices of one scan are near-duplicates, so
    # more of them add cost (an RBF SVM's fit is quadratic in rows) more than information about which candidate
    # ranks first. The selected candidate is then refitted on every row.
    sel = thin_per_subject(groups, inner_slices) if inner_slices and groups is not None else np.arange(len(y))
    Xs, ys, gsub = X[sel], y[sel], None if groups is None else np.asarray(groups, dtype=object)[sel]
    splitter, notes = make_splitter(ys, gsub, n_splits=inner_splits, seed=seed, what="inner selection folds")
    inner = splits(splitter, ys, gsub)
    k = _effective_pca(pca, min(len(tr) for tr, _ in inner), X.shape[1])
    scorer = InnerScorer(int(n_classes or (int(np.max(y)) + 1)))
    fit_params = {} if gsub is None else {"groups": gsub}
    thinned = len(sel) < len(y)
    with quiet_sklearn(), _cached(make_head(name, k, seed)) as model, \
            sklearn.config_context(enable_metadata_routing=groups is not None):
        gs = GridSearchCV(model, param_grid(name), scoring=scorer, cv=inner, n_jobs=n_jobs,
                          refit=False if thinned else SELECTION)
        with warnings.catch_warnings():
            # the subject scores are NaN without subjects, an AUC on a part missing a class: recorded as NaN
            warnings.filterwarnings("ignore", message=".*test scores are non-finite.*")
            gs.fit(Xs, ys, **fit_params)
        # rank 1 of the selection metric, first on ties: what GridSearchCV's own refit picks
        i = int(np.argmin(gs.cv_results_[f"rank_test_{SELECTION}"]))
        params = dict(gs.cv_results_["params"][i])
        if thinned:
            best = clone(model).set_params(memory=None, **params).fit(X, y)
        else:
            best = gs.best_estimator_
            best.set_params(memory=None)
    scores = {m: float(gs.cv_results_[f"mean_test_{m}"][i]) for m in INNER_METRICS}
    return best, params, notes, scores


def select_head(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, *, pca: int | None = None,
                n_jobs: int = 2, seed: int = 0, inner_splits: int = INNER_SPLITS, n_classes: int | None = None,
                inner_slices: int | None = None) -> tuple[Pipeline, dict[str, Any], list[str]]:
    """Grid-search ``name`` on (X, y) only (group-aware inner CV when ``groups``; at most ``inner_slices`` rows per
    subject when given), refit the best on all of it.

    Returns the fitted best pipeline, its parameters and notes (fold fallbacks).
    """
    best, params, notes, _ = _grid(name, X, y, groups, pca=pca, n_jobs=n_jobs, seed=seed, inner_splits=inner_splits,
                                   n_classes=n_classes, inner_slices=inner_slices)
    return best, params, notes


def fixed_head(name: str, params: dict[str, Any], *, n_rows: int, n_features: int, pca: int | None, seed: int) -> Pipeline:
    """An unfitted head with already-selected parameters (used by the permutation check)."""
    model = make_head(name, _effective_pca(pca, n_rows, n_features), seed)
    return model.set_params(**params)


@dataclass
class _FoldOutcome:
    """One outer fold: test metrics, scores and confusion matrices, the selected model, its inner scores, timings."""

    metrics: dict[str, float]
    cm: np.ndarray
    scm: np.ndarray | None
    params: dict[str, Any]
    notes: list[str]
    model: Pipeline
    inner: dict[str, float]
    fit_s: float
    pred_s: float
    scores: np.ndarray
    bins: dict[str, Any] = field(default_factory=dict)
    conformal: Any = None


def _fold(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fold: Fold, *, pca: int | None,
          n_jobs: int, seed: int, inner_splits: int, inner_groups: bool, class_names: list[str],
          calibration: str = "none", conformal: float | None = None, inner_slices: int | None = None) -> _FoldOutcome:
    """Select on the fold's training rows, score its test rows (runs in a joblib worker)."""
    tr, te = fold
    t0 = time.perf_counter()
    model, params, notes, inner = _grid(name, X[tr], y[tr], groups[tr] if inner_groups and groups is not None else None,
                                        pca=pca, n_jobs=n_jobs, seed=seed, inner_splits=inner_splits,
                                        n_classes=len(class_names), inner_slices=inner_slices)
    model, more = calibrate(model, X[tr], y[tr], groups[tr] if inner_groups and groups is not None else None,
                            method=calibration, seed=seed, inner_splits=inner_splits)
    t1 = time.perf_counter()
    with quiet_sklearn():
        y_pred = model.predict(X[te])
        scores = predict_scores(model, X[te], len(class_names))
    t2 = time.perf_counter()
    m, cm, scm = compute_metrics(y[te], y_pred, scores, class_names, groups=None if groups is None else groups[te])
    cp = None
    if conformal:  # split conformal inside the training part (classify.conformal)
        more_m, cp = conformal_fold(model, X, y, groups, fold, level=conformal, n_classes=len(class_names), seed=seed)
        m.update(more_m)
    return _FoldOutcome(metrics=m, cm=cm, scm=scm, params=params, notes=notes + more + (cp.notes if cp else []),
                        model=model, inner=inner, fit_s=t1 - t0, pred_s=t2 - t1, scores=scores, conformal=cp,
                        bins=fold_bins(y[te], scores, None if groups is None else groups[te]))


# ------------------------------------------------------------------ permutation check

def permute_labels(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Shuffle labels among subjects (each subject keeps one label for all its slices); plain shuffle without subjects."""
    if groups is None:
        return rng.permutation(y)
    subj, inv = np.unique(groups, return_inverse=True)
    per_subject = np.array([np.bincount(y[inv == i]).argmax() for i in range(len(subj))])
    return rng.permutation(per_subject)[inv]


def _perm_fold(name: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
               pca: int | None, seed: int) -> float:
    if len(np.unique(y[tr])) < 2:  # a shuffle can leave one class in a tiny training part: nothing to fit
        return float("nan")
    model = fixed_head(name, params, n_rows=len(tr), n_features=X.shape[1], pca=pca, seed=seed)
    with quiet_sklearn():
        model.fit(X[tr], y[tr])
        return float(balanced_accuracy_score(y[te], model.predict(X[te])))


def permutation_check(name: str, *, params: dict[str, Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                      folds: list[Fold], n: int, pca: int | None, seed: int, n_jobs: int = 2) -> list[float]:
    """Balanced accuracy of the selected head refit on ``n`` label permutations, over the same folds (no grid search)."""
    rng = np.random.default_rng(seed + 7919)
    perms = [permute_labels(y, groups, rng) for _ in range(n)]
    jobs = [(i, tr, te) for i in range(n) for tr, te in folds]
    out = Parallel(n_jobs=n_jobs)(delayed(_perm_fold)(name, params, X, perms[i], tr, te, pca, seed) for i, tr, te in jobs)
    per = np.array(out, dtype=float).reshape(n, len(folds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [float(v) for v in np.nanmean(per, axis=1)]


# ------------------------------------------------------------------ evaluate

def evaluate(fs: FeatureSet, head: str, *, protocol: str = "official", pca: int | None | str = "default",
             permutation: int = 0, n_jobs: int = 2, seed: int = 0, outer_splits: int = OUTER_SPLITS,
             inner_splits: int = INNER_SPLITS, level: str = "slice", pooling: str | SubjectPooling = "meanstd",
             n_boot: int = 2000, calibration: str = "none", conformal: float | None = None,
             inner_slices: int | None = None) -> EvalResult:
    """Select, fit and score ``head`` on ``fs`` under ``protocol``; optionally run the permutation check.

    ``pca``: "default" = the head's own default width, None/0 = no PCA, int = that many components.
    ``n_jobs`` processes share the work (outer folds, else grid candidates x inner folds, and permutations).
    ``level``: ``slice`` (a row per slice) or ``subject`` (a row per subject, pooled by ``pooling``; see
    ``classify.subject_level``). With subjects, ``n_boot`` resamples give 95% intervals over subjects.
    ``calibration`` (none|sigmoid|isotonic) and ``conformal`` (a level) are fitted inside each training part.
    ``inner_slices``: the grid search sees at most that many evenly spaced slices per subject (None: all); the
    selected candidate is refitted on all of the training part's rows.
    """
    # Parallelism comes from n_jobs processes. BLAS/OpenMP threads on top only compete with them and spin
    # while waiting: on the shared 2-core box, one thread measured ~2x faster at 5,120 x 1,280 with
    # n_jobs=2 and ~7x faster for the many tiny fits of small data sets.
    with threadpool_limits(1):
        return _evaluate(fs, head, protocol=protocol, pca=pca, permutation=permutation, n_jobs=n_jobs, seed=seed,
                         outer_splits=outer_splits, inner_splits=inner_splits, level=level, pooling=pooling,
                         n_boot=n_boot, calibration=check_calibration(calibration),
                         conformal=check_conformal_level(conformal), inner_slices=check_inner_slices(inner_slices))


def _subject_notes(y: np.ndarray, groups: np.ndarray | None, names: list[str]) -> tuple[dict[str, int] | None, list[str]]:
    if groups is None:
        return None, ["subjects unknown: leakage cannot be checked and no subject-level metrics; "
                      "run `alzmri subjects --data ROOT` to infer them"]
    spc = subjects_per_class(y, groups, names)
    small = [f"{c} ({k})" for c, k in spc.items() if k < MIN_SUBJECTS]
    if not small:
        return spc, []
    return spc, [f"few subjects in class {', '.join(small)}: fewer than {MIN_SUBJECTS}, so its per-class "
                 "metrics mean little"]


def _subject_oof(folds: list[Fold], fold_scores: list[np.ndarray], y: np.ndarray, groups: np.ndarray,
                 n_classes: int) -> SubjectOOF:
    oof, tested = pooled_oof(folds, fold_scores, len(y), n_classes)
    fold_of = np.full(len(y), -1)
    for k, (_, te) in enumerate(folds):
        fold_of[te] = k
    subjects, first = np.unique(groups[tested], return_index=True)  # subject_level orders subjects the same way
    ys, ss = subject_level(y[tested], oof[tested], groups[tested])
    return SubjectOOF(subjects=subjects, y=ys, scores=ss, fold=fold_of[tested][first])


def _evaluate(fs: FeatureSet, head: str, *, protocol: str, pca: int | None | str, permutation: int, n_jobs: int,
              seed: int, outer_splits: int, inner_splits: int, level: str, pooling: str | SubjectPooling,
              n_boot: int, calibration: str = "none", conformal: float | None = None,
              inner_slices: int | None = None) -> EvalResult:
    check_protocol(protocol)
    check_level(level)
    pool = pooling if isinstance(pooling, SubjectPooling) else SubjectPooling(str(pooling))
    pca = default_pca(head) if pca == "default" else (int(pca) if pca else None)
    check_finite(fs)
    names = list(fs.class_names)
    X = np.asarray(fs.X)
    y = np.asarray(fs.y, dtype=np.int64)
    groups = np.asarray(fs.subject, dtype=object) if fs.has_subjects else None
    folds, notes = folds_for(protocol, y=y, groups=groups, split=np.asarray(fs.split) if fs.has_split else None,
                             seed=seed, n_splits=outer_splits, class_names=names,
                             source=str(fs.meta.get("cache_path", "this feature cache")))
    spc, more = _subject_notes(y, groups, names)
    notes += more
    require_subjects(conformal, groups)
    if level == "subject":
        # The folds were made on the slices above: map them, so both levels hold out the very same subjects.
        rows = subject_rows(fs, pool)
        folds = subject_folds(folds, rows.inverse, len(rows.fs))
        notes += rows.notes
        X, y = np.asarray(rows.fs.X), np.asarray(rows.fs.y, dtype=np.int64)
        groups = np.asarray(rows.fs.subject, dtype=object)

    # ---- fit and score
    inner_groups = protocol != "slice-cv"
    fold_args = dict(pca=pca, seed=seed, inner_splits=inner_splits, inner_groups=inner_groups, class_names=names,
                     calibration=calibration, conformal=conformal, inner_slices=inner_slices)
    t0 = time.perf_counter()
    if protocol == "official":
        res = [_fold(head, X, y, groups, folds[0], n_jobs=n_jobs, **fold_args)]
        model, params = res[0].model, res[0].params
        fit_s = res[0].fit_s
    else:
        # Parallel across outer folds; each fold's grid search then runs sequentially (no oversubscription).
        outer_jobs = max(1, min(n_jobs, len(folds)))
        res = Parallel(n_jobs=outer_jobs)(
            delayed(_fold)(head, X, y, groups, fold, n_jobs=1 if outer_jobs > 1 else n_jobs, **fold_args)
            for fold in folds)
        model, params, more = select_head(head, X, y, groups if inner_groups else None, pca=pca, n_jobs=n_jobs,
                                          seed=seed, inner_splits=inner_splits, n_classes=len(names),
                                          inner_slices=inner_slices)
        model, cal_notes = calibrate(model, X, y, groups if inner_groups else None, method=calibration, seed=seed,
                                     inner_splits=inner_splits)
        notes += more + cal_notes
        fit_s = time.perf_counter() - t0  # wall time of every fold's selection+fit and the final refit
    for r in res:
        notes += r.notes
    fold_metrics = [r.metrics for r in res]
    metrics, std = aggregate(fold_metrics)
    if protocol == "official":
        std = {}
    cm = np.sum([r.cm for r in res], axis=0)
    scm = None if groups is None else np.sum([r.scm for r in res], axis=0)
    leakage = leaked(groups, folds)
    if leakage:
        total = len(set(groups[np.concatenate([b for _, b in folds])]))
        notes.append(f"{protocol}: {leakage} of {total} test subjects also have slices in training: scores are "
                     "optimistic (leakage); use --protocol subject-cv for an honest estimate")

    out = EvalResult(
        head=head, protocol=protocol, class_names=names, metrics=metrics, std=std, fold_metrics=fold_metrics,
        confusion=cm, subject_confusion=scm, model=model, best_params=params,
        n_train=int(len(folds[0][0]) if protocol == "official" else len(y)),
        n_test=int(sum(len(b) for _, b in folds)), leakage=leakage, subjects_per_class=spc, pca=pca,
        n_splits=len(folds), split_seed=seed, fit_seconds=float(fit_s),
        predict_seconds=float(sum(r.pred_s for r in res)),
        warnings=list(dict.fromkeys(notes)), fold_inner_scores=[float(r.inner[SELECTION]) for r in res], folds=folds,
        fold_inner={m: [float(r.inner[m]) for r in res] for m in INNER_METRICS},
        level=level_name(level, pool), pooling=pool if level == "subject" else None,
        calibration=calibration, reliability=pool_bins([r.bins for r in res]),
        inner_slices=inner_slices if level == "slice" and groups is not None and inner_groups else None,
    )
    if groups is not None:
        out.subject_oof = _subject_oof(folds, [r.scores for r in res], y, groups, len(names))
        if n_boot > 0:
            o = out.subject_oof
            out.intervals = bootstrap_subjects(o.y, o.scores, None, n_boot=n_boot, seed=seed)
    if conformal:  # the saved model's sets: official reuses the training part's; cv calibrates on all subjects
        out.conformal = res[0].conformal if protocol == "official" else fit_conformal(
            model, X, y, groups, level=conformal, n_classes=len(names), seed=seed)
    if permutation > 0:
        scores = permutation_check(head, params=params, X=X, y=y, groups=groups, folds=folds, n=int(permutation),
                                   pca=pca, seed=seed, n_jobs=n_jobs)
        real = metrics["balanced_accuracy"]
        out.permutation_scores = scores
        out.chance_balanced_accuracy = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        out.permutation_p = float((np.sum(np.asarray(scores) >= real) + 1) / (len(scores) + 1))
    return out
