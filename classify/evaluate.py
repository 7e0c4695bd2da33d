"""Evaluate a head on a FeatureSet under an honest protocol.

Protocols:
  * ``official``   the data's own train/test split (or, without one, a stratified 20% hold-out with a fixed,
                   recorded seed; group-aware when subjects are known). Selection on the training part only.
  * ``subject-cv`` StratifiedGroupKFold by subject over all labelled rows; the grid search is nested inside
                   each outer training fold; mean and std over folds; then refit on everything for the saved model.
  * ``slice-cv``   StratifiedKFold ignoring subjects: slices of one brain land on both sides (leaky), kept to
                   show how much leakage inflates scores.

Model selection is always ``GridSearchCV(scoring="balanced_accuracy")`` on training rows only; test rows
never influence a choice.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from joblib import Memory
from threadpoolctl import threadpool_limits
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning, UndefinedMetricWarning
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.parallel import Parallel, delayed  # carries sklearn config and warning filters into workers

from classify.heads import default_pca, make_head, param_grid
from featurize.errors import AlzmriError, DataError
from featurize.featureset import FeatureSet

PROTOCOLS = ("official", "subject-cv", "slice-cv")
SELECTION = "balanced_accuracy"
OUTER_SPLITS = 5
INNER_SPLITS = 3  # inner folds only rank a handful of candidates; 3 keeps nested CV affordable on 2 cores
HOLDOUT_FOLDS = 5  # no given split: hold out 1 of 5 stratified (group-aware) folds = 20%
MIN_SUBJECTS = 5
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
SUBJECT_METRICS = ("subject_accuracy", "subject_balanced_accuracy", "subject_roc_auc")


@dataclass
class EvalResult:
    """Everything one (head, protocol) evaluation produced.

    ``metrics`` are the test-part metrics (official) or the means over outer folds (cv protocols), including
    ``precision_<class>``/``recall_<class>``; ``std`` holds the across-fold standard deviations (cv only).
    ``fold_inner_scores`` is each outer fold's best inner-CV (training-part) balanced accuracy, for nested
    selection across heads/backbones. ``confusion`` is in class order, summed over the test parts. ``model`` is the fitted pipeline to save
    (official: trained on the training part; cv: refit on all rows). ``leakage`` counts test subjects that
    also had training slices (cv: subjects split across sides in any fold); None when subjects are unknown.
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


# ------------------------------------------------------------------ input checks

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


def subjects_per_class(y: np.ndarray, groups: np.ndarray, class_names: list[str]) -> dict[str, int]:
    """Distinct subjects per class (class order), for classes present in ``y``."""
    return {class_names[c]: int(len(set(groups[y == c]))) for c in np.unique(y)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Small folds make sklearn warn per fit (a class missing from a fold's predictions, a slow-converging
    # candidate); the meaningful cases are reported once, in our own words, through EvalResult.warnings.
    with warnings.catch_warnings():
        for cat in (ConvergenceWarning, UndefinedMetricWarning, FitFailedWarning):
            warnings.simplefilter("ignore", cat)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", message=".*[Oo]nly one class.*")
        warnings.filterwarnings("ignore", message=".*classes not in y_true.*")
        yield


# ------------------------------------------------------------------ splitting

def make_splitter(y: np.ndarray, groups: np.ndarray | None = None, n_splits: int = OUTER_SPLITS, seed: int = 0,
                  what: str = "folds", class_names: list[str] | None = None) -> tuple[StratifiedKFold | StratifiedGroupKFold, list[str]]:
    """StratifiedGroupKFold by subject when ``groups`` is given, else StratifiedKFold.

    When a class has fewer samples (or subjects) than ``n_splits``, k drops to that count (min 2) and the
    returned warnings say so; a class with a single subject cannot be on both sides and is flagged.
    """
    y = np.asarray(y)
    notes: list[str] = []
    classes = np.unique(y)
    if groups is not None:
        counts = {int(c): len(set(groups[y == c])) for c in classes}
        unit, total = "subjects", len(set(groups))
    else:
        counts = {int(c): int((y == c).sum()) for c in classes}
        unit, total = "samples", len(y)
    if total < 2:
        raise AlzmriError(f"cannot make {what}: only {total} {unit} in the data")
    smallest = min(counts.values())
    small_class = min(counts, key=lambda c: counts[c])
    who = f"class {class_names[small_class]}" if class_names else "a class"
    k = int(min(n_splits, max(2, smallest), total))
    if k < n_splits:
        notes.append(f"{what}: {who} has only {smallest} {unit if smallest != 1 else unit[:-1]}, fewer than "
                     f"{n_splits} folds; using k={k}")
    if smallest < 2:
        notes.append(f"{what}: {who} has a single {unit[:-1]}; it cannot appear in every training fold")
    if groups is not None:
        return StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed), notes
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), notes


