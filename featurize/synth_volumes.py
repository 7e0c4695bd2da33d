"""Labelled synthetic 3-D head volumes with stage-dependent atrophy, written as NIfTI, Analyze or a DICOM series.

The anatomy is featurize.synth's (ventricles, sulci and fissures widen, hippocampi shrink with the stage), drawn on
a stack of axial levels spanning the whole head and closed at the top and bottom by an ellipsoidal envelope, so
the volumes have a foreground extent to find. Layouts: class folders (``ROOT/<Class>/<scan>.nii.gz`` or
``ROOT/<Class>/<subject>/*.dcm``) and BIDS (``ROOT/sub-*/[ses-*/]anat/*_T1w.nii.gz`` with participants.tsv).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurize import phantom, synth
from featurize.errors import DataError

FORMATS: tuple[str, ...] = ("nifti", "analyze", "dicom")
LAYOUTS: tuple[str, ...] = ("folders", "bids")
EXTRA_SERIES: tuple[str, ...] = ("localizer", "t2")
# Head units (see featurize.synth): the brain's vertical semi-axis, and the half-height of the field of view.
_HEAD_TOP = 0.78
_FOV_Z = 0.95
# Stored intensities: 0..255 renderings times this, as int16, like a 12-bit scanner range.
_GAIN = 4.0


@dataclass(frozen=True)
class VolumeSpec:
    """Geometry of a synthetic volume: in-plane size (width, height) in voxels and the mm of one voxel."""

    size: tuple[int, int] = (64, 76)
    voxel_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)


def render_volume(anatomy: synth.SubjectAnatomy, *, spec: VolumeSpec = VolumeSpec(),
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An int16 volume with axes (R->L columns as stored: i = image column, j = image row, k = inferior->superior)
    and its RAS affine. Anisotropic ``voxel_mm`` (e.g. 1x1x4) spaces the axial levels further apart."""
    rng = rng if rng is not None else np.random.default_rng(0)
    w, h = phantom.check_size(spec.size)
    dx, dy, dz = (float(v) for v in spec.voxel_mm)
    if min(dx, dy, dz) <= 0:
        raise DataError(f"voxel sizes must be positive, got {spec.voxel_mm}")
    unit = phantom._unit((w, h))                  # pixels per head unit in-plane
    mm_per_unit = dx * unit
    n_z = max(8, int(round(2 * _FOV_Z * mm_per_unit / dz)))
    z = (np.arange(n_z) - (n_z - 1) / 2) * dz / mm_per_unit
    offsets = np.tile(np.asarray(anatomy.center, dtype=float)[None, :], (n_z, 1))
    with synth._single_thread_blas():
        img = phantom._draw(anatomy, z + anatomy.z0, offsets, w, h)    # (n_z, h, w) float32, 0..~230
    img = phantom._blur(img, 0.7)
    # Close the head: outside an ellipsoid whose in-plane radius shrinks towards the top and bottom is air.
    x = (np.arange(w) + 0.5 - w / 2) / unit
    y = (np.arange(h) + 0.5 - h / 2) / unit
    rr = np.sqrt((x[None, :] / 0.8) ** 2 + (y[:, None] / (0.8 * anatomy.aspect)) ** 2) / anatomy.scale
    level = np.sqrt(np.clip(1 - (z / _HEAD_TOP) ** 2, 0, 1))
    img[rr[None, :, :] > level[:, None, None]] = 0.0
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.clip(img * np.float32(0.15), 0, 6)
    data = np.clip(np.rint(img * _GAIN), 0, 32767).astype(np.int16).transpose(2, 1, 0)  # (w, h, n_z)
    data = np.asfortranarray(data)
    # Column i runs to the right, row j towards the back (frontal lobes at row 0), k upwards: RPS storage.
    affine = np.array([[dx, 0, 0, -dx * (w - 1) / 2],
                       [0, -dy, 0, dy * (h - 1) / 2],
                       [0, 0, dz, -dz * (n_z - 1) / 2],
                       [0, 0, 0, 1.0]])
    return data, affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI-1 file (``.nii`` or ``.nii.gz`` by the name)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def reorder(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored with axes ``codes`` (e.g. "LPS"): flipped/transposed data and the matching affine."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    change = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes)))
    out = np.asfortranarray(apply_orientation(data, change))
    return out, affine @ inv_ornt_aff(change, data.shape)


def write_analyze(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write an Analyze 7.5 ``.hdr/.img`` pair. Analyze stores no orientation, only voxel sizes, and readers
    assume LAS; the data are flipped into LAS order so the stored anatomy matches that assumption."""
    import nibabel as nib

    las, _ = reorder(data, affine, "LAS")
    zooms = nib.affines.voxel_sizes(affine)
    img = nib.AnalyzeImage(np.ascontiguousarray(las), None)
    img.header.set_zooms(tuple(float(z) for z in zooms))
    out = path.with_suffix("").with_suffix(".hdr") if path.suffix == ".img" else path
    nib.save(img, str(out))
    return out


def _uid(rng: np.random.Generator) -> str:
    # 2.25 is the UUID-derived root (ISO/IEC 9834-8), so no organisation prefix is needed.
    return "2.25." + str(int.from_bytes(rng.bytes(15), "big"))


def write_dicom_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, patient_id: str,
                       rng: np.random.Generator, description: str = "T1 MPRAGE SYNTH", series_number: int = 1,
                       study_uid: str | None = None, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
                       shuffle: bool = False, drop_slice: int | None = None, duplicate_slice: int | None = None,
                       prefix: str = "IM") -> list[Path]:
    """Write ``data`` as single-frame MR Image Storage files, one file per ``data[:, :, k]``, in any orientation.

    Image column c is voxel axis 0, image row r axis 1, so ImageOrientationPatient, ImagePositionPatient and
    PixelSpacing all come from ``affine`` (RAS, turned into DICOM's LPS); an oblique or sagittal stack works too.

    ``shuffle`` gives the files names whose order is not the slice order; ``drop_slice`` leaves one slice out
    (a gap); ``duplicate_slice`` writes one instance twice under another file name.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    folder.mkdir(parents=True, exist_ok=True)
    n_z = data.shape[2]
    study_uid = study_uid or _uid(rng)
    series_uid, frame_uid = _uid(rng), _uid(rng)
    dx, dy, dz = (float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    lps = np.diag([-1.0, -1.0, 1.0])
    row_cos, col_cos = lps @ affine[:3, 0] / dx, lps @ affine[:3, 1] / dy
    numbers = rng.permutation(n_z) if shuffle else np.arange(n_z)
    written: list[Path] = []
    for k in range(n_z):
        if drop_slice is not None and k == drop_slice:
            continue
        pixels = np.ascontiguousarray(data[:, :, k].T)
        corner = lps @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]   # LPS of image pixel (0, 0)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = _uid(rng)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.Modality = patient_id, patient_id, "MR"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", series_number, k + 1
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.ImagePositionPatient = [float(v) for v in corner]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels.astype("<i2").tobytes()
        names = [f"{prefix}{int(numbers[k]):04d}.dcm"] + ([f"{prefix}{int(numbers[k]):04d}_copy.dcm"]
                                                         if duplicate_slice == k else [])
        for name in names:
            ds.save_as(folder / name, enforce_file_format=True)
            written.append(folder / name)
    return written


def write_scan(path: Path, anatomy: synth.SubjectAnatomy, *, fmt: str, patient_id: str, rng: np.random.Generator,
               spec: VolumeSpec = VolumeSpec(), shuffle: bool = False, drop_slice: int | None = None,
               extra_series: tuple[str, ...] = ()) -> Path:
    """Render one subject and write it as ``fmt``: a file for nifti/analyze (``path`` + suffix), a folder for dicom."""
    if fmt not in FORMATS:
        raise DataError(f"unknown volume format {fmt!r}; choose from {', '.join(FORMATS)}")
    data, affine = render_volume(anatomy, spec=spec, rng=rng)
    if fmt == "nifti":
        return write_nifti(path.with_name(path.name + ".nii.gz"), data, affine)
    if fmt == "analyze":
        return write_analyze(path.with_name(path.name + ".hdr"), data, affine)
    study = _uid(rng)
    data, affine = reorder(data, affine, "LPS")  # the usual axial export: columns to the left, rows to the back
    write_dicom_series(path, data, affine, patient_id=patient_id, rng=rng, study_uid=study, shuffle=shuffle,
                       drop_slice=drop_slice)
    for j, kind in enumerate(extra_series, start=2):
        if kind == "localizer":
            mid = data.shape[2] // 2
            write_dicom_series(path, data[:, :, mid - 1:mid + 2], affine, patient_id=patient_id, rng=rng,
                               description="localizer", series_number=j, study_uid=study,
                               image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), prefix=f"S{j}_")
        elif kind == "t2":
            # A second anatomical series: the same head with inverted contrast, as a T2 would show CSF bright.
            t2 = np.where(data > 0, np.int16(1100) - data, 0).astype(np.int16)
            write_dicom_series(path, np.asfortranarray(t2), affine, patient_id=patient_id, rng=rng,
                               description="T2 TSE SYNTH", series_number=j, study_uid=study, prefix=f"S{j}_")
        else:
            raise DataError(f"unknown extra series {kind!r}; choose from {', '.join(EXTRA_SERIES)}")
    return path


def write_volume_dataset(out: str | Path, *, fmt: str = "nifti", layout: str = "folders", subjects_per_class: int = 2,
                         classes: tuple[str, ...] = synth.CLASS_NAMES, spec: VolumeSpec = VolumeSpec(),
                         sessions: int = 1, seed: int = 0, shuffle: bool = False, drop_slice: int | None = None,
                         extra_series: tuple[str, ...] = ()) -> pd.DataFrame:
    """Write labelled synthetic volumes under ``out`` and return the truth table (path, label, subject, session).

    ``layout="folders"``: ``OUT/<Class>/sub-<id>[_ses-N].nii.gz`` (or ``.hdr``, or a DICOM folder per scan);
    ``layout="bids"``: ``OUT/sub-<id>/[ses-N/]anat/sub-<id>[_ses-N]_T1w.nii.gz`` with participants.tsv (diagnosis).
    DICOM only: ``shuffle`` file names, ``drop_slice`` (a gap), ``extra_series`` ("localizer", "t2") in each folder.
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "bids" and fmt != "nifti":
        raise DataError("a BIDS layout holds NIfTI files; use fmt='nifti' with layout='bids'")
    unknown = [c for c in classes if c not in synth.CLASS_NAMES]
    if unknown:
        raise DataError(f"unknown class(es) {', '.join(unknown)}; choose from {', '.join(synth.CLASS_NAMES)}")
    spc = synth._check_int("subjects_per_class", subjects_per_class, 1)
    n_ses = synth._check_int("sessions", sessions, 1)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in classes:
        stage = synth.CLASS_NAMES.index(label)
        for j in range(spc):
            subject = f"{synth._SUBJECT_PREFIXES[stage]}{j:03d}"
            anatomy = synth.make_subject(stage, np.random.default_rng([seed, stage, j]))
            for ses in range(1, n_ses + 1):
                rng = np.random.default_rng([seed, stage, j, ses])
                ses_tag = f"ses-{ses}" if n_ses > 1 else ""
                if layout == "bids":
                    folder = out / f"sub-{subject}" / (ses_tag or "") / "anat"
                    folder.mkdir(parents=True, exist_ok=True)
                    stem = "_".join(t for t in (f"sub-{subject}", ses_tag, "T1w") if t)
                    path = write_scan(folder / stem, anatomy, fmt=fmt, patient_id=subject, rng=rng, spec=spec)
                else:
                    (out / label).mkdir(exist_ok=True)
                    stem = "_".join(t for t in (f"sub-{subject}", ses_tag) if t)  # BIDS-style entities name the subject
                    path = write_scan(out / label / stem, anatomy, fmt=fmt, patient_id=subject, rng=rng, spec=spec,
                                      shuffle=shuffle, drop_slice=drop_slice, extra_series=extra_series)
                rows.append({"path": path.relative_to(out).as_posix(), "label": label, "subject": subject,
                             "session": str(ses) if n_ses > 1 else ""})
    truth = pd.DataFrame(rows, columns=["path", "label", "subject", "session"])
    if layout == "bids":
        parts = truth.drop_duplicates("subject")
        pd.DataFrame({"participant_id": "sub-" + parts["subject"], "diagnosis": parts["label"]}).to_csv(
            out / "participants.tsv", sep="\t", index=False, lineterminator="\n")
        (out / "dataset_description.json").write_text(json.dumps(
            {"Name": "alzmri synthetic volumes", "BIDSVersion": "1.8.0", "DatasetType": "raw"}, indent=2) + "\n")
    return truth
