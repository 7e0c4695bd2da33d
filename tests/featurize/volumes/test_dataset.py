"""Discovery of 3-D scans: class folders (with and without train/test), BIDS, CSV manifests, and refused mixes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from featurize.errors import DataError  # noqa: E402
from featurize.synth_volumes import VolumeSpec, write_volume_dataset  # noqa: E402
from featurize.volume_dataset import scan_volumes  # noqa: E402
from featurize.volumes import load_scans  # noqa: E402

SPEC = VolumeSpec(size=(32, 38), voxel_mm=(4.0, 4.0, 4.0))
TWO = ("NonDemented", "ModerateDemented")


@pytest.mark.parametrize("fmt", ["nifti", "analyze", "dicom"])
def test_class_folders_one_row_per_scan_and_subject(tmp_path: Path, fmt: str) -> None:
    truth = write_volume_dataset(tmp_path, fmt=fmt, subjects_per_class=2, classes=TWO, spec=SPEC)
    ds = scan_volumes(tmp_path)
    t = ds.table
    assert ds.source == "folders" and ds.class_names == list(TWO) and ds.problems == []
    assert len(t) == 4 and sorted(t["subject"]) == sorted(truth["subject"])
    assert t["kind"].unique().tolist() == [fmt] and t["content_hash"].str.len().eq(40).all()
    assert set(zip(t["subject"], t["label"])) == set(zip(truth["subject"], truth["label"]))
    # The scan's own hash (read path) agrees with the table's (discovery path): one cache key per scan.
    row = t.iloc[0]
    scan = load_scans(row["abspath"], n_slices=2, series_uid=row["series_uid"] or None)[0]
    assert scan.content_hash == row["content_hash"] and scan.subject == row["subject"]


def test_dicom_folder_with_a_localizer_and_two_series(tmp_path: Path) -> None:
    write_volume_dataset(tmp_path, fmt="dicom", subjects_per_class=1, classes=TWO, spec=SPEC,
                         extra_series=("localizer", "t2"), shuffle=True)
    ds = scan_volumes(tmp_path)
    assert len(ds.table) == 4 and ds.table.groupby("subject")["series_uid"].nunique().eq(2).all()
    assert sum("a localizer, skipped" in p for p in ds.problems) == 2
    t2 = scan_volumes(tmp_path, series="T2")
    assert len(t2.table) == 2


def test_train_test_level_and_sessions(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_volume_dataset(tmp_path / split, fmt="nifti", subjects_per_class=1, classes=TWO, spec=SPEC,
                             sessions=2, seed=0 if split == "train" else 1)
    ds = scan_volumes(tmp_path)
    t = ds.table
    assert ds.source == "kaggle" and sorted(t["split"].unique()) == ["test", "train"] and len(t) == 8
    # Two sessions of one subject: two rows, one subject, distinct sessions.
    g = t[t["split"] == "train"].groupby("subject")["session"].apply(sorted)
    assert g.tolist() == [["1", "2"], ["1", "2"]]


def test_bids_labels_from_participants(tmp_path: Path) -> None:
    write_volume_dataset(tmp_path, fmt="nifti", layout="bids", subjects_per_class=2, classes=TWO, spec=SPEC, sessions=2)
    ds = scan_volumes(tmp_path)
    t = ds.table
    assert ds.source == "bids" and len(t) == 8 and t["path"].str.match(r"sub-\w+/ses-\d/anat/sub-\w+_ses-\d_T1w\.nii\.gz").all()
    assert dict(zip(t["subject"], t["label"]))["MOD001"] == "ModerateDemented"
    parts = pd.read_csv(tmp_path / "participants.tsv", sep="\t")
    parts["group"] = np.where(parts["diagnosis"] == "NonDemented", "CN", "AD")
    parts.loc[0, "diagnosis"] = "n/a"
    parts.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    grp = scan_volumes(tmp_path, label_column="group")
    assert sorted(grp.table["label"].unique()) == ["AD", "CN"] and len(grp.table) == 8
    part = scan_volumes(tmp_path)
    assert len(part.table) == 6 and sum("has no diagnosis" in p for p in part.problems) == 2
    with pytest.raises(DataError, match="no column 'dx' for labels; choose one with --label-column"):
        scan_volumes(tmp_path, label_column="dx")
    (tmp_path / "participants.tsv").unlink()
    with pytest.raises(DataError, match="BIDS root without participants.tsv"):
        scan_volumes(tmp_path)


def test_manifest_names_volumes_and_dicom_folders(tmp_path: Path) -> None:
    write_volume_dataset(tmp_path / "n", fmt="nifti", subjects_per_class=1, classes=TWO, spec=SPEC)
    write_volume_dataset(tmp_path / "d", fmt="dicom", subjects_per_class=1, classes=TWO, spec=SPEC, seed=5)
    rows = [("n/NonDemented/sub-ND000.nii.gz", "NonDemented", "", ""),
            ("n/ModerateDemented/sub-MOD000.nii.gz", "ModerateDemented", "test", "S7"),
            ("d/NonDemented/sub-ND000", "NonDemented", "", ""),
            ("missing.nii.gz", "NonDemented", "", "")]
    pd.DataFrame(rows, columns=["path", "label", "split", "subject"]).to_csv(tmp_path / "m.csv", index=False)
    ds = scan_volumes(tmp_path / "m.csv")
    t = ds.table
    assert ds.source == "manifest" and len(t) == 3
    assert t.set_index("path").loc["n/ModerateDemented/sub-MOD000.nii.gz", "subject"] == "S7"
    assert t.set_index("path").loc["d/NonDemented/sub-ND000", "kind"] == "dicom"
    assert any("missing.nii.gz: listed in m.csv line 5 but missing" in p for p in ds.problems)


def test_mixed_2d_and_3d_is_refused(tmp_path: Path) -> None:
    write_volume_dataset(tmp_path, fmt="nifti", subjects_per_class=1, classes=TWO, spec=SPEC)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "NonDemented" / "slice.png")
    with pytest.raises(DataError) as info:
        scan_volumes(tmp_path)
    msg = str(info.value)
    assert "both 2-D images (1, e.g. slice.png) and 3-D scans (2" in msg and "a volume becomes many slices" in msg
    pd.DataFrame([("NonDemented/slice.png", "NonDemented"), ("NonDemented/sub-ND000.nii.gz", "NonDemented")],
                 columns=["path", "label"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="both 2-D images"):
        scan_volumes(tmp_path / "m.csv")


def test_image_only_root_and_empty_root_are_refused(tmp_path: Path) -> None:
    for c in TWO:
        (tmp_path / "img" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "img" / c / "a.png")
    with pytest.raises(DataError, match="holds 2-D images and no volumes"):
        scan_volumes(tmp_path / "img")
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(DataError, match="no 3-D scans found"):
        scan_volumes(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder"):
        scan_volumes(tmp_path / "nope")


def test_broken_entries_are_problems_and_the_rest_is_kept(tmp_path: Path) -> None:
    write_volume_dataset(tmp_path, fmt="analyze", subjects_per_class=2, classes=TWO, spec=SPEC)
    (tmp_path / "NonDemented" / "sub-ND001.hdr").unlink()  # .img without its header
    shutil.copy(tmp_path / "NonDemented" / "sub-ND000.hdr", tmp_path / "ModerateDemented" / "sub-ND000.hdr")
    shutil.copy(tmp_path / "NonDemented" / "sub-ND000.img", tmp_path / "ModerateDemented" / "sub-ND000.img")
    ds = scan_volumes(tmp_path)
    assert len(ds.table) == 4
    assert any("sub-ND001.img: Analyze image data without its .hdr header" in p for p in ds.problems)
    assert any(p.startswith("label conflict: identical scan content") for p in ds.problems)
    assert any(p.startswith("label conflict: one subject") for p in ds.problems)


def test_image_scan_refuses_volumes_instead_of_ignoring_them(tmp_path: Path) -> None:
    from featurize.dataset import scan

    write_volume_dataset(tmp_path / "v", fmt="nifti", subjects_per_class=1, classes=TWO, spec=SPEC)
    with pytest.raises(DataError, match=r"holds 3-D scans \(2, e.g. sub-MOD000.nii.gz\) and no 2-D images"):
        scan(tmp_path / "v")
    write_volume_dataset(tmp_path / "d", fmt="dicom", subjects_per_class=1, classes=TWO, spec=SPEC)
    with pytest.raises(DataError, match=r"holds 3-D scans \(2, e.g. sub-MOD000\)"):
        scan(tmp_path / "d")
    for c in TWO:
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "v" / c / "a.png")
    with pytest.raises(DataError, match=r"both 2-D images \(2, e.g. a.png\) and 3-D scans \(2"):
        scan(tmp_path / "v")
    pd.DataFrame([("NonDemented/a.png", "NonDemented"), ("ModerateDemented/sub-MOD000.nii.gz", "ModerateDemented")],
                 columns=["path", "label"]).to_csv(tmp_path / "v" / "m.csv", index=False)
    with pytest.raises(DataError, match="both 2-D images"):
        scan(tmp_path / "v" / "m.csv")
    # Pure image data scan as before.
    (tmp_path / "v" / "NonDemented" / "sub-ND000.nii.gz").unlink()
    (tmp_path / "v" / "ModerateDemented" / "sub-MOD000.nii.gz").unlink()
    assert len(scan(tmp_path / "v").table) == 2
