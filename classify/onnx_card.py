"""What an exported ONNX model says about itself: its ``metadata_props`` (read back by ``onnx_predict`` and by any
ONNX tool) and the Markdown model card written beside it.

Every key starts with ``alzmri.``; values are strings (JSON for lists and dicts), as ONNX requires. This module
imports nothing heavy: reading a model's metadata must not cost TensorFlow or scikit-learn.
"""

from __future__ import annotations

import json
from typing import Any

from featurize.errors import AlzmriError

FORMAT = "1"
PREFIX = "alzmri."
INPUT = "image"
OUTPUT = "probabilities"
AGGREGATION = "mean of the slice probabilities per subject, then argmax"
REQUIRED = ("format", "kind", "classes", "input_size", "resize")
INTENDED_USE = ("Research and teaching only. This is not a medical device and not a diagnostic tool: it must not be "
                "used to diagnose, stage or treat anyone.")
KNOWN_LIMITS = [
    "Trained on 2-D axial MRI slices as JPEG/PNG images of one dataset; other scanners, sequences, orientations, "
    "skull stripping or intensity handling are outside what it has seen, and it cannot tell.",
    "Scores come from a model, not from a clinician; rows of a class the training data did not hold score 0.",
    "A slice-level score is not a subject-level diagnosis; the subject decision is the " + AGGREGATION + ".",
    "Metrics measured under the `official` protocol on Kaggle-style splits are optimistic when one person's slices "
    "sit in both train and test (leakage); `subject-cv` metrics hold whole people out.",
]


def bundle_metadata(bundle: Any, *, input_size: str, batch: int, version: str) -> dict[str, str]:
    """The metadata of a head bundle's export (``bundle``: a ``classify.bundle.ModelBundle``)."""
    spec = bundle.backbone
    clf = getattr(bundle.pipeline, "steps", [("", bundle.pipeline)])[-1][1]
    calibration = ("none: softmax of the SVM's one-vs-rest decision values (scores for ranking and averaging, "
                   "not calibrated probabilities)" if type(clf).__name__ == "SoftmaxSVC"
                   else "none: the estimator's own predict_proba, not recalibrated after training")
    meta = {
        "format": FORMAT, "kind": "head", "classes": json.dumps(list(bundle.class_names)), "input_size": input_size,
        "resize": str(spec.get("resize") or "stretch"), "backbone": str(spec.get("backbone")),
        "weights": str(spec.get("weights")), "weights_sha256": str(spec.get("weights_sha256") or ""),
        "layers": str(spec.get("layers") or "last"), "pooling": str(spec.get("pooling") or "avg"),
        "preprocess": str(spec.get("preprocess") or "keras"),  # inside the graph; recorded for people reading it
        "head": str(bundle.head), "steps": json.dumps([name for name, _ in getattr(bundle.pipeline, "steps", [])]),
        "task": str(bundle.task), "protocol": str(bundle.protocol), "selection": str(bundle.selection),
        "best_params": json.dumps(bundle.best_params, default=str), "metrics": json.dumps(bundle.metrics),
        "dataset_id": str(bundle.dataset_id), "fingerprint": str(bundle.fingerprint),
        "trained_with": f"alzmri {bundle.tool_version}, scikit-learn {bundle.sklearn_version}",
        "created": str(bundle.created), "calibration": calibration, "subject_aggregation": AGGREGATION,
        "batch": str(int(batch)), "version": version,
    }
    return {PREFIX + k: v for k, v in meta.items()}


def keras_metadata(sidecar: dict[str, Any], *, metrics: dict[str, float], batch: int, version: str) -> dict[str, str]:
    """The metadata of an end-to-end CNN's export (``sidecar``: the ``.json`` beside the ``.keras`` file)."""
    meta = {
        "format": FORMAT, "kind": "cnn", "classes": json.dumps(list(sidecar["class_names"])),
        "input_size": str(sidecar["image_size"]), "resize": str(sidecar.get("resize") or "stretch"),
        "backbone": str(sidecar.get("backbone")), "weights": str(sidecar.get("weights")), "weights_sha256": "",
        "layers": "end-to-end", "head": str(sidecar.get("name") or sidecar.get("model")),
        "color": str(sidecar.get("color", "rgb")), "task": str(sidecar.get("task", "stages")),
        "protocol": str(sidecar.get("protocol")), "metrics": json.dumps(metrics),
        "dataset_id": str(sidecar.get("dataset_id", "")), "fingerprint": str(sidecar.get("fingerprint", "")),
        "trained_with": f"alzmri {sidecar.get('alzmri_version', '?')}, TensorFlow {sidecar.get('tf_version', '?')}",
        "created": str(sidecar.get("created", "")), "calibration": "none: the network's softmax output",
        "subject_aggregation": AGGREGATION, "batch": str(int(batch)), "version": version,
    }
    return {PREFIX + k: v for k, v in meta.items()}


