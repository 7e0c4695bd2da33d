"""Assemble DICOM series from a folder into :class:`Volume` objects: one per 3-D anatomical series.

pydicom reads every transfer syntax's header, names each SOP class and UID, and delegates compressed pixel data to
optional plugins (pylibjpeg, pyjpegls, gdcm) whose absence it reports, so the only logic written here is the part
no reader does for you: grouping files by SeriesInstanceUID, ordering slices by their position along the slice
normal (ImagePositionPatient . (row cosine x column cosine)), and judging gaps, duplicates and non-volume series.
SimpleITK would also assemble series, but as a 60 MB wheel that hides the per-file decisions we must report.
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurize.errors import DataError
from featurize.volumes.io import Volume

# Series that are not anatomical volumes, by SeriesDescription or ImageType.
_LOCALIZER = re.compile(r"locali[sz]er|scout|survey|3[-_ ]?plane|\bloc\b|aahead|tripilot", re.I)
_FIELDMAP = re.compile(r"field[-_ ]?map|\bfmap\b|b0[-_ ]?map|gre_field", re.I)
_MIN_SLICES = 3
# A step this much larger than the median step between slices is a gap of missing slices.
_GAP_FACTOR = 1.5
# Install hints per compressed transfer syntax (pydicom decodes uncompressed, RLE and deflate on its own).
_PLUGINS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls (or pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "pyjpegls (or pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
}


@dataclass
class Series:
    """Header-only view of one series in a folder; ``skip`` says why it is not read as a volume ('' = read it)."""

    uid: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    headers: list = field(default_factory=list)  # pydicom Datasets read with stop_before_pixels
    skip: str = ""

    @property
    def description(self) -> str:
        return str(self.headers[0].get("SeriesDescription", "")) if self.headers else ""

    @property
    def label(self) -> str:
        """How messages name the series: folder, number and description."""
        number = self.headers[0].get("SeriesNumber", "") if self.headers else ""
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.folder}: series {number}{desc}".replace("series  ", "series ").rstrip()


def looks_like_dicom(path: Path) -> bool:
    """True for a file with the DICOM preamble ('DICM' at byte 128) or a .dcm name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files anywhere under ``folder`` (hidden files and DICOMDIR index files left out)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.name.startswith(".") or p.name.upper() == "DICOMDIR" or not p.is_file():
            continue
        if looks_like_dicom(p):
            out.append(p)
    return out


# pydicom parses a header element only when it is used: a damaged value raises one of these there and then
_HEADER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError, OverflowError,
                  ZeroDivisionError, struct.error)


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


def _is_image(ds) -> bool:  # noqa: ANN001 - pydicom Dataset
    return "Rows" in ds and "Columns" in ds


def _sop_name(ds) -> str:  # noqa: ANN001
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", str(uid)) if uid else "object without SOP class"


def _judge(s: Series, series_regex: re.Pattern | None) -> str:
    """Why ``s`` is not a 3-D anatomical volume, or ''."""
    first = s.headers[0]
    image_type = [str(t).upper() for t in first.get("ImageType", [])]
    desc = s.description
    if "LOCALIZER" in image_type or _LOCALIZER.search(desc):
        return "a localizer, skipped"
    if _FIELDMAP.search(desc) or "FIELDMAP" in image_type:
        return "a field map, skipped"
    if series_regex is not None and not series_regex.search(desc):
        return f"description does not match --series {series_regex.pattern!r}, skipped"
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        return "a multi-frame (enhanced) object, which is not read yet; export it as single-frame slices"
    if int(first.get("SamplesPerPixel", 1) or 1) != 1:
        return "a colour image, not an MR intensity series, skipped"
    if any("ImagePositionPatient" not in h or "ImageOrientationPatient" not in h for h in s.headers):
        return "lacks ImagePositionPatient/ImageOrientationPatient, so slices cannot be placed in 3-D; skipped"
    sizes = {(int(h.Rows), int(h.Columns)) for h in s.headers}
    if len(sizes) > 1:
        return f"mixes image sizes {sorted(sizes)}; skipped"
    orients = {tuple(np.round(np.asarray(h.ImageOrientationPatient, dtype=float), 3)) for h in s.headers}
    if len(orients) > 1:
        return f"mixes {len(orients)} slice orientations (not one stack); skipped"
    if len({str(h.get("SOPInstanceUID", i)) for i, h in enumerate(s.headers)}) < _MIN_SLICES:
        return f"holds {len(s.headers)} image(s), too few for a 3-D volume; skipped"
    return ""


