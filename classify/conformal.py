"""Conformal prediction sets per subject (``classify --conformal LEVEL``; ``predict`` applies a bundle's).

Slices of one person are near-duplicates, so they are not exchangeable; subjects are. Everything here is
therefore done per subject: a subject's probabilities are the mean of its slices' (``metrics.subject_level``),
and its nonconformity score is ``1 - p(true stage)`` (the "LAC" score of Sadinle et al. 2019, the one that gives
the smallest sets on average).

Split conformal inside the training part only: its subjects are split (stratified, by subject) into a proper
training part (2/3), on which a clone of the selected (and possibly calibrated) head is fitted, and calibration
subjects (1/3), whose scores give the threshold ``q`` = the ceil((n+1) * level)-th smallest of the n scores. A new
subject's set is every stage k with ``1 - p_k <= q``. If subjects are exchangeable, the set holds the true stage
with probability >= level (and < level + 1/(n+1)), whatever the head. Sets may be empty (no stage is plausible
enough) or hold every stage (n too small for the level: then ``q`` is infinite).

Why not MAPIE: MAPIE 1.6 (``SplitConformalClassifier``, ``CrossConformalClassifier``) scores one row per sample.
Its ``groups`` argument only steers the cross-validation splitter; the conformity scores are still one per slice,
which is the non-exchangeable unit this module must avoid. Calibrating by subject would mean wrapping the head in
an estimator whose "rows" are subjects, and at that point MAPIE only computes the quantile below (a few lines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featurize.errors import AlzmriError

REPORT_LEVELS = (0.8, 0.9, 0.95)
CALIBRATION_SHARE = 3  # 1 of 3 stratified subject folds of the training part calibrates


def check_level(level: float | None) -> float | None:
    """``level`` as a float in (0, 1), None for off; AlzmriError (exit 2) otherwise."""
    if level is None:
        return None
    try:
        v = float(level)
    except (TypeError, ValueError):
        raise AlzmriError(f"--conformal must be a coverage level between 0 and 1 (e.g. 0.90), got {level!r}") from None
    if not 0.0 < v < 1.0:
        raise AlzmriError(f"--conformal must be a coverage level between 0 and 1 (e.g. 0.90), got {level!r}")
    return v


def level_tag(level: float) -> str:
    """Column suffix of a level: 0.9 -> "90", 0.975 -> "97.5"."""
    return f"{round(level * 100, 4):g}"


def conformal_threshold(scores: np.ndarray, level: float) -> float:
    """The split-conformal threshold: the ceil((n+1) * level)-th smallest score (inf when that exceeds n)."""
    s = np.sort(np.asarray(scores, dtype=float))
    k = math.ceil((len(s) + 1) * level - 1e-9)  # 1e-9: (n+1)*level that is an integer must not round up
    return float("inf") if k > len(s) else float(s[k - 1])


def prediction_sets(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (n, K): stage k is in row i's set when ``1 - proba[i, k] <= threshold``."""
    return (1.0 - np.asarray(proba, dtype=float)) <= threshold + 1e-12


