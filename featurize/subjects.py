"""Slice thumbnails, subjects from a regex, and how subjects sit across classes and a train/test split.

The inference itself (which thumbnails come from one scan) is in :mod:`featurize.subject_inference`; its public
names are re-exported here. Knowing the subjects exposes a slice-level train/test split that puts one person on both
sides, which inflates the score.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from featurize.errors import DataError
from featurize.subject_inference import (  # noqa: F401 - re-exported: the inference API lived here
    WEAK_SEPARATION,
    SubjectInference,
    SubjectsUndetermined,
    _top_k,
    infer_subjects,
    knn_graph,
    nearest_outside,
    pick_threshold,
)

SUBJECTS_CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "subject", "sha1")
SMALL_CLASS_SUBJECTS = 5


# --------------------------------------------------------------------------------------------------- thumbnails


def _thumbnail(path: str | os.PathLike[str], size: int) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # DCT-domain downscaling: decodes at 1/2..1/8 scale, most of the speed on big JPEGs.
                im.draft("L", (size, size))
            # 16-bit and float scans would be clipped by convert("L"); we standardise anyway, so keep full range.
            im = im.convert("F") if im.mode in ("I", "F") or im.mode.startswith("I;16") else im.convert("L")
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(im, dtype=np.float32).reshape(-1)
    except Exception:  # noqa: BLE001 - any undecodable file is just a NaN row; the caller decides what it means
        return None
    if not np.isfinite(arr).all():
        return None
    return _standardise(arr)


def _standardise(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32) - np.float32(arr.mean(dtype=np.float64))
    sd = float(np.sqrt(np.mean(arr.astype(np.float64) ** 2)))
    # A constant image has no pattern to compare: a zero row, which infer_subjects leaves as its own subject.
    return arr / np.float32(sd) if sd > 1e-6 else np.zeros_like(arr)


def thumbnails(paths: Sequence[str | Path], size: int = 32, n_jobs: int = 2) -> np.ndarray:
    """Grayscale ``size`` x ``size`` thumbnails, each standardised to zero mean and unit std: float32 (N, size*size).

    Files that cannot be decoded give rows of NaN. Decoding runs on ``n_jobs`` threads (PIL releases the GIL).
    """
    if size < 2:
        raise ValueError(f"thumbnail size must be >= 2, not {size}")
    out = np.full((len(paths), size * size), np.nan, dtype=np.float32)
    if not len(paths):
        return out

    def work(i: int) -> None:
        row = _thumbnail(paths[i], size)
        if row is not None:
            out[i] = row

    if n_jobs <= 1:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            # list() re-raises any unexpected error from a worker instead of dropping it.
            list(pool.map(work, range(len(paths)), chunksize=64))
    return out


def thumbnails_from_arrays(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Same as :func:`thumbnails` for in-memory grayscale images (N, H, W) of any numeric dtype."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), not shape {images.shape}")
    out = np.full((len(images), size * size), np.nan, dtype=np.float32)
    for i, img in enumerate(images):
        if not np.isfinite(img).all():
            continue
        im = Image.fromarray(img.astype(np.float32)).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        out[i] = _standardise(np.asarray(im, dtype=np.float32).reshape(-1))
    return out



# ------------------------------------------------------------------------------------------------------ regex


def subjects_from_regex(paths: Sequence[str], pattern: str) -> np.ndarray:
    """Subject per path: the first group of ``re.search(pattern, path)``, or the whole match when it has no group."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--subjects regex:{pattern} is not a valid regular expression ({exc}); "
                        "fix the pattern") from None
    out = np.empty(len(paths), dtype=object)
    for n, p in enumerate(paths):
        text = Path(p).as_posix() if isinstance(p, os.PathLike) else str(p)
        m = rx.search(text)
        subject = (m.group(1) if rx.groups else m.group(0)) if m else None
        if not subject:
            raise DataError(f"{text}: does not match --subjects regex:{pattern} (or matches empty); "
                            "fix the pattern so that every path yields a subject id")
        out[n] = subject
    return out


# ----------------------------------------------------------------------------------------------------- report


@dataclass
class SubjectReport:
    """How slices group into subjects, per class and across a train/test split."""

    n_subjects: int
    slices_min: int
    slices_median: float
    slices_max: int
    subjects_per_class: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)      # subjects whose slices carry different labels
    small_classes: list[str] = field(default_factory=list)  # classes with fewer than SMALL_CLASS_SUBJECTS subjects
    leaked_subjects: int = 0                                # test subjects that also have slices in train
    test_subjects: int = 0
    train_subjects: int = 0


