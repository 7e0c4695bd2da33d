"""alzmri export: one ONNX file per bundle or CNN gives the bundle's probabilities and decisions; predict runs it
with ONNX Runtime alone (no TF, no bundle, no signing key), and so does a plain script that imports nothing from
alzmri."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
pytest.importorskip("tf2onnx")

import featurize  # noqa: E402
from classify.bundle import load_bundle  # noqa: E402
from classify.export import export_model  # noqa: E402
from classify.onnx_predict import load_onnx, predict_files  # noqa: E402
from classify.predict import expand_inputs, predict_paths  # noqa: E402
from classify.run import classify_dataset  # noqa: E402
from featurize.run import featurize_dataset  # noqa: E402
from featurize.synth import write_dataset  # noqa: E402

pytestmark = [pytest.mark.tf, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
HEADS = ["logreg", "svm", "mlp"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Path]]:
    """(data, artifacts, head -> bundle) on a small synthetic dataset (random-init MobileNetV2 at 32x32)."""
    base = tmp_path_factory.mktemp("export")
    data, art = base / "data", base / "artifacts"
    write_dataset(data, subjects_per_class=3, slices_per_subject=4, size=(64, 76), seed=3)
    featurize_dataset(data, backbone="mobilenetv2", weights="none", image_size="32x32", subjects="auto",
                      artifacts=art, progress=False)
    df = classify_dataset(data, backbone="mobilenetv2", heads=HEADS, protocol="official", artifacts=art,
                          progress=False, log=lambda s: None)
    return data, art, {h: next(Path(b) for b in df.attrs["bundles"] if f"__{h}__" in Path(b).name) for h in HEADS}


def _cached_probabilities(bundle_file: Path, data: Path, art: Path, files: list[str]) -> np.ndarray:
    """The bundle's probabilities on the very features classify trained on (the cache), for ``files``."""
    bundle = load_bundle(bundle_file)
    fs = featurize.load(featurize.store.find_caches(featurize.dataset.dataset_id(data), art)[0])
    by_path = {str(data / p): i for i, p in enumerate(fs.paths)}
    return bundle.predict_proba(fs.X[[by_path[f] for f in files]])


@pytest.mark.parametrize("head", HEADS)
def test_an_export_gives_the_bundles_probabilities_and_decisions(trained: tuple[Path, Path, dict[str, Path]],
                                                                 tmp_path: Path, head: str) -> None:
    data, art, bundles = trained
    res = export_model(bundles[head], tmp_path / "model.onnx", artifacts=art)
    assert "no TF" in res.backbone_from  # featurize's verified export was reused
    files = expand_inputs([data / "test"])
    got, errors, names = predict_files(res.path, files)
    want = _cached_probabilities(bundles[head], data, art, files)
    assert not any(errors) and names == load_bundle(bundles[head]).class_names
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    meta = load_onnx(res.path).meta
    assert meta["head"] == head and meta["resize"] == "stretch" and meta["input_size"] == "32x32"
    assert meta["weights_sha256"] == load_bundle(bundles[head]).backbone["weights_sha256"]
    assert json.loads(meta["metrics"])["balanced_accuracy"] >= 0 and meta["protocol"] == "official"
    card = res.card.read_text()
    assert "not a diagnostic tool" in card and "NonDemented" in card and meta["fingerprint"] in card


def test_an_export_without_featurizes_engines_rebuilds_the_backbone_with_tf(trained: tuple[Path, Path, dict[str, Path]],
                                                                            tmp_path: Path) -> None:
    data, art, bundles = trained
    alone = tmp_path / "elsewhere" / bundles["svm"].name
    alone.parent.mkdir()
    for p in (bundles["svm"], bundles["svm"].with_name(bundles["svm"].name + ".sig")):
        shutil.copy(p, alone.parent / p.name)
    res = export_model(alone, tmp_path / "svm.onnx", artifacts=tmp_path / "no-engines")  # no card: a TF build
    assert "TF build" in res.backbone_from
    files = expand_inputs([data / "test"])
    got, _, _ = predict_files(res.path, files)
    np.testing.assert_allclose(got, _cached_probabilities(bundles["svm"], data, art, files), atol=1e-4)


