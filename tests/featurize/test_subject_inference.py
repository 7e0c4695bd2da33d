"""Subject inference prefers "cannot tell" to a wrong answer: one test per regime (dense, sparse contiguous,
scattered), the link guard itself, the refusal through `--subjects infer|auto` and `alzmri subjects`, and the real
data's old failure cases."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featurize import subject_inference as si
from featurize import subjects as fs
from featurize.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data" / "alzheimer-mri"
SIZE = (64, 76)  # small synthetic slices: thumbnails are 32 x 32 anyway


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b group the items identically, whatever the names."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def synthetic(subjects_per_class: int, slices: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    synth = pytest.importorskip("featurize.synth")
    return synth.generate_arrays(subjects_per_class=subjects_per_class, slices_per_subject=slices, size=SIZE, seed=seed)


def shuffled(images: np.ndarray, table: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(images))  # files are not in subject order
    return images[order], table.iloc[order].reset_index(drop=True)


@pytest.fixture(scope="module")
def scans() -> tuple[np.ndarray, pd.DataFrame]:
    """40 synthetic subjects of 24 adjacent slices each."""
    return synthetic(10, 24, seed=3)


def keep_scattered(table: pd.DataFrame, per: int, seed: int) -> np.ndarray:
    """Rows of ``per`` random slices of each subject, never two adjacent ones when per == 2."""
    rng = np.random.default_rng(seed)
    keep = []
    for s in table["subject"].unique():
        rows = np.flatnonzero(table["subject"].to_numpy() == s)
        pick = np.sort(rng.choice(rows, per, replace=False))
        while per == 2 and pick[1] - pick[0] < 2:
            pick = np.sort(rng.choice(rows, per, replace=False))
        keep += list(pick)
    return np.array(keep)


@pytest.fixture(scope="module")
def scattered(scans: tuple[np.ndarray, pd.DataFrame]) -> tuple[np.ndarray, pd.DataFrame]:
    """2 non-adjacent slices of each of the 40 subjects: no near-duplicates at all."""
    images, table = scans
    keep = keep_scattered(table, 2, seed=1)
    return shuffled(images[keep], table.iloc[keep].reset_index(drop=True))


# ------------------------------------------------------------------------------------------------- regimes


def test_dense_subjects_are_recovered_exactly() -> None:
    images, table = shuffled(*synthetic(4, 16, seed=1))  # 16 subjects x 16 adjacent slices
    inf = si.infer_subjects(fs.thumbnails_from_arrays(images))
    assert same_partition(inf.labels, table["subject"].to_numpy()) and inf.n_subjects == 16
    assert inf.coverage == 1.0 and inf.undetermined == "" and inf.separation >= si.WEAK_SEPARATION
    # The threshold never sits far below what adjacent slices look like here.
    assert si._to_t(np.array(inf.threshold)) >= si._to_t(np.array(inf.adjacent)) - si.ADJACENT_SPREAD - 1e-9


@pytest.mark.parametrize("slices", [2, 3])
def test_sparse_contiguous_subjects_are_recovered_exactly(slices: int) -> None:
    # 60 subjects with only 2 or 3 adjacent slices each: few per person, but every slice has a near-duplicate.
    images, table = shuffled(*synthetic(15, slices, seed=2))
    inf = si.infer_subjects(fs.thumbnails_from_arrays(images))
    assert same_partition(inf.labels, table["subject"].to_numpy()) and inf.n_subjects == 60
    assert inf.coverage == 1.0 and not inf.undetermined


def test_scattered_slices_are_refused_not_guessed(scattered: tuple[np.ndarray, pd.DataFrame]) -> None:
    images, _ = scattered
    X = fs.thumbnails_from_arrays(images)
    with pytest.raises(si.SubjectsUndetermined) as err:
        si.infer_subjects(X)
    msg = str(err.value)
    assert isinstance(err.value, DataError) and err.value.exit_code == 3 and "\n" not in msg
    assert "--subjects column" in msg and "--subjects regex:PATTERN" in msg
    assert err.value.inference.undetermined and err.value.inference is not None
    soft = si.infer_subjects(X, strict=False)
    assert soft.undetermined == err.value.inference.undetermined
    # a fixed threshold is the user's own call: never refused
    assert si.infer_subjects(X, threshold=0.99).undetermined == ""


def test_scattered_with_near_duplicates_everywhere_but_no_gap_is_refused(scans: tuple[np.ndarray, pd.DataFrame]) -> None:
    # 8 random slices of 24: almost every slice still has a supported link (to a slice 1-2 levels away), but the
    # links do not reach across each scan, and no gap separates them from links between people.
    images, table = scans
    keep = keep_scattered(table, 8, seed=0)
    inf = si.infer_subjects(fs.thumbnails_from_arrays(images[keep]), strict=False)
    assert inf.coverage >= si.MIN_COVERAGE and inf.separation < si.WEAK_SEPARATION
    assert inf.n_subjects > 40  # what would have been said without the refusal: scans cut into pieces
    assert "no clear gap" in inf.undetermined and "--subjects regex:PATTERN" in inf.undetermined


# ------------------------------------------------------------------------------------------------ the guard


def test_a_link_must_be_mutual_and_stand_out_from_the_background() -> None:
    # 12 rows, 10 neighbours each, all at correlation 0.95 (the background) except three links:
    #   2 <-> 3 at 0.9995 both ways: a near-duplicate pair, supported;
    #   0 <-> 1 at 0.96 both ways: the best link of each, but barely above the background (two people at one level);
    #   4 -> 5 at 0.9995, but 4 is not among 5's neighbours: not mutual, so no merge on 4's word alone.
    n, k = 12, 10
    drop = {i: (4 if i == 5 else (10 if i == 11 else 11)) for i in range(n)}
    idx = np.array([[j for j in range(n) if j not in (i, drop[i])] for i in range(n)])
    sim = np.full((n, k), 0.95)
    for a, b, s in [(2, 3, 0.9995), (3, 2, 0.9995), (0, 1, 0.96), (1, 0, 0.96), (4, 5, 0.9995)]:
        sim[a, list(idx[a]).index(b)] = s
    order = np.argsort(-sim, axis=1, kind="stable")  # best first, as knn_graph returns them
    idx, sim = np.take_along_axis(idx, order, 1), np.take_along_axis(sim, order, 1)
    sup = si.supported_links(idx, sim)
    link = {(i, int(j)): bool(sup[i, c]) for i in range(n) for c, j in enumerate(idx[i])}
    assert link[(2, 3)] and link[(3, 2)]
    assert not link[(0, 1)] and not link[(1, 0)]
    assert not link[(4, 5)]
    assert sup.sum() == 2


# ---------------------------------------------------------------------------------------------- resolution


@pytest.fixture()
def scattered_root(tmp_path: Path, scattered: tuple[np.ndarray, pd.DataFrame]) -> Path:
    images, table = scattered
    root = tmp_path / "data"
    for n, (img, label) in enumerate(zip(images, table["label"])):
        folder = root / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"slice{n:03d}.png")
    return root


def test_infer_refuses_with_exit_3_and_auto_goes_on_without_subjects(scattered_root: Path, tmp_path: Path) -> None:
    from featurize.dataset import scan
    from featurize.grouping import resolve_subjects, subjects_csv_path

    ds = scan(scattered_root)
    art = tmp_path / "artifacts"
    with pytest.raises(DataError) as err:
        resolve_subjects(ds, "infer", artifacts=art)
    assert err.value.exit_code == 3 and str(scattered_root) in str(err.value) and "regex:PATTERN" in str(err.value)
    said: list[str] = []
    subjects = resolve_subjects(ds, "auto", artifacts=art, log=said.append)
    # exactly what --subjects none gives: no subjects, not one group per slice
    assert list(subjects) == list(resolve_subjects(ds, "none")) == [""] * len(ds.table)
    refusal = [s for s in said if "cannot infer subjects" in s]
    assert len(refusal) == 1 and "\n" not in refusal[0]
    assert "subject-cv will need them" in refusal[0] and "--subjects column" in refusal[0]
    assert not subjects_csv_path(ds.dataset_id, art).exists()  # nothing cached that a later run could reuse


def test_cli_subjects_and_featurize_infer_exit_3(scattered_root: Path, tmp_path: Path) -> None:
    for cmd in (["subjects", "--data", str(scattered_root)],
                ["featurize", "--data", str(scattered_root), "--subjects", "infer", "--no-progress"]):
        res = subprocess.run([sys.executable, "cli.py", *cmd, "--artifacts", str(tmp_path / "art")], cwd=ROOT, check=False,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 3, (cmd, res.stderr[-2000:])
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and "cannot infer subjects" in errors[0] and "regex:PATTERN" in errors[0], lines


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def real() -> tuple[list[Path], np.ndarray, np.ndarray]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present ({SHARED_DATA})")
    files = sorted(SHARED_DATA.glob("*/*/*.jpg"))
    X = fs.thumbnails(files)
    truth = np.asarray(si.infer_subjects(X).labels, dtype=str)
    assert set(pd.Series(truth).value_counts()) == {32} and len(set(truth)) == 160
    return files, X, truth


def test_real_subsets_contiguous_recovered_scattered_and_old_failures_refused(
        real: tuple[list[Path], np.ndarray, np.ndarray]) -> None:
    files, X, truth = real
    # Contiguous: 3 adjacent slices per subject: a random slice and its 2 most similar slices of the same subject
    # (its neighbours in the scan; file names do not give the slice order in the train folder).
    rng = np.random.default_rng(0)
    Z = X - X.mean(axis=1, keepdims=True)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    keep = []
    for s in np.unique(truth):
        rows = np.flatnonzero(truth == s)
        seed_row = rows[rng.integers(len(rows))]
        keep += list(rows[np.argsort(-(Z[rows] @ Z[seed_row]))[:3]])  # itself and its two adjacent slices
    keep = np.array(keep)
    inf = si.infer_subjects(X[keep])
    assert same_partition(inf.labels, truth[keep]) and inf.n_subjects == 160
    # The case: the first 100 slices by name of each train class, 352 slices of 160 people.
    first = [i for c in sorted({f.parent.name for f in files})
             for i in sorted((i for i, f in enumerate(files) if f.parent == SHARED_DATA / "train" / c),
                             key=lambda i: files[i].name)[:100]]
    assert len(first) == 352
    for rows in (np.array(first), np.sort(rng.choice(len(files), 48, replace=False))):
        with pytest.raises(si.SubjectsUndetermined):
            si.infer_subjects(X[rows])
    assert math.isfinite(inf.coverage) and inf.coverage == 1.0
