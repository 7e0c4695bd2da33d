"""``alzmri predict`` on 3-D scans: one row per scan, the mean of its slices' class probabilities.

The scan is cut into slices exactly as ``featurize`` cut the training scans (the views and slice count recorded in
the model, unless given), each slice is classified as the model classifies an image, and the scan's decision is the
class of the mean probability: the subject-level decision of ``classify --by-subject``, here with one scan per row.
The per-slice probabilities ride along in the ``slices`` column (shown by ``--json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from featurize.errors import AlzmriError

Log = Callable[[str], None]


def _options(recorded: dict[str, Any], views: Sequence[str] | None, n_slices: int | None, series: str | None,
             volume_index: int | None) -> Any:
    """The slicing to use: what was given, else what the model recorded (a volume cache's), else the defaults."""
    from featurize.volume_featurize import VolumeOptions
    from featurize.volumes import DEFAULT_N_SLICES

    rec_views = str(recorded.get("volume_views") or "")
    rec_index = int(recorded.get("volume_index", -1) if recorded.get("volume_index") is not None else -1)
    return VolumeOptions(views=tuple(views) if views else tuple(rec_views.split(",")) if rec_views else ("axial",),
                         n_slices=n_slices or int(recorded.get("volume_slices") or DEFAULT_N_SLICES), series=series,
                         volume_index=volume_index if volume_index is not None else (rec_index if rec_index >= 0 else None))


def _slice_probs(model: Path, *, batch_size: int, weights: str | None, progress: bool, log: Log,
                 artifacts: str | os.PathLike[str] | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], list[str], tuple[int, int], str, dict[str, Any]]:
    """(uint8 RGB batch -> probabilities, class names, input size, resize mode, recorded volume settings)."""
    from featurize.images import parse_size

    if model.suffix == ".keras":
        from classify.cnn import load_baseline
        from classify.cnn.data import predict_proba

        net, meta = load_baseline(model)
        gray = meta["color"] == "grayscale"

        def run_keras(images: np.ndarray) -> np.ndarray:
            return predict_proba(net, images[..., :1] if gray else images, batch_size)  # slices are gray: R=G=B

        return run_keras, list(meta["class_names"]), parse_size(meta["image_size"]), meta.get("resize", "stretch"), meta
    if model.suffix == ".joblib":
        from classify.bundle import load_bundle
        from classify.predict import _forward_from_card, _forward_from_tf
        from featurize.backbones import get_backbone

        bundle = load_bundle(model)
        spec = bundle.backbone
        from featurize.config import engines_dir

        size = parse_size(spec["image_size"])
        forward = _forward_from_card(spec, weights, batch_size, engines_dir(artifacts))
        if forward is None:
            forward = _forward_from_tf(spec, get_backbone(spec["backbone"]), weights, batch_size, log)

        def run_head(images: np.ndarray) -> np.ndarray:
            return np.asarray(bundle.predict_proba(forward(images)), dtype=np.float64)

        return run_head, list(bundle.class_names), size, spec.get("resize", "stretch"), spec
    raise AlzmriError(f"{model}: not a model file; pass a .joblib bundle from `alzmri classify` or a .keras model from `alzmri baseline`")


def predict_scans(model: str | os.PathLike[str], sources: Sequence[str], *, batch_size: int = 32,
                  weights: str | None = None, views: Sequence[str] | None = None, n_slices: int | None = None,
                  series: str | None = None, volume_index: int | None = None, by_subject: str | None = None,
                  progress: bool = False, artifacts: str | os.PathLike[str] | None = None,
                  log: Log = lambda s: None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One row per scan of ``sources`` (volume files, DICOM folders): file, subject, n_slices, predicted, p_<class>,
    error, and ``slices`` (view, index, p_<class> per slice). ``views``, ``n_slices``, ``series`` and
    ``volume_index`` default to what the model's training cache recorded. ``by_subject`` also decides per subject (the mean over
    all slices of the subject's scans: several sessions of one person give one decision)."""
    from featurize.progress import progress_bar
    from featurize.volume_inputs import ScanInfo, scan_slice_batches

    path = Path(model).expanduser()
    run, class_names, size, resize, recorded = _slice_probs(path, batch_size=batch_size, weights=weights,
                                                            progress=progress, log=log, artifacts=artifacts)
    opts = _options(recorded, views, n_slices, series, volume_index)
    scans: dict[str, ScanInfo] = {}
    per_scan: dict[str, list[tuple[str, int, np.ndarray]]] = {}
    expected = len(sources) * len(opts.views) * opts.n_slices
    with progress_bar(expected, "predict", enabled=progress) as advance:
        for images, tags in scan_slice_batches(sources, opts, size, resize, batch_size, scans):
            probs = run(images)
            for (name, view, j), p in zip(tags, probs):
                per_scan.setdefault(name, []).append((view, j, p))
            advance(len(tags))
    rows = []
    for name, info in scans.items():
        for note in info.notes:
            log(f"note: {note}")
        got = per_scan.get(name, [])
        mean = np.mean([p for _, _, p in got], axis=0) if got else np.full(len(class_names), np.nan)
        row: dict[str, Any] = {"file": name, "subject": info.subject, "n_slices": len(got),
                               "predicted": class_names[int(np.argmax(mean))] if got else ""}
        row.update({f"p_{c}": round(float(mean[k]), 4) for k, c in enumerate(class_names)})
        row["error"] = info.error
        row["slices"] = [{"view": v, "index": int(j), "predicted": class_names[int(np.argmax(p))],
                          **{f"p_{c}": round(float(p[k]), 4) for k, c in enumerate(class_names)}} for v, j, p in got]
        rows.append(row)
    table = pd.DataFrame(rows)
    subjects = None
    if by_subject:
        subjects = _by_subject(table, per_scan, class_names)
        log(f"{len(subjects)} subject(s) among {int((table['error'] == '').sum())} readable scans")
    return table, subjects


def _by_subject(table: pd.DataFrame, per_scan: dict[str, list[tuple[str, int, np.ndarray]]],
                class_names: list[str]) -> pd.DataFrame:
    rows = []
    ok = table[table["error"] == ""]
    for subject, grp in ok.groupby("subject", sort=False):
        probs = [p for name in grp["file"] for _, _, p in per_scan.get(name, [])]
        if not probs:
            continue
        mean = np.mean(probs, axis=0)
        rows.append({"subject": subject, "n_scans": len(grp), "n_slices": len(probs),
                     "predicted": class_names[int(mean.argmax())],
                     **{f"p_{c}": round(float(mean[k]), 4) for k, c in enumerate(class_names)}})
    return pd.DataFrame(rows)
