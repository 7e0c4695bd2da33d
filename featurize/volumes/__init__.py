"""3-D MRI volumes in, 2-D uint8 slices out: one :class:`ScanSlices` per scan (a volume file or a DICOM series).

``io`` reads NIfTI/Analyze/MGH through nibabel, ``dicom`` assembles DICOM series through pydicom, ``slicing`` turns a
volume into upright slices. Defaults: 32 axial slices per scan (the Kaggle/OASIS-1 export has 32 per person), taken
evenly inside the foreground extent; intensities scaled per volume between the 0.5th and 99.5th percentiles.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from featurize.errors import DataError
from featurize.volumes.dicom import list_series, looks_like_dicom, read_series
from featurize.volumes.io import VOLUME_SUFFIXES, Volume, content_hash, read_nibabel, volume_stem, volume_suffix
from featurize.volumes.slicing import DEFAULT_PERCENTILES, VIEWS, volume_slices

__all__ = ["DEFAULT_N_SLICES", "VIEWS", "VOLUME_SUFFIXES", "ScanSlices", "Volume", "identity", "is_dicom_folder", "iter_volumes",
           "load_scans", "read_volumes", "volume_slices", "volume_suffix"]

DEFAULT_N_SLICES = 32
_BIDS_SUB = re.compile(r"(?:^|[_/\\])sub-([A-Za-z0-9]+)")
_BIDS_SES = re.compile(r"(?:^|[_/\\])ses-([A-Za-z0-9]+)")


@dataclass
class ScanSlices:
    """The slices of one scan and what identifies it; ``slices`` holds (view, index, HxW uint8) tuples."""

    path: str                 # the volume file or the DICOM folder
    series_uid: str           # DICOM SeriesInstanceUID, '' for a volume file
    content_hash: str         # SHA-1 over the source files' bytes (name- and order-independent)
    subject: str
    session: str
    shape: tuple[int, int, int]           # in RAS axis order
    spacing: tuple[float, float, float]   # mm, RAS axis order
    orientation: str                      # axis codes as stored, e.g. "LAS"
    slices: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def identity(path: str | os.PathLike[str], *, patient_id: str = "", session: str = "") -> tuple[str, str]:
    """(subject, session): the BIDS ``sub-``/``ses-`` labels in the path, else the DICOM PatientID, else the name."""
    text = str(path)
    sub, ses = _BIDS_SUB.findall(text), _BIDS_SES.findall(text)
    if sub:
        return sub[-1], ses[-1] if ses else session
    if patient_id:
        return patient_id, session
    p = Path(path)
    return (volume_stem(p) if volume_suffix(p) else p.name), session


def is_dicom_folder(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` (or a folder below it) holds a DICOM file; stops at the first one found."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.upper() != "DICOMDIR" and looks_like_dicom(Path(dirpath) / name):
                return True
    return False


def iter_volumes(path: str | os.PathLike[str], notes: list[str], *, volume_index: int | None = None,
                 series: str | None = None, series_uid: str | None = None) -> Iterator[Volume]:
    """The volumes in ``path`` one at a time (a volume file: one; a DICOM folder: one per kept series).

    Skipped series and series that fail to read go to ``notes``; the others are still read. ``series`` is a regex
    on SeriesDescription, ``series_uid`` picks one series exactly. A folder with no readable series is a DataError.
    """
    p = Path(path)
    if p.is_file() or volume_suffix(p):
        if not volume_suffix(p):
            raise DataError(f"{p}: not a volume file; expected {', '.join(VOLUME_SUFFIXES)} or a DICOM folder")
        yield read_nibabel(p, volume_index=volume_index)
        return
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    found, listing = list_series(p, series=series)
    notes += listing
    n_read = 0
    for s in found:
        if s.skip or (series_uid and s.uid != series_uid):
            continue
        try:
            vol = read_series(s)
        except DataError as err:
            notes.append(str(err))
            continue
        n_read += 1
        yield vol  # one series in memory at a time
    if not n_read:
        why = f" ({notes[-1]})" if notes else ""
        raise DataError(f"{p}: no readable 3-D DICOM series{why}")


def read_volumes(path: str | os.PathLike[str], *, volume_index: int | None = None, series: str | None = None,
                 series_uid: str | None = None) -> tuple[list[Volume], list[str]]:
    """All volumes in ``path`` and the notes on what was skipped (see iter_volumes)."""
    notes: list[str] = []
    vols = list(iter_volumes(path, notes, volume_index=volume_index, series=series, series_uid=series_uid))
    return vols, notes


def load_scans(path: str | os.PathLike[str], *, views: tuple[str, ...] | list[str] = ("axial",),
               n_slices: int = DEFAULT_N_SLICES, volume_index: int | None = None, series: str | None = None,
               series_uid: str | None = None, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
               ) -> list[ScanSlices]:
    """Slices of every scan in ``path``: ``n_slices`` per view, evenly spaced inside the foreground extent.

    Notes (4-D, NaN voxels, gaps, obliquity) are attached to their scan; a DICOM folder's notes on skipped
    series and files ride on its first scan.
    """
    folder_notes: list[str] = []
    out: list[ScanSlices] = []
    for vol in iter_volumes(path, folder_notes, volume_index=volume_index, series=series, series_uid=series_uid):
        slices, prep = volume_slices(vol, views=views, n_slices=n_slices, percentiles=percentiles)
        subject, session = identity(path, patient_id=vol.patient_id, session=vol.session)
        out.append(ScanSlices(path=str(path), series_uid=vol.series_uid, content_hash=content_hash(vol.files),
                              subject=subject, session=session, shape=tuple(prep.data.shape),  # type: ignore[arg-type]
                              spacing=prep.spacing, orientation=prep.orientation, slices=slices,
                              notes=vol.notes))
        vol.data = np.empty((0, 0, 0))  # let the raw array go before the next series is read
    if out:
        out[0].notes[:0] = folder_notes  # skipped series and files belong to the folder; shown once
    return out
