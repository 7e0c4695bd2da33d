"""Predict with an exported ``.onnx`` model: ONNX Runtime alone (no TensorFlow, no pickle, no signing key).

The file is refused, on one line, unless ONNX Runtime loads it, it carries alzmri's metadata (``onnx_card``) and
its one input is ``image`` uint8 ``[N, H, W, 3]`` at the size the metadata names, with a float ``probabilities``
output of one column per class. Images are decoded by the very code featurize uses (``pipeline.image_batches``:
Pillow, the model's resize mode), so the graph sees the pixels the model was trained on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from featurize.errors import AlzmriError


@dataclass
class OnnxModel:
    """A loaded, validated export: the ONNX Runtime session and its parsed alzmri metadata."""

    session: Any
    meta: dict[str, Any]
    path: Path

    @property
    def class_names(self) -> list[str]:
        """The class of each output column."""
        return list(self.meta["classes"])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [n, C] of uint8 images [n, H, W, 3], run in calls of the export's batch."""
        step = int(self.meta["batch"])
        outs = [self.session.run(["probabilities"], {"image": np.ascontiguousarray(images[i:i + step], np.uint8)})[0]
                for i in range(0, len(images), step)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, len(self.class_names)), np.float32)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


def load_onnx(path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxModel:
    """Load and validate an alzmri ONNX export; AlzmriError (one line, naming the file) for anything else."""
    from classify.onnx_card import INPUT, OUTPUT, read_metadata
    from featurize.engines import ort_session_options

    path = Path(path).expanduser()
    if not path.is_file():
        raise AlzmriError(f"{path}: no such model file; export one with `alzmri export --model BUNDLE --out {path.name}`")
    try:
        import onnxruntime as ort
    except ImportError:
        raise AlzmriError(f"{path}: ONNX models need ONNX Runtime; pip install onnxruntime") from None
    data = path.read_bytes()  # check and load the very same bytes
    _refuse_external_data(data, path)
    try:
        session = ort.InferenceSession(data, ort_session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime reports corrupt files with several pybind types
        raise AlzmriError(f"{path}: not a loadable ONNX model (truncated, corrupt or unsupported: "
                          f"{_first_line(exc)}); export it again with `alzmri export`") from None
    meta = read_metadata(dict(session.get_modelmeta().custom_metadata_map), str(path))
    w, h = meta["size"]
    want = f"one input `{INPUT}` of type uint8 and shape [N, {h}, {w}, 3]"
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].type != "tensor(uint8)":
        got = ", ".join(f"{i.name} {i.type}" for i in inputs) or "none"
        raise AlzmriError(f"{path}: inputs are {got}; an alzmri model has {want}; export it again with `alzmri export`")
    if list(inputs[0].shape[1:]) != [h, w, 3] or len(inputs[0].shape) != 4:
        raise AlzmriError(f"{path}: input shape {inputs[0].shape} does not match the metadata's {w}x{h}; an alzmri "
                          f"model has {want}; export it again with `alzmri export`")
    outs = {o.name: o for o in session.get_outputs()}
    out = outs.get(OUTPUT)
    n = len(meta["classes"])
    cols = out.shape[1] if out is not None and len(out.shape) == 2 else -1
    if out is None or out.type != "tensor(float)" or not (cols == n or cols is None or isinstance(cols, str)):
        raise AlzmriError(f"{path}: no float output `{OUTPUT}` [N, {n}] (one column per class); export it again")
    return OnnxModel(session, meta, path)


def _refuse_external_data(data: bytes, path: Path) -> None:
    """An export is one self-contained file; tensors stored in other files (ONNX "external data") could make the
    graph read files beside it, so they are refused. Unparseable bytes are left to ONNX Runtime's own message."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data

        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - no onnx package, or bytes ONNX Runtime will refuse in its own words
        return
    if any(uses_external_data(t) for t in _tensors(model.graph)):
        raise AlzmriError(f"{path}: the model reads tensors from other files (ONNX external data); an alzmri export is "
                          "one self-contained file, so it is refused; export it again with `alzmri export`")


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers, and tensor attributes, in subgraphs too."""
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(sub)


def predict_files(path: str | os.PathLike[str], files: list[str], *, batch_size: int = 32,
                  progress: bool = False) -> tuple[np.ndarray, list[str], list[str]]:
    """(probabilities [n, C] with NaN rows for unreadable files, the error per file, the class names)."""
    from featurize.pipeline import image_batches
    from featurize.progress import progress_bar

    model = load_onnx(path)
    probs: list[np.ndarray] = []
    errors: list[str] = []
    with progress_bar(len(files), "predict", enabled=progress) as advance:
        for images, e in image_batches(files, model.meta["size"], model.meta["resize"], batch_size):
            p = model.predict_proba(images).astype(np.float64)
            p[[bool(x) for x in e]] = np.nan
            probs.append(p)
            errors += e
            advance(len(e))
    return np.concatenate(probs), errors, model.class_names
