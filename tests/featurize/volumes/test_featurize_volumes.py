"""featurize on 3-D scans, end to end: NIfTI, Analyze and a DICOM series in, one subject per scan, rows = scans x
views x slices, incremental reruns and resume, classify and baseline under subject-cv, predict one row per scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featurize
from featurize import run as frun
from featurize.errors import AlzmriError, DataError
from featurize.synth_volumes import write_volume_dataset
from featurize.volume_featurize import VolumeOptions
from tests.conftest import write_images
from tests.featurize.volumes.helpers import SMALL

FAST = dict(backbone="mobilenetv2", weights="none", image_size="32x32", progress=False, engine="tf")
CLASSES = ("NonDemented", "MildDemented")


def _data(tmp_path: Path, fmt: str, n: int = 3) -> tuple[Path, pd.DataFrame]:
    root = tmp_path / f"scans-{fmt}"
    truth = write_volume_dataset(root, fmt=fmt, subjects_per_class=n, classes=CLASSES, spec=SMALL)
    return root, truth


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nifti", "analyze", "dicom"])
def test_one_subject_per_scan_rows_are_scans_x_views_x_slices(tmp_path: Path, artifacts: Path, fmt: str) -> None:
    root, truth = _data(tmp_path, fmt)
    res = frun.featurize_dataset(root, volumes=VolumeOptions(views=("axial", "sagittal"), n_slices=3), **FAST)
    fs = featurize.load(res.cache)
    assert len(fs) == len(truth) * 2 * 3 == res.n_computed and not res.failed
    scans = np.array([p.split("#")[0] for p in fs.paths])
    assert len(set(scans)) == len(truth)
    # each scan is one subject, the one the files were written for (sub- label / PatientID / name)
    per_scan = pd.DataFrame({"scan": scans, "subject": fs.subject}).groupby("scan")["subject"].nunique()
    assert (per_scan == 1).all() and sorted(set(fs.subject)) == sorted(truth["subject"])
    assert fs.meta["input"] == "volumes" and fs.meta["volume_views"] == "axial,sagittal" and fs.meta["volume_slices"] == 3
    views = {p.split("#")[1].split("/")[0] for p in fs.paths}
    assert views == {"axial", "sagittal"}
    # keyed by the scan's content hash (both halves of an Analyze pair, every file of a DICOM series)
    assert all(s.split("#")[0] == s.split("#")[0][:40] and len(s.split("#")[0]) == 40 for s in fs.sha1)


@pytest.mark.tf
@pytest.mark.slow
def test_rerun_with_one_more_view_computes_only_new_rows_and_cached_rerun_reads_nothing(
        tmp_path: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, truth = _data(tmp_path, "nifti", n=2)
    first = frun.featurize_dataset(root, volumes=VolumeOptions(n_slices=3), **FAST)
    a = featurize.load(first.cache)
    more = frun.featurize_dataset(root, volumes=VolumeOptions(views=("axial", "coronal"), n_slices=3), **FAST)
    b = featurize.load(more.cache)
    assert more.n_computed == len(truth) * 3 and more.n_reused == len(truth) * 3 and len(b) == len(truth) * 6
    rows = {p: x for p, x in zip(b.paths, b.X)}
    np.testing.assert_array_equal(np.stack([rows[p] for p in a.paths]), a.X)  # old rows kept as they were

    import featurize.volumes as vols

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fully cached rerun must not read any volume")

    monkeypatch.setattr(vols, "iter_volumes", no_read)
    again = frun.featurize_dataset(root, volumes=VolumeOptions(views=("coronal", "axial"), n_slices=3), **FAST)
    assert again.n_computed == 0 and again.n_images == len(b)


@pytest.mark.tf
@pytest.mark.slow
def test_interrupted_volume_run_resumes_to_the_clean_result(tmp_path: Path, artifacts: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root, truth = _data(tmp_path, "nifti", n=2)
    opts = VolumeOptions(n_slices=4)
    clean = featurize.load(frun.featurize_dataset(root, volumes=opts, artifacts=tmp_path / "clean", batch_size=4, **FAST).cache)
    import featurize.pipeline as pipe

    real, calls = pipe.make_forward, {"n": 0}

    def flaky(model, preprocess, batch_size):  # type: ignore[no-untyped-def]
        fwd = real(model, preprocess, batch_size)

        def run(batch):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 4:  # warm-up + 2 batches, then Ctrl-C
                raise KeyboardInterrupt
            return fwd(batch)
        return run

    monkeypatch.setattr(pipe, "make_forward", flaky)
    with pytest.raises(AlzmriError, match="interrupted after 8 of 16"):
        frun.featurize_dataset(root, volumes=opts, batch_size=4, part_rows=4, **FAST)
    monkeypatch.setattr(pipe, "make_forward", real)
    resumed = frun.featurize_dataset(root, volumes=opts, batch_size=4, **FAST)
    assert resumed.n_computed == 8 and resumed.n_reused == 8
    got = featurize.load(resumed.cache)
    assert list(got.paths) == list(clean.paths)
    np.testing.assert_allclose(got.X, clean.X, atol=1e-5)


@pytest.mark.tf
@pytest.mark.slow
def test_bad_scan_is_one_failed_row_and_the_rest_is_featurized(tmp_path: Path, artifacts: Path) -> None:
    root, truth = _data(tmp_path, "nifti", n=2)
    bad = root / truth["path"][0]
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated .nii.gz
    res = frun.featurize_dataset(root, volumes=VolumeOptions(n_slices=2), **FAST)
    assert res.n_images == (len(truth) - 1) * 2
    assert [p for p, _ in res.failed] == [truth["path"][0]] and "truncated" in res.failed[0][1]
    again = frun.featurize_dataset(root, volumes=VolumeOptions(n_slices=2), **FAST)
    assert again.n_computed == 0 and len(again.failed) == 1  # the failure is remembered, like a bad image's


@pytest.mark.tf
@pytest.mark.slow
def test_classify_baseline_and_predict_on_a_volume_cache(tmp_path: Path, artifacts: Path) -> None:
    from classify.cnn import train_baseline
    from classify.predict import format_predictions, predict_paths
    from classify.run import classify_dataset

    root, truth = _data(tmp_path, "dicom", n=3)
    frun.featurize_dataset(root, volumes=VolumeOptions(n_slices=3), **FAST)
    df = classify_dataset(root, heads=["logreg"], protocol="subject-cv", artifacts=artifacts, progress=False,
                          n_jobs=1, log=lambda s: None)
    row = df.iloc[0]
    assert row["protocol"] == "subject-cv" and row["n_train"] == len(truth) * 3
    assert isinstance(row["subject_balanced_accuracy"], float)  # subjects known: scored per subject too
    base = train_baseline(root, model="scratch", image_size="32x32", epochs=1, protocol="subject-cv", folds=2,
                          volumes=VolumeOptions(n_slices=3), artifacts=artifacts, progress=False)
    assert base.row["protocol"] == "subject-cv" and base.row["n_train"] == len(truth) * 3 and not base.failed
    # predict: a DICOM folder and the .keras model too, one row per scan, the slices in the JSON
    folders = [str(root / p) for p in truth["path"][:2]]
    for model in (df.attrs["bundles"][0], base.model_path):
        table, _ = predict_paths(model, folders)
        assert len(table) == 2 and list(table["n_slices"]) == [3, 3] and (table["error"] == "").all()
        assert set(table["predicted"]) <= set(CLASSES) and list(table["subject"]) == list(truth["subject"][:2])
        p = table[[f"p_{c}" for c in CLASSES]].to_numpy()
        slice_mean = np.array([[np.mean([s[f"p_{c}"] for s in sl]) for c in CLASSES] for sl in table["slices"]])
        np.testing.assert_allclose(p, slice_mean, atol=2e-4)  # the scan's decision: the mean of its slices
        assert '"slices"' in format_predictions(table, "json") and "slices" not in format_predictions(table, "table").split()


def test_mixed_images_and_volumes_are_refused_in_one_line(tmp_path: Path, artifacts: Path) -> None:
    root, truth = _data(tmp_path, "nifti", n=1)
    write_images(root, "folders", n_per_class=1)
    with pytest.raises(DataError) as err:
        frun.featurize_dataset(root, **FAST)
    assert "2-D images" in str(err.value) and "3-D scans" in str(err.value) and "\n" not in str(err.value)


def test_volume_options_are_checked_before_any_read(tmp_path: Path) -> None:
    with pytest.raises(AlzmriError, match="--view"):
        VolumeOptions(views=("axial", "transverse"))
    with pytest.raises(AlzmriError, match="--slices"):
        VolumeOptions(n_slices=0)
    with pytest.raises(AlzmriError, match="--series"):
        VolumeOptions(series="T1[")
    assert VolumeOptions(views=("Coronal", "axial", "coronal")).views == ("coronal", "axial")


def test_subjects_infer_is_refused_for_volumes(tmp_path: Path, artifacts: Path) -> None:
    root, _ = _data(tmp_path, "nifti", n=1)
    with pytest.raises(DataError, match="pixel inference is for 2-D slices"):
        frun.featurize_dataset(root, **{**FAST, "subjects": "infer"})


def test_sessions_of_one_subject_share_the_subject(tmp_path: Path, artifacts: Path) -> None:
    from featurize.volume_featurize import volume_job

    truth = write_volume_dataset(tmp_path / "bids", layout="bids", subjects_per_class=1, classes=CLASSES, sessions=2,
                                 spec=SMALL)
    job = volume_job(tmp_path / "bids", VolumeOptions())
    t = job.vds.table
    assert len(t) == len(truth) == 4 and t.groupby("subject").size().tolist() == [2, 2]
    assert len(set(job.sids)) == 4  # two scans (rows apart), one subject (one group in subject-cv)


def test_a_slice_array_is_resized_as_its_png_would_be(tmp_path: Path) -> None:
    from PIL import Image

    from featurize.images import fit_gray, load_rgb

    arr = (np.arange(37 * 53, dtype=np.uint32).reshape(37, 53) * 7 % 256).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png")
    for resize in ("stretch", "pad"):
        np.testing.assert_array_equal(fit_gray(arr, (32, 40), resize), load_rgb(tmp_path / "s.png", (32, 40), resize))
