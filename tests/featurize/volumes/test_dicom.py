"""DICOM series: assembly by SeriesInstanceUID and slice position, gaps, duplicates, several series, bad objects."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

from featurize.errors import DataError  # noqa: E402
from featurize.synth_volumes import write_dicom_series  # noqa: E402
from featurize.volumes import load_scans, read_volumes  # noqa: E402
from featurize.volumes.dicom import list_series  # noqa: E402
from featurize.volumes.io import read_nibabel  # noqa: E402
from tests.featurize.volumes.helpers import arrays, head, save_nifti  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def _series(folder: Path, stage: int = 0, **kwargs) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """A synthetic head written as the usual axial export (LPS storage); returns the stored data and affine."""
    from featurize.synth_volumes import reorder

    data, affine = reorder(*head(stage), "LPS")
    files = write_dicom_series(folder, data, affine, patient_id=kwargs.pop("patient_id", "P001"),
                               rng=np.random.default_rng(7), **kwargs)
    return data, affine, files


def test_shuffled_series_matches_the_nifti_of_the_same_volume(tmp_path: Path) -> None:
    data, affine, files = _series(tmp_path / "dcm", shuffle=True)
    names = sorted(f.name for f in files)
    by_name = [int(pydicom.dcmread(tmp_path / "dcm" / n, stop_before_pixels=True).InstanceNumber) for n in names]
    assert by_name != sorted(by_name)  # file-name order is not slice order
    d = load_scans(tmp_path / "dcm", views=VIEWS, n_slices=5)[0]
    n = load_scans(save_nifti(tmp_path / "v.nii", data, affine), views=VIEWS, n_slices=5)[0]
    assert [s[:2] for s in d.slices] == [s[:2] for s in n.slices]
    assert all(np.array_equal(x, y) for x, y in zip(arrays(d), arrays(n)))
    assert d.subject == "P001" and d.session == "20260101" and d.orientation == "LPS" and d.notes == []
    vol = read_volumes(tmp_path / "dcm")[0][0]
    ref = read_nibabel(tmp_path / "v.nii")
    # Same voxels, and the affine rebuilt from LPS positions and cosines is the one the volume was written with.
    assert np.array_equal(vol.data, ref.data) and np.allclose(vol.affine, ref.affine, atol=1e-4)


@pytest.mark.parametrize("codes", ["LPS", "ASR", "SAL"])
def test_any_acquisition_orientation_gives_the_same_slices(tmp_path: Path, codes: str) -> None:
    from featurize.synth_volumes import reorder

    data, affine = head(2)
    stored, aff = reorder(data, affine, codes)  # ASR: sagittal slices stacked along R, SAL: coronal-ish
    write_dicom_series(tmp_path / "d", stored, aff, patient_id="P", rng=np.random.default_rng(1), shuffle=True)
    d = load_scans(tmp_path / "d", views=VIEWS, n_slices=4)[0]
    n = load_scans(save_nifti(tmp_path / "v.nii", data, affine), views=VIEWS, n_slices=4)[0]
    assert d.orientation[:2] == codes[:2] and d.shape == n.shape  # the third axis follows the normal
    assert all(np.array_equal(x, y) for x, y in zip(arrays(d), arrays(n)))


def test_content_hash_ignores_file_names_and_order(tmp_path: Path) -> None:
    _series(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for i, f in enumerate(sorted((tmp_path / "b").iterdir())):
        f.rename(f.with_name(f"z{1000 - i}"))  # no .dcm suffix: found by the DICM preamble
    a, b = load_scans(tmp_path / "a", n_slices=3)[0], load_scans(tmp_path / "b", n_slices=3)[0]
    assert a.content_hash == b.content_hash and all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b)))


def test_missing_slice_is_named_and_filled(tmp_path: Path) -> None:
    data, _, _ = _series(tmp_path / "gap", drop_slice=20)
    scans = load_scans(tmp_path / "gap", n_slices=4)
    note = [n for n in scans[0].notes if "gap" in n]
    assert len(note) == 1 and "gap of 1 missing slice(s) between instance 20 and instance 22 (6.0 mm apart, slices are 3.0 mm apart)" in note[0]
    vol = read_volumes(tmp_path / "gap")[0][0]
    assert vol.data.shape == data.shape
    # The filled slice is the mean of its neighbours.
    filled = vol.data[:, :, 20].astype(float)
    expect = np.rint((data[:, :, 19].astype(float) + data[:, :, 21]) / 2)
    assert np.array_equal(filled, expect)


def test_duplicate_instance_is_ignored_with_a_note(tmp_path: Path) -> None:
    _series(tmp_path / "dup", duplicate_slice=5)
    _series(tmp_path / "ref")
    dup, ref = load_scans(tmp_path / "dup", n_slices=4)[0], load_scans(tmp_path / "ref", n_slices=4)[0]
    assert any("1 duplicate instance(s)" in n for n in dup.notes)
    assert all(np.array_equal(x, y) for x, y in zip(arrays(dup), arrays(ref)))


def test_several_series_in_one_folder_are_several_scans(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    data, affine = head(1)
    rng = np.random.default_rng(3)
    write_dicom_series(folder, data, affine, patient_id="P9", rng=rng, description="T1 MPRAGE", series_number=1)
    t2 = np.asfortranarray(np.where(data > 0, 1100 - data, 0).astype(np.int16))
    write_dicom_series(folder, t2, affine, patient_id="P9", rng=rng, description="T2 TSE", series_number=2, prefix="B")
    mid = data.shape[2] // 2
    write_dicom_series(folder, data[:, :, mid - 1:mid + 2], affine, patient_id="P9", rng=rng, description="localizer",
                       series_number=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), prefix="L")
    write_dicom_series(folder, data[:, :, :5], affine, patient_id="P9", rng=rng, description="gre_field_mapping",
                       series_number=4, prefix="F")
    scans = load_scans(folder, n_slices=3)
    assert len(scans) == 2 and len({s.series_uid for s in scans}) == 2 and {s.subject for s in scans} == {"P9"}
    assert scans[0].content_hash != scans[1].content_hash
    notes = scans[0].notes
    assert any("'localizer' (3 images): a localizer, skipped" in n for n in notes)
    assert any("'gre_field_mapping' (5 images): a field map, skipped" in n for n in notes)
    only_t2 = load_scans(folder, n_slices=3, series="t2")
    assert len(only_t2) == 1 and only_t2[0].series_uid == scans[1].series_uid
    assert any("does not match --series 't2'" in n for n in only_t2[0].notes)
    with pytest.raises(DataError, match="not a valid regular expression"):
        list_series(folder, series="(")


def test_non_image_objects_are_skipped_with_a_note(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    _series(tmp_path / "s")
    sr = get_testdata_file("test-SR.dcm")
    if sr is None:
        pytest.skip("pydicom test file test-SR.dcm not installed")
    shutil.copy(sr, tmp_path / "s" / "report.dcm")
    (tmp_path / "s" / "notes.dcm").write_bytes(b"not dicom")
    scans = load_scans(tmp_path / "s", n_slices=3)
    assert len(scans) == 1
    assert any("1 file(s) are Comprehensive SR Storage (not images), skipped: report.dcm" in n for n in scans[0].notes)
    assert any("notes.dcm: not a readable DICOM file" in n for n in scans[0].notes)
    only = tmp_path / "only_sr"
    only.mkdir()
    shutil.copy(sr, only / "report.dcm")
    with pytest.raises(DataError, match="no readable 3-D DICOM series"):
        load_scans(only)


def _copies(src: str, folder: Path, n: int = 4) -> None:
    """``n`` slices of one real test file, moved along the normal, as one series (pixel data as stored)."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    series = generate_uid()
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * (n - 1 - k)]  # written top first: order is by position
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"{k}.dcm")


