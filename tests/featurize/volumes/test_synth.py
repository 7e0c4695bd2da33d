"""Synthetic volumes: stage-dependent atrophy survives into 3-D, deterministic output, layouts as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from featurize import synth  # noqa: E402
from featurize.errors import DataError  # noqa: E402
from featurize.synth_volumes import VolumeSpec, render_volume, write_volume_dataset  # noqa: E402

SPEC = VolumeSpec(size=(48, 56), voxel_mm=(3.0, 3.0, 3.0))


def _csf_ratio(stage: int, j: int) -> float:
    """CSF voxels (stored ~88: ventricles, sulci) per tissue voxel (>= 300) in the middle third of the head.

    The band leaves out the dark rim outside the brain (~16) and the skull ring (~120), whose size follows head
    size and the envelope rather than the stage.
    """
    data, _ = render_volume(synth.make_subject(stage, np.random.default_rng([0, stage, j])), spec=SPEC,
                            rng=np.random.default_rng([0, stage, j, 1]))
    nz = data.shape[2]
    mid = data[:, :, nz // 3: 2 * nz // 3].astype(float)
    return float(((mid > 50) & (mid < 110)).sum() / (mid >= 300).sum())


def test_atrophy_grows_with_stage() -> None:
    csf = {stage: [_csf_ratio(stage, j) for j in range(3)] for stage in (0, 3)}
    # Measured: stage 0 0.04-0.09, stage 3 0.12-0.13; the same anatomy for both stages gives 0.046-0.049 for all.
    assert min(csf[3]) > max(csf[0]) and np.mean(csf[3]) > 1.5 * np.mean(csf[0]), csf


def test_volumes_are_deterministic_and_seeded(tmp_path: Path) -> None:
    a = write_volume_dataset(tmp_path / "a", subjects_per_class=1, classes=("NonDemented", "MildDemented"), spec=SPEC)
    b = write_volume_dataset(tmp_path / "b", subjects_per_class=1, classes=("NonDemented", "MildDemented"), spec=SPEC)
    write_volume_dataset(tmp_path / "c", subjects_per_class=1, classes=("NonDemented", "MildDemented"), spec=SPEC,
                         seed=1)
    assert a.equals(b)
    for p in a["path"]:
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()
        assert (tmp_path / "a" / p).read_bytes() != (tmp_path / "c" / p).read_bytes()


def test_dicom_options_and_bad_arguments(tmp_path: Path) -> None:
    truth = write_volume_dataset(tmp_path, fmt="dicom", subjects_per_class=1, classes=("NonDemented", "MildDemented"),
                                 spec=SPEC, drop_slice=3, extra_series=("localizer",))
    folder = tmp_path / truth["path"][0]
    n_z = render_volume(synth.make_subject(0, np.random.default_rng(0)), spec=SPEC)[0].shape[2]
    assert len(list(folder.glob("IM*.dcm"))) == n_z - 1 and len(list(folder.glob("S2_*.dcm"))) == 3
    with pytest.raises(DataError, match="BIDS layout holds NIfTI"):
        write_volume_dataset(tmp_path / "x", fmt="dicom", layout="bids")
    with pytest.raises(DataError, match="unknown class"):
        write_volume_dataset(tmp_path / "x", classes=("Healthy",))
    with pytest.raises(DataError, match="unknown volume format"):
        write_volume_dataset(tmp_path / "x", fmt="png")
