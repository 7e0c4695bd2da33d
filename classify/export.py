"""``alzmri export``: a trained model as one ONNX graph from pixels to probabilities, plus a Markdown model card.

A head bundle becomes: input ``image`` (uint8 NHWC) -> the backbone's preprocessing, the backbone up to the bundle's
layers and pooling (the verified tf2onnx export that featurize left in ``artifacts/engines`` when its model card
matches the bundle's weights checksum, else rebuilt with TF and exported the same way) -> the head's scaler, PCA
and estimator (skl2onnx, ``onnx_head``) -> ``probabilities`` float32 [N, C]. The two graphs are joined with
``onnx.compose.merge_models``. An end-to-end ``.keras`` CNN is exported with tf2onnx in one piece (its grayscale
conversion inside the graph). Every export is checked against alzmri's own answer on fixed inputs before it is
written (max absolute probability error <= ``TOLERANCE``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from featurize.atomic import atomic_path
from featurize.errors import AlzmriError

Log = Callable[[str], None]
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Export:
    """Where an export went, its card, and how far it is from alzmri's own probabilities on the check inputs."""

    path: Path
    card: Path
    max_error: float
    backbone_from: str

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"exported {self.path} (+ {self.card.name}); backbone from {self.backbone_from}; max |ONNX - alzmri| "
                f"= {self.max_error:.1e} on the check images")


def card_path(out: str | Path) -> Path:
    """The Markdown card beside an export: ``model.onnx`` -> ``model.md``."""
    return Path(out).with_suffix(".md")


def export_model(model: str | Path, out: str | Path, *, weights: str | None = None,
                 artifacts: str | os.PathLike[str] | None = None, log: Log = lambda s: None) -> Export:
    """Export a signed ``.joblib`` head bundle or a ``.keras`` CNN to ``out`` (ONNX) and its model card. A bundle's
    backbone comes from the verified export of a model card in ``artifacts``'s engines folder when one matches its
    weights checksum (no TF), else it is rebuilt with TF."""
    model, out = Path(model).expanduser(), Path(out).expanduser()
    if out.suffix != ".onnx":
        raise AlzmriError(f"{out}: the export file must end in .onnx")
    import importlib.util

    missing = [p for p in ("onnx", "onnxruntime", "tf2onnx", "skl2onnx") if importlib.util.find_spec(p) is None]
    if missing:
        raise AlzmriError(f"export needs {', '.join(missing)}: pip install {' '.join(missing)} (or alzmri[onnx])")
    if model.suffix == ".joblib":
        onnx_model, check, max_err, source = _export_bundle(model, weights, artifacts, log)
    elif model.suffix == ".keras":
        onnx_model, check, max_err, source = _export_keras(model)
    else:
        raise AlzmriError(f"{model}: not a model file; pass a .joblib bundle from `alzmri classify` or a .keras model "
                          "from `alzmri baseline`")
    data = onnx_model.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    from classify.onnx_card import model_card

    meta = {p.key: p.value for p in onnx_model.metadata_props}
    card = card_path(out)
    with atomic_path(card) as tmp:
        tmp.write_text(model_card(meta, file_name=out.name, sha256=hashlib.sha256(data).hexdigest(), max_error=max_err,
                                  checked=check))
    return Export(out, card, max_err, source)


def _version() -> str:
    from featurize import __version__

    return str(__version__)


