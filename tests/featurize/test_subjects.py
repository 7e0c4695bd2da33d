"""Subject inference from pixels, regex subjects, the subject/leakage report and subjects.csv."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featurize import subjects as fs
from featurize.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared/data/alzheimer-mri"


def walk_vectors(n_subjects: int, per: int, d: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered rows like slice thumbnails: a shared template, a per-subject offset, a random walk across slices.

    Adjacent slices of one subject correlate ~0.99; subjects ~0.85. Rows are shuffled: files are not in subject order.
    """
    rng = np.random.default_rng(seed)
    template = rng.standard_normal(d)
    X = np.concatenate([template + 0.4 * rng.standard_normal(d)
                        + np.cumsum(0.08 * rng.standard_normal((per, d)), axis=0)
                        + 0.02 * rng.standard_normal((per, d)) for _ in range(n_subjects)])
    truth = np.repeat(np.arange(n_subjects), per)
    perm = rng.permutation(len(X))
    return X[perm].astype(np.float32), truth[perm]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b group the items identically, whatever the names."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def correlations(X: np.ndarray) -> np.ndarray:
    Z = X - X.mean(axis=1, keepdims=True)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    return Z @ Z.T


@pytest.fixture(scope="module")
def synth_slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], pd.DataFrame, np.ndarray]:
    """Synthetic MRI-like slices (4 classes x 5 subjects x 8 slices) written as PNGs, with their true subjects."""
    synth = pytest.importorskip("featurize.synth")
    images, table = synth.generate_arrays(subjects_per_class=5, slices_per_subject=8, size=(88, 104), seed=3)
    root = tmp_path_factory.mktemp("synth")
    # Interleave subjects so that row order carries no hint.
    order = np.random.default_rng(0).permutation(len(images))
    paths = []
    for n, i in enumerate(order):
        p = root / f"img{n:04d}.png"
        Image.fromarray(images[i]).save(p)
        paths.append(p)
    return paths, table.iloc[order].reset_index(drop=True), images[order]


# ------------------------------------------------------------------------------------------------ thumbnails


def test_thumbnails_standardised_and_unreadable_rows_are_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "a.jpg"
    Image.fromarray(rng.integers(0, 255, (208, 176), dtype=np.uint8)).save(good, quality=90)
    wide = tmp_path / "b16.png"  # 16-bit values above 255 must not be clipped to a flat image
    Image.fromarray((rng.integers(0, 4096, (52, 44))).astype(np.uint16)).save(wide)
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(flat)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    X = fs.thumbnails([good, wide, str(flat), junk, empty, tmp_path / "missing.png"], size=16)
    assert X.shape == (6, 256) and X.dtype == np.float32
    for row in X[:2]:
        assert abs(row.mean()) < 1e-4 and abs(row.std() - 1) < 1e-3
    assert not X[2].any()  # constant image: zeros, later a singleton subject
    assert np.isnan(X[3:]).all()


def test_thumbnails_threads_match_serial(synth_slices: tuple[list[Path], pd.DataFrame, np.ndarray]) -> None:
    paths = synth_slices[0][:20]
    np.testing.assert_array_equal(fs.thumbnails(paths, n_jobs=1), fs.thumbnails(paths, n_jobs=2))


# -------------------------------------------------------------------------------------------------- inference


def test_auto_recovers_synthetic_subjects(synth_slices: tuple[list[Path], pd.DataFrame, np.ndarray]) -> None:
    paths, table, _ = synth_slices
    X = fs.thumbnails(paths)
    inf = fs.infer_subjects(X)
    truth = table["subject"].to_numpy(dtype=object)
    assert inf.n_subjects == 20 and same_partition(inf.labels, truth)
    assert inf.labels[0] == "s0001" and list(dict.fromkeys(inf.labels))[:3] == ["s0001", "s0002", "s0003"]
    assert inf.separation >= fs.WEAK_SEPARATION and inf.method.startswith("auto")

    # The threshold sits in the gap: above every between-subject correlation, below every adjacent-slice one.
    C = correlations(X.astype(np.float64))
    same = truth[:, None] == truth[None, :]
    sl = table["slice"].to_numpy()
    adjacent = same & (np.abs(sl[:, None] - sl[None, :]) == 1)
    lo, hi = inf.gap
    assert C[~same].max() == pytest.approx(lo, abs=1e-5)
    assert C[~same].max() < lo + 1e-5 < inf.threshold < hi <= C[adjacent].min() + 1e-5


