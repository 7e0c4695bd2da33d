"""Infer which slices come from the same person, from pixels alone, or say that the pixels cannot tell.

Slices of one scan are near-duplicates: on the Kaggle Alzheimer MRI data adjacent slices of one subject correlate
~0.99 after per-image standardisation, different subjects clearly less. Linking each slice to its nearest
neighbours and keeping only the strong links recovers the subjects, because a scan's slices chain together level
by level even though its top and bottom slices look nothing alike. That only works when adjacent slices of one scan
are in the collection: without them the strongest links join different people at the same level of the head, and
single linkage chains everyone together. So every link must stand out from its own slices' background, and when too
few slices have such a link the answer is "cannot tell" (:class:`SubjectsUndetermined`), not a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from featurize.errors import DataError

# Similarities are compared as t = -log(1 - s): it spreads the crowded values near 1 (0.99 vs 0.999 is as telling
# a difference as 0.9 vs 0.99). The clip keeps exact duplicates (s = 1) finite.
_S_MAX = 1.0 - 1e-6
# Rows of one similarity chunk: ~4 MB of float32 for a few thousand rows, never an N x N matrix; at least 256 rows,
# because every chunk streams all of X through the matrix product (100k rows: 100 MB per chunk).
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ROWS_MIN, _CHUNK_ROWS_MAX = 256, 4096
# Gaps this close to the chosen one (in merge levels) are its pieces, not rivals, when separation is measured.
_STRAGGLERS = 2
# Column block width for the block-max top-k pre-filter (see _top_k).
_BLOCK = 128

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


# Below this, the chosen gap barely beats the next one (real data: 12x at 32 px thumbnails, 1.6x at 16 px, which fails;
# subsets of scattered slices: 1.0 - 2.1x, contiguous ones: >= 5.2x), and inference refuses.
WEAK_SEPARATION = 3.0
# A near-duplicate link must beat both of its slices' background (their k-th neighbour) by this much in t, i.e. be at
# least 2x closer in 1 - s. Real data (docs/reliability.md): adjacent slices of one scan beat it by >= 1.06 in every
# subset measured, the best links between different people by <= 0.54.
NEAR_DUPLICATE_CONTRAST = math.log(2.0)
# Which neighbour is a slice's background: past the few slices of its own scan that are near-duplicates (real data:
# the 10th is 5 slices away, where the correlation has dropped from 0.996 to 0.95), so mostly other people.
BACKGROUND_RANK = 10
# The threshold never goes below the typical supported link by more than this in t (1 - s 4x larger: about what two
# slices apart look like when slices change smoothly), whatever the widest gap says.
ADJACENT_SPREAD = math.log(4.0)
# Below this share of usable slices with a supported link, the collection has too few near-duplicates to tell people
# apart: subsets with scattered slices (most links missing) would come out as fragments or chains. Real data: 1.0 for
# adjacent slices of each person, <= 0.76 for random ones; a slice-level train split of short scans leaves a few
# slices without their neighbours (tests/test_predict.py: 25 of 28), which still leaves enough to go on.
MIN_COVERAGE = 0.85
FIX_HINT = ("name the subjects instead: --subjects column (a manifest with a subject column) "
            "or --subjects regex:PATTERN (the subject id in the file names)")


@dataclass
class SubjectInference:
    """Subjects inferred from pixels: one id per row, the similarity threshold used and the gap it was picked from.

    ``undetermined`` is empty when the pixels support an answer, else the one-line reason why they do not (then the
    labels are only the few groups the links support and must not be used as subjects).
    """

    labels: np.ndarray            # str ids "s0001"..., numbered by first appearance
    threshold: float              # keep kNN links with correlation >= threshold
    n_subjects: int
    gap: tuple[float, float]      # (similarity just below, just above) the chosen gap; (nan, nan) for a fixed threshold
    method: str
    # Chosen gap's score over the runner-up's: >= 3 is a clear split; near 1 means within- and between-subject
    # similarities overlap and subjects may be merged or split (nan for a fixed threshold).
    separation: float = math.nan
    coverage: float = math.nan    # share of usable slices with a supported near-duplicate link (nan: fixed threshold)
    adjacent: float = math.nan    # median similarity of the supported links: what adjacent slices look like here
    undetermined: str = ""


class SubjectsUndetermined(DataError):
    """The pixels cannot tell the subjects apart (too few near-duplicate slices); ``inference`` holds the evidence."""

    def __init__(self, message: str, inference: SubjectInference) -> None:
        super().__init__(message)
        self.inference = inference


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


def pick_threshold(levels: np.ndarray, *, min_above: int | None = None) -> tuple[float, tuple[float, float], float]:
    """Threshold in the widest gap between within-subject and between-subject merge similarities.

    ``levels`` are single-linkage merge similarities, descending. Only gaps with at least ``min_above`` links above
    are candidates (default: half of them, as when within-subject links are the large majority); that ignores
    duplicate images at the top. Each gap's width (in t = -log(1 - s)) is weighted by sqrt(frac_above * frac_below), so one
    odd slice or one unusual subject far below the rest cannot outscore the gap under the within-subject mode.
    Returns the threshold (middle of the gap in t), the similarities on either side of it, and the separation:
    the chosen gap's score over the best score of a gap more than :data:`_STRAGGLERS` levels away.
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
    score[i < ((m + 1) // 2 if min_above is None else min_above)] = -np.inf
    g = int(np.argmax(score)) + 1
    # The rival is the best gap elsewhere: one straggler link just above or below splits the chosen gap in two,
    # and its pieces are not a second candidate (real data: a weak adjacent pair put one at 1/3 of the gap's score).
    far = np.abs(i - g) > _STRAGGLERS
    runner_up = float(score[far].max()) if far.any() else -np.inf
    separation = float(score[g - 1] / runner_up) if runner_up > 0 else math.inf
    t_mid = 0.5 * (t[g - 1] + t[g])
    return float(-np.expm1(-t_mid)), (float(levels[g]), float(levels[g - 1])), separation


def _n_merges(lo: np.ndarray, hi: np.ndarray, n: int) -> int:
    """How many merges single linkage makes along these edges: rows they touch minus the components those form."""
    touched = np.zeros(n, dtype=bool)
    touched[lo] = touched[hi] = True
    return int(touched.sum() - len(np.unique(_components(lo, hi, n)[touched]))) if len(lo) else 0


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


def _mutual(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """For directed kNN edges i -> j: whether j -> i is an edge too (sorted int64 keys, no N x N matrix)."""
    keys = np.sort(i.astype(np.int64) * n + j)
    back = j.astype(np.int64) * n + i
    pos = np.minimum(np.searchsorted(keys, back), max(len(keys) - 1, 0))
    return keys[pos] == back if len(keys) else np.zeros(0, dtype=bool)


def supported_links(idx: np.ndarray, sim: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Mask (N, k) of the kNN edges that look like adjacent slices of one scan rather than two people at one level.

    An edge counts when it is mutual (each is among the other's k nearest) and stands out from both slices'
    background by :data:`NEAR_DUPLICATE_CONTRAST` in t. The background is the similarity of each row's
    :data:`BACKGROUND_RANK`-th neighbour (default: the last column of ``sim``). Other people at the same level of the
    head form a continuum of similar slices, so the best of them barely beats it; an adjacent slice of the same
    scan beats it by far.
    """
    n, kk = idx.shape
    if kk == 0:
        return np.zeros((n, 0), dtype=bool)
    t = _to_t(sim.astype(np.float64))
    background = t[:, -1] if background is None else _to_t(np.asarray(background, dtype=np.float64))
    i, j = np.repeat(np.arange(n), kk), idx.reshape(-1)
    contrast = t.reshape(-1) - np.maximum(background[i], background[j])
    return (_mutual(i, j, n) & (contrast >= NEAR_DUPLICATE_CONTRAST)).reshape(n, kk)


def _knn_edges(Zv: np.ndarray, k: int, chunk_rows: int | None) -> tuple[np.ndarray, ...]:
    """kNN edges (i, j, s, supported) plus one Boruvka round of best links leaving the kNN components."""
    idx, sim = knn_graph(Zv, max(k, BACKGROUND_RANK), chunk_rows)
    background = sim[:, min(BACKGROUND_RANK, sim.shape[1]) - 1] if sim.shape[1] else None
    idx, sim = idx[:, :k], sim[:, :k]
    kk = idx.shape[1]
    i, j, w = np.repeat(np.arange(len(Zv)), kk), idx.reshape(-1), sim.reshape(-1)
    sup = supported_links(idx, sim, background).reshape(-1)
    comp = _components(i, j, len(Zv))
    if comp.max() > 0:
        # When each subject has more than k slices, the kNN lists can all stay inside subjects: then no
        # between-subject similarity is seen and no gap can be read. One Boruvka round supplies them: every row's
        # best link leaving its kNN component, which is exactly a single-linkage merge of the full graph.
        jo, so = nearest_outside(Zv, comp, chunk_rows)
        has = jo >= 0
        i, j, w = np.concatenate([i, np.flatnonzero(has)]), np.concatenate([j, jo[has]]), np.concatenate([w, so[has]])
        sup = np.concatenate([sup, np.zeros(int(has.sum()), dtype=bool)])  # not mutual kNN: never a merge
    return i, j, w, sup, kk


def _undirected_supported(lo: np.ndarray, hi: np.ndarray, i: np.ndarray, j: np.ndarray, sup: np.ndarray,
                          n: int) -> np.ndarray:
    """Which de-duplicated edges (lo, hi) were a supported directed edge (either direction)."""
    a, b = np.minimum(i[sup], j[sup]), np.maximum(i[sup], j[sup])
    keys = np.unique(a.astype(np.int64) * n + b)
    want = lo.astype(np.int64) * n + hi
    pos = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    return keys[pos] == want if len(keys) else np.zeros(len(lo), dtype=bool)


def infer_subjects(X: np.ndarray, threshold: float | None = None, k: int = 10,
                   chunk_rows: int | None = None, *, strict: bool = True) -> SubjectInference:
    """Group rows of X (e.g. thumbnails) into subjects: connected components of the k-nearest-neighbour correlation
    graph, keeping links with correlation >= ``threshold``.

    With ``threshold=None`` the threshold and the links are read from the data. A link must be supported (mutual and
    well above both slices' k-th neighbour, :func:`supported_links`), and at or above the widest gap in the
    single-linkage merge similarities (:func:`pick_threshold`), which in turn may not fall more than
    :data:`ADJACENT_SPREAD` below what the supported links, the adjacent slices of this collection, look like.
    When fewer than :data:`MIN_COVERAGE` of the usable rows have a supported link, or the gap is weak (separation
    < :data:`WEAK_SEPARATION`), the pixels cannot tell people apart: ``strict`` raises :class:`SubjectsUndetermined` (exit 3), else ``undetermined`` says why.
    Rows with NaN or no variance are singletons. Cost: one chunked pass of X against itself, a second one when the
    kNN graph falls apart into pieces; memory O(N * (k + chunk_rows)). 100k rows of 1,024 values take a few minutes
    on 2 cores.
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
    i, j, w, sup, kk = _knn_edges(Z[rows], k, chunk_rows)
    lo, hi, s = _undirected(rows[i], rows[j], w)
    if threshold is not None:
        labels = _ids_by_first_appearance(_components(lo[s >= threshold], hi[s >= threshold], n))
        return SubjectInference(labels=labels, threshold=float(threshold), n_subjects=len(set(labels)),
                                gap=(math.nan, math.nan), method="fixed threshold")
    supported = _undirected_supported(lo, hi, rows[i], rows[j], sup, n)
    # Half of the merges the supported links make must lie above the gap, not half of all merges: with few
    # near-duplicates (pairs of adjacent slices, lone slices) most merges are between people.
    threshold, gap, separation = pick_threshold(_merge_levels(lo, hi, s, n),
                                                min_above=max(1, int(0.9 * _n_merges(lo[supported], hi[supported], n))))
    adjacent = math.nan
    if supported.any():
        t_adj = float(np.median(_to_t(s[supported])))
        adjacent = float(-np.expm1(-t_adj))
        # The anchor: the gap may sit inside the within-scan mode, never far below it.
        threshold = max(threshold, float(-np.expm1(-(t_adj - ADJACENT_SPREAD))))
    keep = supported & (s >= threshold)
    labels = _ids_by_first_appearance(_components(lo[keep], hi[keep], n))
    linked = np.zeros(n, dtype=bool)
    linked[lo[keep]] = linked[hi[keep]] = True
    coverage = float(linked[rows].mean())
    undetermined = ""
    if coverage < MIN_COVERAGE:
        undetermined = (f"only {linked[rows].sum()} of {len(rows)} slices ({coverage:.0%}) have a near-duplicate "
                        f"(an adjacent slice of the same scan), fewer than the {MIN_COVERAGE:.0%} needed to tell "
                        f"people apart from pixels; {FIX_HINT}")
    elif separation < WEAK_SEPARATION:
        undetermined = (f"no clear gap between adjacent-slice and between-people similarities (separation "
                        f"{separation:.1f}x < {WEAK_SEPARATION:g}x), so people cannot be told apart from pixels; "
                        f"{FIX_HINT}")
    inference = SubjectInference(
        labels=labels, threshold=float(threshold), n_subjects=len(set(labels)),
        gap=(float(gap[0]), float(gap[1])), separation=separation, coverage=coverage, adjacent=adjacent,
        undetermined=undetermined,
        method=f"auto: supported mutual links of the {kk}-NN correlation graph above the widest merge gap")
    if undetermined and strict:
        raise SubjectsUndetermined(f"cannot infer subjects: {undetermined}", inference)
    return inference
