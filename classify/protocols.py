"""The evaluation protocols, shared by the heads (``classify.evaluate``) and the end-to-end CNNs (``classify.cnn``).

  * ``official``   the data's own train/test split (rows with no split are unused), or, without one, a stratified
                   ~20% hold-out with a fixed, recorded seed (group-aware when subjects are known).
  * ``subject-cv`` StratifiedGroupKFold by subject over all labelled rows.
  * ``slice-cv``   StratifiedKFold ignoring subjects: slices of one brain land on both sides (leaky), kept to
                   show how much leakage inflates scores.

``folds_for`` is the one place rows are partitioned, so heads and CNNs given the same rows and seed are scored
on exactly the same folds.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from classify.metrics import quiet_sklearn
from featurize.errors import DataError
from featurize.options import choose

PROTOCOLS = ("official", "subject-cv", "slice-cv")
OUTER_SPLITS = 5
HOLDOUT_FOLDS = 5  # no given split: hold out 1 of 5 stratified (group-aware) folds = 20%

Fold = tuple[np.ndarray, np.ndarray]


def check_protocol(protocol: str) -> str:
    """``protocol`` when it is one of PROTOCOLS, else AlzmriError (exit 2) listing them."""
    return choose("--protocol", protocol, PROTOCOLS)


def subjects_per_class(y: np.ndarray, groups: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Distinct subjects per class (class order), for classes present in ``y``."""
    return {class_names[c]: int(len(set(groups[y == c]))) for c in np.unique(y)}


def make_splitter(y: np.ndarray, groups: np.ndarray | None = None, *, n_splits: int = OUTER_SPLITS, seed: int = 0,
                  what: str = "folds", class_names: Sequence[str] | None = None
                  ) -> tuple[StratifiedKFold | StratifiedGroupKFold, list[str]]:
    """StratifiedGroupKFold by subject when ``groups`` is given, else StratifiedKFold.

    When a class has fewer samples (or subjects) than ``n_splits``, k drops to that count (min 2) and the
    returned notes say so; a class with a single subject cannot be on both sides and is flagged.
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
        raise DataError(f"cannot make {what}: only {total} {unit} in the data")
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


def splits(splitter: StratifiedKFold | StratifiedGroupKFold, y: np.ndarray, groups: np.ndarray | None) -> list[Fold]:
    """The (train, test) position arrays of ``splitter``, sorted (the splitters only look at ``y`` and ``groups``)."""
    with quiet_sklearn():
        return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros((len(y), 1)), y, groups)]


def thin_per_subject(groups: np.ndarray, k: int) -> np.ndarray:
    """Sorted row positions keeping at most ``k`` rows of each subject, evenly spaced through its rows (in their
    order, so through the scan's slices), deterministic; every row of a subject with ``k`` rows or fewer."""
    groups = np.asarray(groups, dtype=object)
    keep: list[np.ndarray] = []
    for g in dict.fromkeys(groups.tolist()):
        rows = np.flatnonzero(groups == g)
        if len(rows) > k:
            rows = rows[np.unique(np.linspace(0, len(rows) - 1, k).round().astype(int))]
        keep.append(rows)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def holdout_split(y: np.ndarray, groups: np.ndarray | None, *, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A stratified ~20% hold-out (group-aware when ``groups`` is given) whose training part covers every
    class of its test part: the first such of 5 folds under ``seed``."""
    splitter, notes = make_splitter(y, groups, n_splits=HOLDOUT_FOLDS, seed=seed, what="hold-out")
    folds = splits(splitter, y, groups)
    for tr, te in folds:
        if set(np.unique(y[te])) <= set(np.unique(y[tr])):
            return tr, te, notes
    return folds[0][0], folds[0][1], notes


def has_split(split: np.ndarray | None) -> bool:
    """True when ``split`` marks both training and test rows (else ``official`` holds rows out itself)."""
    return split is not None and bool(np.any(split == "train")) and bool(np.any(split == "test"))


def folds_for(protocol: str, *, y: np.ndarray, groups: np.ndarray | None, split: np.ndarray | None, seed: int,
              n_splits: int = OUTER_SPLITS, class_names: Sequence[str] | None = None,
              source: str = "the data") -> tuple[list[Fold], list[str]]:
    """The (train, test) row positions of ``protocol`` over labels ``y``, and notes on what was done.

    ``groups`` are the subjects (None when unknown), ``split`` the rows' given "train"/"test"/"" marks (None when
    the data have none), ``n_splits`` the folds of the cv protocols. ``source`` names the data in errors.
    DataError (exit 3) for subject-cv without subjects and for a test split with a class that has no training rows.
    """
    check_protocol(protocol)
    y = np.asarray(y)
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(y.max(initial=0)) + 1)]
    notes: list[str] = []
    if protocol == "subject-cv" and groups is None:
        raise DataError(f"{source}: subject-cv needs subjects (the subject of every slice); run `alzmri subjects "
                        "--data ROOT`, or pass `--subjects auto` to featurize or baseline, then rerun")
    if protocol != "official":
        g_outer = groups if protocol == "subject-cv" else None
        splitter, more = make_splitter(y, g_outer, n_splits=n_splits, seed=seed, what=f"{protocol} folds",
                                       class_names=names)
        return splits(splitter, y, g_outer), notes + more
    if has_split(split):
        split = np.asarray(split)
        tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        unsplit = int((split == "").sum())
        if unsplit:
            notes.append(f"official: {unsplit} rows have no split and are not used")
        missing = sorted(set(np.unique(y[te])) - set(np.unique(y[tr])))
        if missing:
            raise DataError(f"{source}: the test split has class(es) {', '.join(names[i] for i in missing)} with no "
                            "training rows; add training images of them or use --protocol subject-cv")
        return [(tr, te)], notes
    tr, te, more = holdout_split(y, groups, seed=seed)
    notes += more
    notes.append(f"official: the data have no train/test split; held out {len(te)} rows "
                 f"({'by subject' if groups is not None else 'by slice'}, seed {seed})")
    return [(tr, te)], notes


def leaked(groups: np.ndarray | None, folds: Sequence[Fold]) -> int | None:
    """How many subjects have slices on both sides of some fold (None when subjects are unknown)."""
    if groups is None:
        return None
    both: set[str] = set()
    for tr, te in folds:
        both |= set(groups[te]) & set(groups[tr])
    return len(both)


def aggregate(fold_metrics: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std over folds of every metric, NaN-aware (a class never tested stays NaN)."""
    keys = list(dict.fromkeys(k for f in fold_metrics for k in f))
    mean, std = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a class never tested) stay NaN
        for k in keys:
            v = np.array([f.get(k, np.nan) for f in fold_metrics], dtype=float)
            mean[k] = float(np.nanmean(v))
            std[k] = float(np.nanstd(v))
    return mean, std