def _splits(splitter: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    with _quiet():
        return [(tr, te) for tr, te in splitter.split(X, y, groups)]


def holdout_split(y: np.ndarray, groups: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A stratified ~20% hold-out (group-aware when ``groups`` is given) whose training part covers every
    class of its test part: the first such of 5 folds under ``seed``."""
    splitter, notes = make_splitter(y, groups, HOLDOUT_FOLDS, seed, what="hold-out")
    folds = _splits(splitter, np.zeros((len(y), 1)), y, groups)
    for tr, te in folds:
        if set(np.unique(y[te])) <= set(np.unique(y[tr])):
            return tr, te, notes
    return folds[0][0], folds[0][1], notes


# ------------------------------------------------------------------ scores and metrics

def predict_scores(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class scores (n, n_classes) in class-index order; classes the model never saw score 0."""
    proba = model.predict_proba(X)
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, np.asarray(model.classes_, dtype=int)] = proba
    return out


def ovr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """One-vs-rest macro ROC-AUC over the classes present in ``y`` (NaN when fewer than two are)."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in present]))


def subject_level(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per subject: its majority slice label and the mean of its slices' scores."""
    subj, inv = np.unique(groups, return_inverse=True)
    n_classes = scores.shape[1]
    ys = np.array([np.bincount(y[inv == i], minlength=n_classes).argmax() for i in range(len(subj))])
    sums = np.zeros((len(subj), n_classes))
    np.add.at(sums, inv, scores)
    return ys, sums / np.bincount(inv)[:, None]


def compute_metrics(y: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, class_names: list[str],
                    groups: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray | None]:
    """Test-part metrics, the confusion matrix (class order) and, with subjects, the subject-level one.

    Macro-F1 and balanced accuracy average over the classes present in ``y``; precision/recall of a class
    with no true (or no predicted) rows is NaN rather than a misleading 0.
    """
    n = len(class_names)
    labels = np.arange(n)
    present = np.unique(y)
    with _quiet():
        m: dict[str, float] = {
            "accuracy": float(accuracy_score(y, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, y_pred)),
            "macro_f1": float(f1_score(y, y_pred, labels=present, average="macro", zero_division=0)),
            "roc_auc": ovr_auc(y, scores),
        }
        prec, rec, _, _ = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=np.nan)
    for i, c in enumerate(class_names):
        m[f"precision_{c}"] = float(prec[i])
        m[f"recall_{c}"] = float(rec[i])
    cm = confusion_matrix(y, y_pred, labels=labels)
    scm = None
    if groups is not None:
        ys, ss = subject_level(y, scores, groups)
        yp = ss.argmax(axis=1)
        with _quiet():
            m["subject_accuracy"] = float(accuracy_score(ys, yp))
            m["subject_balanced_accuracy"] = float(balanced_accuracy_score(ys, yp))
        m["subject_roc_auc"] = ovr_auc(ys, ss)
        scm = confusion_matrix(ys, yp, labels=labels)
    return m, cm, scm


# ------------------------------------------------------------------ selection and fitting

def _effective_pca(pca: int | None, n_rows: int, n_features: int) -> int | None:
    # PCA cannot keep more components than the smallest training fold has rows (or features);
    # a PCA as wide as the input is only a rotation, so it is dropped.
    if not pca:
        return None
    k = min(int(pca), n_rows, n_features)
    return k if k < n_features else None


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


def _grid(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, pca: int | None, n_jobs: int,
          seed: int, inner_splits: int) -> tuple[Pipeline, dict[str, Any], list[str], float]:
    splitter, notes = make_splitter(y, groups, inner_splits, seed, what="inner selection folds")
    inner = _splits(splitter, X, y, groups)
    k = _effective_pca(pca, min(len(tr) for tr, _ in inner), X.shape[1])
    with _quiet(), _cached(make_head(name, k, seed)) as model:
        gs = GridSearchCV(model, param_grid(name), scoring=SELECTION, cv=inner, n_jobs=n_jobs, refit=True)
        gs.fit(X, y)
        best = gs.best_estimator_
        best.set_params(memory=None)
    return best, dict(gs.best_params_), notes, float(gs.best_score_)


def select_head(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, pca: int | None = None,
                n_jobs: int = 2, seed: int = 0, inner_splits: int = INNER_SPLITS) -> tuple[Pipeline, dict[str, Any], list[str]]:
    """Grid-search ``name`` on (X, y) only (group-aware inner CV when ``groups``), refit the best on all of it.

    Returns the fitted best pipeline, its parameters and notes (fold fallbacks).
    """
    best, params, notes, _ = _grid(name, X, y, groups, pca, n_jobs, seed, inner_splits)
    return best, params, notes


