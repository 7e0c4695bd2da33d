"""onnx_head: every head (and alzmri's own estimators) converts to ONNX with ModelBundle.predict_proba's numbers and
columns, including binary SVMs and classes the head never saw."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

from classify.bundle import ModelBundle  # noqa: E402
from classify.heads import make_head  # noqa: E402
from classify.onnx_head import head_graph  # noqa: E402


def _run(model, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"features": X})[0]


@pytest.mark.parametrize("head,pca", [("logreg", None), ("svm", 16), ("mlp", 16)])
@pytest.mark.parametrize("seen", [[0, 1], [0, 1, 2, 3], [0, 2, 3]])
def test_a_head_converts_with_bundle_probabilities_and_columns(head: str, pca: int | None, seen: list[int]) -> None:
    rng = np.random.default_rng(len(seen))
    y = rng.choice(seen, 160)
    X = (rng.normal(size=(160, 40)) + y[:, None] * 0.4 + 3.0).astype(np.float32)  # offset: the scaler matters
    names = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]
    bundle = ModelBundle(pipeline=make_head(head, pca).fit(X, y), class_names=names, backbone={}, fingerprint="",
                         head=head, protocol="official")
    got = _run(head_graph(bundle.pipeline, 40, len(names)), X)
    want = bundle.predict_proba(X)
    assert got.shape == (160, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    unseen = sorted(set(range(4)) - set(seen))
    assert (got[:, unseen] == 0).all()