def _export_bundle(path: Path, weights: str | None, artifacts: str | os.PathLike[str] | None,
                   log: Log) -> tuple[Any, str, float, str]:
    from classify.bundle import load_bundle
    from classify.onnx_card import bundle_metadata
    from classify.onnx_head import head_graph
    from featurize.engines import SMALL_BATCH, check_inputs
    from featurize.images import parse_size

    bundle = load_bundle(path)
    spec = bundle.backbone
    if spec.get("precision"):
        raise AlzmriError(f"{path}: trained on {spec['precision']}-precision features, which a float32 ONNX graph "
                          "does not reproduce; featurize and classify again with --precision float32 to export")
    w, h = parse_size(str(spec["image_size"]))
    from featurize.config import engines_dir

    backbone, source, light = _backbone_onnx(spec, (w, h), weights, engines_dir(artifacts), log)
    dim = int(backbone.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    head = head_graph(bundle.pipeline, dim, len(bundle.class_names))
    merged = _merge(backbone, head)
    batch = SMALL_BATCH if light else 32
    _set_metadata(merged, bundle_metadata(bundle, input_size=f"{w}x{h}", batch=batch, version=_version()))
    images = check_inputs(h, w)
    feats = _run(backbone, images)
    err = _max_error(_run(merged, images), bundle.predict_proba(feats.astype(np.float32)))
    if err > TOLERANCE:
        raise AlzmriError(f"{path}: the ONNX head disagrees with the bundle (max error {err:.1e} > {TOLERANCE:.0e}); "
                          "not exported")
    return merged, f"{len(images)} fixed check images (the backbone export itself verified against TF)", err, source


def _backbone_onnx(spec: dict[str, Any], size: tuple[int, int], weights: str | None, engines: Path | None,
                   log: Log) -> tuple[Any, str, bool]:
    """(backbone ONNX model with input ``images`` and one feature output, where it came from, light network?)."""
    import onnx

    found = _from_card(spec, size, weights, engines) if engines is not None and engines.is_dir() else None
    if found is not None:
        return found
    from classify.predict import backbone_model
    from featurize.backbones import get_backbone
    from featurize.engines import is_light, make_engine, onnx_path

    bb = get_backbone(str(spec["backbone"]))
    model, preprocess = backbone_model(spec, bb, weights, log)
    said: list[str] = []
    with tempfile.TemporaryDirectory(prefix="alzmri-export-") as tmp:
        _, used = make_engine(model, preprocess, 4, "onnx", cache_dir=tmp, key="backbone", log=said.append)
        if used != "onnx":
            raise AlzmriError(f"the {bb.name} backbone could not be exported to ONNX ({'; '.join(said) or 'unknown'}); "
                              "pip install tf2onnx onnxruntime")
        return onnx.load(str(onnx_path(tmp, "backbone"))), "a TF build (tf2onnx, verified against TF)", is_light(model)


def _from_card(spec: dict[str, Any], size: tuple[int, int], weights: str | None, engines: Path) -> tuple[Any, str, bool] | None:
    """The backbone from the verified export of a model card that featurize left in ``engines`` for exactly these
    weights; its columns cut out when the export computed other layer choices too. None when there is none."""
    import onnx
    from onnx import helper, numpy_helper

    from classify.predict import card_settings
    from featurize.engines import load_verified, onnx_path
    from featurize.modelcard import cards_for

    settings = card_settings(spec, weights)
    if settings is None:
        return None
    w, h = size
    for card, lo, hi in cards_for(engines, settings, str(spec.get("layers") or "last"), int(spec.get("seed", 0) or 0), "onnx"):
        if card["weights_sha256"] != spec.get("weights_sha256") or load_verified(engines, card["key"], "onnx", 4, (h, w)) is None:
            continue
        model = onnx.load(str(onnx_path(engines, card["key"])))
        out = model.graph.output[0]
        if (lo, hi) != (0, sum(card["dims"])):  # a multi-choice export: keep this choice's columns
            g = model.graph
            g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                                  for v, n in ((lo, "alzmri_lo"), (hi, "alzmri_hi"), (1, "alzmri_axis"))])
            g.node.append(helper.make_node("Slice", [out.name, "alzmri_lo", "alzmri_hi", "alzmri_axis"], ["alzmri_choice"]))
            del g.output[:]
            g.output.append(helper.make_tensor_value_info("alzmri_choice", onnx.TensorProto.FLOAT, [None, hi - lo]))
        return model, f"featurize's verified export {onnx_path(engines, card['key']).name} (no TF)", bool(card.get("light"))
    return None