def fixed_head(name: str, params: dict[str, Any], n_rows: int, n_features: int, pca: int | None, seed: int) -> Pipeline:
    """An unfitted head with already-selected parameters (used by the permutation check)."""
    model = make_head(name, _effective_pca(pca, n_rows, n_features), seed)
    return model.set_params(**params)


def _fold(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, tr: np.ndarray, te: np.ndarray,
          pca: int | None, n_jobs: int, seed: int, inner_splits: int, inner_groups: bool,
          class_names: list[str]) -> dict[str, Any]:
    """Select on the fold's training rows, score its test rows (runs in a joblib worker)."""
    t0 = time.perf_counter()
    model, params, notes, inner = _grid(name, X[tr], y[tr], groups[tr] if inner_groups and groups is not None else None,
                                        pca, n_jobs, seed, inner_splits)
    t1 = time.perf_counter()
    with _quiet():
        y_pred = model.predict(X[te])
        scores = predict_scores(model, X[te], len(class_names))
    t2 = time.perf_counter()
    m, cm, scm = compute_metrics(y[te], y_pred, scores, class_names, None if groups is None else groups[te])
    return {"metrics": m, "cm": cm, "scm": scm, "params": params, "notes": notes, "model": model, "inner": inner,
            "fit_s": t1 - t0, "pred_s": t2 - t1}


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
    model = fixed_head(name, params, len(tr), X.shape[1], pca, seed)
    with _quiet():
        model.fit(X[tr], y[tr])
        return float(balanced_accuracy_score(y[te], model.predict(X[te])))