def test_real_pydicom_mr_file_as_a_series(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = get_testdata_file("MR_small.dcm")
    if src is None:
        pytest.skip("pydicom test file MR_small.dcm not installed")
    _copies(src, tmp_path / "mr")
    scan = load_scans(tmp_path / "mr", views=("axial", "coronal"), n_slices=2)[0]
    ds = pydicom.dcmread(src)
    assert scan.subject == str(ds.PatientID) and scan.shape[2] == 4
    assert scan.spacing == pytest.approx((*map(float, ds.PixelSpacing[::-1]), 5.0))
    assert scan.slices[0][2].shape == (64, 64)
    # Coronal slices: 4 slices 5 mm apart, stretched to the in-plane spacing, so the aspect is physical.
    assert scan.slices[-1][2].shape[0] == round(4 * 5.0 / float(ds.PixelSpacing[0]))


def test_compressed_syntax_without_a_decoder_names_the_plugin(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if src is None:
        pytest.skip("pydicom test file MR_small_jpeg_ls_lossless.dcm not installed")
    try:
        _ = pydicom.dcmread(src).pixel_array
        pytest.skip("a JPEG-LS decoder is installed here")
    except Exception:  # noqa: BLE001 - pydicom's error when no plugin decodes it
        pass
    _copies(src, tmp_path / "jls")
    with pytest.raises(DataError) as info:
        load_scans(tmp_path / "jls")
    msg = str(info.value)
    assert "JPEG-LS Lossless" in msg and "pip install pyjpegls" in msg and "\n" not in msg


def test_truncated_pixel_data_is_a_one_line_error_and_other_series_still_read(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = get_testdata_file("MR_truncated.dcm")
    if src is None:
        pytest.skip("pydicom test file MR_truncated.dcm not installed")
    _copies(src, tmp_path / "t")
    with pytest.raises(DataError) as info:
        load_scans(tmp_path / "t")
    msg = str(info.value)
    assert "pixel data cannot be decoded" in msg and "damaged or truncated" in msg and "\n" not in msg
    # A good series beside the broken one is still read; the broken one becomes a note.
    _series(tmp_path / "t" / "good")
    scans = load_scans(tmp_path / "t", n_slices=3)
    assert len(scans) == 1 and scans[0].subject == "P001"
    assert any("pixel data cannot be decoded" in n for n in scans[0].notes)
