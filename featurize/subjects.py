"""Infer which slices come from the same person, and report how subjects sit across classes and a train/test split.

Slices of one scan are near-duplicates: on the Kaggle Alzheimer MRI data adjacent slices of one subject correlate
~0.99 after per-image standardisation, different subjects clearly less. Linking each slice to its nearest
neighbours and keeping only the strong links recovers the subjects, because a scan's slices chain together level
by level even though its top and bottom slices look nothing alike. Knowing the subjects exposes a slice-level
train/test split that puts one person on both sides, which inflates the score.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from featurize.errors import DataError

SUBJECTS_CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "subject", "sha1")
SMALL_CLASS_SUBJECTS = 5
# Below this, the chosen gap barely beats the next one (real data: 12x at 32 px thumbnails, 1.6x at 16 px, which fails).
WEAK_SEPARATION = 3.0
# Similarities are compared as t = -log(1 - s): it spreads the crowded values near 1 (0.99 vs 0.999 is as telling
# a difference as 0.9 vs 0.99). The clip keeps exact duplicates (s = 1) finite.
_S_MAX = 1.0 - 1e-6
# Rows of one similarity chunk: ~4 MB of float32 for a few thousand rows, never an N x N matrix; at least 256 rows,
# because every chunk streams all of X through the matrix product (100k rows: 100 MB per chunk).
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ROWS_MIN, _CHUNK_ROWS_MAX = 256, 4096
# Column block width for the block-max top-k pre-filter (see _top_k).
_BLOCK = 128


# --------------------------------------------------------------------------------------------------- thumbnails


def _thumbnail(path: str | os.PathLike[str], size: int) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # DCT-domain downscaling: decodes at 1/2..1/8 scale, most of the speed on big JPEGs.
                im.draft("L", (size, size))
            # 16-bit and float scans would be clipped by convert("L"); we standardise anyway, so keep full range.
            im = im.convert("F") if im.mode in ("I", "F") or im.mode.startswith("I;16") else im.convert("L")
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(im, dtype=np.float32).reshape(-1)
    except Exception:  # noqa: BLE001 - any undecodable file is just a NaN row; the caller decides what it means
        return None
    if not np.isfinite(arr).all():
        return None
    return _standardise(arr)


def _standardise(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32) - np.float32(arr.mean(dtype=np.float64))
    sd = float(np.sqrt(np.mean(arr.astype(np.float64) ** 2)))
    # A constant image has no pattern to compare: a zero row, which infer_subjects leaves as its own subject.
    return arr / np.float32(sd) if sd > 1e-6 else np.zeros_like(arr)


def thumbnails(paths: Sequence[str | Path], size: int = 32, n_jobs: int = 2) -> np.ndarray:
    """Grayscale ``size`` x ``size`` thumbnails, each standardised to zero mean and unit std: float32 (N, size*size).

    Files that cannot be decoded give rows of NaN. Decoding runs on ``n_jobs`` threads (PIL releases the GIL).
    """
    if size < 2:
        raise ValueError(f"thumbnail size must be >= 2, not {size}")
    out = np.full((len(paths), size * size), np.nan, dtype=np.float32)
    if not len(paths):
        return out

    def work(i: int) -> None:
        row = _thumbnail(paths[i], size)
        if row is not None:
            out[i] = row

    if n_jobs <= 1:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            # list() re-raises any unexpected error from a worker instead of dropping it.
            list(pool.map(work, range(len(paths)), chunksize=64))
    return out


def thumbnails_from_arrays(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Same as :func:`thumbnails` for in-memory grayscale images (N, H, W) of any numeric dtype."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), not shape {images.shape}")
    out = np.full((len(images), size * size), np.nan, dtype=np.float32)
    for i, img in enumerate(images):
        if not np.isfinite(img).all():
            continue
        im = Image.fromarray(img.astype(np.float32)).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        out[i] = _standardise(np.asarray(im, dtype=np.float32).reshape(-1))
    return out


# ----------------------------------------------------------------------------------------------- nearest neighbours


def _unit_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred, L2-normalised float32 rows (so a dot product is Pearson correlation) and the mask of usable rows."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (N, D), not shape {X.shape}")
    ok = np.isfinite(X).all(axis=1)
    Z = np.zeros_like(X)
    Z[ok] = X[ok] - X[ok].mean(axis=1, keepdims=True)
    norm = np.linalg.norm(Z, axis=1)
    ok &= norm > 1e-6 * math.sqrt(max(X.shape[1], 1))
    Z[ok] /= norm[ok, None]
    Z[~ok] = 0.0
    return Z, ok


def _chunk_rows(n: int) -> int:
    return int(min(max(_CHUNK_ELEMENTS // max(n, 1), _CHUNK_ROWS_MIN), _CHUNK_ROWS_MAX))


def _top_k(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest entries per row of S, best first.

    A full argpartition of every row costs more than the matrix product itself at 100k columns. Instead: the k-th
    largest of the per-block maxima is a lower bound on each row's k-th largest value, so only the few blocks whose
    maximum reaches it need to be looked at.
    """
    n, m = S.shape
    block = min(_BLOCK, m // (4 * k))
    if block < 8:  # few columns: the chunk is tiny, sort it outright
        idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(S, idx, axis=1)
    starts = np.arange(0, m, block)
    bmax = np.maximum.reduceat(S, starts, axis=1)  # no copy of S, the last block may be short
    tau = np.partition(bmax, bmax.shape[1] - k, axis=1)[:, bmax.shape[1] - k]
    rb, cb = np.nonzero(bmax >= tau[:, None])       # >= k blocks per row, each holding an entry >= tau
    cols = starts[cb, None] + np.arange(block)[None, :]
    inside = cols < m
    vals = np.where(inside, S[rb[:, None], np.minimum(cols, m - 1)], -np.inf)
    keep = vals >= tau[rb, None]
    r, c, v = np.broadcast_to(rb[:, None], cols.shape)[keep], cols[keep], vals[keep]
    order = np.lexsort((c, -v, r))                  # by row, best first; ties by column for determinism
    r, c, v = r[order], c[order], v[order]
    take = np.searchsorted(r, np.arange(n))[:, None] + np.arange(k)[None, :]
    return c[take], v[take]


def knn_graph(Z: np.ndarray, k: int, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours (by dot product) of every row of unit-norm Z, excluding itself: (idx, sim), (N, k).

    Computed ``chunk_rows`` rows at a time against all of Z, so memory stays O(chunk_rows * N), never N x N.
    """
    n = len(Z)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    step = chunk_rows or _chunk_rows(n)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for a in range(0, n, step):
        b = min(a + step, n)
        S = Z[a:b] @ Z.T
        S[np.arange(b - a), np.arange(a, b)] = -np.inf  # a slice is not its own neighbour
        idx[a:b], sim[a:b] = _top_k(S, k)
    return idx, sim


def nearest_outside(Z: np.ndarray, comp: np.ndarray, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every row of unit-norm Z, its most similar row in another component: (idx, sim), -1 / -inf if none."""
    n = len(Z)
    step = chunk_rows or _chunk_rows(n)
    idx = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, -np.inf, dtype=np.float32)
    for a in range(0, n, step):
        b = min(a + step, n)
        S = Z[a:b] @ Z.T
        S[comp[a:b, None] == comp[None, :]] = -np.inf
        j = np.argmax(S, axis=1)
        idx[a:b], sim[a:b] = j, S[np.arange(b - a), j]
    found = np.isfinite(sim)
    idx[~found] = -1
    return idx, sim


# ------------------------------------------------------------------------------------------------- inference


@dataclass
class SubjectInference:
    """Subjects inferred from pixels: one id per row, the similarity threshold used and the gap it was picked from."""

    labels: np.ndarray            # str ids "s0001"..., numbered by first appearance
    threshold: float              # keep kNN links with correlation >= threshold
    n_subjects: int
    gap: tuple[float, float]      # (similarity just below, just above) the chosen gap; (nan, nan) for a fixed threshold
    method: str
    # Chosen gap's score over the runner-up's: >= 3 is a clear split; near 1 means within- and between-subject
    # similarities overlap and subjects may be merged or split (nan for a fixed threshold).
    separation: float = math.nan


def _undirected(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """De-duplicated undirected edge list (lo < hi) from directed edges i -> j with similarity s."""
    s = s.astype(np.float64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    # i->j and j->i come from different chunks and can differ in the last bit: keep the larger.
    order = np.lexsort((-s, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], s[first]


def _merge_levels(lo: np.ndarray, hi: np.ndarray, s: np.ndarray, n: int) -> np.ndarray:
    """Similarities at which single linkage on the kNN graph merges groups: its maximum spanning forest's edges."""
    if not len(s):
        return np.zeros(0)
    # MST on 2 - s is the maximum-similarity forest; weights stay > 0 because explicit zeros mean "no edge".
    w = coo_matrix((2.0 - np.clip(s, -1.0, _S_MAX), (lo, hi)), shape=(n, n)).tocsr()
    return np.sort(2.0 - minimum_spanning_tree(w).data)[::-1]


def _to_t(s: np.ndarray) -> np.ndarray:
    return -np.log1p(-np.clip(s, -1.0, _S_MAX))


def pick_threshold(levels: np.ndarray) -> tuple[float, tuple[float, float], float]:
    """Threshold in the widest gap between within-subject and between-subject merge similarities.

    ``levels`` are single-linkage merge similarities, descending. Within-subject links (adjacent slices) are the
    large majority, so only gaps with at least half of the links above are candidates; that ignores duplicate
    images at the top. Each gap's width (in t = -log(1 - s)) is weighted by sqrt(frac_above * frac_below), so one
    odd slice or one unusual subject far below the rest cannot outscore the gap under the within-subject mode.
    Returns the threshold (middle of the gap in t), the similarities on either side of it, and the separation:
    the chosen gap's score over the runner-up's.
    """
    m = len(levels)
    if m == 0:
        return 1.0, (math.nan, math.nan), math.nan
    if m == 1 or levels[0] == levels[-1]:
        # No gap to read: everything the kNN graph links counts as one subject, the conservative choice for leakage.
        return float(levels[-1]), (math.nan, float(levels[-1])), math.nan
    t = _to_t(levels)
    i = np.arange(1, m)                       # gap between levels[i-1] (i links above) and levels[i]
    score = (t[:-1] - t[1:]) * np.sqrt(i * (m - i)) / m
    score[i < (m + 1) // 2] = -np.inf
    g = int(np.argmax(score)) + 1
    runner_up = np.partition(score, len(score) - 2)[-2] if len(score) > 1 else -np.inf
    separation = float(score[g - 1] / runner_up) if runner_up > 0 else math.inf
    t_mid = 0.5 * (t[g - 1] + t[g])
    return float(-np.expm1(-t_mid)), (float(levels[g]), float(levels[g - 1])), separation


def _components(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    g = coo_matrix((np.ones(len(lo), dtype=np.int8), (lo, hi)), shape=(n, n)).tocsr()
    return connected_components(g, directed=False)[1]


def _ids_by_first_appearance(comp: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    width = max(4, len(str(len(first))))
    names = np.array([f"s{r + 1:0{width}d}" for r in range(len(first))], dtype=object)
    return names[rank[inverse.reshape(-1)]]


def infer_subjects(X: np.ndarray, threshold: float | None = None, k: int = 10,
                   chunk_rows: int | None = None) -> SubjectInference:
    """Group rows of X (e.g. :func:`thumbnails`) into subjects: connected components of the k-nearest-neighbour
    correlation graph, keeping links with correlation >= ``threshold``.

    With ``threshold=None`` it is read from the data: the widest gap between within- and between-subject
    single-linkage merge similarities (see :func:`pick_threshold`). Rows with NaN or no variance are singletons.
    Cost: one chunked pass of X against itself, a second one when the kNN graph falls apart into pieces; memory
    O(N * (k + chunk_rows)). 100k rows of 1,024 values take a few minutes on 2 cores.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    Z, ok = _unit_rows(X)
    n = len(Z)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return SubjectInference(labels=_ids_by_first_appearance(np.arange(n)),
                                threshold=math.nan if threshold is None else float(threshold),
                                n_subjects=n, gap=(math.nan, math.nan), method="no usable rows")
    # Edges are built on positions among the usable rows, then mapped back to row numbers.
    Zv = Z[rows]
    idx, sim = knn_graph(Zv, k, chunk_rows)
    kk = idx.shape[1]
    i, j, w = np.repeat(np.arange(len(rows)), kk), idx.reshape(-1), sim.reshape(-1)
    comp = _components(i, j, len(rows))
    if comp.max() > 0:
        # When each subject has more than k slices, the kNN lists can all stay inside subjects: then no
        # between-subject similarity is seen and no gap can be read. One Boruvka round supplies them: every row's
        # best link leaving its kNN component, which is exactly a single-linkage merge of the full graph.
        jo, so = nearest_outside(Zv, comp, chunk_rows)
        has = jo >= 0
        i, j, w = np.concatenate([i, np.flatnonzero(has)]), np.concatenate([j, jo[has]]), np.concatenate([w, so[has]])
    lo, hi, s = _undirected(rows[i], rows[j], w)
    if threshold is None:
        threshold, gap, separation = pick_threshold(_merge_levels(lo, hi, s, n))
        method = f"auto: widest gap in single-linkage merge similarities of the {kk}-NN correlation graph"
    else:
        gap, method, separation = (math.nan, math.nan), "fixed threshold", math.nan
    keep = s >= threshold
    labels = _ids_by_first_appearance(_components(lo[keep], hi[keep], n))
    return SubjectInference(labels=labels, threshold=float(threshold), n_subjects=int(len(set(labels))),
                            gap=(float(gap[0]), float(gap[1])), method=method, separation=separation)


# ------------------------------------------------------------------------------------------------------ regex


def subjects_from_regex(paths: Sequence[str], pattern: str) -> np.ndarray:
    """Subject per path: the first group of ``re.search(pattern, path)``, or the whole match when it has no group."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--subjects regex:{pattern} is not a valid regular expression ({exc}); "
                        "fix the pattern") from None
    out = np.empty(len(paths), dtype=object)
    for n, p in enumerate(paths):
        text = Path(p).as_posix() if isinstance(p, os.PathLike) else str(p)
        m = rx.search(text)
        subject = (m.group(1) if rx.groups else m.group(0)) if m else None
        if not subject:
            raise DataError(f"{text}: does not match --subjects regex:{pattern} (or matches empty); "
                            "fix the pattern so that every path yields a subject id")
        out[n] = subject
    return out


# ----------------------------------------------------------------------------------------------------- report


@dataclass
class SubjectReport:
    """How slices group into subjects, per class and across a train/test split."""

    n_subjects: int
    slices_min: int
    slices_median: float
    slices_max: int
    subjects_per_class: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)      # subjects whose slices carry different labels
    small_classes: list[str] = field(default_factory=list)  # classes with fewer than SMALL_CLASS_SUBJECTS subjects
    leaked_subjects: int = 0                                # test subjects that also have slices in train
    test_subjects: int = 0
    train_subjects: int = 0


def subject_report(labels: Sequence[str], subjects: Sequence[str], split: Sequence[str] | None = None) -> SubjectReport:
    """Count subjects, slices per subject, subjects per class, label conflicts and train/test leakage."""
    if len(labels) != len(subjects) or (split is not None and len(split) != len(subjects)):
        raise ValueError("labels, subjects and split must have one entry per slice")
    df = pd.DataFrame({"label": [str(x) for x in labels], "subject": [str(x) for x in subjects],
                       "split": [""] * len(subjects) if split is None else [str(x) for x in split]})
    if df.empty:
        return SubjectReport(0, 0, 0.0, 0)
    sizes = df.groupby("subject", sort=False).size().to_numpy()
    per_class = df.groupby("label")["subject"].nunique()
    n_labels = df.groupby("subject")["label"].nunique()
    train = set(df.loc[df["split"] == "train", "subject"])
    test = set(df.loc[df["split"] == "test", "subject"])
    return SubjectReport(
        n_subjects=int(len(sizes)),
        slices_min=int(sizes.min()),
        slices_median=float(np.median(sizes)),
        slices_max=int(sizes.max()),
        subjects_per_class={str(c): int(v) for c, v in per_class.items()},
        conflicts=sorted(str(s) for s in n_labels.index[n_labels.to_numpy() > 1]),
        small_classes=[str(c) for c, v in per_class.items() if v < SMALL_CLASS_SUBJECTS],
        leaked_subjects=len(train & test),
        test_subjects=len(test),
        train_subjects=len(train),
    )


def format_report(report: SubjectReport, inference: SubjectInference | None = None, max_listed: int = 10) -> str:
    """A few human-readable lines; a loud WARNING when test subjects also appear in train."""
    r = report
    lines = [f"subjects: {r.n_subjects}, slices per subject min {r.slices_min} / median {r.slices_median:g}"
             f" / max {r.slices_max}"]
    if inference is not None:
        lo, hi = inference.gap
        gap = (f" (gap {lo:.4f} .. {hi:.4f}, separation {inference.separation:.1f}x)"
               if math.isfinite(lo) and math.isfinite(hi) else "")
        lines.append(f"inferred from pixels: correlation threshold {inference.threshold:.4f}{gap}; {inference.method}")
        if inference.separation < WEAK_SEPARATION:
            lines.append(f"warning: the similarity gap is weak (separation {inference.separation:.1f}x"
                         f" < {WEAK_SEPARATION:g}x): subjects may be merged or split; check slices per subject"
                         " or set a threshold by hand")
    if r.subjects_per_class:
        lines.append("subjects per class: " + ", ".join(f"{c} {n}" for c, n in r.subjects_per_class.items()))
    if r.test_subjects or r.train_subjects:
        lines.append(f"split: {r.train_subjects} train subjects, {r.test_subjects} test subjects, "
                     f"{r.leaked_subjects} in both")
    if r.leaked_subjects > 0:
        lines.append(f"WARNING: {r.leaked_subjects} of {r.test_subjects} test subjects also have slices in train. "
                     "This slice-level split puts one person in both train and test, so the official test score is "
                     "inflated; evaluate with --protocol subject-cv.")
    if r.conflicts:
        shown = ", ".join(r.conflicts[:max_listed]) + (" ..." if len(r.conflicts) > max_listed else "")
        lines.append(f"warning: {len(r.conflicts)} subject(s) have slices with different labels: {shown}; one scan has "
                     "one diagnosis, so inferred subjects like these usually mean that different people were merged "
                     "(few slices per person?): check `alzmri subjects`, or pass --subjects column or regex:PATTERN")
    if r.small_classes:
        lines.append(f"warning: class(es) with fewer than {SMALL_CLASS_SUBJECTS} subjects: "
                     + ", ".join(f"{c} ({r.subjects_per_class[c]})" for c in r.small_classes)
                     + "; their scores rest on very few people")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CSV I/O


def write_subjects_csv(path: Path, rel_paths: Sequence[str], labels: Sequence[str], split: Sequence[str],
                       subjects: Sequence[str], sha1: Sequence[str] | None = None) -> None:
    """Write ``path,label,split,subject,sha1`` atomically (temp file in the same folder, then os.replace)."""
    n = len(rel_paths)
    if not (len(labels) == len(split) == len(subjects) == n) or (sha1 is not None and len(sha1) != n):
        raise ValueError("rel_paths, labels, split, subjects and sha1 must have one entry per slice")
    df = pd.DataFrame({"path": list(rel_paths), "label": list(labels), "split": list(split),
                       "subject": list(subjects), "sha1": list(sha1) if sha1 is not None else [""] * n},
                      columns=list(SUBJECTS_CSV_COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_subjects_csv(path: Path) -> pd.DataFrame:
    """Read a file written by :func:`write_subjects_csv`; every column as str, empty cells as ''."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: subjects file not found; rerun with --subjects infer to create it") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the subjects file ({exc}); "
                        "delete it and rerun with --subjects infer") from None
    missing = [c for c in ("path", "subject") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: subjects file lacks column(s) {', '.join(missing)}; "
                        "delete it and rerun with --subjects infer")
    for c in SUBJECTS_CSV_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    return df