def permutation_check(name: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                      folds: list[tuple[np.ndarray, np.ndarray]], n: int, pca: int | None, seed: int,
                      n_jobs: int = 2) -> list[float]:
    """Balanced accuracy of the selected head refit on ``n`` label permutations, over the same folds (no grid search)."""
    rng = np.random.default_rng(seed + 7919)
    perms = [permute_labels(y, groups, rng) for _ in range(n)]
    jobs = [(i, tr, te) for i in range(n) for tr, te in folds]
    out = Parallel(n_jobs=n_jobs)(delayed(_perm_fold)(name, params, X, perms[i], tr, te, pca, seed) for i, tr, te in jobs)
    per = np.array(out, dtype=float).reshape(n, len(folds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [float(v) for v in np.nanmean(per, axis=1)]


# ------------------------------------------------------------------ protocols

def _aggregate(folds: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = list(dict.fromkeys(k for f in folds for k in f))
    mean, std = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a class never tested) stay NaN
        for k in keys:
            v = np.array([f.get(k, np.nan) for f in folds], dtype=float)
            mean[k] = float(np.nanmean(v))
            std[k] = float(np.nanstd(v))
    return mean, std


def _leaked(groups: np.ndarray | None, folds: list[tuple[np.ndarray, np.ndarray]]) -> int | None:
    if groups is None:
        return None
    leaked: set[str] = set()
    for tr, te in folds:
        leaked |= set(groups[te]) & set(groups[tr])
    return len(leaked)


def evaluate(fs: FeatureSet, head: str, protocol: str = "official", pca: int | None | str = "default",
             permutation: int = 0, n_jobs: int = 2, seed: int = 0, outer_splits: int = OUTER_SPLITS,
             inner_splits: int = INNER_SPLITS) -> EvalResult:
    """Select, fit and score ``head`` on ``fs`` under ``protocol``; optionally run the permutation check.

    ``pca``: "default" = the head's own default width, None/0 = no PCA, int = that many components.
    ``n_jobs`` processes share the work (outer folds, else grid candidates x inner folds, and permutations).
    """
    # Parallelism comes from n_jobs processes. BLAS/OpenMP threads on top only compete with them and spin
    # while waiting: on the shared 2-core box, one thread measured ~2x faster at 5,120 x 1,280 with
    # n_jobs=2 and ~7x faster for the many tiny fits of small data sets.
    with threadpool_limits(1):
        return _evaluate(fs, head, protocol, pca, permutation, n_jobs, seed, outer_splits, inner_splits)


def _evaluate(fs: FeatureSet, head: str, protocol: str, pca: int | None | str, permutation: int, n_jobs: int,
              seed: int, outer_splits: int, inner_splits: int) -> EvalResult:
    if protocol not in PROTOCOLS:
        raise AlzmriError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    pca = default_pca(head) if pca == "default" else (int(pca) if pca else None)
    check_finite(fs)
    notes: list[str] = []
    names = list(fs.class_names)
    X = np.asarray(fs.X)
    y = np.asarray(fs.y, dtype=np.int64)
    groups = np.asarray(fs.subject, dtype=object) if fs.has_subjects else None
    if protocol == "subject-cv" and groups is None:
        raise AlzmriError(f"{fs.meta.get('cache_path', 'this feature cache')}: subject-cv needs the subject of every slice; "
                          "run `alzmri subjects --data ROOT` or featurize with `--subjects auto`, then rerun")

    # ---- the partitions
    if protocol == "official":
        if fs.has_split:
            tr = np.flatnonzero(fs.split == "train")
            te = np.flatnonzero(fs.split == "test")
            unsplit = int((fs.split == "").sum())
            if unsplit:
                notes.append(f"official: {unsplit} rows have no split and are not used")
            missing = sorted(set(np.unique(y[te])) - set(np.unique(y[tr])))
            if missing:
                raise AlzmriError(f"{fs.meta.get('cache_path', 'data')}: the test split has class(es) "
                                  f"{', '.join(names[i] for i in missing)} with no training rows; add training images "
                                  "of them or use --protocol subject-cv")
        else:
            tr, te, more = holdout_split(y, groups, seed)
            notes += more
            notes.append(f"official: the data have no train/test split; held out {len(te)} rows "
                         f"({'by subject' if groups is not None else 'by slice'}, seed {seed})")
        folds = [(tr, te)]
        n_splits = 1
    else:
        g_outer = groups if protocol == "subject-cv" else None
        splitter, more = make_splitter(y, g_outer, outer_splits, seed, what=f"{protocol} folds", class_names=names)
        notes += more
        folds = _splits(splitter, X, y, g_outer)
        n_splits = len(folds)

    if groups is not None:
        spc = subjects_per_class(y, groups, names)
        small = [f"{c} ({k})" for c, k in spc.items() if k < MIN_SUBJECTS]
        if small:
            notes.append(f"few subjects in class {', '.join(small)}: fewer than {MIN_SUBJECTS}, so its per-class "
                         "metrics mean little")
    else:
        spc = None
        notes.append("subjects unknown: leakage cannot be checked and no subject-level metrics; "
                     "run `alzmri subjects --data ROOT` to infer them")

    # ---- fit and score
    inner_groups = protocol != "slice-cv"
    t0 = time.perf_counter()
    if protocol == "official":
        res = [_fold(head, X, y, groups, tr, te, pca, n_jobs, seed, inner_splits, inner_groups, names)]
        model, params = res[0]["model"], res[0]["params"]
        fit_s = res[0]["fit_s"]
    else:
        # Parallel across outer folds; each fold's grid search then runs sequentially (no oversubscription).
        outer_jobs = max(1, min(n_jobs, len(folds)))
        res = Parallel(n_jobs=outer_jobs)(
            delayed(_fold)(head, X, y, groups, a, b, pca, 1 if outer_jobs > 1 else n_jobs, seed, inner_splits,
                           inner_groups, names) for a, b in folds)
        model, params, more = select_head(head, X, y, groups if inner_groups else None, pca, n_jobs, seed, inner_splits)
        notes += more
        fit_s = time.perf_counter() - t0  # wall time of every fold's selection+fit and the final refit
    for r in res:
        notes += r["notes"]
    fold_metrics = [r["metrics"] for r in res]
    metrics, std = _aggregate(fold_metrics)
    if protocol == "official":
        std = {}
    cm = np.sum([r["cm"] for r in res], axis=0)
    scm = None if groups is None else np.sum([r["scm"] for r in res], axis=0)
    leakage = _leaked(groups, folds)
    if leakage:
        total = len(set(groups[np.concatenate([b for _, b in folds])]))
        notes.append(f"{protocol}: {leakage} of {total} test subjects also have slices in training: scores are "
                     "optimistic (leakage); use --protocol subject-cv for an honest estimate")

    out = EvalResult(
        head=head, protocol=protocol, class_names=names, metrics=metrics, std=std, fold_metrics=fold_metrics,
        confusion=cm, subject_confusion=scm, model=model, best_params=params,
        n_train=int(len(folds[0][0]) if protocol == "official" else len(y)),
        n_test=int(sum(len(b) for _, b in folds)), leakage=leakage, subjects_per_class=spc, pca=pca,
        n_splits=n_splits, split_seed=seed, fit_seconds=float(fit_s),
        predict_seconds=float(sum(r["pred_s"] for r in res)),
        warnings=list(dict.fromkeys(notes)), fold_inner_scores=[float(r["inner"]) for r in res],
    )
    if permutation > 0:
        scores = permutation_check(head, params, X, y, groups, folds, int(permutation), pca, seed, n_jobs)
        real = metrics["balanced_accuracy"]
        out.permutation_scores = scores
        out.chance_balanced_accuracy = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        out.permutation_p = float((np.sum(np.asarray(scores) >= real) + 1) / (len(scores) + 1))
    return out
