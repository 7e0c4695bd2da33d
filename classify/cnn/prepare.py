"""What the CNNs train and test on: a dataset scanned (2-D files or 3-D scans), its subjects resolved, every image
decoded at the network's size, and the protocol's folds (``classify.protocols.folds_for``: the heads' folds)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from classify.cnn.data import Images, decode_images
from classify.cnn.spec import Log, NetSpec
from classify.protocols import Fold, folds_for, has_split
from featurize.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from classify.cnn.run import BaselineConfig
    from featurize.dataset import Dataset

@dataclass
class Prepared:
    """The decoded, labelled rows of a dataset and their protocol folds: everything before training."""

    ds: Dataset
    table: pd.DataFrame  # the dataset's table, unreadable files dropped, in the order of ``images``
    images: Images
    class_names: list[str]
    failed: list[tuple[str, str]]
    folds: list[Fold]
    notes: list[str]
    split_note: str
    volumes: dict[str, Any] = field(default_factory=dict)  # a volume dataset's slicing, for predict (sidecar)


def _split_note(cfg: BaselineConfig, *, given: bool, grouped: bool, n_folds: int) -> str:
    if cfg.protocol == "official":
        if given:
            return "the data's own train/test split"
        return (f"no train/test split in the data: stratified ~20% hold-out {'by subject' if grouped else 'by slice'}, "
                f"seed {cfg.seed}")
    kind = "StratifiedGroupKFold by subject" if cfg.protocol == "subject-cv" else "StratifiedKFold by slice (leaky)"
    return f"{n_folds}-fold {kind}, seed {cfg.seed}"


def prepare(data: str | os.PathLike[str], cfg: BaselineConfig, spec: NetSpec | None = None, *,
            artifacts: str | os.PathLike[str] | None = None, progress: bool = True, log: Log = lambda s: None) -> Prepared:
    """Scan ``data``, resolve subjects, decode every image at the network's size (``spec``'s; None: ``cfg``'s)
    and split the readable rows with ``classify.protocols.folds_for`` (the heads' folds for the same rows and seed)."""
    from featurize.dataset import class_indices, scan
    from featurize.grouping import resolve_subjects
    from featurize.volume_featurize import VolumeOptions, holds_volumes, volume_arrays

    spec = spec or cfg.net_spec(n_classes=0, choice=cfg.weights_choice(artifacts))
    bb = spec.backbone
    volumes = holds_volumes(data)
    if not volumes:
        ds = scan(data, cfg.classes)
        for p in ds.problems:
            log(f"warning: {p}")
        ds.table["subject"] = resolve_subjects(ds, cfg.subjects, artifacts=artifacts, log=log)
    if bb is not None:  # build the base once now so that weight errors come before decoding
        from classify.cnn.models import quiet_build_base

        quiet_build_base(bb, spec.weights, spec.size, seed=cfg.seed)
    if volumes:  # every (scan, view, slice) is a row, its subject the scan's
        ds, X, errors = volume_arrays(data, cfg.volumes or VolumeOptions(), size=spec.size, resize=cfg.resize,
                                      gray=cfg.kind == "scratch", classes=cfg.classes, subjects=cfg.subjects,
                                      artifacts=artifacts, progress=progress)
        for p in ds.problems:
            log(f"warning: {p}")
    else:
        X, errors = decode_images(ds.table["abspath"].tolist(), spec.size, cfg.resize, gray=cfg.kind == "scratch",
                                  progress=progress)
    class_names = list(ds.class_names)
    table = ds.table
    bad = np.array([bool(e) for e in errors], dtype=bool)
    failed = [(p, e) for p, e in zip(table["path"], errors) if e]
    for p, e in failed:
        log(f"skipped {p}: {e}")
    if failed:
        log(f"{len(failed)} of {len(table)} files could not be read and were skipped")
    if bad.all():
        raise DataError(f"{data}: no image could be read ({len(failed)} failed, e.g. {failed[0][0]}: {failed[0][1]})")
    X, table = X[~bad], table[~bad].reset_index(drop=True)
    y = class_indices(table["label"], class_names)
    subj = table["subject"].to_numpy(dtype=object).astype(str)
    groups = subj if len(subj) and all(s != "" for s in subj) else None
    split = table["split"].to_numpy(dtype=object).astype(str)
    folds, notes = folds_for(cfg.protocol, y=y, groups=groups, split=split, seed=cfg.seed, n_splits=cfg.folds,
                             class_names=class_names, source=str(data))
    note = _split_note(cfg, given=has_split(split), grouped=groups is not None, n_folds=len(folds))
    return Prepared(ds=ds, table=table, images=Images(X, y, groups), class_names=class_names, failed=failed,
                    folds=folds, notes=notes, split_note=note,
                    volumes=(cfg.volumes or VolumeOptions()).attrs() if volumes else {})
