"""Discover 3-D scans under a data root: class folders (optional train/test level), a BIDS tree, or a CSV manifest.

One row per scan (a volume file or one DICOM series), with label, split, subject and session; nothing is decoded
beyond DICOM headers. A root that mixes 2-D images with volumes is refused: a volume becomes many slices under one
subject and one content hash, an image is one slice, and mixing the two would weigh people unequally in every split.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from featurize.dataset import SPLIT_NAMES, dataset_id, is_image_name, order_classes
from featurize.errors import DataError
from featurize.volumes import identity, is_dicom_folder
from featurize.volumes.dicom import list_series, looks_like_dicom
from featurize.volumes.io import content_hash, volume_suffix

COLUMNS: tuple[str, ...] = ("path", "label", "split", "subject", "session", "series_uid", "kind", "content_hash",
                            "abspath")
DEFAULT_LABEL_COLUMN = "diagnosis"
_KINDS = {".nii": "nifti", ".nii.gz": "nifti", ".hdr": "analyze", ".img": "analyze", ".hdr.gz": "analyze",
          ".img.gz": "analyze", ".mgz": "mgh", ".mgh": "mgh"}


@dataclass
class VolumeDataset:
    """Scans found under ``root``: ``table`` has COLUMNS, one row per scan; ``problems`` are one-line notes."""

    root: Path
    source: str            # "folders", "kaggle" (train/test level), "bids" or "manifest"
    table: pd.DataFrame
    class_names: list[str]
    dataset_id: str
    problems: list[str] = field(default_factory=list)


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _one_per_pair(paths: list[Path]) -> list[Path]:
    """An Analyze pair counts once, by its .hdr; other paths pass through."""
    hdr_stems = {str(p)[: -len(volume_suffix(p))] for p in paths if volume_suffix(p).startswith(".hdr")}
    return [p for p in paths if not (volume_suffix(p).startswith(".img") and str(p)[: -len(volume_suffix(p))] in hdr_stems)]


def _volume_files(folder: Path) -> list[Path]:
    """Volume files under ``folder``."""
    return _one_per_pair(sorted(p for p in folder.rglob("*") if _visible(p) and p.is_file() and volume_suffix(p)))


def _images_2d(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))


def _mixed_error(src: Path, images: list[Path], volumes: list[Path]) -> DataError:
    return DataError(f"{src}: holds both 2-D images ({len(images)}, e.g. {images[0].name}) and 3-D scans "
                     f"({len(volumes)}, e.g. {volumes[0].name}); a dataset is one or the other, because a volume "
                     "becomes many slices of one subject and an image is one slice: use separate --data roots")


def _dicom_rows(folder: Path, base: dict[str, str], problems: list[str], series: str | None) -> list[dict[str, str]]:
    """One row per kept series of a DICOM folder; skipped series become problems."""
    found, notes = list_series(folder, series=series)
    problems += notes
    rows = []
    for s in found:
        if s.skip:
            continue
        h = s.headers[0]
        subject, session = identity(folder, patient_id=str(h.get("PatientID", "")).strip(),
                                    session=str(h.get("StudyDate", "")).strip())
        rows.append({**base, "subject": subject, "session": session, "series_uid": s.uid, "kind": "dicom",
                     "_files": s.files})
    if not rows and not any(s.skip for s in found):
        problems.append(f"{folder}: no DICOM image series found, skipped")
    return rows


def _scan_rows(target: Path, root: Path, label: str, split: str, problems: list[str], series: str | None,
               ) -> list[dict[str, str]]:
    """Rows for one entry of a class folder or manifest: a volume file, a folder of volumes, or a DICOM folder."""
    rel = target.relative_to(root).as_posix() if target.is_relative_to(root) else str(target)
    base = {"abspath": str(target), "path": rel, "label": label, "split": split}
    if target.is_file() or volume_suffix(target):
        suffix = volume_suffix(target)
        files = [target]
        if suffix.startswith((".hdr", ".img")):
            stem = str(target)[: -len(suffix)]
            hdr, img = Path(stem + suffix.replace(".img", ".hdr")), Path(stem + suffix.replace(".hdr", ".img"))
            if not hdr.exists():
                problems.append(f"{target}: Analyze image data without its .hdr header, skipped; copy the .hdr next to it")
                return []
            if not img.exists():
                problems.append(f"{target}: Analyze header without its .img data, skipped; copy the .img next to it")
                return []
            files = [hdr, img]  # both halves make the content hash: headers alone are often identical
        subject, session = identity(target)
        return [{**base, "subject": subject, "session": session, "series_uid": "", "kind": _KINDS[suffix],
                 "_files": files}]
    vols = _volume_files(target)
    if vols:
        return [r for v in vols for r in _scan_rows(v, root, label, split, problems, series)]
    if is_dicom_folder(target):
        return _dicom_rows(target, base, problems, series)
    return []


def _class_entries(cdir: Path) -> list[Path]:
    # scandir's cached entry types: no stat per image when a 2-D dataset is checked for volumes.
    with os.scandir(cdir) as it:
        found = [Path(e.path) for e in it if not e.name.startswith(".") and (volume_suffix(e.name) or e.is_dir())]
    return _one_per_pair(sorted(found))


def _scan_class_folders(root: Path, problems: list[str], series: str | None) -> tuple[str, list[dict]]:
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and _visible(p)}
    splits = [(s, subdirs[s]) for s in SPLIT_NAMES if s in subdirs]
    parts = splits or [("", root)]
    rows: list[dict] = []
    for split, sdir in parts:
        for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and _visible(p)):
            found = [r for e in _class_entries(cdir) for r in _scan_rows(e, root, cdir.name, split, problems, series)]
            loose = [p for p in cdir.iterdir() if p.is_file() and _visible(p) and not volume_suffix(p)
                     and not is_image_name(p.name) and looks_like_dicom(p)]
            if loose:
                problems.append(f"{cdir}: {len(loose)} DICOM file(s) directly in the class folder, ignored; put each "
                                "scan's files in its own folder, ROOT/<Class>/<subject>/*.dcm")
            if not found:
                problems.append(f"{cdir}: no volumes or DICOM series in this class folder, ignored")
            rows += found
    return ("kaggle" if splits else "folders"), rows


def is_bids_root(root: Path) -> bool:
    """A BIDS root: dataset_description.json or participants.tsv beside sub-* folders."""
    has_subjects = any(p.is_dir() and p.name.startswith("sub-") for p in root.iterdir())
    return has_subjects and ((root / "dataset_description.json").exists() or (root / "participants.tsv").exists())


def _scan_bids(root: Path, label_column: str, problems: list[str]) -> list[dict]:
    tsv = root / "participants.tsv"
    if not tsv.exists():
        raise DataError(f"{root}: BIDS root without participants.tsv; labels come from its {label_column!r} column")
    try:
        parts = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for a broken table
        raise DataError(f"{tsv}: cannot read the participants table ({exc})") from None
    if "participant_id" not in parts.columns:
        raise DataError(f"{tsv}: lacks the participant_id column that BIDS requires")
    if label_column not in parts.columns:
        cols = ", ".join(c for c in parts.columns if c != "participant_id")
        raise DataError(f"{tsv}: no column {label_column!r} for labels; choose one with --label-column ({cols})")
    labels = {pid.strip().removeprefix("sub-"): lab.strip() for pid, lab in zip(parts["participant_id"], parts[label_column])}
    split_of = {}
    if "split" in parts.columns:
        split_of = {pid.strip().removeprefix("sub-"): s.strip().lower() for pid, s in zip(parts["participant_id"], parts["split"])}
    rows: list[dict] = []
    anat = sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*"))
    for f in anat:
        if volume_suffix(f) not in (".nii", ".nii.gz"):
            continue
        subject, session = identity(f.relative_to(root))
        label = labels.get(subject, "")
        if label in ("", "n/a", "NA"):
            why = "is not in participants.tsv" if subject not in labels else f"has no {label_column}"
            problems.append(f"{f}: sub-{subject} {why}, skipped")
            continue
        split = split_of.get(subject, "")
        if split not in ("", "train", "test"):
            raise DataError(f"{tsv}: split of sub-{subject} must be train, test or empty, not {split!r}")
        rows.append({"abspath": str(f), "path": f.relative_to(root).as_posix(), "label": label, "split": split,
                     "subject": subject, "session": session, "series_uid": "", "kind": "nifti", "_files": [f]})
    return rows


def _scan_manifest(csv_path: Path, problems: list[str], series: str | None) -> list[dict]:
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for a broken CSV
        raise DataError(f"{csv_path}: cannot read the manifest ({exc}); it must be a CSV with columns path,label") from None
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)}; it needs path,label")
    base = csv_path.parent
    rows: list[dict] = []
    images: list[Path] = []
    for i, rec in enumerate(df.to_dict("records"), start=2):
        rel, label = rec["path"].strip(), rec["label"].strip()
        if not rel or not label:
            problems.append(f"{csv_path}:{i}: empty path or label, row skipped")
            continue
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if not p.exists():
            problems.append(f"{p}: listed in {csv_path.name} line {i} but missing, row skipped")
            continue
        if p.is_file() and is_image_name(p.name):
            images.append(p)
            continue
        split = rec.get("split", "").strip().lower()
        if split not in ("", "train", "test"):
            raise DataError(f"{csv_path}:{i}: split must be train, test or empty, not {split!r}")
        found = _scan_rows(p, base, label, split, problems, series)
        if not found:
            problems.append(f"{p}: listed in {csv_path.name} line {i} but holds no volume or DICOM series, skipped")
        for r in found:
            r["path"] = rel.replace(os.sep, "/") if r["abspath"] == str(p) else r["path"]
            for col in ("subject", "session"):
                if rec.get(col, "").strip():
                    r[col] = rec[col].strip()
        rows += found
    if images and rows:
        raise _mixed_error(csv_path, images, [Path(r["abspath"]) for r in rows])
    if images:
        raise DataError(f"{csv_path}: lists 2-D images, not volumes; scan it as an image dataset")
    return rows


def find_volume_entries(root: str | os.PathLike[str]) -> list[Path]:
    """Volume files and DICOM folders in the class folders of ``root`` (with or without a train/test level).

    Cheap (names and DICOM preambles only): the 2-D scanner calls it so that volumes are never silently ignored.
    """
    root = Path(root)
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and _visible(p)}
    parts = [subdirs[s] for s in SPLIT_NAMES if s in subdirs] or [root]
    found: list[Path] = []
    for sdir in parts:
        for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and _visible(p)):
            for entry in _class_entries(cdir):
                if entry.is_dir():
                    if _volume_files(entry) or is_dicom_folder(entry):
                        found.append(entry)
                else:
                    found.append(entry)
    return found


def mixed_inputs_error(src: str | os.PathLike[str], images: list[Path], volumes: list[Path]) -> DataError:
    """The error for a dataset holding both 2-D images and 3-D scans."""
    return _mixed_error(Path(src), images, volumes)


def scan_volumes(data: str | os.PathLike[str], *, classes: str | list[str] | None = None,
                 label_column: str = DEFAULT_LABEL_COLUMN, series: str | None = None,
                 hash_files: bool = True) -> VolumeDataset:
    """One row per scan under ``data`` (class folders, BIDS root or CSV manifest), with label, split, subject, session.

    ``series`` keeps DICOM series whose SeriesDescription matches the regex. Raises DataError for a missing root,
    no scans, one class only, or a mix of 2-D images and 3-D scans.
    """
    src = Path(data).expanduser()
    if not src.exists():
        raise DataError(f"{src}: no such folder or manifest; pass a folder of class folders, a BIDS root or a CSV")
    problems: list[str] = []
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise DataError(f"{src}: is a file but not a .csv manifest; pass a folder or a CSV with path,label")
        source, root, rows = "manifest", src.parent, _scan_manifest(src, problems, series)
    elif is_bids_root(src):
        source, root, rows = "bids", src, _scan_bids(src, label_column, problems)
    else:
        root = src
        source, rows = _scan_class_folders(src, problems, series)
        images = _images_2d(src)
        if images and rows:
            raise _mixed_error(src, images, [Path(r["abspath"]) for r in rows])
        if images:
            raise DataError(f"{src}: holds 2-D images and no volumes; it is an image dataset, not a volume one")
    if not rows:
        raise DataError(f"{src}: no 3-D scans found; expected ROOT/<Class>/<scan>.nii.gz, ROOT/<Class>/<subject>/*.dcm, "
                        "a BIDS root with participants.tsv, or a CSV manifest naming volumes or DICOM folders")
    files = [r.pop("_files") for r in rows]
    table = pd.DataFrame(rows)
    if hash_files:
        with ThreadPoolExecutor(max_workers=4) as pool:
            table["content_hash"] = list(pool.map(content_hash, files))
    else:
        table["content_hash"] = ""
    found = sorted(table["label"].unique())
    if len(found) < 2:
        raise DataError(f"{src}: only one class ({found[0]}) has scans; a classifier needs at least two classes")
    problems += _conflicts(table)
    table = table.sort_values(["path", "series_uid"], kind="stable").reset_index(drop=True)[list(COLUMNS)]
    return VolumeDataset(root=root.resolve(), source=source, table=table, class_names=order_classes(found, classes),
                         dataset_id=dataset_id(src), problems=problems)


def _conflicts(table: pd.DataFrame) -> list[str]:
    """Identical scans, or one subject, under different labels: each is a one-line problem."""
    out = []
    for col, what in (("content_hash", "identical scan content"), ("subject", "one subject")):
        keyed = table[table[col] != ""]
        n_labels = keyed.groupby(col)["label"].nunique()
        for key in n_labels[n_labels > 1].index:
            dup = keyed[keyed[col] == key]
            pairs = ", ".join(f"{p} ({lab})" for p, lab in zip(dup["path"], dup["label"]))
            out.append(f"label conflict: {what} under different classes: {pairs}")
    return out