def _merge(backbone: Any, head: Any) -> Any:
    """backbone (``images`` -> features) then head (``features`` -> ``probabilities``), as one model with input
    ``image`` and output ``probabilities``."""
    import onnx
    from onnx import compose, helper

    from classify.onnx_card import INPUT, OUTPUT
    from classify.onnx_head import rename

    rename(backbone.graph, backbone.graph.input[0].name, INPUT)
    bb = compose.add_prefix(backbone, "backbone/", rename_inputs=False)
    hd = compose.add_prefix(head, "head/")
    ir = max(bb.ir_version, hd.ir_version)
    bb.ir_version = hd.ir_version = ir
    # merge_models wants one version per domain, the same in both parts: the highest either uses (tf2onnx and
    # skl2onnx pick different ai.onnx.ml versions; the ops used here did not change between them)
    versions: dict[str, int] = {}
    for o in [*bb.opset_import, *hd.opset_import]:
        versions[o.domain] = max(versions.get(o.domain, 0), int(o.version))
    for part in (bb, hd):
        del part.opset_import[:]
        part.opset_import.extend([helper.make_opsetid(d, v) for d, v in sorted(versions.items())])
    merged = compose.merge_models(bb, hd, io_map=[(bb.graph.output[0].name, hd.graph.input[0].name)],
                                  producer_name="alzmri", producer_version=_version())
    g = merged.graph
    g.node.append(helper.make_node("Identity", [hd.graph.output[0].name], [OUTPUT], name="alzmri_output"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                                  [None, hd.graph.output[0].type.tensor_type.shape.dim[1].dim_value]))
    onnx.checker.check_model(merged)
    return merged


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    from onnx import helper

    model.doc_string = "alzmri: MRI slice -> Alzheimer's stage scores. Research and teaching only, not a diagnostic device."
    helper.set_model_props(model, meta)


def _run(model: Any, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])


def _max_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.shape == b.shape and np.isfinite(a).all() else float("inf")


def _export_keras(path: Path) -> tuple[Any, str, float, str]:
    """An end-to-end CNN: uint8 RGB in (luma computed inside the graph for a grayscale model), softmax out."""
    import onnx

    from classify.cnn import load_baseline
    from classify.cnn.data import predict_proba
    from classify.onnx_card import INPUT, OUTPUT, keras_metadata
    from classify.onnx_head import rename
    from featurize.engines import OPSET, check_inputs
    from featurize.images import parse_size

    model, sidecar = load_baseline(path)
    import tensorflow as tf
    import tf2onnx

    w, h = parse_size(str(sidecar["image_size"]))
    gray = sidecar.get("color") == "grayscale"
    spec = [tf.TensorSpec((None, h, w, 3), tf.uint8, name=INPUT)]

    @tf.function(input_signature=spec)
    def probabilities(x: Any) -> Any:
        if gray:  # the integer ITU-R 601 luma of classify.cnn.data.decode_images, exactly
            xi = tf.cast(x, tf.int32)
            x = (xi[..., 0:1] * 299 + xi[..., 1:2] * 587 + xi[..., 2:3] * 114 + 500) // 1000
        return model(tf.cast(x, tf.float32), training=False)

    with tempfile.TemporaryDirectory(prefix="alzmri-export-") as tmp:
        target = Path(tmp) / "cnn.onnx"
        tf2onnx.convert.from_function(probabilities, input_signature=spec, opset=OPSET, output_path=str(target))
        onnx_model = onnx.load(str(target))
    rename(onnx_model.graph, onnx_model.graph.output[0].name, OUTPUT)
    onnx_model.producer_name, onnx_model.producer_version = "alzmri", _version()
    metrics = _keras_metrics(sidecar)
    _set_metadata(onnx_model, keras_metadata(sidecar, metrics=metrics, batch=32, version=_version()))
    images = check_inputs(h, w)
    X = images
    if gray:
        X = ((images[..., 0:1].astype(np.uint32) * 299 + images[..., 1:2].astype(np.uint32) * 587
              + images[..., 2:3].astype(np.uint32) * 114 + 500) // 1000).astype(np.uint8)
    err = _max_error(_run(onnx_model, images), predict_proba(model, X))
    if err > TOLERANCE:
        raise AlzmriError(f"{path}: the ONNX export disagrees with Keras (max error {err:.1e} > {TOLERANCE:.0e}); "
                          "not exported")
    return onnx_model, f"{len(images)} fixed check images against Keras", err, "tf2onnx (the whole CNN)"


def _keras_metrics(sidecar: dict[str, Any]) -> dict[str, float]:
    """What the sidecar records of the CNN's quality: its best validation balanced accuracy (the report row holds the
    test metrics)."""
    val = sidecar.get("val_balanced_accuracy")
    return {"val_balanced_accuracy": float(val)} if val is not None else {}
