"""predict on .onnx files without TensorFlow: a valid alzmri export runs; a malformed, truncated or foreign ONNX file,
or one asking for operators ONNX Runtime does not have, is refused on one line with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import cli  # noqa: E402
from classify.onnx_predict import load_onnx, predict_files  # noqa: E402
from featurize.errors import AlzmriError  # noqa: E402

CLASSES = ["NonDemented", "MildDemented"]


def tiny_model(*, meta: bool = True, input_type: int = TensorProto.UINT8, size: int = 8, op_domain: str = "",
               input_name: str = "image") -> onnx.ModelProto:
    """image uint8 [N, 8, 8, 3] -> mean colour [N, 3] -> softmax(mean @ W) [N, 2], with alzmri metadata."""
    w = numpy_helper.from_array(np.array([[0.02, -0.02], [0.0, 0.0], [-0.01, 0.01]], np.float32), "w")
    nodes = [helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["z"]),
             helper.make_node("Softmax" if not op_domain else "RunAnything", ["z"], ["probabilities"], axis=1,
                              domain=op_domain)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, input_type, [None, size, size, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], [w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(op_domain, 1)] if op_domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    if meta:
        helper.set_model_props(model, {"alzmri.format": "1", "alzmri.kind": "head", "alzmri.classes": json.dumps(CLASSES),
                                       "alzmri.input_size": "8x8", "alzmri.resize": "stretch", "alzmri.batch": "3"})
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _images(folder: Path, n: int = 5) -> list[str]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 16), dtype=np.uint8) // (i + 1)).save(p)
        out.append(str(p))
    return out


def test_a_valid_export_predicts_the_graphs_probabilities(tmp_path: Path) -> None:
    from featurize.images import load_rgb

    path = _save(tiny_model(), tmp_path / "m.onnx")
    files = _images(tmp_path / "imgs")
    probs, errors, names = predict_files(path, files, batch_size=2)
    x = np.stack([load_rgb(f, (8, 8)) for f in files]).astype(np.float32).mean(axis=(1, 2))
    z = x @ np.array([[0.02, -0.02], [0.0, 0.0], [-0.01, 0.01]])
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert names == CLASSES and errors == [""] * 5
    np.testing.assert_allclose(probs, want, atol=1e-6)


def _external(t: Path, location: str) -> Path:
    """The tiny model with its weights in another file (``location``, relative to the model's folder)."""
    model = tiny_model()
    w = model.graph.initializer[0]
    (t / "beside.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return _save(model, t / "m.onnx")


BAD = {
    "garbage": lambda t: (t / "m.onnx").write_bytes(b"this is not a protobuf at all \x00\xff" * 40),
    "truncated": lambda t: (t / "m.onnx").write_bytes(tiny_model().SerializeToString()[:150]),
    "foreign: no alzmri metadata": lambda t: _save(tiny_model(meta=False), t / "m.onnx"),
    "wrong input type": lambda t: _save(tiny_model(input_type=TensorProto.FLOAT), t / "m.onnx"),
    "wrong input name": lambda t: _save(tiny_model(input_name="input_1"), t / "m.onnx"),
    "input size differs from the metadata": lambda t: _save(tiny_model(size=16), t / "m.onnx"),
    "an operator from an unknown domain": lambda t: _save(tiny_model(op_domain="com.example.shell"), t / "m.onnx"),
    "tensors in a file beside it": lambda t: _external(t, "beside.bin"),
    "tensors in a file outside its folder": lambda t: _external(t, "../../etc/passwd"),
}
WHY = {"garbage": "not a loadable ONNX model", "truncated": "not a loadable ONNX model",
       "foreign: no alzmri metadata": "not an alzmri model", "wrong input type": "an alzmri model has one input",
       "wrong input name": "an alzmri model has one input", "input size differs from the metadata": "does not match",
       "an operator from an unknown domain": "not a loadable ONNX model",
       "tensors in a file beside it": "external data", "tensors in a file outside its folder": "external data"}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_onnx_file_is_one_line_and_a_nonzero_exit(case: str, tmp_path: Path) -> None:
    BAD[case](tmp_path)
    with pytest.raises(AlzmriError, match=WHY[case]):
        load_onnx(tmp_path / "m.onnx")
    res = CliRunner().invoke(cli.app, ["predict", "--model", str(tmp_path / "m.onnx"), *_images(tmp_path / "i", 1)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.exception  # an exit, not a crash
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(tmp_path / "m.onnx") in res.output, res.output


@pytest.mark.parametrize("name, out, why", [("m.txt", "m.onnx", "not a model file"),
                                            ("m.joblib", "m.onnx", "no signature file"),
                                            ("m.joblib", "m.bin", "must end in .onnx")])
def test_export_refuses_on_one_line(tmp_path: Path, name: str, out: str, why: str) -> None:
    (tmp_path / name).write_bytes(b"\x80\x04K\x01.")  # a pickle, unsigned
    res = CliRunner().invoke(cli.app, ["export", "--model", str(tmp_path / name), "--out", str(tmp_path / out)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and why in lines[0], res.output
    assert not (tmp_path / out).exists()
