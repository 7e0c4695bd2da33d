"""Read one NIfTI-1/2, Analyze or MGH file into a :class:`Volume` of raw stored values, with bounded memory.

nibabel is the reference reader for these formats: it parses NIfTI-1 and -2, Analyze 7.5 (and SPM's variant with a
scale factor) and FreeSurfer MGH/MGZ headers into one image API with a voxel-to-RAS affine, and its ``dataobj``
proxy reads stored values without scaling (memory-mapped for uncompressed files), so a volume never has to exist as
float64 in memory. Writing those header rules by hand would repeat a well-tested library's work.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurize.errors import DataError

# Suffixes nibabel reads here; .img is listed because users name the data half of an Analyze pair.
VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz", ".mgz", ".mgh")


_LONGEST_FIRST = tuple(sorted(VOLUME_SUFFIXES, key=len, reverse=True))
_LAST_PARTS = tuple({"." + s.rsplit(".", 1)[-1] for s in VOLUME_SUFFIXES})


@dataclass
class Volume:
    """A 3-D volume as stored: ``data`` holds raw values; true value = data * slope + inter."""

    data: np.ndarray
    affine: np.ndarray                 # voxel index -> RAS+ mm
    files: tuple[Path, ...]            # every file whose bytes make the volume (hashed for the cache key)
    name: str                          # what messages call it: a file name or a DICOM series
    slope: float = 1.0
    inter: float = 0.0
    patient_id: str = ""
    session: str = ""
    series_uid: str = ""
    description: str = ""
    notes: list[str] = field(default_factory=list)


def volume_suffix(path: str | os.PathLike[str]) -> str:
    """The volume suffix of ``path`` ('.nii.gz', '.hdr', ...), or '' when it is not a volume name."""
    name = os.path.basename(path).lower()
    if not name.endswith(_LAST_PARTS):
        return ""  # the common case when called on every image of a 2-D dataset
    for suffix in _LONGEST_FIRST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def volume_stem(path: str | os.PathLike[str]) -> str:
    """File name without its volume suffix: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``."""
    name = Path(path).name
    suffix = volume_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else Path(path).stem


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(files: tuple[Path, ...] | list[Path]) -> str:
    """One hash for a scan's bytes, independent of file names and order (a DICOM series is many files)."""
    digests = sorted(file_digest(Path(f)) for f in files)
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha1("\n".join(digests).encode()).hexdigest()


def _pair_files(path: Path) -> tuple[Path, ...]:
    """Both halves of an Analyze/NIfTI pair; the missing half is an error naming it."""
    suffix = volume_suffix(path)
    gz = ".gz" if suffix.endswith(".gz") else ""
    base = str(path)[: len(str(path)) - len(suffix)]
    hdr, img = Path(base + ".hdr" + gz), Path(base + ".img" + gz)
    for p, what in ((hdr, "header"), (img, "image data")):
        if not p.exists():
            # Case differences (".IMG") are common on exports from Windows tools.
            alt = [q for q in p.parent.glob("*") if q.name.lower() == p.name.lower()]
            if alt:
                continue
            raise DataError(f"{path}: Analyze {what} file {p.name} is missing; an Analyze volume is a "
                            f".hdr/.img pair with the same stem, copy both")
    return hdr, img


def _expected_bytes(img) -> tuple[int, int, str]:  # noqa: ANN001 - nibabel image
    """Bytes the header promises (offset + data), and the data file's name."""
    proxy = img.dataobj
    itemsize = np.dtype(proxy.dtype).itemsize
    return int(proxy.offset), int(np.prod(proxy.shape, dtype=np.int64)) * itemsize, str(proxy.file_like)


def _check_size(img, name: str, notes: list[str]) -> None:  # noqa: ANN001
    """An uncompressed data file shorter than its header says is refused here, before any read."""
    try:
        offset, nbytes, data_file = _expected_bytes(img)
    except (AttributeError, TypeError):
        return  # not file-backed (an in-memory image)
    if data_file.lower().endswith((".gz", ".mgz")) or not os.path.isfile(data_file):
        return  # sizes of compressed data are only known by decompressing; read errors are caught instead
    have = os.path.getsize(data_file)
    dims = "x".join(str(d) for d in img.shape)
    if have < offset + nbytes:
        raise DataError(f"{name}: header says {dims} {img.get_data_dtype()} ({offset + nbytes} bytes) but "
                        f"{Path(data_file).name} holds {have} bytes; the header dimensions disagree with the data "
                        "(truncated copy or wrong header): re-export the volume")
    extra = have - (offset + nbytes)
    if extra > 0 and not data_file.lower().endswith(".mgh"):  # MGH keeps scan parameters after the data
        notes.append(f"{name}: {extra} bytes after the {dims} data that the header does not account for; ignored")