def subject_report(labels: Sequence[str], subjects: Sequence[str], split: Sequence[str] | None = None) -> SubjectReport:
    """Count subjects, slices per subject, subjects per class, label conflicts and train/test leakage."""
    if len(labels) != len(subjects) or (split is not None and len(split) != len(subjects)):
        raise ValueError("labels, subjects and split must have one entry per slice")
    df = pd.DataFrame({"label": [str(x) for x in labels], "subject": [str(x) for x in subjects],
                       "split": [""] * len(subjects) if split is None else [str(x) for x in split]})
    if df.empty:
        return SubjectReport(0, 0, 0.0, 0)
    sizes = df.groupby("subject", sort=False).size().to_numpy()
    per_class = df.groupby("label")["subject"].nunique()
    n_labels = df.groupby("subject")["label"].nunique()
    train = set(df.loc[df["split"] == "train", "subject"])
    test = set(df.loc[df["split"] == "test", "subject"])
    return SubjectReport(
        n_subjects=int(len(sizes)),
        slices_min=int(sizes.min()),
        slices_median=float(np.median(sizes)),
        slices_max=int(sizes.max()),
        subjects_per_class={str(c): int(v) for c, v in per_class.items()},
        conflicts=sorted(str(s) for s in n_labels.index[n_labels.to_numpy() > 1]),
        small_classes=[str(c) for c, v in per_class.items() if v < SMALL_CLASS_SUBJECTS],
        leaked_subjects=len(train & test),
        test_subjects=len(test),
        train_subjects=len(train),
    )


def format_report(report: SubjectReport, inference: SubjectInference | None = None, max_listed: int = 10) -> str:
    """A few human-readable lines; a loud WARNING when test subjects also appear in train."""
    r = report
    lines = [f"subjects: {r.n_subjects}, slices per subject min {r.slices_min} / median {r.slices_median:g}"
             f" / max {r.slices_max}"]
    if inference is not None:
        lo, hi = inference.gap
        gap = (f" (gap {lo:.4f} .. {hi:.4f}, separation {inference.separation:.1f}x)"
               if math.isfinite(lo) and math.isfinite(hi) else "")
        lines.append(f"inferred from pixels: correlation threshold {inference.threshold:.4f}{gap}; {inference.method}")
        if math.isfinite(inference.coverage):
            lines.append(f"near-duplicate links: {inference.coverage:.0%} of slices (adjacent slices correlate "
                         f"{inference.adjacent:.4f} at the median)")
        if inference.separation < WEAK_SEPARATION:
            lines.append(f"warning: the similarity gap is weak (separation {inference.separation:.1f}x"
                         f" < {WEAK_SEPARATION:g}x): subjects may be merged or split; check slices per subject"
                         " or set a threshold by hand")
    if r.subjects_per_class:
        lines.append("subjects per class: " + ", ".join(f"{c} {n}" for c, n in r.subjects_per_class.items()))
    if r.test_subjects or r.train_subjects:
        lines.append(f"split: {r.train_subjects} train subjects, {r.test_subjects} test subjects, "
                     f"{r.leaked_subjects} in both")
    if r.leaked_subjects > 0:
        lines.append(f"WARNING: {r.leaked_subjects} of {r.test_subjects} test subjects also have slices in train. "
                     "This slice-level split puts one person in both train and test, so the official test score is "
                     "inflated; evaluate with --protocol subject-cv.")
    if r.conflicts:
        shown = ", ".join(r.conflicts[:max_listed]) + (" ..." if len(r.conflicts) > max_listed else "")
        lines.append(f"warning: {len(r.conflicts)} subject(s) have slices with different labels: {shown}; one scan has "
                     "one diagnosis, so inferred subjects like these usually mean that different people were merged "
                     "(few slices per person?): check `alzmri subjects`, or pass --subjects column or regex:PATTERN")
    if r.small_classes:
        lines.append(f"warning: class(es) with fewer than {SMALL_CLASS_SUBJECTS} subjects: "
                     + ", ".join(f"{c} ({r.subjects_per_class[c]})" for c in r.small_classes)
                     + "; their scores rest on very few people")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CSV I/O


def write_subjects_csv(path: Path, rel_paths: Sequence[str], labels: Sequence[str], split: Sequence[str],
                       subjects: Sequence[str], sha1: Sequence[str] | None = None) -> None:
    """Write ``path,label,split,subject,sha1`` atomically (temp file in the same folder, then os.replace)."""
    n = len(rel_paths)
    if not (len(labels) == len(split) == len(subjects) == n) or (sha1 is not None and len(sha1) != n):
        raise ValueError("rel_paths, labels, split, subjects and sha1 must have one entry per slice")
    df = pd.DataFrame({"path": list(rel_paths), "label": list(labels), "split": list(split),
                       "subject": list(subjects), "sha1": list(sha1) if sha1 is not None else [""] * n},
                      columns=list(SUBJECTS_CSV_COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_subjects_csv(path: Path) -> pd.DataFrame:
    """Read a file written by :func:`write_subjects_csv`; every column as str, empty cells as ''."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: subjects file not found; rerun with --subjects infer to create it") from None
    except (OSError, ValueError) as exc:
        exc = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)  # one line
        raise DataError(f"{path}: cannot read the subjects file ({exc}); "
                        "delete it and rerun with --subjects infer") from None
    missing = [c for c in ("path", "subject") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: subjects file lacks column(s) {', '.join(missing)}; "
                        "delete it and rerun with --subjects infer")
    for c in SUBJECTS_CSV_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    return df
