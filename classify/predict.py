"""``alzmri predict``: classify new slices with a saved head bundle (.joblib), an end-to-end model (.keras) or an
ONNX export (.onnx, ``onnx_predict``).

It needs only the model file: the backbone is rebuilt from the spec saved in the bundle and verified against
the saved weights checksum, so features are computed exactly as they were for training.

A subject-level bundle (``classify.subject_level``) decides per person: ``--by-subject`` is then required, each
person's readable slices are pooled as in training, and the answer is one row per person. A fused bundle
(``classify.fusion``) runs every part's backbone and joins their features in training order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from featurize.dataset import is_image_name
from featurize.errors import AlzmriError, DataError, WeightsError
from featurize.options import at_least

Log = Callable[[str], None]


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Image files named directly, plus every image file below named folders (sorted)."""
    files: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*") if is_image_name(f.name) and (f.is_file() or f.is_symlink()))
        elif p.is_file() or p.is_symlink():
            files.append(str(p))
        else:
            raise DataError(f"{p}: no such image or folder; pass image files or folders of images")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def _weights_arg(tag: str, weights: str | None, backbone: str = "") -> str:
    """What to load for weights labelled ``tag``: given ``--weights`` wins, else the built-ins and the weights
    catalog's entry of that tag (``featurize.weights_catalog.resolve_tag``)."""
    from featurize.weights_catalog import resolve, resolve_tag

    if weights:  # a catalog name, a path, imagenet or none
        return resolve(weights, backbone or None).load
    got = resolve_tag(tag, backbone) if backbone else {"imagenet": "imagenet", "random-init": "none"}.get(tag)
    if got is None:
        raise WeightsError(f"this model was trained on features from a weights file ({tag}); pass the same file with "
                           "--weights PATH, or the weights catalog name it came from")
    return got


def _weights_tag(tag: str, weights: str | None, backbone: str) -> str:
    """The tag featurize gives the weights that would be loaded now (a file by its SHA-256, under the bundle's
    catalog name when it has one)."""
    from featurize.backbones import weights_tag

    load = _weights_arg(tag, weights, backbone)
    name = tag.rpartition("-")[0]
    if load not in ("imagenet", "none") and name and name != "file":
        from featurize.backbones import file_sha256

        return f"{name}-{file_sha256(load)[:10]}"
    return weights_tag(load)


def bundle_features(spec: dict[str, Any], files: list[str], *, batch_size: int = 32, weights: str | None = None,
                    progress: bool = False, engines: str | os.PathLike[str] | None = None,
                    log: Log = lambda s: None) -> tuple[np.ndarray, list[str]]:
    """Run the bundle's backbone on ``files`` in memory: from the model card and verified ONNX export in ``engines``
    when they match the bundle's weights checksum (no TF), else rebuilt with TF, refusing mismatched weights.

    Returns features (rows of unreadable files are NaN) and the error per file ("" when fine).
    """
    from featurize.backbones import get_backbone
    from featurize.pipeline import image_batches
    from featurize.progress import progress_bar
    from featurize.spec import FeatureSpec

    bb = get_backbone(spec["backbone"])
    size = FeatureSpec.from_attrs(spec).size
    forward = _forward_from_card(spec, weights, batch_size, engines) if engines is not None else None
    if forward is None:
        forward = _forward_from_tf(spec, bb, weights, batch_size, log)
    feats: list[np.ndarray] = []
    errors: list[str] = []
    with progress_bar(len(files), "predict", enabled=progress) as advance:
        for images, e in image_batches(files, size, spec.get("resize", "stretch"), batch_size):
            out = forward(images)
            out[[bool(x) for x in e]] = np.nan
            feats.append(out)
            errors += e
            advance(len(e))
    return np.concatenate(feats), errors


def card_settings(spec: dict[str, Any], weights: str | None) -> dict[str, Any] | None:
    """The settings a model card of the bundle's backbone ``spec`` is filed under, with the weights given now
    labelled as featurize labels them (a file by its SHA-256); None when those weights cannot be resolved."""
    try:
        tag = _weights_tag(str(spec["weights"]), weights, str(spec["backbone"]))
    except WeightsError:
        return None
    return {"backbone": spec["backbone"], "weights": tag, "image_size": spec["image_size"],
            "pooling": spec.get("pooling", "avg"), "precision": spec.get("precision"),
            "preprocess": spec.get("preprocess") or ""}


