"""Subject-level rows: one row per person, pooled from that person's slice embeddings.

A slice head treats the 32 near-duplicate slices of one brain as 32 samples and decides a person by averaging its
slices' scores. A subject-level head sees one row per person instead, so it is trained and scored on the unit the
question is about. Poolings (over a subject's slices, per feature):

  * ``mean``       the mean (width D);
  * ``meanstd``    the mean, then the standard deviation (2D): how much a feature varies across the brain;
  * ``quantiles``  the 10th, 50th and 90th percentiles (3D): robust to a few odd slices, and it keeps the tails
                   (atrophy may show in some slices only).

The level key of a report row is ``slice`` or ``subject-<pooling>`` (``level_name``). Pooling is a pure function
of one subject's slices, so the same ``SubjectPooling`` applied at training and in ``predict`` gives the same rows.

Outer folds stay those of the slices (``classify.protocols.folds_for`` on the slice rows, mapped to subjects by
``subject_folds``), so a subject-level and a slice-level head are scored on exactly the same held-out people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from classify.protocols import Fold
from featurize.errors import DataError
from featurize.featureset import FeatureSet
from featurize.options import choose

LEVELS = ("slice", "subject")
POOLINGS = ("mean", "meanstd", "quantiles")
QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class SubjectPooling:
    """How slice embeddings become one subject row (saved in subject-level bundles; see the module docstring)."""

    pooling: str = "meanstd"
    quantiles: tuple[float, ...] = QUANTILES

    def __post_init__(self) -> None:
        choose("--pooling", self.pooling, POOLINGS)

    def width(self, n_features: int) -> int:
        """The width of a pooled row for ``n_features`` slice features."""
        return n_features * {"mean": 1, "meanstd": 2, "quantiles": len(self.quantiles)}[self.pooling]

    def pool(self, X: np.ndarray) -> np.ndarray:
        """One pooled row (1-D) from the slice rows ``X`` (n_slices x D) of one subject."""
        X = np.asarray(X, dtype=np.float64)
        if self.pooling == "mean":
            return X.mean(axis=0)
        if self.pooling == "meanstd":
            return np.concatenate([X.mean(axis=0), X.std(axis=0)])
        return np.quantile(X, self.quantiles, axis=0).reshape(-1)

    def transform(self, X: np.ndarray, groups: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Subjects in order of first appearance, and their pooled rows (n_subjects x width)."""
        groups = np.asarray(groups, dtype=object)
        subjects = np.array(list(dict.fromkeys(groups)), dtype=object)
        rows = [self.pool(np.asarray(X)[groups == s]) for s in subjects]
        return subjects, np.vstack(rows).astype(np.float32) if rows else np.zeros((0, self.width(np.shape(X)[1])))

    def describe(self) -> str:
        """``mean``, ``meanstd`` or ``quantiles10-50-90``."""
        if self.pooling != "quantiles":
            return self.pooling
        return "quantiles" + "-".join(f"{q * 100:g}" for q in self.quantiles)


def check_level(level: str) -> str:
    """``level`` when it is one of LEVELS, else AlzmriError listing them."""
    return choose("--level", level, LEVELS)


def level_name(level: str, pooling: str | SubjectPooling = "meanstd") -> str:
    """The report's ``level`` value: ``slice`` or ``subject-<pooling>``."""
    check_level(level)
    if level == "slice":
        return "slice"
    p = pooling if isinstance(pooling, SubjectPooling) else SubjectPooling(str(pooling))
    return f"subject-{p.pooling}"


def is_subject_level(level: str) -> bool:
    """True for a report ``level`` value of a subject-level head."""
    return str(level).startswith("subject")


@dataclass
class SubjectRows:
    """The subject-level view of a slice FeatureSet: ``fs`` has one row per subject (``fs.subject`` its id);
    ``inverse[i]`` is the subject row of slice row i; ``n_slices`` per subject row."""

    fs: FeatureSet
    inverse: np.ndarray
    n_slices: np.ndarray
    notes: list[str]


