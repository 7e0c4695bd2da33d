"""NIfTI/Analyze/MGH volumes to slices: formats agree, reorientation, spacing, scaling, and every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from featurize.errors import DataError  # noqa: E402
from featurize.synth_volumes import VolumeSpec, write_analyze  # noqa: E402
from featurize.volumes import load_scans, read_volumes  # noqa: E402
from featurize.volumes.io import read_nibabel  # noqa: E402
from featurize.volumes.slicing import otsu_threshold, slice_positions, to_uint8  # noqa: E402
from tests.featurize.volumes.helpers import arrays, head, save_nifti  # noqa: E402


def _one_line_error(fn, *args, **kwargs) -> str:  # noqa: ANN001
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_nifti_analyze_mgh_give_identical_slices(tmp_path: Path) -> None:
    data, affine = head(3)
    nii = save_nifti(tmp_path / "a.nii.gz", data, affine)
    hdr = write_analyze(tmp_path / "b.hdr", data, affine)
    mgz = tmp_path / "c.mgz"
    nib.save(nib.MGHImage(data.astype(np.int32), affine), str(mgz))
    views = ("axial", "coronal", "sagittal")
    a, b, c = (load_scans(p, views=views, n_slices=6)[0] for p in (nii, hdr, mgz))
    assert len(a.slices) == 18 and [s[:2] for s in a.slices] == [s[:2] for s in b.slices] == [s[:2] for s in c.slices]
    for x, y, z in zip(arrays(a), arrays(b), arrays(c)):
        assert x.dtype == np.uint8 and np.array_equal(x, y) and np.array_equal(x, z)
    assert a.orientation == "RPS" and b.orientation == "LAS" and a.shape == (40, 48, 38)
    assert a.subject == "a" and len(a.content_hash) == 40 and a.content_hash != b.content_hash


def test_slices_are_upright_and_cover_the_foreground(tmp_path: Path) -> None:
    data, affine = head(0)
    scan = load_scans(save_nifti(tmp_path / "h.nii", data, affine), views=("axial",), n_slices=5)[0]
    idx = [i for _, i, _ in scan.slices]
    nz = np.flatnonzero(data.reshape(-1, data.shape[2], order="F").max(axis=0) > 0)
    assert nz[0] <= idx[0] and idx[-1] <= nz[-1] and idx == sorted(set(idx))
    for img in arrays(scan):
        assert img.shape == (48, 40) and (img > 50).mean() > 0.05  # no empty slice
    # The stored rows run front to back; upright means the same order (anterior at the top), columns left-right.
    mid = scan.slices[2]
    stored = to_uint8(read_nibabel(tmp_path / "h.nii"))[0][:, :, mid[1]].T
    assert np.array_equal(mid[2], stored)


def test_flipped_affine_gives_the_same_slices(tmp_path: Path) -> None:
    data, affine = head(1)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = data.shape[0] - 1, data.shape[2] - 1
    flipped = np.asfortranarray(data[::-1, :, ::-1])
    a = load_scans(save_nifti(tmp_path / "a.nii", data, affine), views=("axial", "sagittal"), n_slices=4)[0]
    b = load_scans(save_nifti(tmp_path / "b.nii", flipped, affine @ flip), views=("axial", "sagittal"), n_slices=4)[0]
    assert b.orientation == "LPI"
    assert all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b)))


def test_oblique_affine_is_noted(tmp_path: Path) -> None:
    data, affine = head(0)
    t = np.deg2rad(12)
    rot = np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    scan = load_scans(save_nifti(tmp_path / "o.nii", data, rot @ affine), n_slices=3)[0]
    assert any("oblique by up to 12.0 degrees" in n for n in scan.notes)
    plain = load_scans(save_nifti(tmp_path / "p.nii", data, affine), n_slices=3)[0]
    assert not any("oblique" in n for n in plain.notes)


def test_anisotropic_voxels_keep_the_aspect(tmp_path: Path) -> None:
    iso, aff_iso = head(2, spec=VolumeSpec(size=(40, 48), voxel_mm=(2.0, 2.0, 2.0)))
    thick, aff_thick = head(2, spec=VolumeSpec(size=(40, 48), voxel_mm=(2.0, 2.0, 8.0)))
    a = load_scans(save_nifti(tmp_path / "iso.nii", iso, aff_iso), views=("coronal",), n_slices=3)[0]
    b = load_scans(save_nifti(tmp_path / "thick.nii", thick, aff_thick), views=("coronal",), n_slices=3)[0]
    assert b.spacing == (2.0, 2.0, 8.0)
    # Coronal slices of the 2x2x8 mm volume are stretched 4x along S, so both show the head at the same size.
    (ha, wa), (hb, wb) = a.slices[1][2].shape, b.slices[1][2].shape
    assert wa == wb == 40 and hb == 4 * thick.shape[2] and abs(ha - hb) <= 4
    height = lambda img: np.ptp(np.flatnonzero((img > 40).any(axis=1)))  # noqa: E731
    assert abs(height(a.slices[1][2]) - height(b.slices[1][2])) <= 5


def test_4d_uses_the_first_volume_with_a_note_and_volume_index_chooses(tmp_path: Path) -> None:
    data, affine = head(0)
    four = np.stack([data, np.asfortranarray(data[::-1])], axis=3)
    p = save_nifti(tmp_path / "f.nii.gz", four, affine)
    first = load_scans(p, n_slices=3)[0]
    assert any("4-D with 2 volumes; using volume 0" in n for n in first.notes)
    second = load_scans(p, n_slices=3, volume_index=1)[0]
    assert not any("4-D" in n for n in second.notes)
    ref = load_scans(save_nifti(tmp_path / "r.nii", data, affine), n_slices=3)[0]
    assert all(np.array_equal(x, y) for x, y in zip(arrays(first), arrays(ref)))
    assert not all(np.array_equal(x, y) for x, y in zip(arrays(second), arrays(ref)))
    assert "out of range; the file holds volumes 0..1" in _one_line_error(load_scans, p, volume_index=2)


def test_2d_nifti_is_refused(tmp_path: Path) -> None:
    p = save_nifti(tmp_path / "flat.nii", np.ones((32, 32, 1), np.int16), np.eye(4))
    assert "is 2-D (shape 32x32x1)" in _one_line_error(read_volumes, p)


def test_analyze_header_without_image_is_refused(tmp_path: Path) -> None:
    data, affine = head(0)
    hdr = write_analyze(tmp_path / "x.hdr", data, affine)
    hdr.with_suffix(".img").unlink()
    assert "x.img is missing" in _one_line_error(read_volumes, hdr)


def test_header_dims_that_disagree_with_the_data_are_refused(tmp_path: Path) -> None:
    data, affine = head(0)
    p = save_nifti(tmp_path / "d.nii", data, affine)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 5000])
    msg = _one_line_error(load_scans, p)
    assert "header dimensions disagree with the data" in msg and "d.nii" in msg


def test_truncated_nii_gz_is_refused(tmp_path: Path) -> None:
    data, affine = head(0)
    p = save_nifti(tmp_path / "t.nii.gz", data, affine)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    msg = _one_line_error(load_scans, p)
    assert "t.nii.gz" in msg and ("truncated" in msg or "not a readable" in msg)
    p.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    assert "not a readable NIfTI/Analyze/MGH volume" in _one_line_error(load_scans, p)


def test_nan_and_inf_voxels_become_zero_with_a_note(tmp_path: Path) -> None:
    data, affine = head(0)
    clean = data.astype(np.float32)
    dirty = clean.copy(order="F")
    dirty[5:8, 5:8, 10] = np.nan
    dirty[0, 0, :] = np.inf  # a corner of every slice: bright in every slice unless zeroed
    clean[5:8, 5:8, 10] = 0.0
    clean[0, 0, :] = 0.0
    a = load_scans(save_nifti(tmp_path / "dirty.nii", dirty, affine), n_slices=4)[0]
    b = load_scans(save_nifti(tmp_path / "clean.nii", np.asfortranarray(clean), affine), n_slices=4)[0]
    assert any(f"{9 + data.shape[2]} NaN/inf voxel(s) set to 0" in n for n in a.notes)
    assert all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b)))


def test_scl_slope_is_honoured(tmp_path: Path) -> None:
    data, affine = head(0)
    vol = read_nibabel(save_nifti(tmp_path / "neg.nii", data, affine, slope=-2.0, inter=3000.0))
    assert (vol.slope, vol.inter) == (-2.0, 3000.0) and vol.data.dtype == np.int16
    plain = read_nibabel(save_nifti(tmp_path / "plain.nii", data, affine))
    neg, _ = to_uint8(vol)
    pos, _ = to_uint8(plain)
    # A negative slope inverts the contrast: percentile scaling of -x is 255 minus that of x (up to rounding).
    assert np.abs(neg.astype(int) + pos.astype(int) - 255).max() <= 1
    as_float = save_nifti(tmp_path / "f.nii", np.asfortranarray(data.astype(np.float32) * -2 + 3000), affine)
    assert np.array_equal(to_uint8(read_nibabel(as_float))[0], neg)


def test_constant_and_empty_volumes_are_refused(tmp_path: Path) -> None:
    p = save_nifti(tmp_path / "c.nii", np.full((10, 10, 10), 7, np.int16), np.eye(4))
    assert "every voxel has the value 7" in _one_line_error(load_scans, p)
    q = save_nifti(tmp_path / "n.nii", np.full((10, 10, 10), np.nan, np.float32), np.eye(4))
    assert "no finite voxel values" in _one_line_error(load_scans, q)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    data, affine = head(0)
    p = save_nifti(tmp_path / "h.nii", data, affine)
    assert "unknown view(s) top" in _one_line_error(load_scans, p, views=("top",))
    assert "no such file or folder" in _one_line_error(read_volumes, tmp_path / "x.txt")
    (tmp_path / "x.txt").write_text("hello")
    assert "not a volume file" in _one_line_error(read_volumes, tmp_path / "x.txt")


def test_slice_positions_and_otsu() -> None:
    assert slice_positions(10, 19, 5) == [11, 13, 15, 17, 19]
    assert slice_positions(0, 99, 4) == [12, 37, 62, 87]
    assert slice_positions(5, 5, 3) == [5, 5, 5]
    hist = np.zeros(256, np.int64)
    hist[10], hist[200] = 1000, 500
    assert 10 <= otsu_threshold(hist) < 200


# Real images shipped in the nibabel and nilearn wheels.

def _nibabel_data(name: str) -> Path:
    from nibabel.testing import data_path

    p = Path(data_path) / name
    if not p.exists():
        pytest.skip(f"nibabel test image {name} not installed")
    return p


def test_nibabel_test_images() -> None:
    anat = load_scans(_nibabel_data("anatomical.nii"), views=("axial", "coronal"), n_slices=4)[0]
    assert anat.orientation == "LAS" and anat.shape == (33, 41, 25) and len(anat.slices) == 8
    four = load_scans(_nibabel_data("example4d.nii.gz"), n_slices=4)[0]
    assert any("4-D with 2 volumes" in n for n in four.notes) and four.spacing[2] == pytest.approx(2.2, abs=1e-4)
    assert four.slices[0][2].shape == (96, 128)
    two = load_scans(_nibabel_data("example_nifti2.nii.gz"), n_slices=3)[0]  # NIfTI-2
    assert len(two.slices) == 3 and two.shape == (32, 20, 12)
    mgz = load_scans(_nibabel_data("test.mgz"), n_slices=3)[0]
    assert len(mgz.slices) == 3
    # nibabel ships analyze.hdr without its .img: a real header-only pair.
    assert "analyze.img is missing" in _one_line_error(read_volumes, _nibabel_data("analyze.hdr"))


def test_mni_template_axial_slices_cover_the_brain() -> None:
    datasets = pytest.importorskip("nilearn.datasets")
    img = datasets.load_mni152_template(resolution=2)
    from featurize.volumes import Volume
    from featurize.volumes.slicing import volume_slices

    data = np.asanyarray(img.dataobj)
    vol = Volume(data=data, affine=img.affine, files=(), name="MNI152")
    slices, prep = volume_slices(vol, views=("axial",), n_slices=12)
    brain = np.flatnonzero((data > 0).any(axis=(0, 1)))
    idx = [i for _, i, _ in slices]
    assert len(idx) == 12 and idx == sorted(idx)
    # The chosen slices span the brain top to bottom: first within the lowest 10%, last within the top 10%.
    span = brain[-1] - brain[0]
    assert idx[0] - brain[0] < 0.1 * span and brain[-1] - idx[-1] < 0.1 * span
    assert all((img_ > 0).mean() > 0.01 for _, _, img_ in slices)  # no empty slice
