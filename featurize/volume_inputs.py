"""Inputs of ``predict`` that are 3-D scans: volume files and DICOM folders, read into slices in the decode threads.

``split_inputs`` sorts what the user named into 2-D image files and scan sources; ``scan_slice_batches`` reads each
scan (a volume file, or every kept series of a DICOM folder) and yields its slices, cut exactly as ``featurize``
cuts them (``featurize.volumes.load_scans``) and resized as a grayscale image file is, in fixed-size batches.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from featurize.dataset import is_image_name
from featurize.errors import DataError
from featurize.volume_featurize import VolumeOptions, scan_id
from featurize.volumes import is_dicom_folder, volume_suffix


def _volume_files(folder: Path) -> list[Path]:
    """Volume files below ``folder``, an Analyze pair once (by its .hdr)."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and volume_suffix(p))
    return _one_per_pair(found)


def _one_per_pair(paths: list[Path]) -> list[Path]:
    stems = {str(p)[: -len(volume_suffix(p))] for p in paths if volume_suffix(p).startswith(".hdr")}
    return [p for p in paths if not (volume_suffix(p).startswith(".img") and str(p)[: -len(volume_suffix(p))] in stems)]


def split_inputs(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[str]]:
    """(image files, scan sources) named by ``inputs``: files directly, and what folders hold.

    A folder holding volume files gives each of them; a folder holding DICOM files is one scan source (each of its
    3-D series is a scan). Images and scans in one call are refused: they are predicted at different levels (an
    image is a slice, a scan is a person)."""
    images: list[str] = []
    scans: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            vols = _volume_files(p)
            imgs = sorted(str(f) for f in p.rglob("*") if is_image_name(f.name) and (f.is_file() or f.is_symlink()))
            if vols:
                scans += [str(v) for v in vols]
            elif not imgs and is_dicom_folder(p):
                scans.append(str(p))
            images += imgs
        elif p.is_file() or p.is_symlink():
            (scans if volume_suffix(p) else images).append(str(p))
        else:
            raise DataError(f"{p}: no such file or folder; pass image files, volume files, DICOM folders or folders of them")
    scans = [str(s) for s in _one_per_pair([Path(s) for s in dict.fromkeys(scans)])]
    if images and scans:
        raise DataError(f"{', '.join(map(str, inputs))}: names both 2-D images ({len(images)}, e.g. {Path(images[0]).name}) "
                        f"and 3-D scans ({len(scans)}, e.g. {Path(scans[0]).name}); an image is one slice and a scan is "
                        "a person, so predict them in separate calls")
    if not images and not scans:
        raise DataError(f"no images or scans found in {', '.join(map(str, inputs))}")
    return images, scans


@dataclass
class ScanInfo:
    """One scan read for predict: its name, subject, notes, and the error that stopped it ('' when read)."""

    name: str
    subject: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""


def scan_slice_batches(sources: Sequence[str], opts: VolumeOptions, size: tuple[int, int], resize: str,
                       batch_size: int, scans: dict[str, ScanInfo]) -> Iterator[tuple[np.ndarray, list[tuple[str, str, int]]]]:
    """Batches of (slices [B,H,W,3], [(scan name, view, index)]) for every scan of ``sources``, read ahead in the
    decode threads. ``scans`` fills with a ScanInfo per scan, in order; an unreadable source becomes one ScanInfo
    with its error and no slices."""
    from featurize.images import fit_gray
    from featurize.pipeline import item_batches
    from featurize.volumes import load_scans

    lock = threading.Lock()
    order: dict[str, list[ScanInfo]] = {}

    def decode(src: str) -> list[tuple[tuple[str, str, int], np.ndarray]]:
        try:
            found = load_scans(src, views=opts.views, n_slices=opts.n_slices, volume_index=opts.volume_index,
                               series=opts.series)
        except DataError as exc:
            with lock:
                order[src] = [ScanInfo(name=src, error=str(exc))]
            return []
        out = []
        infos = []
        for s in found:
            name = scan_id(src, s.series_uid)
            infos.append(ScanInfo(name=name, subject=s.subject, notes=list(s.notes)))
            out += [((name, view, j), fit_gray(arr, size, resize)) for view, j, arr in s.slices]
        with lock:
            order[src] = infos
        return out

    for batch in item_batches(list(sources), decode, batch_size):
        yield batch
    for src in sources:  # in input order, after every source was read
        for info in order.get(src, []):
            scans[info.name] = info
