"""From a :class:`Volume` to 2-D uint8 slices: intensity to 8 bits, RAS reorientation, foreground extent, N slices.

Order of work, chosen for memory: the raw volume is scaled to uint8 slab by slab (a float copy of a whole
512x512x400 volume would be 4x its int16 size), reorientation is an axis flip/transpose view of that uint8 array, and
only the chosen slices are resampled. In-plane resampling uses ``scipy.ndimage.zoom`` on each 2-D slice rather than
``nibabel.processing.resample_to_output``, which resamples the whole volume in float64 (8x an int16 volume) to make
all three axes isotropic when each view needs only its own two axes equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurize.errors import DataError
from featurize.volumes.io import Volume

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
# Canonical (RAS) axis each view cuts across: sagittal slices stack along R, coronal along A, axial along S.
_VIEW_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
DEFAULT_PERCENTILES = (0.5, 99.5)
# Percentiles from a strided sample: ~2M voxels pin the 0.5th/99.5th to well under one grey level of 255.
_SAMPLE_VOXELS = 2_000_000
_SLAB_VOXELS = 1_000_000
# A slice belongs to the foreground extent when it holds at least this fraction of the fullest slice's foreground:
# isolated noise voxels above or below the head then do not stretch the extent.
_EXTENT_FRACTION = 0.02
# More than this from the nearest axis and the note says the slices follow the voxel grid, not the anatomy.
_OBLIQUE_DEGREES = 1.0


@dataclass
class Prepared:
    """A volume ready to cut: uint8 in RAS axis order, voxel sizes (mm), per-axis foreground extent."""

    data: np.ndarray                      # uint8, axes R, A, S (a view; may be strided)
    spacing: tuple[float, float, float]
    extent: tuple[tuple[int, int], ...]   # inclusive (first, last) foreground index per axis
    threshold: int                        # Otsu threshold on the uint8 volume
    orientation: str                      # original axis codes, e.g. "LAS"


def _sample(data: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil((data.size / _SAMPLE_VOXELS) ** (1 / 3))))
    return np.asarray(data[::step, ::step, ::step])


def _slab_step(arr: np.ndarray) -> int:
    """Slices along the last axis per slab, so a slab holds about _SLAB_VOXELS voxels."""
    return max(1, _SLAB_VOXELS // max(1, arr.shape[0] * arr.shape[1]))


def to_uint8(vol: Volume, *, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``vol`` to uint8 by robust percentiles (applying slope/intercept); returns the array and its histogram.

    Non-finite voxels become 0 (before scaling) with a note in ``vol.notes``. Raises DataError for a constant volume.
    """
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise DataError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    data = vol.data
    sample = _sample(data).astype(np.float64) * vol.slope + vol.inter
    finite = np.isfinite(sample)
    if not finite.any():
        raise DataError(f"{vol.name}: no finite voxel values (all NaN or inf); the volume is empty or damaged")
    lo, hi = np.percentile(sample[finite], [low, high])
    if hi <= lo:
        lo, hi = float(sample[finite].min()), float(sample[finite].max())
    if hi <= lo:
        raise DataError(f"{vol.name}: every voxel has the value {lo:g}; there is no image to slice")
    out = np.empty(data.shape, dtype=np.uint8, order="F" if data.flags.f_contiguous else "C")
    hist = np.zeros(256, dtype=np.int64)
    gain = np.float32(255.0 / (hi - lo))
    bad = 0
    step = _slab_step(data)
    for k0 in range(0, data.shape[2], step):
        slab = np.asarray(data[:, :, k0:k0 + step], dtype=np.float32)
        if data.dtype.kind == "f":
            nonfinite = ~np.isfinite(slab)
            n_bad = int(nonfinite.sum())
            if n_bad:
                bad += n_bad
                slab[nonfinite] = 0.0
        # In place: each temporary here would be another slab of float32.
        slab *= np.float32(vol.slope)
        slab += np.float32(vol.inter - lo)
        slab *= gain
        np.clip(slab, 0, 255, out=slab)
        np.rint(slab, out=slab)
        u8 = slab.astype(np.uint8)
        out[:, :, k0:k0 + u8.shape[2]] = u8
        hist += np.bincount(u8.reshape(-1), minlength=256)
    if bad:
        vol.notes.append(f"{vol.name}: {bad} NaN/inf voxel(s) set to 0 before scaling")
    return out, hist


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold on a 256-bin histogram: the level maximising between-class variance (values > t are foreground).

    Written out (ten lines of numpy) rather than pulling in scikit-image for one function.
    """
    p = hist.astype(np.float64)
    total = p.sum()
    if total <= 0:
        return 0
    p /= total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def reorient(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Flip/transpose ``arr`` to the closest canonical RAS orientation (nibabel.as_closest_canonical); no copy."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    codes = "".join(nib.aff2axcodes(affine))
    canon = nib.as_closest_canonical(img)
    return np.asanyarray(canon.dataobj), np.asarray(canon.affine), codes


def foreground_extent(arr: np.ndarray, threshold: int) -> tuple[tuple[int, int], ...]:
    """Inclusive (first, last) index per axis of the slices that hold foreground (> ``threshold``)."""
    counts = [np.zeros(n, dtype=np.int64) for n in arr.shape]
    step = _slab_step(arr)
    for k0 in range(0, arr.shape[2], step):
        mask = arr[:, :, k0:k0 + step] > threshold
        counts[0] += mask.sum(axis=(1, 2))
        counts[1] += mask.sum(axis=(0, 2))
        counts[2][k0:k0 + mask.shape[2]] = mask.sum(axis=(0, 1))
    out = []
    for c in counts:
        keep = np.flatnonzero(c >= max(1, _EXTENT_FRACTION * c.max()))
        out.append((int(keep[0]), int(keep[-1])) if len(keep) else (0, len(c) - 1))
    return tuple(out)


def prepare(vol: Volume, *, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> Prepared:
    """Scale, reorient to RAS and find the foreground extent of ``vol`` (notes go to ``vol.notes``)."""
    import nibabel as nib

    u8, hist = to_uint8(vol, percentiles=percentiles)
    angles = np.degrees(nib.affines.obliquity(vol.affine))
    if np.nanmax(np.abs(angles)) > _OBLIQUE_DEGREES:
        vol.notes.append(f"{vol.name}: oblique by up to {np.nanmax(np.abs(angles)):.1f} degrees; slices follow the "
                         "voxel grid of the nearest canonical orientation, not resliced")
    data, affine, codes = reorient(u8, vol.affine)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
    threshold = otsu_threshold(hist)
    if hist[threshold + 1:].sum() == 0:
        raise DataError(f"{vol.name}: no foreground above the background level; the volume looks empty")
    return Prepared(data=data, spacing=spacing, extent=foreground_extent(data, threshold), threshold=threshold,  # type: ignore[arg-type]
                    orientation=codes)


def slice_positions(first: int, last: int, n: int) -> list[int]:
    """``n`` evenly spaced indices in [first, last]: centres of n equal bins, so neither tip (a sliver) is taken."""
    if n < 1:
        raise DataError(f"n_slices must be >= 1, got {n}")
    span = last - first + 1
    idx = first + np.floor((np.arange(n) + 0.5) * span / n).astype(int)
    return [int(i) for i in np.clip(idx, first, last)]


def cut(prep: Prepared, view: str, index: int) -> np.ndarray:
    """The 2-D uint8 slice ``index`` of ``view``, upright (anterior or superior at the top) with square pixels."""
    if view not in _VIEW_AXIS:
        raise DataError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    axis = _VIEW_AXIS[view]
    # Basic indexing is a view; np.take would first copy a non-C-contiguous (F-order or flipped) volume whole.
    arr = prep.data[(slice(None),) * axis + (index,)]
    in_plane = [s for i, s in enumerate(prep.spacing) if i != axis]
    # rot90 turns (first in-plane axis, second) into rows = second axis reversed, so A or S is at the top.
    img = np.ascontiguousarray(np.rot90(arr))
    row_mm, col_mm = in_plane[1], in_plane[0]
    target = min(row_mm, col_mm)
    factors = (row_mm / target, col_mm / target)
    if max(factors) > 1.01:
        from scipy import ndimage

        img = ndimage.zoom(img, factors, order=1, mode="nearest", grid_mode=True)
    return img


def volume_slices(vol: Volume, *, views: tuple[str, ...] | list[str] = ("axial",), n_slices: int = 32,
                  percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                  ) -> tuple[list[tuple[str, int, np.ndarray]], Prepared]:
    """``n_slices`` evenly spaced slices per view within the foreground extent, as (view, index, HxW uint8)."""
    views = tuple(views)
    unknown = [v for v in views if v not in _VIEW_AXIS]
    if unknown or not views:
        raise DataError(f"unknown view(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(VIEWS)}")
    prep = prepare(vol, percentiles=percentiles)
    out: list[tuple[str, int, np.ndarray]] = []
    for view in dict.fromkeys(views):
        first, last = prep.extent[_VIEW_AXIS[view]]
        positions = list(dict.fromkeys(slice_positions(first, last, n_slices)))
        if len(positions) < n_slices:
            vol.notes.append(f"{vol.name}: the {view} extent holds only {len(positions)} slices; "
                             f"{n_slices} were asked, {len(positions)} are taken")
        out += [(view, i, cut(prep, view, i)) for i in positions]
    return out, prep


def contact_sheet(slices: list[tuple[str, int, np.ndarray]], *, columns: int = 8, pad: int = 2) -> np.ndarray:
    """Tile slices into one uint8 image (row-major, in the given order) for a visual check of what was taken."""
    if not slices:
        raise DataError("no slices to tile")
    h = max(s[2].shape[0] for s in slices)
    w = max(s[2].shape[1] for s in slices)
    cols = min(columns, len(slices))
    rows = -(-len(slices) // cols)
    sheet = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.uint8)
    for n, (_, _, img) in enumerate(slices):
        r, c = divmod(n, cols)
        y, x = pad + r * (h + pad) + (h - img.shape[0]) // 2, pad + c * (w + pad) + (w - img.shape[1]) // 2
        sheet[y:y + img.shape[0], x:x + img.shape[1]] = img
    return sheet