def read_metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    """The alzmri metadata of a loaded model (``props``: its metadata map), parsed; AlzmriError naming ``where``
    when it is not an alzmri export."""
    meta = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise AlzmriError(f"{where}: not an alzmri model (no alzmri.{missing[0]} in its metadata); export one with "
                          "`alzmri export --model BUNDLE --out model.onnx`")
    if meta["format"] != FORMAT:
        raise AlzmriError(f"{where}: alzmri ONNX format {meta['format']!r}, this alzmri reads {FORMAT!r}; export it "
                          "again with this version")
    try:
        classes = json.loads(meta["classes"])
        w, h = (int(v) for v in meta["input_size"].lower().split("x"))
        batch = int(meta.get("batch", "32"))
    except (ValueError, TypeError):
        raise AlzmriError(f"{where}: malformed alzmri metadata (classes or input_size); export it again") from None
    if not isinstance(classes, list) or not classes or meta["resize"] not in ("stretch", "pad"):
        raise AlzmriError(f"{where}: malformed alzmri metadata (classes or resize); export it again")
    return {**meta, "classes": [str(c) for c in classes], "size": (w, h), "batch": max(1, batch)}


def model_card(meta: dict[str, str], *, file_name: str, sha256: str, max_error: float, checked: str) -> str:
    """The Markdown model card of an export (``meta``: its metadata)."""
    m = {k[len(PREFIX):]: v for k, v in meta.items()}
    classes = json.loads(m["classes"])
    metrics = json.loads(m.get("metrics") or "{}")
    what = (f"{m['backbone']} features ({m['weights']} weights, layers `{m['layers']}`, {m.get('pooling', 'avg')} "
            f"pooling) and a scikit-learn `{m['head']}` head ({', '.join(json.loads(m.get('steps', '[]')))})"
            if m["kind"] == "head" else f"an end-to-end CNN `{m['head']}` ({m['backbone']}, {m['weights']} weights, "
            f"{m.get('color', 'rgb')} input)")
    lines = [
        f"# Model card: {file_name}", "",
        f"One ONNX graph from pixels to probabilities: {what}.", "",
        "## Files", "",
        f"- `{file_name}` (SHA-256 `{sha256}`), ONNX opset 17 with the `ai.onnx.ml` domain; runs in ONNX Runtime "
        "without TensorFlow, scikit-learn or alzmri (see examples/run_onnx.py).",
        f"- Input `{INPUT}`: uint8 `[N, {m['input_size'].split('x')[1]}, {m['input_size'].split('x')[0]}, 3]` "
        f"(NHWC, RGB; grayscale slices replicated to 3 channels), the image resized to {m['input_size']} "
        f"(width x height) with Pillow bilinear, resize mode `{m['resize']}`. Preprocessing is inside the graph.",
        f"- Output `{OUTPUT}`: float32 `[N, {len(classes)}]`, columns in class order: {', '.join(classes)}.",
        f"- Checked at export: max |ONNX - alzmri| = {max_error:.1e} on {checked}.", "",
        "## Training data", "",
        f"- Dataset id `{m.get('dataset_id') or 'unknown'}`, fingerprint `{m.get('fingerprint') or 'not recorded'}`.",
        f"- Classes ({m.get('task', 'stages')} task): {', '.join(classes)}.",
        "- Subjects: " + (m["subjects"] if m.get("subjects") else "not recorded in the model; see the training "
                          "report (`alzmri report`) for the subjects per class of this dataset."),
        f"- Weights checksum (whole backbone): `{m.get('weights_sha256') or 'n/a'}`.", "",
        "## Protocol and metrics", "",
        f"- Protocol `{m.get('protocol')}`" + (f", model selected by `{m['selection']}`" if m.get("selection") else "")
        + (f", parameters `{m['best_params']}`" if m.get("best_params") not in (None, "{}") else "") + ".",
    ]
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("- No metrics were recorded with this model.")
    if m.get("protocol") == "official":
        lines.append("- `official` uses the data's own test split; on Kaggle-style data it leaks subjects, so these "
                     "numbers are optimistic. Prefer a model evaluated with `subject-cv`.")
    lines += ["", "## Calibration", "", f"- {m.get('calibration', 'none recorded')}.", "",
              "## Subject-level decisions", "", f"- {AGGREGATION[0].upper() + AGGREGATION[1:]} (as `alzmri predict "
              "--by-subject`); the graph itself scores slices.", "",
              "## Intended use", "", f"- {INTENDED_USE}", "",
              "## Known limits", "", *[f"- {x}" for x in KNOWN_LIMITS], "",
              "## Provenance", "", f"- Trained with {m.get('trained_with')}, created {m.get('created') or '?'}; "
              f"exported by alzmri {m.get('version')}.", ""]
    return "\n".join(lines)