def _squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond the third (a (x,y,z,1) NIfTI is 3-D)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _read_error(name: str, exc: BaseException) -> DataError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(f"{name}: the image data cannot be read ({reason}); the file is truncated or damaged, "
                     "re-download or re-export it")


def read_nibabel(path: str | os.PathLike[str], *, volume_index: int | None = None) -> Volume:
    """Read one 3-D volume from a NIfTI-1/2, Analyze or MGH file; a 4-D file gives its ``volume_index``-th volume.

    Raises DataError with a one-line reason for 2-D images, missing halves, short or damaged data.
    """
    import nibabel as nib

    path = Path(path)
    name = str(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise DataError(f"{path}: not a volume file name (expected one of {', '.join(VOLUME_SUFFIXES)})")
    files: tuple[Path, ...] = (path,)
    if suffix in (".hdr", ".img", ".hdr.gz", ".img.gz"):
        files = _pair_files(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    notes: list[str] = []
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, nib.spatialimages.HeaderTypeError,
            ValueError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a damaged header: HeaderDataError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: not a readable NIfTI/Analyze/MGH volume ({reason}); check the file is complete") from None
    shape = _squeeze_shape(img.shape)
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1):
        dims = "x".join(str(d) for d in img.shape)
        raise DataError(f"{path}: is 2-D (shape {dims}), not a volume; put 2-D slices in an image dataset instead")
    if len(shape) > 4:
        raise DataError(f"{path}: has {len(shape)} dimensions ({'x'.join(map(str, shape))}); only 3-D and 4-D volumes are read")
    _check_size(img, name, notes)
    proxy = img.dataobj
    slicer: tuple = (slice(None),) * 3
    if len(shape) == 4:
        n = shape[3]
        if volume_index is None:
            notes.append(f"{path}: 4-D with {n} volumes; using volume 0 (choose another with volume_index)")
            volume_index = 0
        if not 0 <= volume_index < n:
            raise DataError(f"{path}: volume_index {volume_index} is out of range; the file holds volumes 0..{n - 1}")
        slicer = slicer + (volume_index,) + (0,) * (len(img.shape) - 4)
    elif volume_index not in (None, 0):
        raise DataError(f"{path}: is 3-D; volume_index {volume_index} applies only to 4-D files")
    else:
        slicer = slicer + (0,) * (len(img.shape) - 3)
    try:
        if hasattr(proxy, "_get_unscaled"):
            # Stored values (int16 stays int16; mmap for .nii); scaling is applied slab by slab later.
            data = proxy._get_unscaled(slicer) if len(img.shape) > 3 else proxy.get_unscaled()
            slope, inter = float(proxy.slope), float(proxy.inter)
        else:
            data = np.asanyarray(proxy)[slicer]
            slope, inter = 1.0, 0.0
    except (nib.spatialimages.HeaderDataError, ValueError, OverflowError, OSError, EOFError, zlib.error,
            gzip.BadGzipFile) as exc:  # OverflowError: a header whose sizes make a negative mmap length
        raise _read_error(name, exc) from None
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    try:
        data = np.asarray(data).reshape(shape[:3], order="A")
    except ValueError as exc:  # a header whose dimensions hold a zero or do not fit the data
        raise _read_error(name, exc) from None
    if data.dtype.kind == "c":
        raise DataError(f"{path}: holds complex values; export a magnitude image")
    if data.dtype.kind not in "uifb":
        raise DataError(f"{path}: voxel type {data.dtype} is not a number type; export an intensity image")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        notes.append(f"{path}: affine is missing or singular; voxel sizes from the header with a diagonal affine")
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
        affine = np.diag([*np.where(zooms > 0, zooms, 1.0), 1.0])
    return Volume(data=data, affine=affine, files=files, name=name, slope=slope, inter=inter, notes=notes)