def test_auto_on_clustered_vectors_and_fixed_threshold() -> None:
    X, truth = walk_vectors(30, 12)
    inf = fs.infer_subjects(X)
    assert same_partition(inf.labels, truth) and inf.n_subjects == 30
    # More slices per subject than k: kNN lists stay inside subjects; the between-subject links still give the gap.
    few = fs.infer_subjects(X, k=3)
    assert same_partition(few.labels, truth) and few.gap[0] < few.threshold < few.gap[1]
    fixed = fs.infer_subjects(X, threshold=inf.threshold)
    assert np.array_equal(fixed.labels, inf.labels) and fixed.method == "fixed threshold"
    assert fs.infer_subjects(X, threshold=1.0).n_subjects == len(X)
    assert fs.infer_subjects(X, threshold=-1.0).n_subjects == 1


def test_outliers_and_duplicates_do_not_move_the_gap() -> None:
    X, truth = walk_vectors(20, 10, seed=1)
    rng = np.random.default_rng(5)
    X = np.concatenate([X, rng.standard_normal((2, X.shape[1])).astype(np.float32), X[:15]])  # 2 noise rows, 15 dups
    truth = np.concatenate([truth, [-1, -2], truth[:15]])
    inf = fs.infer_subjects(X)
    assert same_partition(inf.labels, truth)


def test_nan_and_blank_rows_are_singletons() -> None:
    X, truth = walk_vectors(8, 10, seed=2)
    X[[3, 40]] = np.nan
    X[55, 7] = np.nan
    X[60] = 5.0  # constant row: no pattern to compare
    inf = fs.infer_subjects(X)
    odd = [3, 40, 55, 60]
    assert len(set(inf.labels[odd])) == 4
    rest = np.setdiff1d(np.arange(len(X)), odd)
    assert not set(inf.labels[odd]) & set(inf.labels[rest])
    assert same_partition(inf.labels[rest], truth[rest]) and inf.n_subjects == 8 + 4
    all_nan = fs.infer_subjects(np.full((3, 4), np.nan))
    assert all_nan.n_subjects == 3 and list(all_nan.labels) == ["s0001", "s0002", "s0003"]


def test_chunked_equals_dense() -> None:
    X, truth = walk_vectors(12, 9, d=64, seed=4)
    dense = fs.infer_subjects(X, chunk_rows=len(X))
    for rows in (1, 7, 50):
        chunked = fs.infer_subjects(X, chunk_rows=rows)
        assert np.array_equal(chunked.labels, dense.labels)
        assert chunked.threshold == pytest.approx(dense.threshold, abs=1e-6)
    assert same_partition(dense.labels, truth)


def test_top_k_block_filter_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    S = rng.standard_normal((40, 3000)).astype(np.float32)
    S[:5, 100:140] = 9.0 + rng.random((5, 40))  # one block holding all of a row's best: many candidates
    for k in (1, 3, 5, 10, 40):
        assert 3000 // (4 * k) >= 8  # the block-max path (blocks of 128 or 75 columns), not the full sort
        idx, val = fs._top_k(S, k)
        want = np.argsort(-S, axis=1)[:, :k]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(val, np.take_along_axis(S, want, axis=1))


