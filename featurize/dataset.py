"""Scan an image collection into a manifest table: Kaggle split folders, flat class folders, or a CSV."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featurize.errors import DataError
from featurize.naming import slug

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "test")
# The Kaggle stages, mildest first: shown in this order whenever a dataset uses exactly these names.
SEVERITY_ORDER = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
COLUMNS = ("path", "label", "split", "subject", "sha1")


@dataclass
class Dataset:
    """A scanned collection. ``table`` has one row per readable file, columns COLUMNS plus ``abspath``."""

    root: Path
    source: str
    table: pd.DataFrame
    class_names: list[str]
    dataset_id: str
    problems: list[str] = field(default_factory=list)

    @property
    def has_split(self) -> bool:
        """True when the data came with their own train/test split."""
        return bool((self.table["split"] == "test").any())


def dataset_id(data: str | os.PathLike[str]) -> str:
    """A stable, readable id for a data root or manifest: ``<name>-<8 hex of its absolute path>``."""
    resolved = Path(data).expanduser().resolve()
    stem = resolved.stem if resolved.suffix.lower() == ".csv" else resolved.name
    return f"{slug(stem, default='data')}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def file_sha1(path: str | os.PathLike[str]) -> str:
    """SHA-1 of a file's bytes ("" when it cannot be read)."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def is_image_name(name: str) -> bool:
    """True for visible files with an image extension."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTS


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    # Dangling symlinks are kept on purpose: they fail later with a reason instead of vanishing.
    return sorted(p for p in folder.iterdir() if is_image_name(p.name) and (p.is_file() or p.is_symlink()))


def _scan_folders(root: Path) -> tuple[str, list[dict[str, str]], list[str], list[str]]:
    """Rows from ``ROOT/{train,test}/<Class>/*`` or ``ROOT/<Class>/*``, the source kind, empty classes, classes seen."""
    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    split_dirs = [(s, subdirs[s]) for s in SPLIT_NAMES if s in subdirs]
    rows: list[dict[str, str]] = []
    empty: list[str] = []
    seen: set[str] = set()
    if split_dirs:
        source = "kaggle"
        for split, sdir in split_dirs:
            for cdir in _class_dirs(sdir):
                seen.add(cdir.name)
                files = _images_in(cdir)
                if not files:
                    empty.append(str(cdir))
                rows += [{"abspath": str(f), "path": f.relative_to(root).as_posix(), "label": cdir.name, "split": split} for f in files]
    else:
        source = "folders"
        for cdir in _class_dirs(root):
            seen.add(cdir.name)
            files = _images_in(cdir)
            if not files:
                empty.append(str(cdir))
            rows += [{"abspath": str(f), "path": f.relative_to(root).as_posix(), "label": cdir.name, "split": ""} for f in files]
    return source, rows, empty, sorted(seen)


def _scan_manifest(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of a ``path,label[,split,subject]`` CSV; paths are relative to the CSV's folder. Missing files are problems."""
    try:
        # utf-8-sig: a BOM (Excel writes one) would otherwise stick to the first column's name
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=True)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for a broken CSV
        why = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise DataError(f"{csv_path}: cannot read the manifest ({why}); it must be a CSV with columns path,label[,split,subject]") from None
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)}; it needs path,label and may have split,subject")
    base = csv_path.parent
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(df.to_dict("records"), start=2):
        rel = rec["path"].strip()
        label = rec["label"].strip()
        if not rel or not label:
            problems.append(f"{csv_path}:{i}: empty path or label, row skipped")
            continue
        if "\\" in rel and not (base / rel).exists():  # a manifest written on Windows
            rel = rel.replace("\\", "/")
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if not (p.is_file() or p.is_symlink()):
            problems.append(f"{p}: listed in {csv_path.name} line {i} but missing, row skipped")
            continue
        split = rec.get("split", "").strip().lower()
        if split not in ("", "train", "test"):
            raise DataError(f"{csv_path}:{i}: split must be train, test or empty, not {split!r}")
        key = os.path.normpath(str(p))
        if key in seen:
            problems.append(f"{csv_path}:{i}: {rel} is listed again (first at line {seen[key]}), row skipped")
            continue
        seen[key] = i
        rows.append({"abspath": str(p), "path": rel.replace(os.sep, "/"), "label": label,
                     "split": split, "subject": rec.get("subject", "").strip()})
    return rows, problems


def order_classes(found: list[str], classes: str | list[str] | None = None) -> list[str]:
    """Class order: as given by ``classes``; else severity order for the Kaggle stage names; else alphabetical."""
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if classes:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"--classes does not name {', '.join(unknown)} found in the data; list every class, e.g. --classes {','.join(sorted(found))}")
        return list(classes)
    if found and set(found) <= set(SEVERITY_ORDER):
        return [c for c in SEVERITY_ORDER if c in found]
    return sorted(found)


def scan(data: str | os.PathLike[str], classes: str | list[str] | None = None, hash_files: bool = True) -> Dataset:
    """Scan a data root or CSV manifest into a Dataset with path, label, split, subject and content hash.

    Raises DataError for a missing folder, no images, or fewer than two classes.
    """
    src = Path(data).expanduser()
    if not src.exists():
        raise DataError(f"{src}: no such folder or manifest; pass --data ROOT (class folders) or --data manifest.csv")
    problems: list[str] = []
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise DataError(f"{src}: is a file but not a .csv manifest; pass a folder of class folders or a CSV with path,label")
        rows, problems = _scan_manifest(src)
        source, root, seen = "manifest", src.parent, sorted({r["label"] for r in rows})
    else:
        root = src
        source, rows, empty, seen = _scan_folders(root)
        problems += [f"{e}: empty class folder, ignored" for e in empty]
    _refuse_volumes(src, root, rows)
    if not rows:
        raise DataError(f"{src}: no images found; expected ROOT/<Class>/*.jpg, ROOT/{{train,test}}/<Class>/*.jpg or a CSV manifest (extensions: {', '.join(sorted(IMAGE_EXTS))})")
    table = pd.DataFrame(rows)
    if "subject" not in table.columns:
        table["subject"] = ""
    found = sorted(table["label"].unique())
    if len(found) < 2:
        raise DataError(f"{src}: only one class ({found[0]}) has images; a classifier needs at least two class folders")
    class_names = order_classes(found, classes)
    if hash_files:
        with ThreadPoolExecutor(max_workers=4) as pool:
            table["sha1"] = list(pool.map(file_sha1, table["abspath"]))
    else:
        table["sha1"] = ""
    problems += _label_conflicts(table)
    if source == "kaggle":
        train_classes = set(table.loc[table["split"] == "train", "label"])
        test_only = sorted(set(table.loc[table["split"] == "test", "label"]) - train_classes)
        if test_only:
            problems.append(f"{root}: class(es) {', '.join(test_only)} appear in test but not in train")
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    table = table[["path", "label", "split", "subject", "sha1", "abspath"]]
    return Dataset(root=root.resolve(), source=source, table=table, class_names=class_names,
                   dataset_id=dataset_id(src), problems=problems)


def _refuse_volumes(src: Path, root: Path, rows: list[dict[str, str]]) -> None:
    """3-D scans (NIfTI, Analyze, MGH, DICOM) among or instead of the images: refused, never silently ignored."""
    from featurize.volume_dataset import find_volume_entries, mixed_inputs_error
    from featurize.volumes import volume_suffix

    if src.is_file():
        volumes = [Path(r["abspath"]) for r in rows if volume_suffix(r["abspath"])]
        rows[:] = [r for r in rows if not volume_suffix(r["abspath"])]
    else:
        volumes = find_volume_entries(root)
    if volumes and rows:
        raise mixed_inputs_error(src, [Path(r["abspath"]) for r in rows], volumes)
    if volumes:
        raise DataError(f"{src}: holds 3-D scans ({len(volumes)}, e.g. {volumes[0].name}) and no 2-D images; "
                        "this command reads 2-D slices, and volumes are read by featurize.volume_dataset.scan_volumes")


def _label_conflicts(table: pd.DataFrame) -> list[str]:
    """Identical file content under different labels is a data error: report each such pair."""
    hashed = table[table["sha1"] != ""]
    labels_per_hash = hashed.groupby("sha1")["label"].nunique()
    out = []
    for sha in labels_per_hash[labels_per_hash > 1].index:
        dup = hashed[hashed["sha1"] == sha]
        pairs = ", ".join(f"{p} ({lab})" for p, lab in zip(dup["path"], dup["label"]))
        out.append(f"label conflict: identical image content under different classes: {pairs}")
    return out


def class_indices(labels: pd.Series | np.ndarray, class_names: list[str]) -> np.ndarray:
    """Map label strings to indices in ``class_names``."""
    lookup = {c: i for i, c in enumerate(class_names)}
    return np.array([lookup[x] for x in labels], dtype=np.int64)
