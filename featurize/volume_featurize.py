"""``featurize`` on 3-D scans: every (scan, view, slice index) becomes one cache row.

A scan (a volume file or one DICOM series) is read, scaled, reoriented and cut in the decode threads
(``pipeline.item_batches``); its slices go to the engine as arrays, resized exactly as a grayscale image file is.
Rows are keyed by (scan content hash, view, slice index): ``path`` is ``<scan>#<view>/<index>`` and ``sha1`` is
``<content hash>#<view>/<index>``, so a rerun with another view or slice count computes only the rows it lacks, and
the journal resumes an interrupted run as on the 2-D path. Which indices a scan's N slices of a view are (they
depend on its foreground extent, so on its voxels) is remembered in ``artifacts/<dataset-id>/volume_slices.json``:
a rerun whose rows are all cached reads no volume at all.

Subjects come from the scans (BIDS ``sub-`` label, DICOM PatientID, else the file or folder name; sessions of one
subject share it); pixel subject inference is for 2-D slices and is not run here.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from featurize.errors import AlzmriError, DataError
from featurize.options import at_least, choose
from featurize.volume_dataset import DEFAULT_LABEL_COLUMN, VolumeDataset
from featurize.volumes import DEFAULT_N_SLICES, VIEWS, volume_suffix

Log = Callable[[str], None]
# Cache attributes a volume cache adds (2-D caches have none of them); bundles carry them to predict.
VOLUME_KEYS = ("input", "volume_views", "volume_slices", "volume_index")
# Bumped when slicing would choose other indices for the same scan (extent rule, percentiles): old plans are dropped.
PLAN_FORMAT = 1
PLAN_FILE = "volume_slices.json"


@dataclass(frozen=True)
class VolumeOptions:
    """How scans become slices: ``views`` (axial|coronal|sagittal), ``n_slices`` per view, a DICOM ``series``
    regex on SeriesDescription, the BIDS ``label_column`` and the ``volume_index`` of 4-D files (None: the first,
    with a note). Checked when made, before any file is read."""

    views: tuple[str, ...] = ("axial",)
    n_slices: int = DEFAULT_N_SLICES
    series: str | None = None
    label_column: str = DEFAULT_LABEL_COLUMN
    volume_index: int | None = None

    def __post_init__(self) -> None:
        views = tuple(dict.fromkeys(choose("--view", str(v).lower(), VIEWS) for v in (self.views or ("axial",))))
        object.__setattr__(self, "views", views)
        at_least("--slices", self.n_slices, 1)
        if self.volume_index is not None:
            at_least("--volume-index", self.volume_index, 0)
        if self.series:
            try:
                re.compile(self.series)
            except re.error as exc:
                raise AlzmriError(f"--series {self.series!r} is not a valid regular expression ({exc})") from None

    def attrs(self) -> dict[str, Any]:
        """What a volume cache records about how its rows were made."""
        return {"input": "volumes", "volume_views": ",".join(self.views), "volume_slices": int(self.n_slices),
                "volume_index": -1 if self.volume_index is None else int(self.volume_index)}


def holds_volumes(data: str | os.PathLike[str]) -> bool:
    """True when ``data`` (a folder or CSV manifest) names 3-D scans: then it is read by ``scan_volumes``, which
    also refuses a mix of 2-D images and scans. Cheap: names and DICOM preambles only."""
    from featurize.volume_dataset import find_volume_entries, is_bids_root

    src = Path(data).expanduser()
    if src.is_dir():
        return is_bids_root(src) or bool(find_volume_entries(src))
    if src.is_file() and src.suffix.lower() == ".csv":
        try:
            paths = pd.read_csv(src, dtype=str, keep_default_na=False, usecols=lambda c: c.strip().lower() == "path")
        except (ValueError, OSError, pd.errors.ParserError):
            return False  # the 2-D scanner reports what is wrong with the manifest
        for rel in paths.iloc[:, 0] if paths.shape[1] else []:
            p = Path(rel.strip()) if Path(rel.strip()).is_absolute() else src.parent / rel.strip()
            if rel.strip() and (volume_suffix(p) or p.is_dir()):
                return True
    return False


def scan_id(path: str, series_uid: str) -> str:
    """How rows name a scan: its path, plus ``@<SeriesInstanceUID>`` for a DICOM series (a folder may hold several)."""
    return f"{path}@{series_uid}" if series_uid else path


def volume_key(content_hash: str, volume_index: int | None) -> str:
    """The scan content hash, naming the volume of a 4-D file when it is not the first."""
    return content_hash if not volume_index else f"{content_hash}-v{volume_index}"


def slice_key(sid: str, vid: str, view: str, index: int) -> tuple[str, str]:
    """The cache key (path, sha1) of one slice."""
    tag = f"#{view}/{index:04d}"
    return sid + tag, vid + tag


class SlicePlan:
    """Which slice indices a scan's N slices of a view are, by (volume key, view, N); a JSON file per dataset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plans: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self.dirty = False
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") == PLAN_FORMAT:
                self.plans = {str(k): [int(i) for i in v] for k, v in doc.get("plans", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            pass  # no plan, or a damaged one: the scans are read again

    @staticmethod
    def _key(vid: str, view: str, n: int) -> str:
        return f"{vid}|{view}|{n}"

    def get(self, vid: str, view: str, n: int) -> list[int] | None:
        return self.plans.get(self._key(vid, view, n))

    def put(self, vid: str, view: str, n: int, positions: list[int]) -> None:
        with self._lock:  # the decode threads record plans
            key = self._key(vid, view, n)
            if self.plans.get(key) != positions:
                self.plans[key] = list(positions)
                self.dirty = True

    def save(self) -> None:
        """Write the plan atomically, merged with what another run may have written meanwhile."""
        if not self.dirty:
            return
        from featurize.atomic import atomic_path

        merged = SlicePlan(self.path).plans
        merged.update(self.plans)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"format": PLAN_FORMAT, "plans": merged}, sort_keys=True))
        self.dirty = False