def test_large_n_never_builds_n_by_n() -> None:
    n = 3000
    X, truth = walk_vectors(100, 30, d=64, seed=6)
    assert len(X) == n
    tracemalloc.start()
    try:
        inf = fs.infer_subjects(X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 2, f"peak {peak / 1e6:.1f} MB: an N x N float32 would be {n * n * 4 / 1e6:.0f} MB"
    assert same_partition(inf.labels, truth)


# ------------------------------------------------------------------------------------------------------ regex


def test_subjects_from_regex() -> None:
    paths = ["train/AD/sub-01_z003.png", "test/AD/sub-01_z004.png", "train/CN/sub-22_z001.png"]
    assert list(fs.subjects_from_regex(paths, r"sub-(\d+)_")) == ["01", "01", "22"]
    assert list(fs.subjects_from_regex(paths, r"sub-\d+")) == ["sub-01", "sub-01", "sub-22"]
    with pytest.raises(DataError, match=r"train/CN/sub-22_z001\.png.*sub-0\(\\d\)"):
        fs.subjects_from_regex(paths, r"sub-0(\d)")
    with pytest.raises(DataError, match="not a valid regular expression"):
        fs.subjects_from_regex(paths, r"sub-(\d+")


# ----------------------------------------------------------------------------------------------------- report


def test_subject_report_counts_conflicts_and_leakage() -> None:
    subjects = ["a"] * 3 + ["b"] * 2 + ["c"] * 4 + ["d"] + ["e"] * 2
    labels = ["ND"] * 3 + ["MD"] * 2 + ["ND", "ND", "VMD", "ND"] + ["MD"] + ["ND"] * 2
    split = ["train", "train", "test", "test", "test", "train", "train", "train", "test", "train", "train", "train"]
    r = fs.subject_report(labels, subjects, split)
    assert (r.n_subjects, r.slices_min, r.slices_median, r.slices_max) == (5, 1, 2.0, 4)
    assert r.subjects_per_class == {"MD": 2, "ND": 3, "VMD": 1}
    assert r.conflicts == ["c"] and r.small_classes == ["MD", "ND", "VMD"]
    # train: a, c, d, e; test: a, b, c -> a and c leak.
    assert (r.leaked_subjects, r.train_subjects, r.test_subjects) == (2, 4, 3)
    text = fs.format_report(r)
    assert "WARNING" in text and "2 of 3 test subjects" in text and "--protocol subject-cv" in text
    assert "c" in text.splitlines()[-2] and "inflated" in text
    assert "different people were merged" in text.splitlines()[-2] and "--subjects column or regex:" in text

    clean = fs.subject_report(labels, subjects, ["train"] * 9 + ["test"] * 3)
    assert clean.leaked_subjects == 0 and "WARNING" not in fs.format_report(clean)
    nosplit = fs.subject_report(labels, subjects)
    assert (nosplit.leaked_subjects, nosplit.test_subjects, nosplit.train_subjects) == (0, 0, 0)
    assert fs.subject_report([], []).n_subjects == 0


def test_format_report_shows_inference_and_weak_gap() -> None:
    X, _ = walk_vectors(6, 8, seed=7)
    inf = fs.infer_subjects(X)
    rep = fs.subject_report(["x"] * len(X), inf.labels)
    text = fs.format_report(rep, inf)
    assert f"{inf.threshold:.4f}" in text and "gap" in text and "weak" not in text
    weak = fs.SubjectInference(inf.labels, 0.99, 6, (0.989, 0.991), "auto", separation=1.2)
    assert "weak" in fs.format_report(rep, weak)


# ---------------------------------------------------------------------------------------------------- CSV I/O


def test_subjects_csv_roundtrip_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "ds" / "subjects.csv"
    fs.write_subjects_csv(out, ["a/1.png", "b/2.png"], ["ND", "MD"], ["train", ""], ["s0001", "s0002"])
    df = fs.read_subjects_csv(out)
    assert list(df.columns) == list(fs.SUBJECTS_CSV_COLUMNS)
    assert df["split"].tolist() == ["train", ""] and df["sha1"].tolist() == ["", ""]
    assert df["subject"].tolist() == ["s0001", "s0002"]
    fs.write_subjects_csv(out, ["a/1.png"], ["ND"], ["test"], ["007"], sha1=["ab" * 20])
    df = fs.read_subjects_csv(out)
    assert df["subject"].tolist() == ["007"] and df["sha1"].tolist() == ["ab" * 20]  # ids stay strings
    assert [p.name for p in out.parent.iterdir()] == ["subjects.csv"]  # no temp file left behind


def test_read_subjects_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        fs.read_subjects_csv(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,ND\n")
    with pytest.raises(DataError, match=r"bad\.csv.*subject"):
        fs.read_subjects_csv(bad)


# -------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_kaggle_data_has_160_subjects_all_leaking() -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present ({SHARED_DATA})")
    files = sorted(SHARED_DATA.glob("*/*/*.jpg"))
    inf = fs.infer_subjects(fs.thumbnails(files))
    rep = fs.subject_report([f.parent.name for f in files], inf.labels, [f.parent.parent.name for f in files])
    assert (rep.n_subjects, rep.slices_min, rep.slices_max) == (160, 32, 32)
    assert rep.conflicts == [] and rep.leaked_subjects == rep.test_subjects == 160
    assert inf.gap[0] < inf.threshold < inf.gap[1] and inf.separation >= fs.WEAK_SEPARATION
