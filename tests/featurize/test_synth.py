"""Tests for featurize.synth: determinism, Kaggle layout, near-duplicate structure, splits, reruns, class overlap."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurize import synth
from featurize.errors import DataError

TINY = dict(subjects_per_class=3, slices_per_subject=4, size=(44, 52))
NAME_RE = re.compile(r"^(nonDem|verymildDem|mildDem|moderateDem)(\d+)\.(png|jpg)$")


def _zcorr(images: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of images after per-image standardisation."""
    z = images.reshape(len(images), -1).astype(np.float64)
    z -= z.mean(axis=1, keepdims=True)
    z /= z.std(axis=1, keepdims=True)
    return z @ z.T / z.shape[1]


def _pair_masks(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks over image pairs: adjacent slices of one subject, different subjects at one level, any different subjects."""
    sub = table["subject"].to_numpy()
    sl = table["slice"].to_numpy()
    same = sub[:, None] == sub[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    adjacent = same & (np.abs(sl[:, None] - sl[None, :]) == 1) & upper
    level = ~same & (sl[:, None] == sl[None, :]) & upper
    return adjacent, level, ~same & upper


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return out, synth.write_dataset(out, **TINY)


def test_generate_arrays_shapes_and_labels() -> None:
    images, table = synth.generate_arrays(**TINY)
    assert images.shape == (48, 52, 44) and images.dtype == np.uint8
    assert list(table.columns) == ["label", "subject", "slice"]
    assert table.groupby("subject")["label"].nunique().eq(1).all()
    assert table.groupby("label")["subject"].nunique().to_dict() == {c: 3 for c in synth.CLASS_NAMES}
    assert table.groupby("subject")["slice"].apply(sorted).map(lambda s: s == [0, 1, 2, 3]).all()
    # Skull-stripped-looking images: black corners, bright tissue in the middle.
    assert images[:, :3, :3].max() == 0
    assert images[:, 20:32, 10:34].mean() > 60


def test_make_subject_and_render_slices() -> None:
    rng = np.random.default_rng(7)
    anatomy = synth.make_subject(2, rng)
    assert anatomy.stage == 2
    stack = synth.render_slices(anatomy, 3, (40, 48), rng)
    assert stack.shape == (3, 48, 40) and stack.dtype == np.uint8
    with pytest.raises(DataError):
        synth.make_subject(4, rng)


def test_generate_arrays_deterministic_and_seeded() -> None:
    a, ta = synth.generate_arrays(2, 3, (40, 48), seed=5)
    b, tb = synth.generate_arrays(2, 3, (40, 48), seed=5)
    c, _ = synth.generate_arrays(2, 3, (40, 48), seed=6)
    assert np.array_equal(a, b) and ta.equals(tb)
    assert not np.array_equal(a, c)
    # Per-subject random streams: more subjects per class leave the existing ones untouched.
    more, tmore = synth.generate_arrays(3, 3, (40, 48), seed=5)
    keep = tmore["subject"].isin(ta["subject"]).to_numpy()
    assert np.array_equal(more[keep], a)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_write_dataset_byte_identical(tmp_path: Path, fmt: str) -> None:
    first = synth.write_dataset(tmp_path / "a", **TINY, fmt=fmt)
    second = synth.write_dataset(tmp_path / "b", **TINY, fmt=fmt)
    assert first.equals(second)
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert da == db
    assert sum(k.endswith("." + fmt) for k in da) == 48


def test_layout_counts_and_truth(tiny: tuple[Path, pd.DataFrame]) -> None:
    out, truth = tiny
    assert list(truth.columns) == list(synth.TRUTH_COLUMNS)
    assert len(truth) == 48 and truth["path"].is_unique
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert on_disk == sorted(truth["path"])
    assert pd.read_csv(out / synth.TRUTH_FILE).equals(truth)
    for path, label, split in zip(truth["path"], truth["label"], truth["split"]):
        part, folder, name = path.split("/")
        assert (part, folder) == (split, label)
        m = NAME_RE.match(name)
        assert m and m.group(1) == synth.FILE_PREFIXES[synth.CLASS_NAMES.index(label)]
    # Kaggle-style numbering: 0..n-1 in every split/class folder.
    for _, grp in truth.groupby(["split", "label"]):
        numbers = sorted(int(NAME_RE.match(p.rsplit("/", 1)[1]).group(2)) for p in grp["path"])
        assert numbers == list(range(len(grp)))
    assert truth.groupby("subject")["label"].nunique().eq(1).all()
    per_class_test = truth[truth["split"] == "test"].groupby("label").size()
    assert per_class_test.to_dict() == {c: 3 for c in synth.CLASS_NAMES}  # round(12 * 0.25)
    params = json.loads((out / synth.PARAMS_FILE).read_text())
    assert params["complete"] is True and params["subjects_per_class"] == 3 and params["size"] == [44, 52]


def test_scanner_reads_layout_and_ignores_root_files(tiny: tuple[Path, pd.DataFrame]) -> None:
    from featurize.dataset import scan

    out, truth = tiny
    ds = scan(out)
    assert ds.class_names == list(synth.CLASS_NAMES)
    assert sorted(ds.table["path"]) == sorted(truth["path"])
    assert not ds.problems


def test_names_do_not_reveal_subject(tiny: tuple[Path, pd.DataFrame]) -> None:
    _, truth = tiny
    # In file-number order, a train folder's slices must not come grouped by subject.
    for _, grp in truth[truth["split"] == "train"].groupby("label"):
        numbers = grp["path"].str.extract(r"(\d+)\.\w+$", expand=False).astype(int)
        subjects = grp.assign(n=numbers).sort_values("n")["subject"].tolist()
        runs = 1 + sum(a != b for a, b in zip(subjects, subjects[1:]))
        assert runs > len(set(subjects))


def test_adjacent_slices_near_duplicates_subjects_distinct() -> None:
    images, table = synth.generate_arrays(4, 6, (88, 104), seed=0)
    corr = _zcorr(images)
    adjacent, level, between = _pair_masks(table)
    adj, lvl = corr[adjacent], corr[level]
    assert 0.97 <= np.median(adj) <= 0.995
    assert adj.min() > 0.96 and adj.max() < 0.998
    assert 0.78 <= np.median(lvl) <= 0.93
    # A clean gap: single-linkage at any threshold in between recovers the subjects exactly.
    assert corr[between].max() < adj.min() - 0.02


def test_near_duplicate_gap_holds_at_tiny_size() -> None:
    images, table = synth.generate_arrays(**TINY)
    corr = _zcorr(images)
    adjacent, _, between = _pair_masks(table)
    assert corr[between].max() < corr[adjacent].min()


def test_split_subject_keeps_subjects_whole(tmp_path: Path) -> None:
    truth = synth.write_dataset(tmp_path / "s", subjects_per_class=4, slices_per_subject=3, size=(40, 48),
                                split="subject")
    train = set(truth.loc[truth["split"] == "train", "subject"])
    test = set(truth.loc[truth["split"] == "test", "subject"])
    assert train and test and not train & test
    assert truth[truth["split"] == "test"].groupby("label")["subject"].nunique().to_dict() == {c: 1 for c in synth.CLASS_NAMES}


def test_split_slice_leaks_like_kaggle(tiny: tuple[Path, pd.DataFrame]) -> None:
    _, truth = tiny
    both = truth.groupby("subject")["split"].nunique()
    assert (both == 2).any()


def test_rerun_skips_and_conflicts(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = synth.write_dataset(out, **TINY)
    probe = out / first["path"].iloc[0]
    stamp = probe.stat().st_mtime_ns
    again = synth.write_dataset(out, **TINY)
    assert again.equals(first)
    assert probe.stat().st_mtime_ns == stamp  # not rewritten
    with pytest.raises(DataError, match="other parameters"):
        synth.write_dataset(out, **{**TINY, "subjects_per_class": 2})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="pick another"):
        synth.write_dataset(other, **TINY)


def test_interrupted_run_is_redone(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = synth.write_dataset(out, **TINY)
    marker = out / synth.PARAMS_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))
    (out / first["path"].iloc[3]).unlink()
    again = synth.write_dataset(out, **TINY)
    assert again.equals(first) and (out / first["path"].iloc[3]).is_file()
    assert json.loads(marker.read_text())["complete"] is True


@pytest.mark.parametrize("kwargs", [
    {"subjects_per_class": 0},
    {"slices_per_subject": 0},
    {"fmt": "gif"},
    {"split": "random"},
    {"test_fraction": 0.0},
    {"test_fraction": 1.0},
    {"size": (8, 8)},
    {"seed": -1},
])
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError) as err:
        synth.write_dataset(tmp_path / "x", **{**TINY, **kwargs})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_atrophy_grows_with_stage() -> None:
    images, table = synth.generate_arrays(6, 2, (64, 76), seed=0)
    labels = table["label"].to_numpy()
    centre = images[:, 23:53, 22:42]  # ventricles live here
    dark = [float((centre[labels == c] < 70).mean()) for c in synth.CLASS_NAMES]
    assert all(a < b for a, b in zip(dark, dark[1:]))


def test_linear_model_on_pixels_is_not_perfect_but_learns() -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, table = synth.generate_arrays(16, 3, (32, 38), seed=0)
    X = images.reshape(len(images), -1) / 255.0
    y = table["label"].map({c: i for i, c in enumerate(synth.CLASS_NAMES)}).to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=200))
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these fits are tiny, and worker threads only contend on a shared machine.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        grouped = cross_val_score(model, X, y, groups=table["subject"],
                                  cv=StratifiedGroupKFold(3, shuffle=True, random_state=0)).mean()
        leaky = cross_val_score(model, X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0)).mean()
    assert 0.32 < grouped < 0.9  # chance is 0.25: learnable, but classes overlap across subjects
    assert leaky > grouped + 0.2  # slice-level splits leak subjects, as on Kaggle