def _forward_from_card(spec: dict[str, Any], weights: str | None, batch_size: int,
                       engines: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The backbone from the model card and verified ONNX export that featurize left in ``engines`` (no TF), for
    exactly the bundle's layer taps (cut out of a multi-choice pass when needed) and for exactly the weights the head
    was trained on; else None."""
    from featurize.modelcard import cached_forward_for

    settings = card_settings(spec, weights)
    if settings is None:
        return None
    got = cached_forward_for(engines, settings, str(spec.get("layers") or "last"), int(spec.get("seed", 0) or 0), "auto",
                             batch_size)
    if got is None or got[1] != spec.get("weights_sha256"):
        return None  # the TF path rebuilds the backbone and says what differs
    return got[0]


def _forward_from_tf(spec: dict[str, Any], bb: Any, weights: str | None, batch_size: int,
                     log: Log = lambda s: None) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled TF forward pass of ``backbone_model``."""
    from featurize.pipeline import make_forward

    return make_forward(*backbone_model(spec, bb, weights, log), batch_size)


def backbone_model(spec: dict[str, Any], bb: Any, weights: str | None,
                   log: Log = lambda s: None) -> tuple[Any, Callable[[Any], Any]]:
    """(Keras feature model, preprocess) rebuilt with TF (``extractor.build``) with the bundle's layer taps and its
    weights' preprocessing; refuses other weights than the head was trained on.

    A bundle made by alzmri 0.1.0 from a mid-layer cache recorded the checksum of a truncated model: it is accepted
    when it is that of these very weights (``backbones.prefix_checksums``)."""
    from featurize.devices import precision_policy
    from featurize.extractor import build

    choice = str(spec.get("layers") or "last").replace("+", ",")  # a layer tag names its taps; build resolves them
    with precision_policy(str(spec.get("precision") or "float32")):  # the cache's policy: the head saw those features
        model, preprocess, _, got, legacy = build(bb, _weights_arg(str(spec["weights"]), weights, bb.name), spec,
                                                  [choice], int(spec.get("seed", 0) or 0))
    want = str(spec.get("weights_sha256") or "")
    if want and got != want:
        if want not in legacy[0]:
            raise WeightsError(f"the {bb.name} weights loaded now (sha256 {got[:12]}) differ from those the model was "
                               f"trained on ({want[:12]}); features would not match, so predict refuses")
        log(f"the model records the checksum of a truncated {bb.name} (alzmri 0.1.0); verified: same weights")
    return model, preprocess


def predict_paths(model: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *, batch_size: int = 32,
                  weights: str | None = None, by_subject: str | None = None, progress: bool = False,
                  artifacts: str | os.PathLike[str] | None = None, log: Log = lambda s: None,
                  explain: str | os.PathLike[str] | None = None, explain_method: str = "auto",
                  **volume_options: Any) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Predict every image in ``inputs``: a table of file, predicted class, per-class probabilities, error.

    ``by_subject`` (``folder``: the folder holding a slice is its person; ``infer``; or ``regex:PATTERN``) also
    returns one decision per subject: from the mean of its slices' probabilities for a slice-level model, from the
    pooled slice features for a subject-level one (whose slice table then has no per-slice prediction). Volume files
    and DICOM folders give one row per scan instead (``classify.volume_predict.predict_scans``, which takes the
    ``volume_options``). A bundle's backbone runs from the model cards and exports in ``artifacts``'s engines folder
    (``$ALZMRI_ARTIFACTS``, else ./artifacts) when one matches its weights checksum, else with TF. ``explain`` (a
    folder; .joblib bundles) writes heatmaps (classify.explain).
    """
    at_least("--batch-size", batch_size, 1)
    from featurize.volume_inputs import split_inputs

    images, scans = split_inputs(inputs)
    if scans:
        from classify.volume_predict import predict_scans

        return predict_scans(model, scans, batch_size=batch_size, weights=weights, by_subject=by_subject,
                             progress=progress, artifacts=artifacts, log=log, **volume_options)
    files = expand_inputs(images)
    path = Path(model).expanduser()
    if path.suffix == ".keras":
        from classify.cnn import load_baseline, predict_files

        _, meta = load_baseline(path)
        class_names = list(meta["class_names"])
        probs, errors = predict_files(path, files, batch_size=batch_size)
    elif path.suffix == ".joblib":
        from classify.bundle import load_bundle
        from featurize.config import engines_dir

        bundle = load_bundle(path)
        class_names = list(bundle.class_names)
        if str(getattr(bundle, "level", "slice")).startswith("subject") and not by_subject:
            _predict_subjects(bundle, [], np.zeros((0, 0)), [], by_subject, log)  # refuses before any feature is computed
        engines = engines_dir(artifacts)
        X, errors = _bundle_inputs(bundle, files, batch_size=batch_size, weights=weights, progress=progress,
                                   engines=engines, log=log)
        if str(getattr(bundle, "level", "slice")).startswith("subject"):
            return _predict_subjects(bundle, files, X, errors, by_subject, log)
        probs = np.full((len(files), len(class_names)), np.nan)
        ok = np.array([not e for e in errors])
        if ok.any():
            probs[ok] = bundle.predict_proba(X[ok])
    elif path.suffix == ".onnx":  # a shared export: ONNX Runtime only, no TF, no pickle, no key
        from classify.onnx_predict import predict_files as onnx_files

        probs, errors, class_names = onnx_files(path, files, batch_size=batch_size, progress=progress)
    else:
        raise AlzmriError(f"{path}: not a model file; pass a .joblib bundle from `alzmri classify`, a .keras model from "
                          "`alzmri baseline` or a .onnx file from `alzmri export`")
    table = _table(files, probs, errors, class_names)
    subjects = _by_subject(table, files, probs, class_names, by_subject, log) if by_subject else None
    if path.suffix == ".joblib":  # the bundle's per-subject prediction sets, if it has them
        from classify.conformal import bundle_sets

        subjects = bundle_sets(bundle, subjects, table, X, ok, log)
    if explain:
        from classify.explain import explain_files

        explain_files(bundle if path.suffix == ".joblib" else None, files, table, explain, method=explain_method,
                      batch_size=batch_size, weights=weights, engines=engines if path.suffix == ".joblib" else None, log=log)
    return table, subjects


def _bundle_inputs(bundle: Any, files: list[str], **kw: Any) -> tuple[np.ndarray, list[str]]:
    """The head's input features: the bundle's one backbone, or every part of a fused bundle side by side."""
    specs = list(getattr(bundle, "parts", ()) or ()) or [bundle.backbone]
    blocks, errors = [], [""] * len(files)
    for spec in specs:
        X, e = bundle_features(spec, files, **kw)
        blocks.append(X)
        errors = [a or b for a, b in zip(errors, e)]
    X = np.hstack(blocks)
    X[[bool(e) for e in errors]] = np.nan
    return X, errors


def _predict_subjects(bundle: Any, files: list[str], X: np.ndarray, errors: list[str], mode: str | None,
                      log: Log) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A subject-level bundle: pool each person's readable slices, one decision per person."""
    from classify.subject_level import pool_for_predict

    if not mode:
        raise AlzmriError(f"this model decides per person ({bundle.level}); pass --by-subject folder (one folder per "
                          "person), infer, or regex:PATTERN")
    subjects = _subject_ids(files, mode)
    ok = np.array([not e for e in errors])
    table = pd.DataFrame({"file": files, "subject": subjects, "error": errors})
    names, rows, counts = pool_for_predict(X, subjects, bundle.pooling, ok)
    probs = bundle.predict_proba(rows) if len(rows) else np.zeros((0, len(bundle.class_names)))
    out = pd.DataFrame({"subject": names, "n_slices": counts,
                        "predicted": [bundle.class_names[int(i)] for i in probs.argmax(axis=1)] if len(rows) else []})
    for j, c in enumerate(bundle.class_names):
        out[f"p_{c}"] = np.round(probs[:, j], 4)
    log(f"{len(out)} subject(s) among {int(ok.sum())} readable slices, each decided from its pooled slices "
        f"({bundle.pooling.describe()})")
    return table, out


def _subject_ids(files: list[str], mode: str) -> np.ndarray:
    from featurize.subjects import infer_subjects, subjects_from_regex, thumbnails

    if mode.startswith("regex:"):
        return np.asarray(subjects_from_regex(files, mode[len("regex:"):]), dtype=object)
    if mode == "folder":
        return np.asarray([str(Path(f).parent) for f in files], dtype=object)
    if mode in ("infer", "auto"):
        return np.asarray(infer_subjects(thumbnails(files)).labels, dtype=object)
    raise AlzmriError(f"unknown --by-subject {mode!r}; use folder, infer or regex:PATTERN")


def _table(files: list[str], probs: np.ndarray, errors: list[str], class_names: list[str]) -> pd.DataFrame:
    ok = ~np.isnan(probs).any(axis=1)
    pred = np.where(ok, np.array(class_names, dtype=object)[np.nan_to_num(probs).argmax(axis=1)], "")
    df = pd.DataFrame({"file": files, "predicted": pred})
    for j, c in enumerate(class_names):
        df[f"p_{c}"] = np.round(probs[:, j], 4)
    df["error"] = errors
    return df


def _by_subject(table: pd.DataFrame, files: list[str], probs: np.ndarray, class_names: list[str], mode: str,
                log: Log) -> pd.DataFrame:
    subjects = _subject_ids(files, mode)
    table["subject"] = subjects
    ok = ~np.isnan(probs).any(axis=1)
    rows = []
    for s in dict.fromkeys(subjects[ok]):
        mean = probs[ok & (subjects == s)].mean(axis=0)
        rows.append({"subject": s, "n_slices": int((ok & (subjects == s)).sum()), "predicted": class_names[int(mean.argmax())],
                     **{f"p_{c}": round(float(mean[j]), 4) for j, c in enumerate(class_names)}})
    log(f"{len(rows)} subject(s) among {int(ok.sum())} readable slices")
    return pd.DataFrame(rows)


def format_predictions(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render predictions as an aligned table, CSV or JSON."""
    if fmt == "json":
        return json.dumps(df.to_dict(orient="records"), indent=1, default=str)
    df = df.drop(columns="slices", errors="ignore")  # the per-slice detail of a scan: JSON only
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    shown = df
    if "error" in shown and not shown["error"].astype(bool).any():
        shown = shown.drop(columns="error")
    return shown.to_string(index=False)
