"""Small synthetic volumes for the volume tests, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featurize import synth
from featurize.synth_volumes import VolumeSpec, render_volume

SMALL = VolumeSpec(size=(40, 48), voxel_mm=(3.0, 3.0, 3.0))


def head(stage: int = 0, *, spec: VolumeSpec = SMALL, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 synthetic head (RPS storage) and its affine."""
    anatomy = synth.make_subject(stage, np.random.default_rng([seed, stage]))
    return render_volume(anatomy, spec=spec, rng=np.random.default_rng([seed, stage, 1]))


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, slope: float | None = None,
               inter: float = 0.0) -> Path:
    """Write ``data`` as NIfTI-1 storing the raw values; with ``slope`` the header's scl_slope/scl_inter are set.

    The scaling is patched into the header bytes (offsets 112/116 of a NIfTI-1 header) because nibabel recomputes
    it on save; only for uncompressed ``.nii``.
    """
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    if slope is not None:
        assert path.suffix == ".nii"
        with open(path, "r+b") as f:
            f.seek(112)
            f.write(np.array([slope, inter], dtype="<f4").tobytes())
    return path


def arrays(scan) -> list[np.ndarray]:  # noqa: ANN001 - ScanSlices
    return [s[2] for s in scan.slices]
