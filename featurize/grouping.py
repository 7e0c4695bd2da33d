"""Resolve the subject of every slice: from the manifest, a regex on the path, or inferred from the pixels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from featurize.config import dataset_dir
from featurize.dataset import Dataset
from featurize.errors import DataError

SUBJECT_MODES = "auto | infer | column | regex:PATTERN | none"


def subjects_csv_path(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Where inferred subjects are kept: ``artifacts/<dataset-id>/subjects.csv``."""
    return dataset_dir(dataset_id, artifacts) / "subjects.csv"


def resolve_subjects(ds: Dataset, mode: str = "auto", *, artifacts: str | os.PathLike[str] | None = None,
                     log: Callable[[str], None] = lambda s: None) -> np.ndarray:
    """Subject id per row of ``ds.table``.

    ``auto``: the manifest's subject column when it is filled, else inferred; when the pixels cannot tell
    (too few near-duplicate slices) it logs why and returns no subjects, like ``none``. ``infer``: always inferred
    (reusing ``subjects.csv`` when it covers the same files); cannot tell is a :class:`DataError` (exit 3).
    ``column``, ``regex:PATTERN``, ``none``.
    """
    table = ds.table
    has_column = bool(len(table)) and bool((table["subject"] != "").all())
    mode = (mode or "auto").strip()
    if mode == "none":
        return np.full(len(table), "", dtype=object)
    if mode == "column" or (mode == "auto" and has_column):
        if not has_column:
            raise DataError(f"{ds.root}: --subjects column needs a manifest with a filled subject column; use --subjects auto to infer them")
        return table["subject"].to_numpy(dtype=object)
    if mode.startswith("regex:"):
        from featurize.subjects import subjects_from_regex

        return np.asarray(subjects_from_regex(table["path"].tolist(), mode[len("regex:"):]), dtype=object)
    if mode not in ("auto", "infer"):
        raise DataError(f"unknown --subjects {mode!r}; choose {SUBJECT_MODES}")
    from featurize.subject_inference import SubjectsUndetermined

    try:
        return infer_for_dataset(ds, artifacts, log).subjects
    except SubjectsUndetermined as exc:
        if mode == "infer":
            raise
        # auto: a guess would be worse than nothing, so go on exactly as --subjects none does.
        log(f"{exc}; going on without subjects (as --subjects none): leakage cannot be checked, and "
            "--protocol subject-cv will need them")
        return np.full(len(table), "", dtype=object)


class _Inferred:
    def __init__(self, subjects: np.ndarray, inference: object | None) -> None:
        self.subjects, self.inference = subjects, inference


def infer_for_dataset(ds: Dataset, artifacts: str | os.PathLike[str] | None = None,
                      log: Callable[[str], None] = lambda s: None, force: bool = False) -> _Inferred:
    """Infer subjects by clustering near-duplicate slices, cached in subjects.csv keyed by path and content hash.

    Raises :class:`~featurize.subject_inference.SubjectsUndetermined` (exit 3) when the pixels cannot tell.
    """
    from featurize.subject_inference import SubjectsUndetermined, infer_subjects
    from featurize.subjects import read_subjects_csv, thumbnails, write_subjects_csv

    table = ds.table
    path = subjects_csv_path(ds.dataset_id, artifacts)
    if path.is_file() and not force:
        try:
            old = read_subjects_csv(path)
            lookup = {(p, s): sub for p, s, sub in zip(old["path"], old["sha1"], old["subject"])}
            keys = list(zip(table["path"], table["sha1"]))
            if all(k in lookup for k in keys):
                return _Inferred(np.array([lookup[k] for k in keys], dtype=object), None)
        except (OSError, KeyError, ValueError, DataError):
            log(f"{path}: unreadable, inferring subjects again")
    log(f"inferring subjects from {len(table)} slices (clustering near-duplicates)...")
    X = thumbnails(table["abspath"].tolist())
    try:
        inference = infer_subjects(X)
    except SubjectsUndetermined as exc:
        # Nothing is written: a later run with more slices, or a named subject source, starts clean.
        raise SubjectsUndetermined(f"{ds.root}: {exc}", exc.inference) from None
    subjects = np.asarray(inference.labels, dtype=object)
    write_subjects_csv(path, table["path"].tolist(), table["label"].tolist(), table["split"].tolist(),
                       subjects.tolist(), table["sha1"].tolist())
    log(f"found {inference.n_subjects} subjects (similarity threshold {inference.threshold:.4f}); written to {path}")
    return _Inferred(subjects, inference)


def subjects_for_data(data: str | os.PathLike[str], *, mode: str = "infer", classes: str | list[str] | None = None,
                      artifacts: str | os.PathLike[str] | None = None,
                      log: Callable[[str], None] = lambda s: None) -> tuple[Dataset, object, object | None, Path]:
    """``alzmri subjects``: resolve subjects for a dataset, write subjects.csv, return (dataset, report, inference, csv path)."""
    from featurize.dataset import scan
    from featurize.subjects import subject_report, write_subjects_csv

    ds = scan(data, classes)
    inference = None
    if mode in ("auto", "infer") and not (mode == "auto" and (ds.table["subject"] != "").all()):
        inferred = infer_for_dataset(ds, artifacts, log, force=True)
        subjects, inference = inferred.subjects, inferred.inference
    else:
        subjects = resolve_subjects(ds, mode, artifacts=artifacts, log=log)
        write_subjects_csv(subjects_csv_path(ds.dataset_id, artifacts), ds.table["path"].tolist(), ds.table["label"].tolist(),
                           ds.table["split"].tolist(), list(subjects), ds.table["sha1"].tolist())
    ds.table["subject"] = subjects
    report = subject_report(ds.table["label"].tolist(), list(subjects), ds.table["split"].tolist())
    return ds, report, inference, subjects_csv_path(ds.dataset_id, artifacts)
