"""featurize.engines: the TF engine is make_forward; ONNX agrees with TF, is exported once and reused, falls back."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurize import engines
from featurize.backbones import build_base, feature_model, get_backbone
from featurize.errors import AlzmriError
from featurize.pipeline import make_forward
from tests.conftest import cpu_only
from tests.helpers import assert_same_features

pytestmark = [pytest.mark.tf, pytest.mark.slow]

HAVE_ONNX = not engines.missing_packages("onnx")
HAVE_OPENVINO = not engines.missing_packages("openvino")
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx extra not installed (pip install 'alzmri[onnx]')")
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino / tf2onnx not installed")
BATCH = 4


@pytest.fixture(scope="module")
def net() -> tuple[object, object]:
    bb = get_backbone("mobilenetv2")
    return feature_model(build_base(bb, "none", (32, 32), seed=0), [], "avg"), bb.preprocess_fn()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(net: tuple[object, object], images: np.ndarray) -> np.ndarray:
    fwd = make_forward(*net, BATCH)
    return np.concatenate([fwd(images[:BATCH]), fwd(images[BATCH:])])


def _run(fwd: engines.Forward, images: np.ndarray) -> np.ndarray:
    return np.concatenate([fwd(images[:BATCH]), fwd(images[BATCH:])])  # a full batch, then a short one


def test_tf_engine_equals_make_forward(net: tuple[object, object], images: np.ndarray, reference: np.ndarray) -> None:
    fwd, used = engines.make_engine(*net, BATCH, engine="tf")
    assert used == "tf"
    np.testing.assert_array_equal(_run(fwd, images), reference)


def test_unknown_engine_is_refused(net: tuple[object, object]) -> None:
    with pytest.raises(AlzmriError, match="unknown engine"):
        engines.make_engine(*net, BATCH, engine="cuda")


def test_engine_key_is_file_name_safe() -> None:
    key = engines.engine_key("resnet50", "ab" * 32, "224x224", ["conv3_block4_out", "last"], "avg")
    assert key == "resnet50__" + "ab" * 8 + "__224x224__conv3_block4_out+last__avg"
    assert "/" not in engines.engine_key("x", "0", "1x1", "a/b", "max")


@needs_onnx
def test_onnx_engine_matches_tf_and_is_cached(net: tuple[object, object], images: np.ndarray, reference: np.ndarray,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exports: list[Path] = []
    real_export = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **k: exports.append(a[2]) or real_export(*a, **k))
    logs: list[str] = []
    announced: list[int] = []
    fwd, used = engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="mnv2-test", log=logs.append,
                                    on_export=lambda: announced.append(1))
    assert used == "onnx" and logs == [] and announced == [1]  # told once, before the export
    out = _run(fwd, images)
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert engines.relative_error(out, reference) <= 1e-4
    cached = engines.onnx_path(tmp_path, "mnv2-test")
    assert exports == [cached] and cached.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    stamp = cached.stat().st_mtime_ns
    tf_checks: list[int] = []
    real_ref = engines.reference_features
    monkeypatch.setattr(engines, "reference_features", lambda *a: tf_checks.append(1) or real_ref(*a))
    fwd2, used2 = engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="mnv2-test", log=logs.append,
                                      on_export=lambda: announced.append(2))
    assert announced == [1]  # a reuse exports nothing, so says nothing
    assert used2 == "onnx" and len(exports) == 1 and cached.stat().st_mtime_ns == stamp and logs == []  # reused
    assert tf_checks == []  # checked against the TF answer stored at export, without running TF again
    assert_same_features(_run(fwd2, images), out, rel=1e-6)
    assert_same_features(fwd2(images), out, rel=1e-6)  # longer than the batch: run in chunks


@needs_onnx
def test_lean_export_keeps_the_transpose_pass_and_restores_tf2onnx(net: tuple[object, object], images: np.ndarray,
                                                                  reference: np.ndarray, tmp_path: Path) -> None:
    import onnx
    import tf2onnx.optimizer as opt

    def transposes(path: Path) -> int:
        return sum(n.op_type == "Transpose" for n in onnx.load(str(path)).graph.node)

    full_passes = opt._get_optimizers
    lean = engines.export_onnx(*net, tmp_path / "lean.onnx")
    assert opt._get_optimizers is full_passes  # the whole pass list is back for anyone else using tf2onnx
    with engines.lean_tf2onnx(passes=()):
        bare = engines.export_onnx(*net, tmp_path / "bare.onnx")
    # NHWC -> NCHW transposes around every conv without the transpose pass; a couple with it
    assert transposes(lean) <= 2 < transposes(bare)
    fwd = engines.load_runtime(lean, "onnx", BATCH, (32, 32))
    assert engines.relative_error(_run(fwd, images), reference) <= 1e-4


def test_light_networks_use_small_runtime_batches(net: tuple[object, object]) -> None:
    model = net[0]
    assert 0 < 2 * engines.model_macs(model) / 1e9 < engines.LIGHT_GFLOP  # mobilenetv2 at 32x32
    assert engines.inner_batch(model, 32) == engines.SMALL_BATCH and engines.inner_batch(model, 3) == 3


@needs_onnx
@cpu_only
def test_auto_uses_an_onnx_runtime_on_cpu(net: tuple[object, object], images: np.ndarray, reference: np.ndarray,
                                          tmp_path: Path) -> None:
    fwd, used = engines.make_engine(*net, BATCH, engine="auto", cache_dir=tmp_path, key="k")
    assert used in ("onnx", "openvino")
    assert engines.relative_error(_run(fwd, images), reference) <= 1e-4


@needs_openvino
def test_openvino_engine_matches_tf(net: tuple[object, object], images: np.ndarray, reference: np.ndarray,
                                    tmp_path: Path) -> None:
    fwd, used = engines.make_engine(*net, BATCH, engine="openvino", cache_dir=tmp_path, key="k")
    assert used == "openvino"
    assert engines.relative_error(_run(fwd, images), reference) <= 1e-4
    assert engines.relative_error(fwd(images), reference) <= 1e-4  # longer than the batch: run in chunks
    assert fwd(images[:1]).shape == (1, reference.shape[1])


@needs_onnx
def test_mismatch_falls_back_to_tf_with_a_message(net: tuple[object, object], images: np.ndarray, reference: np.ndarray,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engines.load_runtime

    def wrong(*a: object, **k: object) -> engines.Forward:
        fwd = real(*a, **k)
        return lambda b: fwd(b) * 1.01  # 1% off: far beyond the 1e-4 tolerance

    monkeypatch.setattr(engines, "load_runtime", wrong)
    logs: list[str] = []
    fwd, used = engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="bad", log=logs.append)
    assert used == "tf"
    assert len(logs) == 1 and "disagrees with TF" in logs[0] and "using tf" in logs[0] and "\n" not in logs[0]
    np.testing.assert_array_equal(_run(fwd, images), reference)
    assert not engines.onnx_path(tmp_path, "bad").exists()  # a bad export is not kept for the next run


@needs_onnx
def test_a_wrong_stored_check_is_caught_and_the_export_redone(net: tuple[object, object], images: np.ndarray,
                                                              reference: np.ndarray, tmp_path: Path) -> None:
    engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="k")
    stored = next(tmp_path.glob("*.check.npy"))
    np.save(stored, np.load(stored) * 1.01)  # as if the file had been verified against other weights
    logs: list[str] = []
    fwd, used = engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="k", log=logs.append)
    assert used == "onnx" and any("disagrees" in m and "re-exporting" in m for m in logs)
    assert engines.relative_error(_run(fwd, images), reference) <= 1e-4
    h, w = int(net[0].input_shape[1]), int(net[0].input_shape[2])
    truth = engines.reference_features(*net, engines.check_inputs(h, w))
    assert engines.relative_error(np.load(stored), truth) < 1e-6  # the stored check was redone from TF


@needs_onnx
def test_stale_cached_export_is_replaced(net: tuple[object, object], tmp_path: Path) -> None:
    path = engines.onnx_path(tmp_path, "k")
    path.write_bytes(b"not an onnx model")
    logs: list[str] = []
    _, used = engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="k", log=logs.append)
    assert used == "onnx" and any("re-exporting" in m for m in logs)
    assert path.stat().st_size > 1000


@needs_onnx
def test_export_failure_falls_back(net: tuple[object, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> Path:
        raise ValueError("unsupported op\nmore detail")

    monkeypatch.setattr(engines, "export_onnx", boom)
    logs: list[str] = []
    _, used = engines.make_engine(*net, BATCH, engine="onnx", cache_dir=tmp_path, key="k", log=logs.append)
    assert used == "tf" and logs == ["engine onnx failed (ValueError: unsupported op); using tf"]


def test_missing_packages_fall_back_to_tf(net: tuple[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnxruntime", "openvino", "tf2onnx") else real(name, *a))
    logs: list[str] = []
    assert engines.make_engine(*net, BATCH, engine="auto", log=logs.append)[1] == "tf" and logs == []  # auto: quietly
    assert engines.make_engine(*net, BATCH, engine="onnx", log=logs.append)[1] == "tf"
    assert len(logs) == 1 and "pip install" in logs[0]


def test_relative_error() -> None:
    b = np.array([[1.0, -4.0]])
    assert engines.relative_error(b, b) == 0.0
    assert engines.relative_error(b + 0.004, b) == pytest.approx(1e-3)
    assert engines.relative_error(np.zeros((1, 3)), b) == float("inf")
    assert engines.relative_error(np.array([[np.nan, 0.0]]), b) == float("inf")


@needs_onnx
def test_featurize_records_every_engine_behind_its_rows_and_shares_exports(tmp_path: Path, artifacts: Path) -> None:
    import h5py

    from featurize.config import engines_dir
    from featurize.run import featurize_dataset
    from tests.conftest import write_images

    root = tmp_path / "data"
    write_images(root, "kaggle", n_per_class=3)
    fast = {"weights": "none", "image_size": "32x32", "subjects": "none", "progress": False, "artifacts": artifacts}
    first = featurize_dataset(root, engine="tf", **fast)
    with h5py.File(first.cache) as f:
        assert f.attrs["engine"] == "tf"
    write_images(root / "new", "kaggle", n_per_class=1, seed=1)
    for f in (root / "new").rglob("*.png"):  # one new image per split and class
        f.rename(root / f.relative_to(root / "new").parent / "extra.png")
    shutil.rmtree(root / "new")
    second = featurize_dataset(root, engine="onnx", **fast)
    assert 0 < second.n_computed < second.n_images
    with h5py.File(second.cache) as f:
        assert f.attrs["engine"] == "onnx+tf"
    assert featurize_dataset(root, engine="onnx", **fast).n_computed == 0
    with h5py.File(second.cache) as f:
        assert f.attrs["engine"] == "onnx+tf"
    exports = list(engines_dir(artifacts).glob("*.onnx"))
    other = tmp_path / "other"
    write_images(other, "folders", n_per_class=2, seed=2)
    featurize_dataset(other, engine="onnx", **fast)
    assert list(engines_dir(artifacts).glob("*.onnx")) == exports and len(exports) == 1  # reused by another dataset