def volume_subjects(vds: VolumeDataset, mode: str) -> np.ndarray:
    """Subject per scan: ``auto``/``column`` the scan's own (BIDS, PatientID, name, or the manifest column),
    ``none`` none, ``regex:PATTERN`` from the scan paths; ``infer`` is refused (pixel inference is for 2-D slices)."""
    mode = (mode or "auto").strip()
    table = vds.table
    if mode in ("auto", "column"):
        return table["subject"].to_numpy(dtype=object)
    if mode == "none":
        return np.full(len(table), "", dtype=object)
    if mode.startswith("regex:"):
        from featurize.subjects import subjects_from_regex

        return np.asarray(subjects_from_regex(table["path"].tolist(), mode[len("regex:"):]), dtype=object)
    if mode == "infer":
        raise DataError(f"{vds.root}: holds 3-D scans, whose subjects come from the data (BIDS sub- label, DICOM "
                        "PatientID, else the file or folder name); pixel inference is for 2-D slices: use --subjects auto")
    raise DataError(f"unknown --subjects {mode!r}; choose auto | column | regex:PATTERN | none")


@dataclass
class VolumeJob:
    """One featurize run over the scans of a volume dataset: what to read, the batches, and the rows after."""

    vds: VolumeDataset
    opts: VolumeOptions
    plan: SlicePlan
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        t = self.vds.table
        self.sids = [scan_id(p, u) for p, u in zip(t["path"], t["series_uid"])]
        self.vids = [volume_key(h, self.opts.volume_index) for h in t["content_hash"]]

    @property
    def dataset_id(self) -> str:
        return self.vds.dataset_id

    def _failed(self, i: int, targets: Sequence[Any]) -> bool:
        key = (self.sids[i], self.vids[i])
        return all(key in t.src.failed for t in targets)

    def _missing(self, i: int, targets: Sequence[Any]) -> int | None:
        """Slices of scan ``i`` some target lacks (None: its plan is unknown, so it must be read to tell)."""
        n = 0
        for view in self.opts.views:
            pos = self.plan.get(self.vids[i], view, self.opts.n_slices)
            if pos is None:
                return None
            keys = [slice_key(self.sids[i], self.vids[i], view, j) for j in pos]
            n += sum(any(not t.src.known(k) for t in targets) for k in keys)
        return n

    def todo(self, targets: Sequence[Any]) -> list[int]:
        """Scans to read: not known to have failed, and with slices not yet computed (or not yet planned)."""
        return [i for i in range(len(self.sids)) if not self._failed(i, targets) and self._missing(i, targets) != 0]

    def total(self, todo: list[int], targets: Sequence[Any]) -> int:
        """About how many rows ``todo`` yields (for the progress bar)."""
        return sum(m if (m := self._missing(i, targets)) is not None else len(self.opts.views) * self.opts.n_slices
                   for i in todo)

    def batches(self, todo: list[int], wanted: Callable[[tuple[str, str]], bool], size: tuple[int, int], resize: str,
                batch_size: int) -> Iterator[tuple[np.ndarray, list[tuple[str, str, str]]]]:
        """Batches of (slices [B,H,W,3], [(path, sha1, error)]) for the slices of ``todo`` whose key is ``wanted``.

        A scan that cannot be read yields one failed row (the scan's own path and content hash) with its reason."""
        from featurize.pipeline import item_batches

        table = self.vds.table
        absps, uids = table["abspath"].tolist(), table["series_uid"].tolist()
        w, h = size

        def decode(i: int) -> list[tuple[tuple[str, str, str], np.ndarray]]:
            from featurize.images import fit_gray
            from featurize.volumes import iter_volumes, volume_slices

            sid, vid, o = self.sids[i], self.vids[i], self.opts
            notes: list[str] = []
            try:
                volumes = iter_volumes(absps[i], notes, volume_index=o.volume_index, series_uid=uids[i] or None)
                try:
                    vol = next(volumes)
                finally:
                    volumes.close()
                slices, _ = volume_slices(vol, views=o.views, n_slices=o.n_slices)
                del vol
            except DataError as exc:
                self.notes += notes
                return [((sid, vid, str(exc)), np.zeros((h, w, 3), np.uint8))]
            except (MemoryError, OSError, ValueError) as exc:  # a reader's own failure on a damaged file
                self.notes += notes
                return [((sid, vid, f"{sid}: cannot be read ({type(exc).__name__}: {exc})"),
                         np.zeros((h, w, 3), np.uint8))]
            self.notes += notes
            for view in o.views:
                self.plan.put(vid, view, o.n_slices, [j for v, j, _ in slices if v == view])
            out = []
            for view, j, arr in slices:
                path, sha = slice_key(sid, vid, view, j)
                if wanted((path, sha)):
                    out.append(((path, sha, ""), fit_gray(arr, size, resize)))
            return out

        yield from item_batches(todo, decode, batch_size)

    def dataset(self, targets: Sequence[Any]) -> Any:
        """The rows of this run, as a featurize Dataset: every planned slice, and each scan that failed."""
        from featurize.dataset import Dataset

        t = self.vds.table
        rows = []
        for i in range(len(t)):
            base = {"label": t["label"].iat[i], "split": t["split"].iat[i], "subject": t["subject"].iat[i]}
            plans = [(v, self.plan.get(self.vids[i], v, self.opts.n_slices)) for v in self.opts.views]
            if any(p is None for _, p in plans):
                rows.append({**base, "path": self.sids[i], "sha1": self.vids[i], "abspath": t["abspath"].iat[i]})
                continue
            for view, pos in plans:
                for j in pos:  # type: ignore[union-attr]
                    path, sha = slice_key(self.sids[i], self.vids[i], view, j)
                    rows.append({**base, "path": path, "sha1": sha, "abspath": t["abspath"].iat[i]})
        table = pd.DataFrame(rows, columns=["path", "label", "split", "subject", "sha1", "abspath"])
        return Dataset(root=self.vds.root, source=self.vds.source, table=table, class_names=list(self.vds.class_names),
                       dataset_id=self.vds.dataset_id, problems=list(self.vds.problems) + list(dict.fromkeys(self.notes)))