def coverage_and_size(sets: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Share of rows whose set holds their label, and the mean set size."""
    y = np.asarray(y, dtype=int)
    return float(sets[np.arange(len(y)), y].mean()), float(sets.sum(axis=1).mean())


@dataclass
class ConformalPredictor:
    """A head fitted on the proper training subjects, and the calibration subjects' sorted LAC scores.

    ``threshold(level)`` works for any level, so one calibration serves the report's levels and the chosen one.
    """

    level: float
    model: Any
    scores: np.ndarray
    n_classes: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_calibration(self) -> int:
        """Calibration subjects."""
        return int(len(self.scores))

    def threshold(self, level: float | None = None) -> float:
        """Nonconformity threshold at ``level`` (default: the chosen level)."""
        return conformal_threshold(self.scores, self.level if level is None else level)

    def subject_proba(self, X: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Subjects (first-seen order) and their mean slice probabilities under the conformal head."""
        from classify.metrics import predict_scores, quiet_sklearn

        with quiet_sklearn():
            p = predict_scores(self.model, X, self.n_classes)
        subj, first, inv = np.unique(np.asarray(groups, dtype=object), return_index=True, return_inverse=True)
        sums = np.zeros((len(subj), self.n_classes))
        np.add.at(sums, inv, p)
        order = np.argsort(first)
        return subj[order], (sums / np.bincount(inv)[:, None])[order]

    def sets(self, subject_proba: np.ndarray, level: float | None = None) -> np.ndarray:
        """Boolean (n_subjects, K) prediction sets at ``level``."""
        return prediction_sets(subject_proba, self.threshold(level))


def _subject_labels(y: np.ndarray, groups: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    return np.array([np.bincount(y[groups == s]).argmax() for s in subjects])


def fit_conformal(model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, level: float, n_classes: int,
                  seed: int = 0) -> ConformalPredictor:
    """Split (X, y) by subject into proper-training and calibration subjects, fit a clone of ``model`` on the former,
    and keep the calibration subjects' scores. ``groups`` are the subjects (required)."""
    from classify.calibration import refit_like
    from classify.protocols import make_splitter, splits

    y = np.asarray(y, dtype=int)
    groups = np.asarray(groups, dtype=object)
    splitter, notes = make_splitter(y, groups, n_splits=CALIBRATION_SHARE, seed=seed + 2, what="conformal calibration split")
    proper, cal = splits(splitter, y, groups)[0]
    head = refit_like(model, X[proper], y[proper], groups[proper], seed=seed)
    cp = ConformalPredictor(level=level, model=head, scores=np.array([]), n_classes=n_classes, notes=notes)
    subj, p = cp.subject_proba(X[cal], groups[cal])
    ys = _subject_labels(y[cal], groups[cal], subj)
    cp.scores = np.sort(1.0 - p[np.arange(len(ys)), ys])
    if math.ceil((cp.n_calibration + 1) * level) > cp.n_calibration:
        cp.notes.append(f"conformal: {cp.n_calibration} calibration subjects are too few for level {level:g}; "
                        "every set holds every stage")
    return cp


def evaluate_sets(cp: ConformalPredictor, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                  levels: tuple[float, ...] | None = None) -> dict[str, float]:
    """``coverage_<tag>`` and ``set_size_<tag>`` of the test subjects at each level (the report's and the chosen)."""
    y = np.asarray(y, dtype=int)
    groups = np.asarray(groups, dtype=object)
    subj, p = cp.subject_proba(X, groups)
    ys = _subject_labels(y, groups, subj)
    out: dict[str, float] = {}
    for lv in sorted(set(levels or REPORT_LEVELS) | {cp.level}):
        cov, size = coverage_and_size(cp.sets(p, lv), ys)
        out[f"coverage_{level_tag(lv)}"] = cov
        out[f"set_size_{level_tag(lv)}"] = size
    return out


def require_subjects(level: float | None, groups: np.ndarray | None) -> None:
    """AlzmriError when a conformal level is asked for but the subjects are unknown."""
    if level and groups is None:
        raise AlzmriError("--conformal calibrates by subject and needs the subject of every slice; run `alzmri subjects "
                          "--data ROOT` or featurize with `--subjects auto`")


def conformal_fold(model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fold: tuple[np.ndarray, np.ndarray],
                   *, level: float, n_classes: int, seed: int = 0) -> tuple[dict[str, float], ConformalPredictor]:
    """Calibrate on the fold's training subjects, measure coverage and set size on its test subjects."""
    require_subjects(level, groups)
    tr, te = fold
    cp = fit_conformal(model, X[tr], y[tr], groups[tr], level=level, n_classes=n_classes, seed=seed)
    return evaluate_sets(cp, X[te], y[te], groups[te]), cp


def set_labels(sets: np.ndarray, class_names: list[str]) -> list[str]:
    """Each row's set as "A|B" ("" for an empty set)."""
    return ["|".join(c for c, inside in zip(class_names, row) if inside) for row in np.asarray(sets, dtype=bool)]



def bundle_sets(bundle: Any, subjects: Any, table: Any, X: np.ndarray, ok: np.ndarray, log: Any) -> Any:
    """``predict`` with a bundle that has a conformal predictor: add each subject's ``set_<level>`` column (its
    stages, "|"-joined) to the ``subjects`` table (from ``--by-subject``); say how to get them without it."""
    cp = getattr(bundle, "conformal", None)
    if cp is None:
        return subjects
    if subjects is None:
        log(f"this model gives per-subject prediction sets at level {cp.level:g}: pass --by-subject to see them")
        return subjects
    if not len(subjects) or not np.any(ok):
        return subjects
    subj, p = cp.subject_proba(X[ok], table["subject"].to_numpy(dtype=object)[ok])
    labels = dict(zip(subj, set_labels(cp.sets(p), list(bundle.class_names))))
    subjects[f"set_{level_tag(cp.level)}"] = [labels.get(s, "") for s in subjects["subject"]]
    return subjects