def list_series(folder: str | Path, *, series: str | None = None) -> tuple[list[Series], list[str]]:
    """Every series under ``folder`` from headers only, each judged; plus notes on files that are not images."""
    from pydicom import dcmread
    from pydicom.errors import BytesLengthException, InvalidDicomError

    folder = Path(folder)
    try:
        regex = re.compile(series, re.I) if series else None
    except re.error as exc:
        raise DataError(f"--series {series!r} is not a valid regular expression ({exc})") from None
    notes: list[str] = []
    groups: dict[str, Series] = {}
    non_image: dict[str, list[str]] = defaultdict(list)
    for f in dicom_files(folder):
        try:
            ds = dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, BytesLengthException, OSError, EOFError, *_HEADER_ERRORS) as exc:
            reason = " ".join(str(exc).split()).split(". ")[0][:120] or type(exc).__name__
            notes.append(f"{f}: not a readable DICOM file ({reason}), skipped")
            continue
        try:
            if not _is_image(ds):
                non_image[_sop_name(ds)].append(f.name)
                continue
            uid = str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID in {f.parent.name})"
        except _HEADER_ERRORS as exc:
            notes.append(f"{f}: damaged DICOM header ({_why(exc)}), skipped")
            continue
        groups.setdefault(uid, Series(uid=uid, folder=folder))
        groups[uid].files.append(f)
        groups[uid].headers.append(ds)
    for kind, names in sorted(non_image.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        notes.append(f"{folder}: {len(names)} file(s) are {kind} (not images), skipped: {shown}")
    out = sorted(groups.values(), key=lambda s: (_series_number(s), s.uid))
    for s in out:
        try:
            s.skip = _judge(s, regex)
        except _HEADER_ERRORS as exc:
            s.skip = f"has a damaged header ({_why(exc)}); skipped"
        if s.skip:
            notes.append(f"{s.label} ({len(s.files)} images): {s.skip}")
    return out, notes


def _series_number(s: Series) -> int:
    try:
        return int(s.headers[0].get("SeriesNumber", 0) or 0)
    except _HEADER_ERRORS:
        return 0


def _decode_error(path: Path, ds, exc: BaseException) -> DataError:  # noqa: ANN001
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = ts is not None and bool(ts.is_compressed)
    except _HEADER_ERRORS:  # not even a transfer syntax
        compressed = False
    if compressed:
        plugin = _PLUGINS.get(str(ts), "python-gdcm")
        return DataError(f"{path}: pixel data are compressed as {ts.name} and no installed decoder reads them; "
                         f"pip install {plugin}")
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return DataError(f"{path}: pixel data cannot be decoded ({reason}); the file is damaged or truncated")


def _positions(s: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine and each file's position along the slice normal (mm)."""
    iop = np.asarray(s.headers[0].ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    pos = np.array([float(np.dot(np.asarray(h.ImagePositionPatient, dtype=np.float64), normal)) for h in s.headers])
    return row_cos, col_cos, pos


def read_series(s: Series) -> Volume:
    """Read a judged series into a Volume (LPS positions turned into a RAS affine). Gaps are filled and noted.

    A damaged header value (found only when it is used) is a one-line DataError naming the series."""
    from pydicom.errors import BytesLengthException

    try:
        return _read_series(s)
    except (BytesLengthException, *_HEADER_ERRORS) as exc:
        raise DataError(f"{s.label}: damaged DICOM header or pixel data ({_why(exc)}); re-export the series") from None


def _read_series(s: Series) -> Volume:
    from pydicom import dcmread

    notes: list[str] = []
    row_cos, col_cos, pos = _positions(s)
    order = np.argsort(pos, kind="stable")
    # Duplicates: the same instance copied twice, or two files at one position; keep the first of each.
    kept: list[int] = []
    seen_uid: set[str] = set()
    dup = 0
    for i in order:
        uid = str(s.headers[i].get("SOPInstanceUID", ""))
        if (uid and uid in seen_uid) or (kept and abs(pos[i] - pos[kept[-1]]) < 1e-3):
            dup += 1
            continue
        seen_uid.add(uid)
        kept.append(int(i))
    if dup:
        notes.append(f"{s.label}: {dup} duplicate instance(s) (same SOPInstanceUID or same position) ignored")
    if len(kept) < _MIN_SLICES:
        raise DataError(f"{s.label}: only {len(kept)} distinct slice position(s); not a 3-D volume")
    z = pos[kept]
    steps = np.diff(z)
    step = float(np.median(steps))
    # Each kept file lands on a regular grid; a missing slice leaves an empty grid index between two files.
    if not np.isfinite(z).all() or not step > 0:
        raise DataError(f"{s.label}: slice positions are not finite or do not advance; the headers are damaged")
    grid = np.rint((z - z[0]) / step).astype(int)
    n = int(grid[-1]) + 1
    if n > 4 * len(kept) + 8:  # a lone far-away position would mean gigabytes of interpolated slices
        raise DataError(f"{s.label}: slice positions span {n} slices for {len(kept)} files; the headers are damaged")
    for a, b in zip(kept[:-1], kept[1:]):
        missing = int(round((pos[b] - pos[a]) / step)) - 1
        if (pos[b] - pos[a]) > _GAP_FACTOR * step and missing > 0:
            ia, ib = s.headers[a].get("InstanceNumber", "?"), s.headers[b].get("InstanceNumber", "?")
            notes.append(f"{s.label}: gap of {missing} missing slice(s) between instance {ia} and instance {ib} "
                         f"({pos[b] - pos[a]:.1f} mm apart, slices are {step:.1f} mm apart); "
                         "filled by linear interpolation")
    if np.ptp(steps) > 0.1 * step and not any("gap of" in m for m in notes):
        notes.append(f"{s.label}: slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm; "
                     f"a regular {step:.2f} mm grid is assumed")
    rows, cols = int(s.headers[0].Rows), int(s.headers[0].Columns)
    rescale = {(float(s.headers[i].get("RescaleSlope", 1) or 1), float(s.headers[i].get("RescaleIntercept", 0) or 0))
               for i in kept}
    uniform = len(rescale) == 1
    slope, inter = next(iter(rescale)) if uniform else (1.0, 0.0)
    data: np.ndarray | None = None
    for g, i in zip(grid, kept):
        ds = dcmread(s.files[i])
        try:
            frame = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom raises RuntimeError/NotImplementedError/ValueError per plugin
            raise _decode_error(s.files[i], ds, exc) from None
        if frame.shape != (rows, cols):
            raise DataError(f"{s.files[i]}: pixel data shape {frame.shape} does not match Rows x Columns {rows}x{cols}")
        if not uniform:
            frame = frame.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        if data is None:
            # Fortran order: one slice is contiguous, as in a NIfTI file; voxel (i, j, k) = (column, row, slice).
            data = np.zeros((cols, rows, n), dtype=frame.dtype, order="F")
        data[:, :, g] = frame.T
    assert data is not None
    filled = np.flatnonzero(~np.isin(np.arange(n), grid))
    for k in filled:
        lo, hi = grid[grid < k].max(), grid[grid > k].min()
        w = (k - lo) / (hi - lo)
        mix = (1 - w) * data[:, :, lo].astype(np.float32) + w * data[:, :, hi].astype(np.float32)
        data[:, :, k] = np.rint(mix).astype(data.dtype) if data.dtype.kind in "iu" else mix
    first = np.asarray(s.headers[kept[0]].ImagePositionPatient, dtype=np.float64)
    last = np.asarray(s.headers[kept[-1]].ImagePositionPatient, dtype=np.float64)
    dr, dc = (float(v) for v in s.headers[0].get("PixelSpacing", [1.0, 1.0]))
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc          # column index moves along the row direction by the column spacing
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = (last - first) / max(1, n - 1)
    lps[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient space is LPS; nibabel's is RAS
    h0 = s.headers[kept[0]]
    # Every file of the series is hashed, duplicates too, so the key matches the dataset table's.
    return Volume(data=data, affine=affine, files=tuple(s.files), name=s.label, slope=slope,
                  inter=inter, patient_id=str(h0.get("PatientID", "")).strip(),
                  session=str(h0.get("StudyDate", "")).strip(), series_uid=s.uid, description=s.description,
                  notes=notes)
