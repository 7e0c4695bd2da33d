"""95% bootstrap intervals over subjects for the subject-level accuracy, balanced accuracy and ROC-AUC.

The people are the independent units: 32 slices of one brain are near-duplicates, so resampling slices would make
an interval look ~sqrt(32) times narrower than the data allow. Here every resample draws *subjects* (each with its
one out-of-fold decision: a subject-level head's own, or the mean of a slice head's slice scores), so duplicating a
subject's slices changes nothing.

The bootstrap is stratified by class (each class keeps its number of subjects in every resample): with 2 subjects in
the smallest class, a plain resample drops that class about one time in seven, and balanced accuracy and macro AUC
would then average over a different set of classes. Percentile interval, ``n_boot`` resamples, a fixed seed.

The interval is that of the metric on all out-of-fold decisions pooled; the report's point value is the mean over
folds, which can differ from the pooled one by a little.
"""

from __future__ import annotations

import numpy as np

from classify.metrics import rank_auc, subject_level

N_BOOT = 2000
LEVEL = 0.95
INTERVAL_METRICS = ("subject_accuracy", "subject_balanced_accuracy", "subject_roc_auc")


def bootstrap_subjects(y: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None, *, n_boot: int = N_BOOT,
                       seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Percentile intervals of subject-level accuracy, balanced accuracy and one-vs-rest macro ROC-AUC.

    ``y`` and ``scores`` (n x n_classes) are per row; ``groups`` the subject of each row (None: rows are subjects).
    Rows of one subject are first reduced to one decision (majority label, mean scores). Returns
    ``<metric>_lo``/``<metric>_hi`` for the INTERVAL_METRICS and ``interval_subjects`` (how many were resampled).
    """
    y = np.asarray(y, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if groups is not None:
        y, scores = subject_level(y, scores, np.asarray(groups, dtype=object))
    n = len(y)
    out: dict[str, float] = {f"{m}_{side}": float("nan") for m in INTERVAL_METRICS for side in ("lo", "hi")}
    out["interval_subjects"] = float(n)
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    present = np.unique(y)
    # stratified: column block c of the index matrix draws only subjects of class c
    blocks = [rng.choice(np.flatnonzero(y == c), size=(n_boot, int((y == c).sum())), replace=True) for c in present]
    idx = np.concatenate(blocks, axis=1)
    correct = (scores.argmax(axis=1) == y)[idx]
    acc = correct.mean(axis=1)
    edges = np.cumsum([0] + [b.shape[1] for b in blocks])
    bal = np.mean([correct[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=0)
    yb = y[idx]
    if len(present) >= 2:
        auc = np.mean([rank_auc(scores[idx, c], yb == c) for c in present], axis=0)
    else:
        auc = np.full(n_boot, np.nan)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    for name, values in (("subject_accuracy", acc), ("subject_balanced_accuracy", bal), ("subject_roc_auc", auc)):
        if np.isfinite(values).any():
            lo, hi = np.nanpercentile(values, q)
            out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def pooled_oof(folds: list[tuple[np.ndarray, np.ndarray]], fold_scores: list[np.ndarray], n_rows: int,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-fold scores of every tested row (rows tested in several folds, as never under the cv protocols,
    keep the last) and the mask of rows tested at all."""
    out = np.full((n_rows, n_classes), np.nan)
    for (_, te), s in zip(folds, fold_scores):
        out[te] = s
    return out, ~np.isnan(out).any(axis=1)