def volume_arrays(data: str | os.PathLike[str], opts: VolumeOptions, *, size: tuple[int, int], resize: str,
                  gray: bool, classes: str | list[str] | None = None, subjects: str = "auto",
                  artifacts: str | os.PathLike[str] | None = None, progress: bool = True,
                  batch_size: int = 64) -> tuple[Any, np.ndarray, list[str]]:
    """Every slice of every scan of ``data`` as uint8 [N,H,W,C] (C=1 when ``gray``; the slices are gray), for the
    end-to-end CNNs: the Dataset (one row per slice, plus one per unreadable scan), the arrays and the error per row."""
    from featurize.progress import progress_bar

    job = volume_job(data, opts, classes=classes, subjects=subjects, artifacts=artifacts)
    t = job.vds.table
    where = {sid: i for i, sid in enumerate(job.sids)}
    w, h = size
    chunks: list[np.ndarray] = []
    rows: list[dict[str, str]] = []
    errors: list[str] = []
    todo = list(range(len(t)))
    with progress_bar(len(todo) * len(opts.views) * opts.n_slices, "slice", enabled=progress) as advance:
        for images, tags in job.batches(todo, lambda key: True, size, resize, batch_size):
            chunks.append(images[..., :1] if gray else images)
            for path, sha, err in tags:
                i = where[path if err else path.rpartition("#")[0]]
                rows.append({"path": path, "label": t["label"].iat[i], "split": t["split"].iat[i],
                             "subject": t["subject"].iat[i], "sha1": sha, "abspath": t["abspath"].iat[i]})
                errors.append(err)
            advance(len(tags))
    job.plan.save()
    from featurize.dataset import Dataset

    table = pd.DataFrame(rows, columns=["path", "label", "split", "subject", "sha1", "abspath"])
    ds = Dataset(root=job.vds.root, source=job.vds.source, table=table, class_names=list(job.vds.class_names),
                 dataset_id=job.vds.dataset_id, problems=list(job.vds.problems) + list(dict.fromkeys(job.notes)))
    X = np.concatenate(chunks) if chunks else np.zeros((0, h, w, 1 if gray else 3), np.uint8)
    return ds, X, errors


def volume_job(data: str | os.PathLike[str], opts: VolumeOptions, *, classes: str | list[str] | None = None,
               subjects: str = "auto", artifacts: str | os.PathLike[str] | None = None) -> VolumeJob:
    """Scan the volume dataset ``data``, set each scan's subject, and load the dataset's slice plan."""
    from featurize.config import dataset_dir
    from featurize.volume_dataset import scan_volumes

    vds = scan_volumes(data, classes=classes, label_column=opts.label_column, series=opts.series)
    vds.table["subject"] = volume_subjects(vds, subjects)
    return VolumeJob(vds=vds, opts=opts, plan=SlicePlan(dataset_dir(vds.dataset_id, artifacts) / PLAN_FILE))