def _one_value(values: np.ndarray, inv: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Per subject: its value when all its slices agree, else "" (and how many disagreed)."""
    out = np.empty(n, dtype=object)
    mixed = 0
    for i in range(n):
        distinct = set(values[inv == i])
        out[i] = next(iter(distinct)) if len(distinct) == 1 else ""
        mixed += len(distinct) > 1
    return out, mixed


def subject_rows(fs: FeatureSet, pooling: SubjectPooling) -> SubjectRows:
    """Pool ``fs`` to one row per subject (label: the subject's majority slice label; split: the subject's own when
    all its slices share it, else "").  DataError when some slice has no subject."""
    if not fs.has_subjects:
        cache = fs.meta.get("cache_path", "this feature cache")
        raise DataError(f"{cache}: --level subject needs the subject of every slice; run `alzmri subjects --data ROOT` "
                        "or featurize with `--subjects auto`")
    subjects, X = pooling.transform(fs.X, fs.subject)
    index = {s: i for i, s in enumerate(subjects)}
    inv = np.array([index[s] for s in fs.subject], dtype=np.int64)
    n = len(subjects)
    n_classes = len(fs.class_names)
    y = np.array([np.bincount(fs.y[inv == i], minlength=n_classes).argmax() for i in range(n)], dtype=np.int64)
    notes = []
    mixed_labels = int(sum(len(set(fs.y[inv == i])) > 1 for i in range(n)))
    if mixed_labels:
        notes.append(f"subject level: {mixed_labels} subject(s) have slices of several classes; each takes its "
                     "majority label")
    split, mixed_split = _one_value(np.asarray(fs.split, dtype=object), inv, n)
    if mixed_split:
        notes.append(f"subject level: {mixed_split} subject(s) have slices in both the train and the test split; "
                     "they are left out of the official split")
    meta = dict(fs.meta, level=level_name("subject", pooling), subject_pooling=pooling.describe())
    out = FeatureSet(X=X, y=y, paths=subjects.copy(), split=split, subject=subjects.copy(),
                     sha1=np.array([""] * n, dtype=object), class_names=list(fs.class_names), meta=meta)
    return SubjectRows(fs=out, inverse=inv, n_slices=np.bincount(inv, minlength=n), notes=notes)


def subject_folds(folds: Sequence[Fold], inverse: np.ndarray, n_subjects: int) -> list[Fold]:
    """Slice-row folds as subject-row folds: a subject is on a side when all its slices are.

    DataError when a fold splits some subject across both sides (slice-cv): a subject row cannot be on both.
    Subjects whose slices are in neither side (rows an official split leaves out) stay out.
    """
    out = []
    for tr, te in folds:
        side = np.zeros(len(inverse), dtype=np.int8)
        side[tr], side[te] = 1, 2
        lo = np.full(n_subjects, 3, dtype=np.int8)
        hi = np.zeros(n_subjects, dtype=np.int8)
        np.minimum.at(lo, inverse, side)
        np.maximum.at(hi, inverse, side)
        if np.any((lo == 1) & (hi == 2)):
            raise DataError("--level subject needs whole subjects on one side of every fold; slice-cv splits them, "
                            "so use --protocol subject-cv or official")
        out.append((np.flatnonzero((lo == 1) & (hi == 1)), np.flatnonzero((lo == 2) & (hi == 2))))
    return out


def pool_for_predict(X: np.ndarray, subjects: Sequence[str] | np.ndarray, pooling: SubjectPooling,
                     ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled rows of new slices for a subject-level bundle: (subjects, rows, n_slices), readable slices only."""
    subjects = np.asarray(subjects, dtype=object)
    ok = np.ones(len(subjects), dtype=bool) if ok is None else np.asarray(ok, dtype=bool)
    names, rows = pooling.transform(np.asarray(X)[ok], subjects[ok])
    counts = np.array([int((subjects[ok] == s).sum()) for s in names], dtype=np.int64)
    return names, rows, counts