_WRAPPER = """
import atexit, json, runpy, sys
flag, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
watch = ("tensorflow", "keras", "classify.bundle", "featurize", "classify", "sklearn")
atexit.register(lambda: open(flag, "w").write(json.dumps({m: m in sys.modules for m in watch})))
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def _run(script: str, args: list[str], tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, bool]]:
    flag = tmp / "modules.json"
    out = subprocess.run([sys.executable, "-c", _WRAPPER, str(flag), script, *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **env})
    return out, json.loads(flag.read_text())


def test_predict_on_an_onnx_file_needs_no_tensorflow_bundle_or_key(trained: tuple[Path, Path, dict[str, Path]],
                                                                   tmp_path: Path) -> None:
    data, art, bundles = trained
    model = export_model(bundles["logreg"], tmp_path / "shared.onnx", artifacts=art).path
    key = tmp_path / "nobody" / "signing.key"
    out, mods = _run("cli.py", ["predict", "--model", str(model), str(data / "test"), "--by-subject", "infer", "--json"],
                     tmp_path, ALZMRI_KEY_FILE=str(key))
    assert out.returncode == 0, out.stderr[-2000:]
    assert not mods["tensorflow"] and not mods["keras"] and not mods["classify.bundle"] and not key.exists()
    dec = json.JSONDecoder()
    slices, end = dec.raw_decode(out.stdout.strip())
    subjects, _ = dec.raw_decode(out.stdout.strip()[end:].strip())
    table, by_subject = predict_paths(bundles["logreg"], [data / "test"], by_subject="infer")
    assert [r["predicted"] for r in slices] == list(table["predicted"])
    assert [(r["subject"], r["predicted"]) for r in subjects] == list(zip(by_subject["subject"], by_subject["predicted"]))


def test_a_plain_onnx_runtime_script_gives_equal_probabilities(trained: tuple[Path, Path, dict[str, Path]],
                                                               tmp_path: Path) -> None:
    data, art, bundles = trained
    model = export_model(bundles["mlp"], tmp_path / "m.onnx", artifacts=art).path
    files = expand_inputs([data / "test"])
    out, mods = _run("examples/run_onnx.py", [str(model), *files], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not any(mods.values()), mods  # ONNX Runtime, numpy and Pillow only
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    names = load_bundle(bundles["mlp"]).class_names
    got = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
    ours, _, _ = predict_files(model, files)
    assert [r["file"] for r in rows] == files
    np.testing.assert_allclose(got, ours, atol=1e-6)
    np.testing.assert_allclose(got, _cached_probabilities(bundles["mlp"], data, art, files), atol=1e-4)


def test_a_keras_cnn_exports_with_its_probabilities(trained: tuple[Path, Path, dict[str, Path]], tmp_path: Path) -> None:
    from classify.cnn import predict_files as keras_files
    from classify.cnn import train_baseline

    data, _, _ = trained
    res = train_baseline(data, model="scratch", weights="none", image_size="32x32", epochs=1, subjects="none",
                         progress=False, batch_size=8, artifacts=tmp_path / "art")
    exp = export_model(res.model_path, tmp_path / "cnn.onnx")
    files = expand_inputs([data / "test"])
    got, _, names = predict_files(exp.path, files)
    want, _ = keras_files(res.model_path, files)
    assert load_onnx(exp.path).meta["kind"] == "cnn" and len(names) == want.shape[1]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_a_mid_layer_bundle_is_cut_out_of_a_multi_choice_export(trained: tuple[Path, Path, dict[str, Path]],
                                                                tmp_path: Path) -> None:
    from featurize.run import featurize_layers

    data, _, _ = trained
    art = tmp_path / "artifacts"
    featurize_layers(data, layer_choices=["last", "mid"], backbone="mobilenetv2", weights="none", image_size="32x32",
                     subjects="auto", artifacts=art, progress=False)
    df = classify_dataset(data, backbone="mobilenetv2", heads=["logreg"], protocol="official", artifacts=art,
                          progress=False, log=lambda s: None)
    (mid,) = [Path(b) for b in df.attrs["bundles"] if "block_13" in Path(b).name]
    res = export_model(mid, tmp_path / "mid.onnx", artifacts=art)
    assert "no TF" in res.backbone_from and load_onnx(res.path).meta["layers"] == "block_13_expand_relu"
    files = expand_inputs([data / "test"])
    bundle = load_bundle(mid)
    caches = featurize.store.find_caches(featurize.dataset.dataset_id(data), art)
    fs = featurize.load(next(c for c in caches if "block_13" in Path(c).name))
    by_path = {str(data / p): i for i, p in enumerate(fs.paths)}
    got, _, _ = predict_files(res.path, files)
    np.testing.assert_allclose(got, bundle.predict_proba(fs.X[[by_path[f] for f in files]]), atol=1e-4)
